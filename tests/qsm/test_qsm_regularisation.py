"""The closed-form L2 baseline, the L-curve λ rule, the data weights / brain-edge treatment
and MEDI's preconditioned CG, against analytic results."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_qsm_phantoms import ball, sphere_field

from deepmir.dipole import dipole_kernel
from deepmir.qsm._torch import cg
from deepmir.qsm.cfl2 import cfl2, gradient_power, l_curve
from deepmir.qsm.inversion import gradient_weight, medi_l1, ppm_to_rad
from deepmir.qsm.lambda_rule import gradient_scale, lcurve_lambda
from deepmir.qsm.weights import (
    edge_ramp,
    effective_noise,
    inflate_noise,
    lesion_cores,
    missing_voxels,
    noise_from_magnitude,
    normalised_weight,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------ CFL2
def test_gradient_power_is_the_spectrum_of_the_forward_difference():
    """Parseval on the rfft half spectrum: Σ w |E|² |x̂|² / N = ‖∇x‖² for circular forward
    differences in mm⁻¹ (w: each coefficient's multiplicity in the full spectrum)."""
    from deepmir.qsm.cfl2 import _half_weights

    shape, vs = (8, 6, 10), (1.0, 1.5, 2.0)
    x = torch.as_tensor(np.random.default_rng(0).normal(size=shape))
    g2 = sum(float(((torch.roll(x, -1, ax) - x) ** 2).sum()) / h ** 2
             for ax, h in enumerate(vs))
    e2 = gradient_power(shape, vs, dtype=torch.float64)
    w = _half_weights(shape, x.device, torch.float64)
    xr = torch.fft.rfftn(x)
    assert float((e2 * xr.abs() ** 2 * w).sum()) / x.numel() == pytest.approx(g2, rel=1e-9)


def test_cfl2_is_the_minimiser_of_its_objective():
    """χ = D f̂ /(D² + α|E|²) makes the gradient of ‖Dχ − f‖² + α‖∇χ‖² vanish (on the
    circular grid the method works on)."""
    n = 24
    brain = ball(n, 9)
    field = sphere_field(n, 3.0, 0.3) * brain
    alpha = 0.05
    res = cfl2(field, np.ones_like(brain), (1, 1, 1), (0, 0, 1), alpha=alpha, margin=0)
    x = torch.as_tensor(res["chi"], dtype=torch.float64)
    grid = x.shape
    d = dipole_kernel(grid, (1, 1, 1), (0, 0, 1), rfft=True, dtype=torch.float64)
    e2 = gradient_power(grid, (1, 1, 1), dtype=torch.float64)
    f = torch.as_tensor(field, dtype=torch.float64)
    grad = torch.fft.irfftn(d * (d * torch.fft.rfftn(x) - torch.fft.rfftn(f))
                            + alpha * e2 * torch.fft.rfftn(x), s=grid)
    assert float(grad.abs().max()) < 1e-4 * float(f.abs().max())
    assert res["alpha"] == alpha and res["l_curve"] is None


def test_cfl2_lcurve_corner_in_the_search_range_and_noise_lowers_lambda():
    n, a, dchi = 48, 5.0, 0.2
    brain = ball(n, 20)
    rng = np.random.default_rng(1)
    field = (sphere_field(n, a, dchi) + rng.normal(0, 0.004, (n, n, n))) * brain
    res = cfl2(field, brain, (1, 1, 1), (0, 0, 1))
    lc = res["l_curve"]
    assert 1e-4 <= res["alpha"] <= 0.3
    # residual rises and the regulariser falls with α (the L-curve is monotone)
    assert np.all(np.diff(lc["residual"]) > 0) and np.all(np.diff(lc["regulariser"]) < 0)
    core = ball(n, a - 1.5)
    assert np.all(res["chi"][~brain] == 0)
    assert res["chi"][core].mean() > 0.25 * dchi                    # smooth, but there
    weak = cfl2(field, brain, (1, 1, 1), (0, 0, 1), alpha=1e-3)["chi"]
    assert weak[core].mean() == pytest.approx(dchi, rel=0.25)
    # noisier data: the λ rule regularises MEDI more (smaller λ)
    noisy = (sphere_field(n, a, dchi) + rng.normal(0, 0.04, (n, n, n))) * brain
    res_n = cfl2(noisy, brain, (1, 1, 1), (0, 0, 1))
    lam = [lcurve_lambda(r["chi"], r["alpha"], brain, (1, 1, 1), 0.02, 3.0, 0.35)["lambda"]
           for r in (res, res_n)]
    assert lam[1] < 0.5 * lam[0]


def test_l_curve_corner_refined_between_grid_points():
    """The corner is the sharpest turn inside the search range, refined between the grid
    points: on a coarser grid it lands within a grid step of the fine grid's corner."""
    rng = np.random.default_rng(2)
    n = 4000
    d = torch.as_tensor(rng.uniform(0.05, 0.66, n))
    e2 = torch.as_tensor(rng.uniform(0.01, 4.0, n))
    sig = torch.as_tensor(np.where(rng.uniform(size=n) < 0.3, 1.0, 0.0)) * d / (1 + 30 * e2)
    f = (sig + torch.as_tensor(rng.normal(size=n) * 0.003)).to(torch.complex128)
    w = torch.ones(n, dtype=torch.float64)
    fine = l_curve(f, d, e2, 10.0 ** np.arange(-5, 0.001, 0.02), w)
    coarse = l_curve(f, d, e2, 10.0 ** np.arange(-5, 0.001, 0.1), w)
    assert 1e-4 <= fine["alpha"] <= 0.3
    assert abs(np.log10(coarse["alpha"] / fine["alpha"])) < 0.1
    k = np.abs(fine["curvature"])
    a = fine["alphas"]
    sel = (a >= 1e-4) & (a <= 0.3)
    assert fine["alpha"] == pytest.approx(a[sel][np.argmax(k[sel])], rel=0.05)


# ------------------------------------------------------------------ λ rule
def test_lambda_rule_units_independent_of_te_and_b0():
    """μ = κ/(α g) is in ppm units: the same for any TE and B0; λ (MEDI's radians) scales
    with 1/(TE·B0)."""
    n = 24
    rng = np.random.default_rng(3)
    chi = rng.normal(0, 0.02, (n, n, n)).astype(np.float32)
    m = ball(n, 10)
    g = gradient_scale(chi, m, (1.0, 1.0, 2.0))
    # mean |difference| of iid N(0, σ²) is 2σ/√π, divided by the voxel size per axis
    assert g == pytest.approx(2 * 0.02 / np.sqrt(np.pi) * (1 + 1 + 0.5) / 3, rel=0.05)
    a = lcurve_lambda(chi, 0.02, m, (1, 1, 2), 0.0075, 3.0, 0.35)
    b = lcurve_lambda(chi, 0.02, m, (1, 1, 2), 0.025, 7.0, 0.35)
    assert a["lambda_ppm"] == pytest.approx(b["lambda_ppm"])
    assert a["lambda_ppm"] == pytest.approx(0.35 / (0.02 * g))
    assert a["lambda"] * ppm_to_rad(0.0075, 3.0) == pytest.approx(a["lambda_ppm"])
    assert a["lambda"] / b["lambda"] == pytest.approx(0.025 * 7.0 / (0.0075 * 3.0))
    with pytest.raises(ValueError):
        lcurve_lambda(np.zeros_like(chi), 0.02, m, (1, 1, 1), 0.0075, 3.0, 0.35)


# ------------------------------------------------------------------ weights, brain edge
def test_edge_ramp_and_missing_voxels():
    m = np.zeros((21, 21, 21), bool)
    m[2:19, 2:19, 2:19] = True                      # a 17³ cube
    r = edge_ramp(m, (1.0, 1.0, 1.0), 4.0)
    assert r[2, 10, 10] == pytest.approx((1 / 4) ** 2)     # outermost voxel: d = 1 voxel
    assert r[4, 10, 10] == pytest.approx((3 / 4) ** 2)
    assert r[10, 10, 10] == 1.0 and not r[~m].any()
    assert (edge_ramp(m, (1, 1, 1), 0) == m).all()
    noise = np.where(m, 2.0, 0.0).astype(np.float32)
    eff = effective_noise(noise, m, (1, 1, 1), 4.0)
    assert eff[2, 10, 10] == pytest.approx(2.0 * 16) and eff[10, 10, 10] == pytest.approx(2.0)
    w = normalised_weight(eff, m)
    assert w[m].mean() == pytest.approx(1.0, rel=1e-5)
    # the outermost voxels weigh 1/16 of the centre; normalised (the mean over this small
    # cube is well below the centre's) that is just above 0.1
    assert 0.1 < w[2, 10, 10] < 0.15
    miss = missing_voxels(eff, m, (1, 1, 1), 0.15, min_mm3=1e9)
    assert miss[2, 10, 10] and not miss[10, 10, 10] and not miss[~m].any()
    # a small low-weight island inside (a lesion core) keeps its data unless it is large
    eff[9:12, 9:12, 9:12] *= 100
    assert not missing_voxels(eff, m, (1, 1, 1), 0.15, min_mm3=1e9)[10, 10, 10]
    assert missing_voxels(eff, m, (1, 1, 1), 0.15, min_mm3=27)[10, 10, 10]


def test_lesion_cores_are_small_interior_islands_of_inflated_noise():
    """The noise is inflated by sqrt(relres / median) where the echoes misfit; lesion cores are
    the small islands inside the mask whose inflated noise stands out of its neighbourhood (a
    lesion's fast decay), grown by a voxel; a misfitting patch on the edge or a large region
    is none (the pipeline keeps their inflated noise)."""
    m = np.zeros((24, 24, 24), bool)
    m[2:22, 2:22, 2:22] = True
    noise = np.where(m, 1.0, 0.0).astype(np.float32)
    relres = np.where(m, 1.0, 0.0)
    relres[10:12, 10:12, 10:12] = 100.0             # a 2³ lesion core: noise × 10 when inflated
    relres[2, 4:8, 4:8] = 100.0                     # a misfitting patch on the outermost layer
    relres[14:21, 3:10, 14:21] = 100.0              # a large interior region (343 mm³)
    core = lesion_cores(np.sqrt(np.maximum(relres, 1)).astype(np.float32), m, (1, 1, 1), min_mm3=300)
    expect = np.zeros_like(m)
    expect[9:13, 9:13, 9:13] = True                 # the core grown by one voxel
    assert (core == expect).all()
    inflated = inflate_noise(noise, relres, m)
    assert inflated[10, 10, 10] == pytest.approx(10.0) and inflated[5, 16, 5] == 1.0
    assert (lesion_cores(inflated, m, (1, 1, 1), min_mm3=300) == expect).all()
    # with a large size limit the interior region counts as a core too, the rim never does
    big = lesion_cores(inflated, m, (1, 1, 1), min_mm3=1e9)
    assert big[17, 6, 17] and not big[2, 5, 5]
    # anisotropic voxels: the window is in mm (half-width round(7.5 / 2 / voxel size): 2 voxels
    # at 1.5 and at 2.5 mm, Python rounding halves to even)
    assert lesion_cores(np.sqrt(np.maximum(relres, 1)).astype(np.float32), m, (1.5, 1.5, 2.5),
                        min_mm3=300)[10, 10, 10]


def test_noise_from_magnitude_is_inverse_signal():
    m = ball(16, 6)
    mag = np.where(m, 2.0, 0.0).astype(np.float32)
    mag[8, 8, 8] = 1.0
    n = noise_from_magnitude(mag, m)
    assert n[8, 8, 8] == pytest.approx(2 * n[8, 8, 5]) and n[m].mean() == pytest.approx(1.0)
    four = np.stack([mag, mag], -1)                # echoes: root sum of squares
    assert np.allclose(noise_from_magnitude(four, m), n)


def test_gradient_weight_options():
    """mask_edges False: the mask boundary is no edge; missing voxels are regularised."""
    n = 16
    m = torch.as_tensor(ball(n, 6).astype(np.float32))
    mag = torch.ones_like(m)
    toolbox = gradient_weight(mag, m, (1, 1, 1), 0.9)
    assert float(sum(w[m > 0].mean() for w in toolbox)) < 3       # boundary counts as edge
    fixed = gradient_weight(mag, m, (1, 1, 1), 0.9, mask_edges=False)
    assert all(bool((w == 1).all()) for w in fixed)                 # flat magnitude: no edge
    mag2 = mag.clone()
    mag2[8, 8, 8] = 5.0                                             # an edge around a voxel
    miss = torch.zeros(m.shape, dtype=torch.bool)
    miss[8, 8, 8] = True
    w_edge = gradient_weight(mag2, m, (1, 1, 1), 0.01, mask_edges=False)
    assert float(w_edge[0][8, 8, 8]) == 0 and float(w_edge[0][7, 8, 8]) == 0
    w_miss = gradient_weight(mag2, m, (1, 1, 1), 0.01, mask_edges=False, missing=miss)
    assert float(w_miss[0][8, 8, 8]) == 1 and float(w_miss[0][7, 8, 8]) == 1


# ------------------------------------------------------------------ preconditioned CG
def test_preconditioned_cg_same_solution_fewer_iterations():
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.normal(size=(60, 60)))
    a = torch.as_tensor(q @ np.diag(np.logspace(0, 3, 60)) @ q.T)
    b = torch.as_tensor(rng.normal(size=60))
    approx = torch.as_tensor(q @ np.diag(1 / np.logspace(0, 3, 60) * rng.uniform(0.7, 1.3, 60))
                             @ q.T)
    x0, it0, _ = cg(lambda v: a @ v, b, 1e-8, 500)
    x1, it1, rel = cg(lambda v: a @ v, b, 1e-8, 500, precond=lambda r: approx @ r)
    assert rel <= 1e-8 and it1 < it0 / 2
    assert torch.allclose(x0, x1, atol=1e-6)


def test_medi_preconditioned_converges_to_the_same_chi():
    n, a, dchi = 40, 5.0, 0.2
    brain = ball(n, 16)
    field = sphere_field(n, a, dchi) * brain
    common = dict(delta_te=0.02, lam=1000.0, cg_tol=0.001, cg_max_iter=400, max_iter=3,
                  tol_norm_ratio=0.0)
    plain = medi_l1(field, brain, (1, 1, 1), (0, 0, 1), **common)
    pre = medi_l1(field, brain, (1, 1, 1), (0, 0, 1), precondition=True, **common)
    assert sum(pre["cg_iterations"]) < 0.7 * sum(plain["cg_iterations"])
    assert max(pre["cg_iterations"]) < 400 and max(pre["cg_residuals"]) <= 0.001
    diff = np.linalg.norm(pre["chi"] - plain["chi"]) / np.linalg.norm(plain["chi"])
    assert diff < 0.02
    assert pre["misfit_ppm"] == pytest.approx(plain["misfit_ppm"], rel=0.1, abs=1e-5)
