"""Multi-echo field fit (MEDI ``Fit_ppm_complex``, generalised to true echo times) and R2*."""
from __future__ import annotations

import numpy as np
import torch

from deepmir.device import pick_device

from ._torch import as_float, to_numpy


def _check_echoes(mag, phase, te):
    mag = np.asarray(mag)
    phase = np.asarray(phase)
    te = np.asarray(te, dtype=np.float64).reshape(-1)
    if mag.shape != phase.shape:
        raise ValueError(f"magnitude {mag.shape} and phase {phase.shape} differ in shape")
    if mag.ndim != 4:
        raise ValueError(f"expected (X, Y, Z, N) echoes, got shape {mag.shape}")
    if mag.shape[-1] != te.size:
        raise ValueError(f"{mag.shape[-1]} echoes but {te.size} echo times")
    if te.size < 2:
        raise ValueError("the field fit needs at least two echoes")
    if not np.all(np.diff(te) > 0):
        raise ValueError(f"echo times must increase strictly, got {te.tolist()}")
    return mag, phase, te


def fit_multi_echo(mag, phase, te, sigma=None, max_iter: int = 30, rel_tol: float = 1e-4,
                   mask=None, device=None) -> dict:
    """Per-voxel complex fit S_j = |S_j|·exp(i(φ0 + ω·(t_j − t_0))) over the echoes.

    Parameters
    ----------
    mag, phase : (X, Y, Z, N) arrays, magnitude (any unit) and phase in radians (wrapped).
    te : N echo times in **seconds**, strictly increasing, spacing may be uneven.
    sigma : standard deviation of the complex noise (same unit as ``mag``). ``None``:
        estimated as sqrt(median over voxels of Σ_j|residual_j|²/(N − 2)) over voxels with
        signal (N ≥ 3), floored at 1e-6·max|S|; with two echoes (no residual) σ = 1, which is
        MEDI's implicit convention.

    Method (MEDI ``Fit_ppm_complex`` with the true echo times): time is measured as
    τ_j = (t_j − t_0)/Δt with Δt = t_1 − t_0 (MEDI's ``delta_TE``); for even spacing τ_j = j
    exactly as in MEDI. Start: the first (up to) three echoes are temporally unwrapped
    around the phase step of echoes 0→1 (taken in (−π, π]) extrapolated with the true τ,
    then fitted linearly (unweighted). Refinement: Gauss–Newton on the complex residual
    weighted by |S_j|², until ‖Δp1‖ ≤ rel_tol·‖p1‖ (norms over all voxels) or ``max_iter``.

    Returns a dict of float32 arrays (X, Y, Z):

    - ``field`` (rad/s): the phase evolution rate ω. Like MEDI it is wrapped so that
      ω·Δt ∈ (−π, π], i.e. it is still spatially wrapped where |ω|·Δt > π. For uneven
      echo spacing the fit uses every true TE, so the rate is exact (noise free) where
      |ω|·Δt < π; beyond that the value is a local optimum next to an alias and spatial
      unwrapping of ω·Δt is approximate there.
    - ``phase0`` (rad): phase at the first echo t_0 (MEDI's p0), wrapped to (−π, π].
    - ``noise_std`` (rad/s): error-propagated std of ω, σ·sqrt((AᵀW²A)⁻¹₂₂)/Δt, ∝ 1/signal;
      0 where the voxel has no signal (MEDI's convention; such voxels get zero weight).
    - ``relres``: Σ|residual|²/Σ|S|² per voxel.
    plus scalars ``delta_te`` (s, the Δt used for wrapping), ``sigma``, ``iterations``.

    ``mask`` (optional, 3D): fit only these voxels (others get 0 everywhere); the
    convergence test and σ estimate then use them only.
    """
    mag, phase, te = _check_echoes(mag, phase, te)
    if mask is not None:
        sel = np.asarray(mask) != 0
        if sel.shape != mag.shape[:3]:
            raise ValueError(f"mask {sel.shape} does not match the echoes {mag.shape[:3]}")
        sub = fit_multi_echo(mag[sel][:, None, None, :], phase[sel][:, None, None, :], te,
                             sigma=sigma, max_iter=max_iter, rel_tol=rel_tol, device=device)
        out = dict(sub)
        for k in ("field", "phase0", "noise_std", "relres"):
            full = np.zeros(sel.shape, np.float32)
            full[sel] = sub[k][:, 0, 0]
            out[k] = full
        return out
    dev = pick_device(device)
    shape = mag.shape[:3]
    ne = te.size
    dt = float(te[1] - te[0])
    tau = torch.as_tensor((te - te[0]) / dt, dtype=torch.float32, device=dev)

    a = as_float(mag, dev).reshape(-1, ne).abs()
    ph = as_float(phase, dev).reshape(-1, ne)
    m = torch.polar(a, ph)

    # linear start on the first three echoes, temporally unwrapped with the true TEs
    y = ph[:, : min(3, ne)].clone()
    c = torch.remainder(y[:, 1] - y[:, 0] + np.pi, 2 * np.pi) - np.pi  # phase step 0→1
    for n in range(1, y.shape[1]):
        pred = y[:, n - 1] + c * (tau[n] - tau[n - 1])
        y[:, n] += 2 * np.pi * torch.round((pred - y[:, n]) / (2 * np.pi))
    t3 = tau[: y.shape[1]]
    if y.shape[1] == 2:
        p0 = y[:, 0].clone()
        p1 = y[:, 1] - y[:, 0]
    else:
        tm = t3.mean()
        tc = t3 - tm
        p1 = (y * tc).sum(1) / (tc * tc).sum()
        p0 = y.mean(1) - p1 * tm

    # Gauss–Newton with weights |S|²
    w2 = a * a
    a11 = w2.sum(1)
    a12 = (w2 * tau).sum(1)
    a22 = (w2 * tau * tau).sum(1)
    det = a11 * a22 - a12 * a12
    ok = det > 0
    safe = torch.where(ok, det, torch.ones_like(det))
    ai11 = torch.where(ok, a22 / safe, torch.zeros_like(det))
    ai12 = torch.where(ok, -a12 / safe, torch.zeros_like(det))
    ai22 = torch.where(ok, a11 / safe, torch.zeros_like(det))

    tol = float(torch.linalg.vector_norm(p1)) * rel_tol
    it = 0
    dp1_norm = np.inf
    while dp1_norm > tol and it < max_iter:
        it += 1
        model = torch.polar(a, p0[:, None] + p1[:, None] * tau)
        g = (torch.conj(1j * model) * (m - model)).real  # Re{conj(i W)(M − W)}
        pr1 = g.sum(1)
        pr2 = (g * tau).sum(1)
        dp0 = ai11 * pr1 + ai12 * pr2
        dp1 = ai12 * pr1 + ai22 * pr2
        p0 += dp0
        p1 += dp1
        dp1_norm = float(torch.linalg.vector_norm(dp1))

    res = m - torch.polar(a, p0[:, None] + p1[:, None] * tau)
    r2 = (res.abs() ** 2).sum(1)
    sig2 = a11
    relres = torch.where(sig2 > 0, r2 / torch.where(sig2 > 0, sig2, torch.ones_like(sig2)),
                         torch.zeros_like(sig2))

    if sigma is None:
        if ne >= 3:
            amax = float(a.max()) if a.numel() else 0.0
            sel = a[:, 0] > 0.1 * amax
            if bool(sel.any()):
                est = float(torch.sqrt(torch.median(r2[sel] / (ne - 2))))
            else:
                est = 0.0
            sigma = max(est, 1e-6 * amax) if amax > 0 else 1.0
        else:
            sigma = 1.0
    sigma = float(sigma)

    p1w = torch.remainder(p1 + np.pi, 2 * np.pi) - np.pi
    p1w = torch.where(p1w == -np.pi, torch.full_like(p1w, np.pi), p1w)
    p0w = torch.remainder(p0 + np.pi, 2 * np.pi) - np.pi
    nstd = sigma * torch.sqrt(ai22) / dt
    nstd = torch.where(torch.isfinite(nstd), nstd, torch.zeros_like(nstd))

    return {
        "field": to_numpy((p1w / dt).reshape(shape)),
        "phase0": to_numpy(p0w.reshape(shape)),
        "noise_std": to_numpy(nstd.reshape(shape)),
        "relres": to_numpy(relres.reshape(shape)),
        "delta_te": dt,
        "sigma": sigma,
        "iterations": it,
    }


def r2star_map(mag, te, mask=None, weighted: bool = True, device=None) -> np.ndarray:
    """R2* (s⁻¹) by a log-linear least-squares fit ln|S_j| = ln S0 − R2*·t_j.

    ``mag``: (X, Y, Z, N) magnitudes; ``te``: N echo times in seconds; ``mask``: voxels
    to fit (others 0). ``weighted``: weights |S_j|² (the usual correction for the noise
    amplification of the logarithm); exact either way for noise-free mono-exponential
    decay. Voxels with a non-positive echo get 0. Returns float32 (X, Y, Z).
    """
    mag = np.asarray(mag)
    te = np.asarray(te, dtype=np.float64).reshape(-1)
    if mag.ndim != 4 or mag.shape[-1] != te.size or te.size < 2:
        raise ValueError(f"expected (X, Y, Z, {te.size}) magnitudes, got {mag.shape}")
    dev = pick_device(device)
    shape = mag.shape[:3]
    a = as_float(mag, dev).reshape(-1, te.size)
    t = torch.as_tensor(te - te.mean(), dtype=torch.float32, device=dev)  # centred: stable
    good = (a > 0).all(1)
    if mask is not None:
        good &= torch.as_tensor(np.asarray(mask).reshape(-1) != 0, device=dev)
    la = torch.log(torch.where(a > 0, a, torch.ones_like(a)))
    w = a * a if weighted else torch.ones_like(a)
    sw = w.sum(1)
    sw = torch.where(sw > 0, sw, torch.ones_like(sw))
    tm = (w * t).sum(1) / sw
    lm = (w * la).sum(1) / sw
    tc = t - tm[:, None]
    num = (w * tc * (la - lm[:, None])).sum(1)
    den = (w * tc * tc).sum(1)
    den = torch.where(den > 0, den, torch.ones_like(den))
    r2s = -num / den
    r2s = torch.where(good & torch.isfinite(r2s), r2s, torch.zeros_like(r2s))
    return to_numpy(r2s.reshape(shape))
