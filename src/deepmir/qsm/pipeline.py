"""The whole QSM chain on arrays: multi-echo field fit → spatial unwrapping → ppm →
background removal → dipole inversion (MEDI-L1 or TKD), plus R2* and the MEDI+0 CSF mask.

``DEFAULTS`` are the workflow's defaults (the same as ``workflow/schemas/qsm.schema.yaml``).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from deepmir import GAMMA_BAR_HZ_PER_T

from .background import pdf, vsharp
from .fit import fit_multi_echo, r2star_map
from .inversion import erode_mask, extract_csf_mask, medi_l1, tkd
from .unwrap import unwrap_laplacian, unwrap_region_growing

from deepmir.qsm.defaults import DEFAULTS  # noqa: E402  (torch-free, for the CLI)
from deepmir.device import pick_device


def hz_per_ppm(b0_tesla: float) -> float:
    return GAMMA_BAR_HZ_PER_T * float(b0_tesla) * 1e-6


def field_ppm_from_phase_rate(phase_per_dt, delta_te: float, b0_tesla: float,
                              phase_sign: int = 1) -> np.ndarray:
    """field [ppm] = PhaseSign · Δφ / (2π · γ̄ · B0 · ΔTE) · 1e6."""
    return (float(phase_sign) * np.asarray(phase_per_dt, np.float32)
            / (2.0 * np.pi * hz_per_ppm(b0_tesla) * float(delta_te))).astype(np.float32)


def inflate_noise(noise_std, relres, mask) -> np.ndarray:
    """Model-error weighting (an addition to MEDI's ``Fit_ppm_complex``, which propagates
    only the noise): N_std × sqrt(max(1, relres / median relres in the mask)). Voxels whose
    echoes do not follow one frequency (intra-voxel dephasing at the brain edge, next to
    air or bone) then count little in PDF and MEDI, like MEDI's ``merit`` does afterwards."""
    m = np.asarray(mask) != 0
    rr = np.asarray(relres, np.float64)
    ref = np.median(rr[m]) if m.any() else 0.0
    if not ref > 0:
        return np.asarray(noise_std, np.float32)
    return (noise_std * np.sqrt(np.maximum(rr / ref, 1.0))).astype(np.float32)


def reconstruct(mag, phase, te, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0),
                b0_tesla: float = 3.0, phase_sign: int = 1, params: dict | None = None,
                device=None, log=print) -> dict:
    """Multi-echo GRE → χ.

    ``mag``, ``phase``: (X, Y, Z, N) magnitude and wrapped phase (radians); ``te``: N echo
    times (s); ``mask``: brain mask; ``voxel_size`` mm; ``b0_dir`` unit vector in array
    axes; ``phase_sign`` ±1 (see docs/conventions.md); ``params``: overrides of
    ``DEFAULTS``. Returns a dict of float32 arrays ``chi`` (ppm), ``local_field`` (ppm),
    ``total_field`` (ppm, unwrapped, before background removal), ``noise_std`` (ppm),
    ``r2s`` (s⁻¹), ``mask`` (final, bool: the brain mask eroded by ``mask_erode_mm``, and by
    MEDI's SMV when on), ``chi_tkd`` (TKD of the same local field, ppm), ``csf_mask`` (bool)
    and ``timings`` (s per stage)
    plus ``info`` (iterations etc.).
    """
    p = dict(DEFAULTS)
    p.update(params or {})
    dev = pick_device(device) if not isinstance(device, torch.device) else device
    m = np.asarray(mask) != 0
    if not m.any():
        raise ValueError("the brain mask is empty")
    te = np.asarray(te, float).reshape(-1)
    mag = np.nan_to_num(np.asarray(mag, np.float32))
    phase = np.nan_to_num(np.asarray(phase, np.float32))
    timings, info = {}, {}

    t = time.perf_counter()
    fit = fit_multi_echo(mag, phase, te, mask=m, device=dev)
    dt = fit["delta_te"]
    timings["field_fit"] = time.perf_counter() - t
    info["fit_iterations"] = fit["iterations"]

    t = time.perf_counter()
    wrapped = fit["field"] * dt  # rad per ΔTE, in (−π, π]
    imag = np.sqrt((mag ** 2).sum(-1))
    if p["unwrap"] == "laplacian":
        unwrapped = unwrap_laplacian(wrapped, voxel_size, magnitude=imag, mask=m, device=dev)
    elif p["unwrap"] == "region_growing":
        unwrapped = unwrap_region_growing(wrapped, magnitude=imag, mask=m)
    else:
        raise ValueError(f"unknown unwrapping method {p['unwrap']!r}")
    timings["unwrap"] = time.perf_counter() - t

    total = field_ppm_from_phase_rate(unwrapped, dt, b0_tesla, phase_sign) * m
    noise = (fit["noise_std"] / (2 * np.pi * hz_per_ppm(b0_tesla))).astype(np.float32)
    if p["residual_weighting"]:
        noise = inflate_noise(noise, fit["relres"], m)

    t = time.perf_counter()
    r2s = r2star_map(mag, te, mask=m, device=dev)
    r2s = np.clip(r2s, 0, 1000).astype(np.float32)
    timings["r2star"] = time.perf_counter() - t

    # the QSM mask: the brain mask eroded by mask_erode_mm (the field at the brain surface is
    # not the mean field of the voxel: intra-voxel dephasing next to bone and air)
    m_q = erode_mask(m, voxel_size, float(p["mask_erode_mm"]))
    if not m_q.any():
        raise ValueError(f"the brain mask is empty after eroding it by {p['mask_erode_mm']} mm")
    t = time.perf_counter()
    if p["background"] == "pdf":
        bg = pdf(total * m_q, m_q, voxel_size, b0_dir, noise_std=noise, tol=p["pdf_tol"],
                 max_iter=int(p["pdf_max_iter"]), device=dev)
        local, m_local = bg["local"], m_q
        info["pdf_iterations"] = bg["iterations"]
    elif p["background"] == "vsharp":
        radii = np.arange(float(p["vsharp_max_radius_mm"]), 0.5, -1.0)
        bg = vsharp(total * m_q, m_q, voxel_size, radii_mm=radii, device=dev)
        local, m_local = bg["local"], bg["mask"]
    else:
        raise ValueError(f"unknown background removal {p['background']!r}")
    timings["background"] = time.perf_counter() - t

    csf = np.zeros(m.shape, bool)
    if p["csf"]:
        csf = extract_csf_mask(r2s, m_local, voxel_size, threshold=p["csf_r2s_threshold"])
        info["csf_voxels"] = int(csf.sum())

    t = time.perf_counter()
    if p["inversion"] == "medi":
        res = medi_l1(local, m_local, voxel_size, b0_dir, magnitude=imag, noise_std=noise,
                      b0_tesla=b0_tesla, delta_te=dt, lam=p["lambda"], smv=p["smv"],
                      smv_radius_mm=p["smv_radius_mm"], merit=p["merit"],
                      csf_mask=csf if csf.any() else None, lam_csf=p["lambda_csf"],
                      max_iter=int(p["medi_max_iter"]), cg_max_iter=int(p["medi_cg_max_iter"]),
                      device=dev)
        chi, m_final = res["chi"], res["mask"]
        info.update(medi_iterations=res["iterations"], medi_cg=res["cg_iterations"],
                    medi_fft=res["n_fft"], medi_grid=res["grid"])
    elif p["inversion"] != "tkd":
        raise ValueError(f"unknown dipole inversion {p['inversion']!r}")
    timings["inversion"] = time.perf_counter() - t
    # TKD of the same local field (the closed-form baseline; referenced like MEDI+0)
    t = time.perf_counter()
    chi_tkd = tkd(local, m_local, voxel_size, b0_dir, threshold=p["tkd_threshold"], device=dev)
    if csf.any():
        chi_tkd = (chi_tkd - chi_tkd[csf].mean()) * m_local
    timings["tkd"] = time.perf_counter() - t
    if p["inversion"] == "tkd":
        chi, m_final = chi_tkd, m_local
    if log:
        log("qsm: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
            + f" on {dev}; " + ", ".join(f"{k}={v}" for k, v in info.items()))
    return {"chi": chi.astype(np.float32), "chi_tkd": chi_tkd.astype(np.float32),
            "local_field": (local * m_local).astype(np.float32),
            "total_field": total, "noise_std": noise * m, "r2s": r2s * m,
            "mask": m_final.astype(bool), "csf_mask": csf, "timings": timings, "info": info,
            "delta_te": dt}
