"""The inputs-stage MEGRE as the QSM and SWI stages read it: echo times, field strength and
phase sign from MEGRE.json, the magnitude and phase echoes on one grid, the B0 direction, a
brain mask on that grid. Each problem is one :class:`InputError` naming the file."""
from __future__ import annotations

import numpy as np

from deepmir import niio
from deepmir.errors import InputError
from deepmir.geometry import b0_direction


def read_meta(path):
    """(echo times in s, B0 in T, phase sign, B0 direction or None) of MEGRE.json."""
    meta = niio.read_json(path, "sidecar JSON")
    for key in ("EchoTime", "MagneticFieldStrength"):
        if key not in meta:
            raise InputError(path, f"missing {key}")
    te = np.asarray(meta["EchoTime"], float).reshape(-1)
    if te.size < 1 or not np.all(np.isfinite(te)) or np.any(te <= 0):
        raise InputError(path, f"EchoTime must be positive seconds, got {meta['EchoTime']}")
    if np.any(te > 1):
        raise InputError(path, f"EchoTime must be in seconds, got {meta['EchoTime']}")
    b0 = float(meta["MagneticFieldStrength"])
    if not b0 > 0:
        raise InputError(path, f"MagneticFieldStrength must be positive, got {b0}")
    sign = int(meta.get("PhaseSign", 1))
    if sign not in (1, -1):
        raise InputError(path, f"PhaseSign must be 1 or -1, got {meta.get('PhaseSign')}")
    return te, b0, sign, meta.get("B0_dir")


def load_echoes(mag_path, phase_path, json_path, n_te):
    """(magnitude, phase, affine): 4D echoes (a 3D image is one echo) on one grid, as many as
    MEGRE.json has echo times."""
    mag, aff = niio.load_image(mag_path, "magnitude", ndim=(3, 4))
    phase, paff = niio.load_image(phase_path, "phase", ndim=(3, 4))
    if mag.ndim == 3:
        mag = mag[..., None]
    if phase.ndim == 3:
        phase = phase[..., None]
    if mag.shape != phase.shape:
        raise InputError(phase_path, f"phase shape {phase.shape} differs from magnitude {mag.shape}")
    niio.check_grid(phase_path, phase.shape, paff, mag.shape, aff, "phase")
    if mag.shape[3] != n_te:
        raise InputError(json_path, f"{n_te} echo times for {mag.shape[3]} echoes")
    return mag, phase, aff


def b0_dir(meta_dir, affine) -> np.ndarray:
    """The sidecar's B0 direction (unit vector) when it gives a usable one, else the scanner z
    axis in voxel coordinates."""
    if meta_dir is not None:
        b = np.asarray(meta_dir, float).reshape(-1)
        if b.size == 3 and np.all(np.isfinite(b)) and np.linalg.norm(b) > 0:
            return b / np.linalg.norm(b)
    return b0_direction(affine)


def load_mask(path, ref_shape, ref_affine) -> np.ndarray:
    """A non-empty binary mask (> 0.5) on the reference grid."""
    m, aff = niio.load_image(path, "mask")
    niio.check_grid(path, m.shape, aff, ref_shape, ref_affine, "mask")
    m = np.nan_to_num(m) > 0.5
    if not m.any():
        raise InputError(path, "the mask is empty")
    return m
