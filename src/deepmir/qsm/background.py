"""Background field removal: PDF (projection onto dipole fields, MEDI ``PDF.m``) and
V-SHARP (variable-radius sophisticated harmonic artifact reduction)."""
from __future__ import annotations

import numpy as np
import torch

from deepmir.device import pick_device
from deepmir.dipole import dipole_kernel, fast_len

from ._torch import as_bool, as_float, cg, check_voxel_size, sphere_kernel_k, to_numpy


def _bbox_crop(mask: np.ndarray, n_pad: int):
    """MEDI's PDF crop: the mask's bounding box, zero-padded *after* it by ``n_pad``
    voxels per axis (rounded up to a fast FFT length)."""
    idx = [np.flatnonzero(np.any(mask, axis=tuple(j for j in range(3) if j != ax)))
           for ax in range(3)]
    if any(len(i) == 0 for i in idx):
        raise ValueError("the mask is empty")
    sl = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
    grid = tuple(fast_len(s.stop - s.start + int(n_pad)) for s in sl)
    return sl, grid


def _pad_to(x: torch.Tensor, grid) -> torch.Tensor:
    out = torch.zeros(grid, dtype=x.dtype, device=x.device)
    out[tuple(slice(0, n) for n in x.shape)] = x
    return out


def pdf(field, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), noise_std=None, tol: float = 0.1,
        max_iter: int = 30, n_pad: int = 40, device=None) -> dict:
    """Projection onto dipole fields (Liu et al. 2011, MEDI ``PDF.m``).

    Fits unit dipole sources *outside* ``mask`` (within the mask's bounding box zero-padded
    by ``n_pad`` voxels per axis) to the total ``field`` *inside*, weighted by 1/``noise_std``
    (uniform when None), by conjugate gradients on the normal equations; the CG tolerance
    is MEDI's ``tol · ‖D W‖_outside / ‖b‖`` (noise-scaled: ``noise_std`` must be in the unit
    of ``field``), or ``tol/10`` relative residual without ``noise_std``. Any field unit
    works (the output has the same).

    Returns ``{"local": field − background inside the mask (0 outside), "background":
    the fitted background field (everywhere on the crop), "iterations", "relres"}``.
    """
    vs = check_voxel_size(voxel_size)
    dev = pick_device(device)
    m_np = np.asarray(mask) != 0
    sl, grid = _bbox_crop(m_np, n_pad)
    f = _pad_to(as_float(np.asarray(field)[sl], dev), grid)
    m = _pad_to(as_bool(m_np[sl], dev).to(torch.float32), grid)
    if noise_std is None:
        w = m.clone()
    else:
        n = _pad_to(as_float(np.asarray(noise_std)[sl], dev), grid)
        w = torch.where((n > 0) & (m > 0), 1.0 / torch.where(n > 0, n, torch.ones_like(n)),
                        torch.zeros_like(n))
    w2 = w * w
    out = 1.0 - m
    d = dipole_kernel(grid, vs, b0_dir, rfft=True, device=dev)

    def dconv(x):
        return torch.fft.irfftn(torch.fft.rfftn(x) * d, s=grid)

    def apply_a(x):
        return out * dconv(w2 * dconv(out * x))

    b = out * dconv(w2 * f)
    bnorm = float(torch.linalg.vector_norm(b))
    if noise_std is None:
        cg_tol = tol * 0.1  # no noise scale: a plain relative residual
    else:
        e_noise = dconv(w)
        cg_tol = tol * float(torch.linalg.vector_norm(e_noise * out)) / bnorm if bnorm > 0 else tol
    x, it, rel = cg(apply_a, b, cg_tol, max_iter)
    bg = dconv(out * x)
    local = (f - bg) * m
    full_local = np.zeros(m_np.shape, np.float32)
    full_bg = np.zeros(m_np.shape, np.float32)
    inner = tuple(slice(0, s.stop - s.start) for s in sl)
    full_local[sl] = to_numpy(local[inner])
    full_bg[sl] = to_numpy(bg[inner])
    return {"local": full_local, "background": full_bg, "iterations": it, "relres": rel}


def vsharp(field, mask, voxel_size, radii_mm=None, threshold: float = 0.05,
           device=None) -> dict:
    """V-SHARP (Wu et al. 2012; Li et al. 2011): SMV high-pass with spherical kernels of
    decreasing radius (default 12 → 1 mm in 1 mm steps; at each voxel the largest radius
    whose sphere fits inside the mask is used), then deconvolution by 1 − S of the largest
    radius, truncated where |1 − S| < ``threshold``.

    Returns ``{"local": local field on ``mask_out`` (0 elsewhere), "mask": mask_out (the
    mask eroded by the smallest radius)}``.
    """
    vs = check_voxel_size(voxel_size)
    dev = pick_device(device)
    if radii_mm is None:
        radii_mm = np.arange(12.0, 0.5, -1.0)
    radii = sorted((float(r) for r in radii_mm), reverse=True)
    m_np = np.asarray(mask) != 0
    pad = int(np.ceil(max(radii) / min(vs))) + 1
    sl, grid = _bbox_crop(m_np, 2 * pad)
    # centre the crop inside the padded grid so that spheres never wrap into the mask
    offs = tuple(pad for _ in range(3))
    f = torch.zeros(grid, dtype=torch.float32, device=dev)
    m = torch.zeros(grid, dtype=torch.float32, device=dev)
    inner = tuple(slice(o, o + s.stop - s.start) for o, s in zip(offs, sl))
    f[inner] = as_float(np.asarray(field)[sl], dev)
    m[inner] = as_bool(m_np[sl], dev).to(torch.float32)
    f = f * m
    fk = torch.fft.rfftn(f)
    mk = torch.fft.rfftn(m)
    del_f = torch.zeros_like(f)
    done = torch.zeros(grid, dtype=torch.bool, device=dev)
    first_kernel = None
    mask_r = None
    for r in radii:
        sk = sphere_kernel_k(grid, vs, r, dev)
        if first_kernel is None:
            first_kernel = sk
        mask_r = torch.fft.irfftn(mk * sk, s=grid) > 0.999
        hp = torch.fft.irfftn(fk * (1.0 - sk), s=grid)
        new = mask_r & ~done
        del_f = torch.where(new, hp, del_f)
        done |= mask_r
    dk = 1.0 - first_kernel
    inv = torch.where(dk.abs() >= threshold, 1.0 / torch.where(dk == 0, torch.ones_like(dk), dk),
                      torch.zeros_like(dk))
    local = torch.fft.irfftn(torch.fft.rfftn(del_f) * inv, s=grid) * mask_r
    full = np.zeros(m_np.shape, np.float32)
    full_m = np.zeros(m_np.shape, bool)
    full[sl] = to_numpy(local[inner])
    full_m[sl] = to_numpy(mask_r[inner])
    return {"local": full, "mask": full_m}
