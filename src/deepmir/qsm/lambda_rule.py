"""MEDI's regularisation weight from the data (docs/qsm.md, "Regularisation weight"): the
L-curve corner of the closed-form L2 problem, carried over to MEDI's L1 gradient term.

MEDI minimises ‖M_G∇χ‖₁ + λ‖W(e^{iDχ·s} − e^{if·s})‖² with the field in radians per echo
spacing (s = 2π γ̄ B0 ΔTE radians per ppm). In ppm the same objective is
‖M_G∇χ‖₁ + μ‖W(Dχ − f)‖² (small-angle) with μ = λ·s, in 1/(ppm·mm): independent of TE and
B0. Iteratively reweighted, the L1 term is Σ (∂χ)²/|∂χ|, i.e. an L2 gradient penalty of
weight 1/(μ g) with g the typical gradient magnitude |∂χ| (ppm/mm). The closed-form L2
inversion's L-curve corner α (mm², :mod:`.cfl2`) is the gradient weight at which that
problem stops fitting noise and starts losing signal; MEDI gets the same balance with

    μ = κ / (α g),      λ = μ / s,

g the mean |∂_i χ| of the CFL2 map inside the mask and κ a dimensionless factor (the
``lambda_factor`` setting; chosen once on a synthetic tuning seed, see docs/qsm.md). What the
dipole model does not explain (noise, anisotropy, background residuals) raises the gradients
of the CFL2 map at its corner and, where it changes the spectrum's shape, moves the corner
to a larger α: both lower λ. The rule needs no noise map, so the workflow and ``deepmir qsm
--field`` use it alike.
"""
from __future__ import annotations

import numpy as np

from .inversion import ppm_to_rad


def gradient_scale(chi, mask, voxel_size) -> float:
    """Mean |forward difference| / voxel size (ppm/mm) of ``chi`` over the differences whose
    two voxels both lie in ``mask``, the three axes together."""
    c = np.asarray(chi, np.float64)
    m = np.asarray(mask) != 0
    vals = []
    for ax, h in enumerate(voxel_size):
        n = c.shape[ax]
        lo = tuple(slice(0, n - 1) if a == ax else slice(None) for a in range(3))
        hi = tuple(slice(1, n) if a == ax else slice(None) for a in range(3))
        both = m[lo] & m[hi]
        vals.append(np.abs(c[hi] - c[lo])[both] / float(h))
    allv = np.concatenate(vals) if vals else np.zeros(0)
    return float(allv.mean()) if allv.size else 0.0


def lcurve_lambda(chi_cfl2, alpha: float, mask, voxel_size, delta_te: float,
                  b0_tesla: float, factor: float) -> dict:
    """λ (MEDI units) for a field whose CFL2 map ``chi_cfl2`` (ppm) was found at the L-curve
    corner ``alpha`` (mm²). Returns {"lambda", "lambda_ppm" (μ, 1/(ppm·mm)), "alpha",
    "gradient_ppm_per_mm" (g), "factor"}."""
    g = gradient_scale(chi_cfl2, mask, voxel_size)
    if not (alpha > 0 and g > 0 and factor > 0):
        raise ValueError(f"cannot set λ from the L-curve (α {alpha}, gradient scale {g})")
    mu = float(factor) / (float(alpha) * g)
    return {"lambda": mu / ppm_to_rad(delta_te, b0_tesla), "lambda_ppm": mu,
            "alpha": float(alpha), "gradient_ppm_per_mm": g, "factor": float(factor)}


def describe(info: dict, prefix: str) -> str:
    """The log line (with its newline) of the λ a reconstruction used (``info``: its sidecar),
    or '' without MEDI."""
    if "lambda" not in info:
        return ""
    how = ("L-curve rule: CFL2 corner α {cfl2_alpha_mm2:.3g} mm², gradient scale "
           "{cfl2_gradient_ppm_per_mm:.3g} ppm/mm, factor {lambda_factor:g}".format(**info)
           if info.get("lambda_rule") == "lcurve" else "fixed")
    return (f"{prefix}: MEDI λ = {info['lambda']:.4g} (toolbox units; {info['lambda_ppm']:.4g}"
            f" per ppm·mm, independent of TE and B0), {how}\n")
