"""Dipole inversion: MEDI-L1 (Liu et al. 2011/2012, MEDI toolbox ``MEDI_L1.m`` with its
defaults and the ``smv``, ``merit`` and MEDI+0 (CSF) options) and TKD (thresholded k-space
division), plus the CSF mask of MEDI+0 from an R2* map.

Units: the local field comes in ppm (ΔB/B0·1e6, paramagnetic sources give the field of a
positive χ through ``deepmir.dipole``); it is converted to radians per ``delta_te`` exactly as
MEDI works (so that λ = 1000 has the toolbox's meaning), and χ is returned in ppm
(paramagnetic positive).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from scipy import ndimage

from deepmir import GAMMA_BAR_HZ_PER_T
from deepmir.dipole import dipole_kernel

from ._torch import (as_float, bbox, cg, check_voxel_size, fgrad, fgrad_adj, padded_grid,
                     embed, unembed, resolve_device, sphere_kernel_k, to_numpy)


def ppm_to_rad(delta_te: float, b0_tesla: float) -> float:
    """Radians accumulated over ``delta_te`` per ppm of field."""
    return 2.0 * np.pi * GAMMA_BAR_HZ_PER_T * float(b0_tesla) * float(delta_te) * 1e-6


def dataterm_weight(noise_std: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MEDI ``dataterm_mask`` mode 1: W = mask / N_std, normalised to mean 1 in the mask
    (voxels with N_std ≤ 0 or non-finite get 0)."""
    ok = mask & torch.isfinite(noise_std) & (noise_std > 0)
    w = torch.where(ok, 1.0 / torch.where(ok, noise_std, torch.ones_like(noise_std)),
                    torch.zeros_like(noise_std))
    mean = w[mask].mean() if bool(mask.any()) else torch.tensor(1.0)
    return w / (mean if float(mean) > 0 else 1.0)


def gradient_weight(magnitude: torch.Tensor, mask: torch.Tensor, voxel_size,
                    percentage: float = 0.9):
    """MEDI ``gradient_mask`` mode 1: per-direction binary weights, 1 where the gradient of
    magnitude·mask is small. The threshold is set so that the number of gradient components
    (all three directions together) above it equals ``percentage`` × the number of mask
    voxels (MEDI finds the same level by ±5 % steps; here it is taken exactly)."""
    g = fgrad(magnitude * mask, voxel_size)
    allg = torch.cat([gi.abs().reshape(-1) for gi in g])
    n_above = int(round(percentage * float(mask.sum())))
    n_above = min(max(n_above, 0), allg.numel() - 1)
    if n_above == 0:
        thr = float(allg.max())
    else:
        thr = float(torch.topk(allg, n_above + 1).values[-1])
    return tuple((gi.abs() <= thr).to(magnitude.dtype) for gi in g)


def extract_csf_mask(r2s, mask, voxel_size, threshold: float = 5.0, erode_mm: float = 5.0,
                     n_regions: int = 3, centre_fraction: float = 0.5) -> np.ndarray:
    """CSF mask for MEDI+0 (after MEDI ``extract_CSF``): voxels of the brain mask, eroded by
    ``erode_mm``, with 0 < R2* < ``threshold`` s⁻¹, keeping the ``n_regions`` largest
    6-connected components whose centroid lies near the brain centre (within
    ``centre_fraction`` of the mask's half-extent along every axis) — the ventricles.
    Returns a bool array (may be empty when no such CSF exists)."""
    m = np.asarray(mask) != 0
    vs = np.asarray(check_voxel_size(voxel_size))
    r = np.asarray(r2s, np.float32)
    if erode_mm > 0:
        rad = np.maximum(np.round(erode_mm / vs).astype(int), 0)
        zz = np.ogrid[tuple(slice(-k, k + 1) for k in rad)]
        ball = sum((z * v) ** 2 for z, v in zip(zz, vs)) <= erode_mm ** 2 + 1e-6
        m_e = ndimage.binary_erosion(m, structure=ball)
    else:
        m_e = m
    cand = m_e & (r > 0) & (r < threshold)
    lab, n = ndimage.label(cand)
    if n == 0:
        return np.zeros(m.shape, bool)
    idx = np.argwhere(m)
    centre = idx.mean(0)
    half = (idx.max(0) - idx.min(0) + 1) / 2.0
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    cents = np.array(ndimage.center_of_mass(cand, lab, index=np.arange(1, n + 1)))
    near = np.all(np.abs(cents - centre) <= centre_fraction * half, axis=1)
    order = [i for i in np.argsort(-sizes) if near[i]][:n_regions]
    return np.isin(lab, np.asarray(order, int) + 1)


def _crop(mask_np: np.ndarray, margin: int):
    return padded_grid(mask_np, margin)


def medi_l1(local_field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), magnitude=None,
            noise_std=None, b0_tesla: float = 3.0, delta_te: float = 0.0075,
            lam: float = 1000.0, smv: bool = False, smv_radius_mm: float = 5.0,
            merit: bool = False, csf_mask=None, lam_csf: float = 100.0,
            percentage: float = 0.9, max_iter: int = 10, tol_norm_ratio: float = 0.1,
            cg_max_iter: int = 100, cg_tol: float = 0.01, eps: float = 1e-6,
            margin: int = 8, device=None, verbose: bool = False) -> dict:
    """MEDI-L1 dipole inversion.

    Minimises ‖M_G ∇χ‖₁ + λ‖W(e^{iDχ} − e^{if})‖²₂ (+ λ_CSF‖M_CSF(χ − mean_CSF χ)‖²₂ for
    MEDI+0) by Gauss–Newton with IRLS for the L1 term, as MEDI_L1.m: each outer step solves
    (∇ᵀM_G V M_G∇ + 2λ DᵀW²D [+ λ_CSF P]) dχ = −(gradient) by CG (tol ``cg_tol``, at most
    ``cg_max_iter``), V = 1/sqrt(|M_G∇χ|² + ε); stops when ‖dχ‖/‖χ‖ < ``tol_norm_ratio`` or
    after ``max_iter`` steps.

    Parameters: ``local_field_ppm`` (X, Y, Z) local field in ppm; ``mask`` brain mask;
    ``voxel_size`` mm; ``b0_dir`` unit B0 direction along the array axes; ``magnitude`` for
    the morphology mask (default: the mask itself, i.e. plain TV inside); ``noise_std`` any
    unit (default uniform); ``b0_tesla`` and ``delta_te`` (s) convert ppm to MEDI's radians.
    ``smv``: erode the mask by ``smv_radius_mm`` and apply the SMV high-pass to the kernel
    and field (MEDI 'smv'); ``merit``: re-weight voxels with large residual after every
    step; ``csf_mask``: MEDI+0 (the result is also referenced to mean χ in the CSF mask).
    The problem is solved on the mask's bounding box plus ``margin`` voxels (circular
    convolution, like MEDI's own FFTs on the acquisition matrix).

    Returns ``{"chi": ppm (X, Y, Z) zero outside the (possibly eroded) mask, "mask": that
    mask, "iterations", "cg_iterations" (list), "n_fft", "seconds", "badpoint"}``.
    """
    t0 = time.perf_counter()
    vs = check_voxel_size(voxel_size)
    dev = resolve_device(device)
    m_np = np.asarray(mask) != 0
    full_shape = m_np.shape
    sl, grid = _crop(m_np, int(margin))

    def put(a):
        return embed(as_float(a, dev), sl, grid)

    scale = ppm_to_rad(delta_te, b0_tesla)
    f = put(np.nan_to_num(np.asarray(local_field_ppm, np.float32))) * scale
    msk = put(m_np.astype(np.float32)) > 0
    n_std = put(np.ones(full_shape, np.float32) if noise_std is None
                else np.nan_to_num(np.asarray(noise_std, np.float32)))
    mag = put(m_np.astype(np.float32) if magnitude is None
              else np.nan_to_num(np.asarray(magnitude, np.float32)))
    csf = None
    if csf_mask is not None and np.any(csf_mask):
        csf = put(np.asarray(csf_mask) != 0) > 0

    d = dipole_kernel(grid, vs, b0_dir, rfft=True, device=dev)
    n_fft = [0]

    def conv(x, k):
        n_fft[0] += 2
        return torch.fft.irfftn(torch.fft.rfftn(x) * k, s=grid)

    sk = None
    tempn = n_std
    if smv:
        sk = sphere_kernel_k(grid, vs, smv_radius_mm, dev)
        msk = (conv(msk.to(torch.float32), sk) > 0.999) & msk
        d = (1.0 - sk) * d
        f = (f - conv(f, sk)) * msk
        tempn = torch.sqrt(conv(n_std * n_std, sk).clamp_min(0) + n_std * n_std)
        if csf is not None:
            csf = csf & msk
    mf = msk.to(torch.float32)
    w = dataterm_weight(tempn, msk)
    w2 = w * w
    wg = gradient_weight(mag, mf, vs, percentage)
    if csf is not None and not bool(csf.any()):
        csf = None
    csf_f = None if csf is None else csf.to(torch.float32)
    n_csf = None if csf is None else float(csf_f.sum())

    def p_csf(x):  # projection M_CSF (x − mean_CSF x), self-adjoint and idempotent
        return csf_f * (x - (x * csf_f).sum() / n_csf)

    x = torch.zeros(grid, dtype=torch.float32, device=dev)
    cg_its = []
    it = 0
    ratio = np.inf
    n_std_cur = n_std.clone()
    badpoint = torch.zeros(grid, dtype=torch.bool, device=dev)
    while ratio > tol_norm_ratio and it < max_iter:
        it += 1
        gx = fgrad(x, vs)
        vr = tuple(1.0 / torch.sqrt((wgi * gi) ** 2 + eps) for wgi, gi in zip(wg, gx))
        coef = tuple(wgi * vri * wgi for wgi, vri in zip(wg, vr))

        def apply_a(dx, coef=coef):
            g = fgrad(dx, vs)
            r = fgrad_adj(tuple(c * gi for c, gi in zip(coef, g)), vs)
            r = r + (2.0 * lam) * conv(w2 * conv(dx, d), d)
            if csf_f is not None:
                r = r + lam_csf * p_csf(dx)
            return r

        dxx = conv(x, d)
        b = fgrad_adj(tuple(c * gi for c, gi in zip(coef, gx)), vs)
        b = b + (2.0 * lam) * conv(w2 * torch.sin(dxx - f), d)
        if csf_f is not None:
            b = b + lam_csf * p_csf(x)
        dx, n_cg, _ = cg(apply_a, -b, cg_tol, cg_max_iter)
        n_fft[0] += 4 * (n_cg + 1)
        cg_its.append(n_cg)
        xn = float(torch.linalg.vector_norm(x))
        ratio = float(torch.linalg.vector_norm(dx)) / xn if xn > 0 else np.inf
        x = x + dx
        if verbose:
            print(f"medi: iter {it} cg {n_cg} ratio {ratio:.3g}")
        if merit:
            dxx = conv(x, d)
            wres_c = torch.polar(w, dxx) - torch.polar(w, f)
            wres_c = wres_c - wres_c[msk].mean()
            a = wres_c[msk].abs()
            factor = float(a.std()) * 6.0
            if factor > 0:
                wr = (wres_c.abs() / factor).clamp_min(1.0)
                badpoint |= wr > 1
                n_std_cur = torch.where(msk, n_std_cur * wr * wr, n_std_cur)
                tempn = n_std_cur
                if smv:
                    tempn = torch.sqrt(conv(n_std_cur * n_std_cur, sk).clamp_min(0)
                                       + n_std_cur * n_std_cur)
                w = dataterm_weight(tempn, msk)
                w2 = w * w

    chi = x / scale * mf
    if csf is not None:
        chi = (chi - chi[csf].mean()) * mf
    out_chi = to_numpy(unembed(chi, sl, full_shape))
    out_mask = to_numpy(unembed(msk, sl, full_shape))
    bad = to_numpy(unembed(badpoint, sl, full_shape))
    return {"chi": out_chi.astype(np.float32), "mask": out_mask.astype(bool),
            "iterations": it, "cg_iterations": cg_its, "n_fft": n_fft[0],
            "grid": tuple(grid), "seconds": time.perf_counter() - t0, "badpoint": bad}


def tkd(local_field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), threshold: float = 0.19,
        margin: int = 16, device=None) -> np.ndarray:
    """Thresholded k-space division (Shmueli et al. 2009): χ = F⁻¹[F(f)/D_t] with
    D_t = D where |D| > t, else t·sign(D) (t for D = 0 except at DC, which is 0 — the mean
    of χ is undetermined). Units follow the field (ppm in, ppm out); zero outside the mask.
    """
    vs = check_voxel_size(voxel_size)
    dev = resolve_device(device)
    m_np = np.asarray(mask) != 0
    sl, grid = padded_grid(m_np, int(margin))
    f = embed(as_float(np.nan_to_num(np.asarray(local_field_ppm, np.float32)) * m_np, dev),
              sl, grid)
    d = dipole_kernel(grid, vs, b0_dir, rfft=True, device=dev)
    sign = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
    dt = torch.where(d.abs() > threshold, d, threshold * sign)
    inv = 1.0 / dt
    inv.reshape(-1)[0] = 0.0
    chi = torch.fft.irfftn(torch.fft.rfftn(f) * inv, s=grid)
    out = to_numpy(unembed(chi, sl, m_np.shape)) * m_np
    return out.astype(np.float32)
