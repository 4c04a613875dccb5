"""Closed-form L2 dipole inversion (CFL2): gradient-regularised least squares solved by one
FFT division (Bilgic et al., "Fast image reconstruction with L2-regularization", JMRI 2014;
the closed-form baseline of the 2016 QSM reconstruction challenge, Langkammer et al. MRM
2018), with the regularisation weight at the corner of its L-curve.

    χ = argmin ‖Dχ − f‖²₂ + α‖∇χ‖²₂   ⇒   χ̂(k) = D(k) f̂(k) / (D(k)² + α |E(k)|²)

where E(k) is the spectrum of the forward difference (|E|² = Σ_i (2 − 2cos(2π k_i h_i)) /
h_i², per mm²). Field and χ in ppm, so α is in mm² and independent of TE and B0. The
problem is unweighted and circular on the mask's bounding box plus a margin (the field is
zero outside the mask), as in the challenge code.
"""
from __future__ import annotations

import numpy as np
import torch

from deepmir.device import pick_device
from deepmir.dipole import dipole_kernel, kspace_grid

from ._torch import as_float, check_voxel_size, embed, padded_grid, to_numpy, unembed


def gradient_power(grid, voxel_size, device=None, dtype=torch.float32) -> torch.Tensor:
    """|E(k)|² (mm⁻²) of the forward difference on an rfft grid of ``grid``."""
    ks = kspace_grid(grid, voxel_size, rfft=True, device=device, dtype=dtype)
    out = torch.zeros((), device=device, dtype=dtype)
    for k, h in zip(ks, voxel_size):
        out = out + (2.0 - 2.0 * torch.cos(2 * np.pi * k * float(h))) / float(h) ** 2
    return out.contiguous()


def _half_weights(grid, device, dtype):
    """Multiplicity of each rfft coefficient in the full spectrum (Parseval sums)."""
    n = grid[-1]
    w = torch.full((n // 2 + 1,), 2.0, device=device, dtype=dtype)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return w


def l_curve(f_hat: torch.Tensor, d: torch.Tensor, e2: torch.Tensor, alphas,
            weights: torch.Tensor, search=(1e-4, 0.3)) -> dict:
    """Data residual ‖Dχ_α − f‖ and regulariser ‖∇χ_α‖ of the closed-form solution for each
    α (Parseval on the rfft half spectrum; the same normalisation for both, so only their
    shapes matter), and the corner: the α of maximal curvature of (log residual, log
    regulariser) over log α (Hansen's L-curve criterion), searched for α in ``search``
    (mm²): the range of the challenge's closed-form code for 1 mm voxels, 10⁻⁴ … 10⁻¹, half a
    decade wider at the top so that a noisier field can move the corner up; further out
    lies a second turn on simple fields, where the regulariser removes the anatomy itself.

    Returns {"alphas", "residual", "regulariser", "curvature", "alpha"}."""
    p = (f_hat.real ** 2 + f_hat.imag ** 2) * weights
    d2 = d * d
    res, reg = [], []
    for a in alphas:
        den = d2 + a * e2
        den = torch.where(den > 0, den, torch.ones_like(den))
        res.append(float((((a * e2) / den) ** 2 * p).sum()))
        reg.append(float((e2 * d2 / den ** 2 * p).sum()))
    la = np.log(np.asarray(alphas, float))
    x = 0.5 * np.log(np.maximum(res, 1e-300))
    y = 0.5 * np.log(np.maximum(reg, 1e-300))
    x1, y1 = np.gradient(x, la), np.gradient(y, la)
    x2, y2 = np.gradient(x1, la), np.gradient(y1, la)
    kappa = (x1 * y2 - x2 * y1) / np.maximum((x1 ** 2 + y1 ** 2) ** 1.5, 1e-30)
    # the corner: the sharpest turn of the curve (largest |κ|; the residual rises and the
    # regulariser falls with α, so the turn has κ < 0 in these coordinates); the ends of the
    # range are not corners (one-sided differences)
    a = np.asarray(alphas, float)
    inner = np.flatnonzero((a >= search[0] * 0.999) & (a <= search[1] * 1.001))
    inner = inner[(inner >= 1) & (inner <= len(a) - 2)]
    best = int(inner[np.argmax(np.abs(kappa[inner]))])
    # the peak between grid points: a parabola through |κ| at the best point and its two
    # neighbours (in log α), so that α varies smoothly with the data
    y0, y1, y2 = np.abs(kappa[best - 1: best + 2])
    den = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / den if den < 0 else 0.0
    step = la[best + 1] - la[best]
    alpha = float(np.exp(la[best] + float(np.clip(shift, -0.5, 0.5)) * step))
    return {"alphas": np.asarray(alphas, float), "residual": np.sqrt(res),
            "regulariser": np.sqrt(reg), "curvature": kappa, "alpha": alpha}


# α grid of the L-curve, mm²: the corner is searched in 10^-4 … 0.3 (see l_curve); the
# curve is traced wider so that the curvature is defined at the ends of that range
ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(-5.0, 0.01, 0.1))


def cfl2(local_field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), alpha: float | None = None,
         margin: int = 16, device=None) -> dict:
    """Closed-form L2 inversion of a local field (ppm) on ``mask``.

    ``alpha`` (mm²): the gradient weight; None picks it at the L-curve corner over
    :data:`ALPHAS`. Returns ``{"chi": ppm, zero outside the mask, "alpha": the weight used,
    "l_curve": the :func:`l_curve` dict or None}``."""
    vs = check_voxel_size(voxel_size)
    dev = pick_device(device)
    m_np = np.asarray(mask) != 0
    sl, grid = padded_grid(m_np, int(margin), even=True)
    f = embed(as_float(np.nan_to_num(np.asarray(local_field_ppm, np.float32)) * m_np, dev),
              sl, grid)
    d = dipole_kernel(grid, vs, b0_dir, rfft=True, device=dev)
    e2 = gradient_power(grid, vs, device=dev)
    f_hat = torch.fft.rfftn(f)
    curve = None
    if alpha is None:
        curve = l_curve(f_hat, d, e2, ALPHAS, _half_weights(grid, dev, f.dtype))
        alpha = curve["alpha"]
    if not alpha > 0:
        raise ValueError(f"the CFL2 weight must be positive, got {alpha}")
    den = d * d + float(alpha) * e2
    den.reshape(-1)[0] = 1.0              # DC: D = E = 0; χ's mean is undetermined (0)
    chi = torch.fft.irfftn(f_hat * (d / den), s=grid)
    out = to_numpy(unembed(chi, sl, m_np.shape)) * m_np
    return {"chi": out.astype(np.float32), "alpha": float(alpha), "l_curve": curve}
