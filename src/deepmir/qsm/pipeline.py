"""The whole QSM chain on arrays: multi-echo field fit → spatial unwrapping → ppm →
background removal → dipole inversion (MEDI-L1, with the closed-form baselines TKD and CFL2
of the same local field), plus R2* and the MEDI+0 CSF mask.

:func:`invert` is the dipole-inversion stage on its own (a local field, a mask, a noise map
or a magnitude): the workflow's :func:`reconstruct` and ``deepmir qsm --field`` both call it,
so that the same local field and mask give the same χ. ``DEFAULTS`` are the workflow's
defaults (the same as ``workflow/schemas/qsm.schema.yaml``).
"""
from __future__ import annotations

import time

import numpy as np

from deepmir import GAMMA_BAR_HZ_PER_T
from deepmir.device import pick_device
from deepmir.qsm.defaults import DEFAULTS  # noqa: E402  (torch-free, for the CLI)

from .background import pdf, vsharp
from .cfl2 import cfl2
from .fit import fit_multi_echo, r2star_map
from .inversion import erode_mask, extract_csf_mask, medi_l1, ppm_to_rad, tkd
from .lambda_rule import lcurve_lambda
from .unwrap import unwrap_laplacian, unwrap_region_growing, unwrap_weighted
from .weights import effective_noise, inflate_noise, lesion_cores, missing_voxels

# laplacian_weighted: a voxel whose phase noise per echo spacing is above this (radians) is left
# out of the unwrapping's links (its wrapped differences to its neighbours are then often
# wrong by 2π)
RELIABLE_PHASE_NOISE_RAD = 1.0


def hz_per_ppm(b0_tesla: float) -> float:
    return GAMMA_BAR_HZ_PER_T * float(b0_tesla) * 1e-6


def field_ppm_from_phase_rate(phase_per_dt, delta_te: float, b0_tesla: float,
                              phase_sign: int = 1) -> np.ndarray:
    """field [ppm] = PhaseSign · Δφ / (2π · γ̄ · B0 · ΔTE) · 1e6."""
    return (float(phase_sign) * np.asarray(phase_per_dt, np.float32)
            / (2.0 * np.pi * hz_per_ppm(b0_tesla) * float(delta_te))).astype(np.float32)


def _setup(params, device, mask, what):
    """DEFAULTS updated by ``params``, the torch device, and the mask as bool (non-empty)."""
    p = dict(DEFAULTS)
    p.update(params or {})
    dev = pick_device(device)
    m = np.asarray(mask) != 0
    if not m.any():
        raise ValueError(f"{what} is empty")
    return p, dev, m


def _referenced(chi, csf, mask):
    """χ referenced to its mean over the CSF mask (MEDI+0's reference), 0 outside ``mask``."""
    if csf is not None and csf.any():
        return ((chi - chi[csf].mean()) * mask).astype(np.float32)
    return (chi * mask).astype(np.float32)


def invert(local_field, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), magnitude=None,
           noise_std=None, csf_mask=None, b0_tesla: float = 3.0, delta_te: float = 0.0075,
           params: dict | None = None, device=None) -> dict:
    """Dipole inversion of a local field (ppm) on ``mask``: MEDI-L1 (or TKD / CFL2 alone,
    ``params["inversion"]``) and, beside it, TKD and CFL2 of the same field.

    ``noise_std``: the field's noise (any unit; None: uniform); the data weights are
    1/noise lowered towards the mask edge (``edge_mm``, :mod:`.weights`), and regions whose
    normalised weight is below ``missing_weight`` (touching the edge, or ``missing_min_mm3``
    and larger) are missing data (MEDI fills them in; TKD and CFL2 take their field as 0).
    ``magnitude`` drives MEDI's morphology mask.
    ``csf_mask``: MEDI+0 (every map is then referenced to mean χ in it). λ:
    ``params["lambda"]`` or, for "auto", the L-curve rule of :mod:`.lambda_rule` on the
    CFL2 map. ``delta_te`` (s) and ``b0_tesla`` give λ its MEDI (radian) unit.

    Returns float32 maps ``chi``, ``chi_tkd``, ``chi_cfl2`` (ppm, 0 outside ``mask``),
    ``mask`` (where χ is defined; smaller than ``mask`` only with MEDI's smv), ``weight_mask``
    (the voxels with data, bool) and ``info`` (λ and how it was chosen, iterations).
    """
    p, dev, m = _setup(params, device, mask, "the mask")
    f = np.where(m, np.nan_to_num(np.asarray(local_field, np.float32)), 0).astype(np.float32)
    noise = m.astype(np.float32) if noise_std is None else np.asarray(noise_std, np.float32)
    noise_eff = effective_noise(noise, m, voxel_size, float(p["edge_mm"]))
    have = m & ~missing_voxels(noise_eff, m, voxel_size, float(p["missing_weight"]),
                               float(p["missing_min_mm3"]))
    csf = None if csf_mask is None or not np.any(csf_mask) else (np.asarray(csf_mask) != 0) & m
    info = {"inversion": p["inversion"], "missing_fraction": float(1 - have.sum() / m.sum())}

    c2 = cfl2(f * have, m, voxel_size, b0_dir, device=dev)
    info.update(cfl2_alpha_mm2=c2["alpha"])
    chi_cfl2 = _referenced(c2["chi"], csf, m)
    chi_tkd = _referenced(tkd(f * have, m, voxel_size, b0_dir, threshold=p["tkd_threshold"],
                              device=dev), csf, m)
    chi, m_final = {"tkd": chi_tkd, "cfl2": chi_cfl2}.get(p["inversion"]), m
    if p["inversion"] == "medi":
        if p["lambda"] == "auto":
            rule = lcurve_lambda(c2["chi"], c2["alpha"], m, voxel_size, delta_te, b0_tesla,
                                 float(p["lambda_factor"]))
            lam = rule["lambda"]
            info.update(lambda_rule="lcurve", lambda_ppm=rule["lambda_ppm"],
                        lambda_factor=rule["factor"],
                        cfl2_gradient_ppm_per_mm=rule["gradient_ppm_per_mm"])
        else:
            lam = float(p["lambda"])
            info.update(lambda_rule="fixed", lambda_ppm=lam * ppm_to_rad(delta_te, b0_tesla))
        info["lambda"] = lam
        res = medi_l1(f, m, voxel_size, b0_dir, magnitude=magnitude, noise_std=noise_eff,
                      b0_tesla=b0_tesla, delta_te=delta_te, lam=lam, smv=p["smv"],
                      smv_radius_mm=p["smv_radius_mm"], merit=p["merit"], csf_mask=csf,
                      lam_csf=p["lambda_csf"], max_iter=int(p["medi_max_iter"]),
                      cg_max_iter=int(p["medi_cg_max_iter"]), mask_edges=False,
                      missing=m & ~have,
                      precondition=bool(p["medi_precondition"]), device=dev)
        chi, m_final = res["chi"], res["mask"]
        info.update(medi_iterations=res["iterations"], medi_cg=res["cg_iterations"],
                    medi_fft=res["n_fft"], medi_grid=list(res["grid"]),
                    medi_seconds=round(res["seconds"], 2),
                    medi_cpu_seconds=round(res["cpu_seconds"], 2),
                    medi_misfit_ppm=res["misfit_ppm"])
    elif chi is None:
        raise ValueError(f"unknown dipole inversion {p['inversion']!r}")
    return {"chi": chi.astype(np.float32), "chi_tkd": chi_tkd, "chi_cfl2": chi_cfl2,
            "mask": m_final.astype(bool), "weight_mask": have, "info": info}


def reconstruct(mag, phase, te, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0),
                b0_tesla: float = 3.0, phase_sign: int = 1, params: dict | None = None,
                device=None, log=print) -> dict:
    """Multi-echo GRE → χ.

    ``mag``, ``phase``: (X, Y, Z, N) magnitude and wrapped phase (radians); ``te``: N echo
    times (s); ``mask``: brain mask; ``voxel_size`` mm; ``b0_dir`` unit vector in array
    axes; ``phase_sign`` ±1 (see docs/conventions.md); ``params``: overrides of
    ``DEFAULTS``. Returns a dict of float32 arrays ``chi`` (ppm), ``local_field`` (ppm),
    ``total_field`` (ppm, unwrapped, before background removal), ``noise_std`` (ppm, the
    noise map the inversion weights by before its edge treatment), ``r2s`` (s⁻¹),
    ``local_mask`` (bool, where the local field is defined: the brain mask, eroded by
    ``mask_erode_mm`` when set, and by V-SHARP), ``mask`` (final, bool: ``local_mask``, also
    eroded by MEDI's SMV when on), ``chi_tkd`` and ``chi_cfl2`` (the closed-form baselines of
    the same local field, ppm), ``csf_mask`` (bool), ``magnitude`` (root sum of squares over
    echoes), ``timings`` (s per stage) plus ``info`` (iterations, λ and how it was chosen).
    """
    p, dev, m = _setup(params, device, mask, "the brain mask")
    te = np.asarray(te, float).reshape(-1)
    mag = np.nan_to_num(np.asarray(mag, np.float32))
    phase = np.nan_to_num(np.asarray(phase, np.float32))
    timings, info = {}, {}

    t = time.perf_counter()
    fit = fit_multi_echo(mag, phase, te, mask=m, device=dev)
    dt = fit["delta_te"]
    timings["field_fit"] = time.perf_counter() - t
    info["fit_iterations"] = fit["iterations"]

    # the field's noise (ppm): with residual weighting, inflated where the echoes misfit (what
    # the weighted unwrapping trusts) and, for PDF and the inversion, not in lesion cores
    noise = phase_noise = (fit["noise_std"] / (2 * np.pi * hz_per_ppm(b0_tesla))).astype(np.float32)
    if p["residual_weighting"]:
        phase_noise = inflate_noise(noise, fit["relres"], m)
        cores = lesion_cores(phase_noise, m, voxel_size, float(p["missing_min_mm3"]))
        noise = np.where(cores, noise, phase_noise)
        info["lesion_core_voxels"] = int(cores.sum())

    t = time.perf_counter()
    wrapped = fit["field"] * dt  # rad per ΔTE, in (−π, π]
    imag = np.sqrt((mag ** 2).sum(-1))
    if p["unwrap"] == "laplacian":
        unwrapped = unwrap_laplacian(wrapped, voxel_size, magnitude=imag, mask=m, device=dev)
    elif p["unwrap"] == "laplacian_weighted":
        # least squares on the links between voxels whose phase is not noise (a calcification's
        # or a vein's random differences would bend the Laplacian's solution around them)
        reliable = m & (phase_noise * (2 * np.pi * hz_per_ppm(b0_tesla) * dt) <= RELIABLE_PHASE_NOISE_RAD)
        unwrapped, uw = unwrap_weighted(wrapped, voxel_size, reliable if reliable.any() else m,
                                        magnitude=imag, device=dev)
        info.update(unwrap_left_out=int(m.sum() - reliable.sum()), unwrap_cg=uw["iterations"])
    elif p["unwrap"] == "region_growing":
        unwrapped = unwrap_region_growing(wrapped, magnitude=imag, mask=m)
    else:
        raise ValueError(f"unknown unwrapping method {p['unwrap']!r}")
    timings["unwrap"] = time.perf_counter() - t

    total = field_ppm_from_phase_rate(unwrapped, dt, b0_tesla, phase_sign) * m

    t = time.perf_counter()
    r2s = r2star_map(mag, te, mask=m, device=dev)
    r2s = np.clip(r2s, 0, 1000).astype(np.float32)
    timings["r2star"] = time.perf_counter() - t

    # the QSM mask: the brain mask, eroded by mask_erode_mm when set (0 by default: the edge
    # is weighted down in the inversion instead, see .weights)
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
    inv = invert(local, m_local, voxel_size, b0_dir, magnitude=imag, noise_std=noise,
                 csf_mask=csf if csf.any() else None, b0_tesla=b0_tesla, delta_te=dt,
                 params=p, device=dev)
    timings["inversion"] = time.perf_counter() - t
    info.update(inv["info"])
    if log:
        log("qsm: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
            + f" on {dev}; " + ", ".join(f"{k}={_fmt(v)}" for k, v in info.items()))
    return {"chi": inv["chi"], "chi_tkd": inv["chi_tkd"], "chi_cfl2": inv["chi_cfl2"],
            "local_field": (local * m_local).astype(np.float32), "local_mask": m_local,
            "total_field": total, "noise_std": noise * m, "r2s": r2s * m,
            "mask": inv["mask"], "csf_mask": csf, "magnitude": imag.astype(np.float32),
            "timings": timings, "info": info, "delta_te": dt}


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)
