"""Shared torch helpers for the QSM numerics: devices, finite differences, spherical
mean value (SMV) kernels, conjugate gradients, FFT counting."""
from __future__ import annotations

import numpy as np
import torch

from deepmir.dipole import fast_len


def as_float(a, device, dtype=torch.float32) -> torch.Tensor:
    if torch.is_tensor(a):
        return a.to(device=device, dtype=dtype)
    return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32), device=device).to(dtype)


def as_bool(a, device) -> torch.Tensor:
    if torch.is_tensor(a):
        return a.to(device=device) != 0
    return torch.as_tensor(np.ascontiguousarray(np.asarray(a) != 0), device=device)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def check_voxel_size(voxel_size, ndim=3) -> tuple:
    vs = tuple(float(v) for v in np.asarray(voxel_size, dtype=float).reshape(-1))
    if len(vs) != ndim or not all(np.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"voxel_size must be {ndim} positive numbers, got {voxel_size!r}")
    return vs


class FFTCounter:
    """Counts the (real) FFTs an algorithm performs, so benchmarks can show them."""

    def __init__(self):
        self.n = 0

    def rfftn(self, x, s=None):
        self.n += 1
        return torch.fft.rfftn(x, s=s)

    def irfftn(self, x, s):
        self.n += 1
        return torch.fft.irfftn(x, s=s)


# ---------------------------------------------------------------- finite differences
def fgrad(x: torch.Tensor, voxel_size):
    """Forward differences along the three axes, zero in the last plane of each axis
    (Neumann boundary, as MEDI's ``fgrad``). Returns a tuple of three tensors."""
    out = []
    for ax in range(3):
        g = torch.zeros_like(x)
        n = x.shape[ax]
        hi = x.narrow(ax, 1, n - 1)
        lo = x.narrow(ax, 0, n - 1)
        g.narrow(ax, 0, n - 1).copy_(hi - lo).div_(voxel_size[ax])
        out.append(g)
    return tuple(out)


def fgrad_adj(g, voxel_size, out: torch.Tensor | None = None) -> torch.Tensor:
    """Exact adjoint of :func:`fgrad` (minus the backward divergence):
    ``<fgrad(x), g> == <x, fgrad_adj(g)>``."""
    gx = g[0]
    res = torch.zeros_like(gx) if out is None else out.zero_()
    for ax in range(3):
        gi = g[ax]
        n = gi.shape[ax]
        s = 1.0 / voxel_size[ax]
        # (G^T g)[i] = (g[i-1]·[i≥1] − g[i]·[i≤n−2]) / d
        res.narrow(ax, 1, n - 1).add_(gi.narrow(ax, 0, n - 1), alpha=s)
        res.narrow(ax, 0, n - 1).sub_(gi.narrow(ax, 0, n - 1), alpha=s)
    return res


# ---------------------------------------------------------------- SMV kernels
def sphere_ball(shape, voxel_size, radius_mm: float, device,
                dtype=torch.float32) -> torch.Tensor:
    """The normalised ball of radius ``radius_mm`` centred at index 0 of an FFT grid of
    ``shape`` (wrapped around), i.e. the spherical mean value kernel in image space."""
    coords = []
    for ax, (n, d) in enumerate(zip(shape, voxel_size)):
        i = torch.arange(n, device=device, dtype=dtype)
        i = torch.minimum(i, n - i) * float(d)
        view = [1] * 3
        view[ax] = n
        coords.append(i.reshape(view))
    r2 = coords[0] ** 2 + coords[1] ** 2 + coords[2] ** 2
    ball = (r2 <= float(radius_mm) ** 2 + 1e-6).to(dtype)
    return ball / ball.sum()


def sphere_kernel_k(shape, voxel_size, radius_mm: float, device) -> torch.Tensor:
    """rfft of the normalised spherical mean value kernel of radius ``radius_mm`` on an
    FFT grid of ``shape`` (real, since the kernel is symmetric)."""
    return torch.fft.rfftn(sphere_ball(shape, voxel_size, radius_mm, device)).real.contiguous()


def smv(x: torch.Tensor, kernel_k: torch.Tensor) -> torch.Tensor:
    """Spherical mean of ``x`` (circular convolution with the kernel whose rfft is given)."""
    return torch.fft.irfftn(torch.fft.rfftn(x) * kernel_k, s=x.shape)


# ---------------------------------------------------------------- padding helpers
def bbox(mask: np.ndarray):
    idx = [np.flatnonzero(np.any(mask, axis=tuple(j for j in range(3) if j != ax)))
           for ax in range(3)]
    if any(len(i) == 0 for i in idx):
        raise ValueError("mask is empty")
    return tuple((int(i[0]), int(i[-1]) + 1) for i in idx)


def padded_grid(mask: np.ndarray, margin: int, even: bool = False):
    """Bounding box of ``mask`` enlarged by ``margin`` voxels on each side (clipped to the
    array) and a fast FFT shape at least that large (extra padding lies past the end;
    ``even``: even lengths, see :func:`deepmir.dipole.fast_len`)."""
    bb = bbox(mask)
    sl = []
    for (lo, hi), n in zip(bb, mask.shape):
        sl.append(slice(max(lo - margin, 0), min(hi + margin, n)))
    inner = tuple(s.stop - s.start for s in sl)
    grid = tuple(fast_len(max(n, 2), even) for n in inner)
    return tuple(sl), grid


def embed(x: torch.Tensor, sl, grid) -> torch.Tensor:
    """Crop ``x`` by the slices ``sl`` and zero-pad it at the end to ``grid``."""
    c = x[sl]
    if tuple(c.shape) == tuple(grid):
        return c.contiguous()
    out = torch.zeros(grid, dtype=x.dtype, device=x.device)
    out[tuple(slice(0, n) for n in c.shape)] = c
    return out


def unembed(y: torch.Tensor, sl, full_shape) -> torch.Tensor:
    out = torch.zeros(full_shape, dtype=y.dtype, device=y.device)
    inner = tuple(s.stop - s.start for s in sl)
    out[sl] = y[tuple(slice(0, n) for n in inner)]
    return out


# ---------------------------------------------------------------- conjugate gradients
def cg(apply_a, b: torch.Tensor, tol: float, max_iter: int, x0: torch.Tensor | None = None,
       replace_every: int = 50, precond=None):
    """Conjugate gradients for a symmetric positive (semi-)definite operator as MEDI's
    ``cgsolve``: stop when ‖r‖ ≤ tol·‖b‖ or after ``max_iter`` iterations; every
    ``replace_every``-th iteration the recursive residual is replaced by b − A x (one more
    operator application); the iterate with the smallest residual is returned.
    ``precond``: optional symmetric positive definite M ≈ A⁻¹ (a function), giving
    preconditioned CG with the same stopping rule on the unpreconditioned residual.
    Returns ``(x, iterations, relative residual of that iterate)``."""
    bnorm2 = float(torch.vdot(b.reshape(-1), b.reshape(-1)).real)
    if bnorm2 == 0.0:
        return torch.zeros_like(b), 0, 0.0
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - apply_a(x)
    best = None      # a copy of the best iterate, kept only once a later one is worse

    def dot(u, v):
        return float(torch.vdot(u.reshape(-1), v.reshape(-1)).real)

    z = r if precond is None else precond(r)
    p = z.clone()
    rr = dot(r, r)
    rz = rr if precond is None else dot(r, z)
    best_rr = rr
    x_is_best = True
    it = 0
    target = tol * tol * bnorm2
    while it < max_iter and rr > target:
        ap = apply_a(p)
        pap = dot(p, ap)
        if pap <= 0:
            break
        alpha = rz / pap
        x.add_(p, alpha=alpha)
        if replace_every and (it + 1) % replace_every == 0:
            r = b - apply_a(x)
        else:
            r.sub_(ap, alpha=alpha)
        del ap
        rr = dot(r, r)
        if rr < best_rr:
            best_rr, x_is_best = rr, True
        elif x_is_best:   # the iterate just replaced was the best: keep it (x − α p)
            best = torch.sub(x, p, alpha=alpha, out=best)
            x_is_best = False
        if precond is None:
            rz_new = rr
            torch.add(r, p, alpha=rz_new / rz, out=p)     # p = r + β p in one pass
        else:
            z = precond(r)
            rz_new = dot(r, z)
            torch.add(z, p, alpha=rz_new / rz, out=p)
        rz = rz_new
        it += 1
    return (x if x_is_best else best), it, float(np.sqrt(best_rr / bnorm2))
