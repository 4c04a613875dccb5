"""Susceptibility-weighted imaging (Haacke et al. 2004) from one echo, in torch.

The phase is high-pass filtered per slice by homodyne filtering (the complex image divided
by its low-pass version, made from the centre ``window`` of each slice's 2D k-space under a
smooth Hann taper); the phase mask is (π − φ)/π for phase φ > 0 of the sign paramagnetic
tissue has (after ``phase_sign``), 1 elsewhere; SWI = magnitude × mask^power. Slices are
taken perpendicular to the array axis closest to B0 ("axial").
"""
from __future__ import annotations

import numpy as np
import torch

from deepmir import settings
from deepmir.device import pick_device
from deepmir.qsm._torch import as_float, to_numpy

_SWI = settings.defaults("swi")      # the schema's swi defaults


def slice_axis(b0_dir) -> int:
    """The array axis closest to B0 (slices are perpendicular to it)."""
    return int(np.argmax(np.abs(np.asarray(b0_dir, float))))


def _hann_window(n: int, width: int, device) -> torch.Tensor:
    """Centred (FFT order) Hann taper of ``width`` samples (clipped to ``n``)."""
    w = min(int(width), n)
    win = torch.zeros(n, dtype=torch.float32, device=device)
    if w <= 1:
        win[0] = 1.0
        return win
    k = torch.arange(w, dtype=torch.float32, device=device)
    taper = 0.5 - 0.5 * torch.cos(2 * np.pi * (k + 1) / (w + 1))  # > 0 everywhere inside
    idx = (torch.arange(w, device=device) - w // 2) % n
    win[idx] = taper
    return win


def highpass_phase(mag, phase, b0_dir=(0.0, 0.0, 1.0), window=(64, 64), device=None):
    """Homodyne high-pass phase (radians) of a 3D complex image, per slice."""
    dev = pick_device(device)
    ax = slice_axis(b0_dir)
    s = torch.polar(as_float(np.abs(np.nan_to_num(mag)), dev), as_float(np.nan_to_num(phase), dev))
    s = torch.movedim(s, ax, -1)  # (A, B, slices)
    a, b = s.shape[0], s.shape[1]
    win = _hann_window(a, window[0], dev)[:, None, None] * _hann_window(b, window[1], dev)[None, :, None]
    low = torch.fft.ifft2(torch.fft.fft2(s, dim=(0, 1)) * win, dim=(0, 1))
    hp = torch.angle(s * torch.conj(low))
    return to_numpy(torch.movedim(hp, -1, ax))


def phase_mask(hp_phase, phase_sign: int = 1, power: int = 4) -> np.ndarray:
    """(π − φ')/π where φ' = phase_sign·φ > 0 (paramagnetic), 1 elsewhere; to ``power``."""
    ph = float(phase_sign) * np.asarray(hp_phase, np.float32)
    m = np.where(ph > 0, (np.pi - ph) / np.pi, 1.0)
    return np.clip(m, 0.0, 1.0).astype(np.float32) ** int(power)


def swi(mag, phase, b0_dir=(0.0, 0.0, 1.0), phase_sign: int = 1,
        window=(_SWI["window"], _SWI["window"]), power: int = _SWI["power"], device=None) -> dict:
    """SWI of one echo: ``{"swi", "highpass_phase", "mask"}`` (float32 arrays)."""
    hp = highpass_phase(mag, phase, b0_dir, window, device)
    pm = phase_mask(hp, phase_sign, power)
    out = np.abs(np.nan_to_num(np.asarray(mag, np.float32))) * pm
    return {"swi": out.astype(np.float32), "highpass_phase": hp.astype(np.float32), "mask": pm}


def minip(image, b0_dir=(0.0, 0.0, 1.0), n_slices: int = _SWI["minip_slices"]) -> np.ndarray:
    """Sliding minimum-intensity projection over ``n_slices`` neighbouring slices (viewing
    only; same shape as the input)."""
    from scipy.ndimage import minimum_filter1d

    n = max(int(n_slices), 1)
    return minimum_filter1d(np.asarray(image, np.float32), size=n, axis=slice_axis(b0_dir),
                            mode="nearest").astype(np.float32)


def vessel_contrast(image, vessel, surround) -> float:
    """(mean surround − mean vessel) / mean surround: how much darker vessels/CMBs are."""
    img = np.asarray(image, np.float64)
    s = img[np.asarray(surround, bool)].mean()
    v = img[np.asarray(vessel, bool)].mean()
    return float((s - v) / s) if s != 0 else float("nan")
