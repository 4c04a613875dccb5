"""The unit dipole kernel and the forward field of a susceptibility map (torch, CPU or GPU).

Conventions used everywhere in deepmir:
- ``voxel_size`` is in mm, one value per array axis.
- ``b0_dir`` is the unit direction of B0 expressed along the array axes (an orthonormal
  frame once voxel sizes are divided out); ``b0_direction(affine)`` derives it from a NIfTI
  affine, B0 being the scanner z axis.
- fields are relative (ppm when χ is in ppm): ΔB/B0 = D * χ, with D = 1/3 − (k·b)²/|k|²
  and D(k=0) = 0.
"""
from __future__ import annotations

import numpy as np
import torch

from deepmir.geometry import b0_direction, voxel_sizes  # noqa: F401 (re-exported)


def kspace_grid(shape, voxel_size, rfft: bool = False, device=None, dtype=torch.float32):
    """Spatial frequencies (cycles/mm) along each array axis, broadcastable to ``shape``
    (the last axis halved when ``rfft``)."""
    ks = []
    for ax, (n, d) in enumerate(zip(shape, voxel_size)):
        if rfft and ax == len(shape) - 1:
            f = torch.fft.rfftfreq(n, d=float(d), device=device, dtype=dtype)
        else:
            f = torch.fft.fftfreq(n, d=float(d), device=device, dtype=dtype)
        view = [1] * len(shape)
        view[ax] = f.numel()
        ks.append(f.reshape(view))
    return ks


def dipole_kernel(shape, voxel_size, b0_dir=(0.0, 0.0, 1.0), rfft: bool = False,
                  device=None, dtype=torch.float32) -> torch.Tensor:
    """D(k) = 1/3 − (k·b̂)²/|k|², D(0) = 0, on an FFT grid of ``shape``."""
    b = np.asarray(b0_dir, dtype=float)
    b = b / np.linalg.norm(b)
    kx, ky, kz = kspace_grid(shape, voxel_size, rfft=rfft, device=device, dtype=dtype)
    k2 = kx * kx + ky * ky + kz * kz
    kb = kx * float(b[0]) + ky * float(b[1]) + kz * float(b[2])
    k2 = torch.where(k2 == 0, torch.ones_like(k2), k2)
    d = (1.0 / 3.0 - kb * kb / k2).contiguous()  # k2 already spans the whole grid
    d.reshape(-1)[0] = 0.0
    return d


def fast_len(n: int, even: bool = False) -> int:
    """Smallest length ≥ n whose prime factors are 2, 3 and 5 (fast FFT sizes); ``even``:
    also divisible by 2 (real FFTs of odd lengths, e.g. 5³, are markedly slower)."""
    m = max(int(n), 1)
    if even:
        m += m % 2
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 2 if even else 1


def dipole_field(chi, voxel_size, b0_dir=(0.0, 0.0, 1.0), pad_factor: float = 2.0,
                 device=None) -> np.ndarray | torch.Tensor:
    """Field (same unit as χ) of a susceptibility map, on a grid zero-padded to
    ``pad_factor`` × its shape (rounded up to fast FFT sizes) to avoid wrap-around.

    Accepts numpy (returns numpy float32) or torch (returns torch on its device).
    """
    as_numpy = not torch.is_tensor(chi)
    x = torch.as_tensor(np.asarray(chi, dtype=np.float32) if as_numpy else chi,
                        device=device)
    x = x.to(torch.float32)
    shape = tuple(x.shape)
    padded = tuple(fast_len(int(np.ceil(n * pad_factor))) for n in shape)
    d = dipole_kernel(padded, voxel_size, b0_dir, rfft=True, device=x.device)
    f = torch.fft.irfftn(torch.fft.rfftn(x, s=padded) * d, s=padded)
    f = f[tuple(slice(0, n) for n in shape)]
    return f.cpu().numpy() if as_numpy else f
