"""Spatial phase unwrapping: Laplacian (robust default) and quality-guided region growing
(exact: the result differs from the input by integer multiples of 2π)."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from deepmir.device import pick_device

from ._torch import as_float, cg, check_voxel_size, to_numpy

TWO_PI = 2.0 * np.pi


def _dct_matrix(n: int, device) -> torch.Tensor:
    """Orthonormal DCT-II matrix C (n × n): C[k, i] = s_k cos(πk(i + ½)/n)."""
    k = torch.arange(n, dtype=torch.float64, device=device)[:, None]
    i = torch.arange(n, dtype=torch.float64, device=device)[None, :]
    c = torch.cos(np.pi * k * (i + 0.5) / n) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c.to(torch.float32)


def _along(x: torch.Tensor, mat: torch.Tensor, ax: int) -> torch.Tensor:
    """Apply ``mat`` to axis ``ax`` of ``x``."""
    return torch.movedim(torch.tensordot(mat, torch.movedim(x, ax, 0), dims=1), 0, ax)


def _wrap_t(x: torch.Tensor) -> torch.Tensor:
    return torch.remainder(x + np.pi, TWO_PI) - np.pi


def unwrap_laplacian(wrapped, voxel_size, magnitude=None, mask=None,
                     device=None) -> np.ndarray:
    """Laplacian phase unwrapping (Schofield & Zhu 2003) with Neumann boundaries.

    The Laplacian of the true phase is formed from wrapped neighbour differences
    Σ_n wrap(φ_n − φ)/d² (equal to S&Z's cos φ∇²sin φ − sin φ∇²cos φ when differences are
    small, and exact whenever the true neighbour differences are below π); the Poisson
    equation is solved exactly for the 7-point Laplacian with reflecting boundaries by a
    DCT-II (dense matrices along each axis; runs on any torch device). Where the true
    differences exceed π (noise, aliasing) the result is smooth but *not* congruent to the
    input modulo 2π — as with every Laplacian method. The free constant is chosen so that
    the result agrees best with the input modulo 2π (magnitude-weighted when given).

    ``wrapped``: (X, Y, Z) or (X, Y, Z, N) radians (each 3D volume unwrapped on its own);
    ``voxel_size`` in mm; ``mask`` (optional, 3D): only neighbour differences with both
    voxels inside it enter the Laplacian (noise outside then adds nothing, and the error
    inside the mask is a harmonic function that background removal takes away).
    Returns float32 radians.
    """
    w = np.asarray(wrapped, dtype=np.float32)
    if w.ndim == 4:
        mags = None if magnitude is None else np.asarray(magnitude)
        return np.stack([unwrap_laplacian(w[..., j], voxel_size,
                                          None if mags is None else mags[..., j], mask,
                                          device)
                         for j in range(w.shape[-1])], axis=-1)
    if w.ndim != 3:
        raise ValueError(f"expected a 3D or 4D phase, got shape {w.shape}")
    vs = check_voxel_size(voxel_size)
    dev = pick_device(device)
    phi = as_float(np.nan_to_num(w), dev)
    mk = None if mask is None else as_float(np.asarray(mask) != 0, dev)
    u = _poisson_neumann(_link_laplacian(phi, mk, vs, wrap=True), vs, dev)
    return to_numpy(_fit_constant(u, phi, magnitude, mk, dev))


def _link_laplacian(x: torch.Tensor, mk, vs, wrap: bool) -> torch.Tensor:
    """7-point Laplacian Σ_n (x_n − x)/d² over the neighbour links with both voxels in ``mk``
    (every link when None); ``wrap``: of the wrapped differences (the Laplacian of the true
    phase, for unwrapping)."""
    lap = torch.zeros_like(x)
    for ax in range(3):
        n = x.shape[ax]
        if n < 2:
            continue
        d = x.narrow(ax, 1, n - 1) - x.narrow(ax, 0, n - 1)
        d = (_wrap_t(d) if wrap else d) / (vs[ax] ** 2)
        if mk is not None:
            d = d * mk.narrow(ax, 1, n - 1) * mk.narrow(ax, 0, n - 1)
        lap.narrow(ax, 0, n - 1).add_(d)
        lap.narrow(ax, 1, n - 1).sub_(d)
    return lap


def _poisson_neumann(lap: torch.Tensor, vs, dev) -> torch.Tensor:
    """u with 7-point Laplacian ``lap`` and reflecting boundaries (zero mean), by a DCT-II."""
    mats = [_dct_matrix(n, dev) for n in lap.shape]
    coef = lap
    for ax in range(3):
        coef = _along(coef, mats[ax], ax)
    eig = torch.zeros(coef.shape, dtype=torch.float32, device=dev)
    for ax, n in enumerate(lap.shape):
        k = torch.arange(n, dtype=torch.float32, device=dev)
        e = (2.0 * torch.cos(np.pi * k / n) - 2.0) / (vs[ax] ** 2)
        view = [1, 1, 1]
        view[ax] = n
        eig = eig + e.reshape(view)
    eig[0, 0, 0] = 1.0
    coef = coef / eig
    coef[0, 0, 0] = 0.0
    u = coef
    for ax in range(3):
        u = _along(u, mats[ax].T, ax)
    return u


def _fit_constant(u, phi, magnitude, mk, dev):
    """``u`` plus the constant with which it agrees best with ``phi`` modulo 2π (magnitude-
    weighted where given, over ``mk`` where given)."""
    wts = torch.ones_like(u) if magnitude is None else as_float(np.nan_to_num(magnitude), dev)
    if mk is not None:
        wts = wts * mk
    z = (wts * torch.polar(torch.ones_like(u), phi - u)).sum()
    return u + float(torch.angle(z))


def unwrap_weighted(wrapped, voxel_size, reliable, magnitude=None, tol: float = 1e-3,
                    max_iter: int = 100, device=None) -> tuple[np.ndarray, dict]:
    """Weighted least-squares unwrapping (Ghiglia & Romero 1994) on the links between reliable
    voxels: u minimising Σ (u_i − u_j − wrap(φ_i − φ_j))² / d² over neighbour pairs that are
    both in ``reliable``, by conjugate gradients preconditioned with the DCT Poisson solver
    (the unweighted problem) and started from its solution. Where the true neighbour
    differences are below π, u equals the true phase on each connected set of reliable voxels
    up to a constant, whatever the phase of the voxels left out (noise: a calcification's, a
    vein's); those get the smooth continuation. Unlike :func:`unwrap_laplacian` with a mask,
    the differences across the links it leaves out are not taken as 0.

    ``wrapped``: (X, Y, Z) radians; ``reliable``: bool (X, Y, Z). Returns float32 radians and
    ``{"iterations", "relres"}`` of the solve.
    """
    vs = check_voxel_size(voxel_size)
    dev = pick_device(device)
    phi = as_float(np.nan_to_num(np.asarray(wrapped, dtype=np.float32)), dev)
    rel = as_float(np.asarray(reliable) != 0, dev)
    # the normal equations A u = b: A = −(Laplacian over the reliable links), b = −(that
    # Laplacian of the wrapped differences)
    b = -_link_laplacian(phi, rel, vs, wrap=True)

    def apply_a(u):
        return -_link_laplacian(u, rel, vs, wrap=False)

    def precond(r):                 # the unweighted operator's inverse: −(Neumann Laplacian)⁻¹
        return -_poisson_neumann(r, vs, dev)

    u, iters, relres = cg(apply_a, b, tol, max_iter, x0=precond(b), precond=precond)
    return to_numpy(_fit_constant(u, phi, magnitude, rel, dev)), {"iterations": iters, "relres": relres}


# ---------------------------------------------------------------- region growing
def _quality(phi: np.ndarray, mag: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    """Voxel quality in [0, 1]: normalised magnitude × (1 − mean |wrapped neighbour
    difference| / π) over the in-mask 6-neighbours."""
    s = np.zeros(phi.shape, np.float32)
    c = np.zeros(phi.shape, np.float32)
    for ax in range(3):
        n = phi.shape[ax]
        if n < 2:
            continue
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax] = slice(0, n - 1)
        hi[ax] = slice(1, n)
        lo, hi = tuple(lo), tuple(hi)
        both = mask[lo] & mask[hi]
        d = np.abs(np.angle(np.exp(1j * (phi[hi] - phi[lo])))).astype(np.float32) * both
        s[lo] += d
        s[hi] += d
        c[lo] += both
        c[hi] += both
    smooth = 1.0 - np.where(c > 0, s / np.maximum(c, 1), np.pi) / np.pi
    if mag is None:
        q = smooth
    else:
        m = np.nan_to_num(np.abs(np.asarray(mag, np.float32)))
        ref = np.percentile(m[mask], 99) if mask.any() else 1.0
        q = np.clip(m / (ref if ref > 0 else 1.0), 0, 1) * smooth
    return np.where(mask, q, -1.0).astype(np.float32)


def _grow(phi: np.ndarray, q: np.ndarray, mask: np.ndarray, n_levels: int) -> np.ndarray:
    """Quality-guided region growing on a 3D volume (numpy, CPU).

    Every 6-connected component of the mask is seeded at its best voxel. Quality levels
    (quantiles of q) are lowered one at a time; at each level the region grows breadth
    first into neighbours whose quality is at least the level. A new voxel is unwrapped
    against its best-quality already unwrapped neighbour b: u = φ + 2π·round((u_b − φ)/2π),
    so u − φ is an exact multiple of 2π."""
    shape = tuple(s + 2 for s in phi.shape)
    core = tuple(slice(1, -1) for _ in range(3))
    P = np.zeros(shape, np.float64)
    P[core] = phi
    Q = np.full(shape, -1.0, np.float32)
    Q[core] = q
    M = np.zeros(shape, bool)
    M[core] = mask
    P, Q, M = P.ravel(), Q.ravel(), M.ravel()
    U = P.copy()
    V = np.zeros(M.shape, bool)
    st = (shape[1] * shape[2], shape[2], 1)
    offs = np.array([st[0], -st[0], st[1], -st[1], st[2], -st[2]], np.int64)

    lab, nlab = ndimage.label(M.reshape(shape))
    if nlab == 0:
        return phi.copy()
    seeds = ndimage.maximum_position(Q.reshape(shape), lab, index=np.arange(1, nlab + 1))
    seeds = np.ravel_multi_index(np.array(seeds).T, shape)
    V[seeds] = True

    qin = Q[M]
    levels = np.quantile(qin, np.linspace(1.0, 0.0, n_levels + 1)[1:])
    levels[-1] = -np.inf
    for thr in levels:
        open_ = np.flatnonzero(M & ~V & (Q >= thr))
        if open_.size == 0:
            continue
        cand = open_[V[open_[:, None] + offs[None, :]].any(1)]
        while cand.size:
            nb = cand[:, None] + offs[None, :]
            vis = V[nb]
            qn = np.where(vis, Q[nb], -np.inf)
            best = nb[np.arange(nb.shape[0]), np.argmax(qn, axis=1)]
            ref = U[best]
            U[cand] = P[cand] + TWO_PI * np.round((ref - P[cand]) / TWO_PI)
            V[cand] = True
            nxt = np.unique((cand[:, None] + offs[None, :]).ravel())
            cand = nxt[M[nxt] & ~V[nxt] & (Q[nxt] >= thr)]
    out = U.reshape(shape)[core]
    return out


def unwrap_region_growing(wrapped, magnitude=None, mask=None, te=None,
                          n_levels: int = 32) -> np.ndarray:
    """Exact quality-guided (region-growing) phase unwrapping.

    ``wrapped``: (X, Y, Z) or (X, Y, Z, N) radians; ``magnitude``: same shape (optional,
    used in the quality map); ``mask``: 3D voxels to unwrap (default: all finite). Outside
    the mask the wrapped input is returned. The output differs from the input by exact
    integer multiples of 2π everywhere.

    For 4D input each echo is unwrapped on its own, then the 2π offset of each echo in each
    connected component is fixed so that the phase evolves continuously in time: echo j is
    shifted by 2π·k, k = round(median(u_j − prediction)/2π), the prediction being echo j−1
    plus the wrapped step for j = 1, and a linear extrapolation of echoes j−2, j−1 with the
    true echo times ``te`` (s; default: evenly spaced) for j ≥ 2.

    Runs in numpy on the CPU (graph traversal), O(voxels × 6) per quality level.
    """
    w = np.asarray(wrapped, dtype=np.float64)
    if w.ndim == 4:
        nt = w.shape[-1]
        m3 = np.all(np.isfinite(w), axis=-1) if mask is None else (np.asarray(mask) != 0)
        mags = None if magnitude is None else np.asarray(magnitude)
        us = [unwrap_region_growing(w[..., j], None if mags is None else mags[..., j], m3,
                                    n_levels=n_levels).astype(np.float64) for j in range(nt)]
        t = np.arange(nt, dtype=float) if te is None else np.asarray(te, dtype=float)
        lab, nlab = ndimage.label(m3)
        for j in range(1, nt):
            if j == 1:
                pred = us[0] + np.angle(np.exp(1j * (w[..., 1] - w[..., 0])))
            else:
                slope = (us[j - 1] - us[j - 2]) / (t[j - 1] - t[j - 2])
                pred = us[j - 1] + slope * (t[j] - t[j - 1])
            k = np.round((us[j] - pred) / TWO_PI)
            for c in range(1, nlab + 1):
                sel = lab == c
                kc = float(np.median(k[sel]))
                us[j][sel] -= TWO_PI * np.round(kc)
        return np.stack(us, axis=-1).astype(np.float32)
    if w.ndim != 3:
        raise ValueError(f"expected a 3D or 4D phase, got shape {w.shape}")
    m = np.isfinite(w) if mask is None else ((np.asarray(mask) != 0) & np.isfinite(w))
    phi = np.where(np.isfinite(w), w, 0.0)
    q = _quality(phi, magnitude, m)
    u = _grow(phi, q, m, n_levels)
    out = np.where(m, u, w)
    return out.astype(np.float32)
