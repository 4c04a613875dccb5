"""Anatomical stage numerics (deepmir.anat) on small template-derived head phantoms:
coordinate conventions, rigid registration against known transforms (axial RAS and oblique
LPS grids), N4 against a known bias field, brain masks against the phantom's truth."""
import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

import anat_phantom as P
import numpy as np
import pytest

from deepmir import anat as A
from deepmir import qc
from deepmir.anat import ants as ants_bridge

# N4 levels on these coarse grids: shrink 4 of a 3 mm grid is 12 mm, where the 4th level's
# ~12–25 mm knot spacing would fit anatomy; 3 levels keep the knots at ≥ 25 mm (see bench/)
N4_COARSE = {"iters": [50, 50, 50], "tol": 1e-7}


def smooth_bias(shape, affine, strength=0.2):
    X = A.world_coords(shape, affine) / 100.0
    g = X[..., 0] * 0.8 - X[..., 1] * 0.6 + 0.7 * X[..., 2] ** 2 + 0.5 * X[..., 0] * X[..., 2]
    return np.exp(strength * (g - 0.3)).astype(np.float32)


@pytest.fixture(scope="module")
def gre_axial():
    shape, aff = P.phantom_grid(3.0, margin_mm=6)
    return shape, aff, P.mni_head_phantom(shape, aff, None, contrasts=("GRE",), noise=0.02)


@pytest.fixture(scope="module")
def gre_oblique_lps():
    shape, aff = P.phantom_grid((3.0, 3.0, 3.5), rotation_deg=(15, 0, 0),
                                flip=(True, True, False), margin_mm=6)
    return shape, aff, P.mni_head_phantom(shape, aff, None, contrasts=("GRE",), noise=0.02)


# ------------------------------------------------------------------------------------------
# conventions
# ------------------------------------------------------------------------------------------

def test_ants_image_roundtrip_oblique_lps():
    _, aff = P.phantom_grid(3.0, rotation_deg=(12, -7, 4), flip=(True, True, False),
                            axes=(1, 0, 2))
    rng = np.random.default_rng(0)
    a = rng.random((5, 6, 7)).astype(np.float32)
    img = A.to_ants(a, aff)
    back, aff2 = A.from_ants(img)
    np.testing.assert_array_equal(back, a)
    np.testing.assert_allclose(aff2, aff, atol=1e-5)
    # ITK physical point (LPS) of a voxel is the RAS world point with x, y negated
    ijk = (1, 4, 2)
    ras = aff[:3, :3] @ np.array(ijk, float) + aff[:3, 3]
    lps = np.array(ants_bridge._ants().transform_index_to_physical_point(img, ijk))
    np.testing.assert_allclose(lps, ras * [-1, -1, 1], atol=1e-4)


def test_ants_affine_transform_roundtrip(tmp_path):
    T = A.rigid_matrix((5, -3, 8), (4, -2, 7), center=(10, -20, 5))
    ants = ants_bridge._ants()
    path = ants_bridge._ras_to_ants(T, tmp_path / "t.mat")
    np.testing.assert_allclose(ants_bridge._ants_to_ras(ants.read_transform(path)), T, atol=1e-9)


def test_resample_to_follows_the_transform_convention():
    """A phantom placed at M on grid B equals the identity phantom on grid A resampled with
    M onto B (x_B = M @ x_A)."""
    shape_a, aff_a = P.phantom_grid(3.0, margin_mm=10)
    shape_b, aff_b = P.phantom_grid(3.0, rotation_deg=(0, 0, 20), flip=(True, True, False))
    M = A.rigid_matrix((0, 0, 10), (6, -3, 2))
    pa = P.mni_head_phantom(shape_a, aff_a, None, contrasts=(), smooth=False)
    pb = P.mni_head_phantom(shape_b, aff_b, M, contrasts=(), smooth=False)
    moved = A.resample_to(pa["pv_brain"], aff_a, M, shape_b, aff_b, order=1)
    assert A.dice(moved > 0.5, pb["pv_brain"] > 0.5) > 0.97


def test_gre_reference_first_and_rss():
    rng = np.random.default_rng(1)
    mag = rng.random((4, 5, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(A.gre_reference(mag), mag[..., 0])
    np.testing.assert_allclose(A.gre_reference(mag, "rss"), np.sqrt((mag ** 2).sum(-1)),
                               rtol=1e-6)
    np.testing.assert_array_equal(A.gre_reference([mag[..., 0], mag[..., 1]]), mag[..., 0])
    with pytest.raises(ValueError):
        A.gre_reference(mag, "mean")


# ------------------------------------------------------------------------------------------
# registration
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grid,contrast,anat_kw", [
    ("axial", "T2w", dict(voxel_size=2.5)),
    ("oblique_lps", "T1w", dict(voxel_size=2.5, rotation_deg=(0, 8, -5),
                               flip=(True, True, False))),
])
def test_rigid_registration_recovers_known_transform(grid, contrast, anat_kw, request):
    shape_g, aff_g, gre = request.getfixturevalue(f"gre_{grid}")
    shape_a, aff_a = P.phantom_grid(**anat_kw)
    # x_GRE = M_true @ x_anat: the anatomy sits at inv(M_true) @ x in the anat world
    M_true = A.rigid_matrix((4, -3, 5), (3, -4, 5), center=(0, -18, 8))
    anat = P.mni_head_phantom(shape_a, aff_a, np.linalg.inv(M_true), contrasts=(contrast,),
                              noise=0.02, seed=3)
    M = A.rigid_register(anat[contrast], aff_a, gre["GRE"], aff_g)
    pts = A.world_coords(shape_g, aff_g)[gre["brain_mask"]]
    err = A.mean_displacement(M, M_true, A.apply_transform(np.linalg.inv(M_true), pts))
    assert err < 0.5, err
    # the registration actually moved: identity would be several mm off
    assert A.mean_displacement(np.eye(4), M_true,
                               A.apply_transform(np.linalg.inv(M_true), pts)) > 4


# ------------------------------------------------------------------------------------------
# N4
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def biased_anat():
    shape, aff = P.phantom_grid(3.0, rotation_deg=(10, -5, 3), flip=(True, True, False))
    p = P.mni_head_phantom(shape, aff, None, contrasts=("T1w", "T2w"), noise=0.01)
    return shape, aff, p, smooth_bias(shape, aff)


@pytest.mark.parametrize("contrast", ["T1w", "T2w"])
def test_n4_reduces_wm_cv_and_recovers_bias(biased_anat, contrast):
    shape, aff, p, bias = biased_anat
    img = p[contrast] * bias
    wm = p["pv_wm"] > 0.9
    corrected, est = A.n4(img, aff, convergence=N4_COARSE)
    cv0 = A.coefficient_of_variation(img, wm)
    cv1 = A.coefficient_of_variation(corrected, wm)
    assert cv1 <= 0.5 * cv0, (cv0, cv1)
    r = np.corrcoef(est[p["brain_mask"]], bias[p["brain_mask"]])[0, 1]
    assert r >= 0.9, r
    np.testing.assert_allclose(corrected * est, np.clip(img, 0, None), rtol=1e-4, atol=1e-6)


def test_n4_rejects_bad_mask(biased_anat):
    shape, aff, p, _ = biased_anat
    with pytest.raises(ValueError):
        A.n4(p["T1w"], aff, mask=np.zeros(shape, bool))
    with pytest.raises(ValueError):
        A.n4(p["T1w"], aff, mask="skull")
    with pytest.raises(ValueError):
        A.n4(p["T1w"], aff, crop_mm=-1)


# ------------------------------------------------------------------------------------------
# brain masks
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", ["axial", "oblique_lps"])
def test_brain_mask_from_magnitude(grid, request):
    shape, aff, gre = request.getfixturevalue(f"gre_{grid}")
    mask, method = A.brain_mask_from_magnitude(gre["GRE"], aff)
    assert method == "magnitude-otsu"
    assert A.dice(mask, gre["intracranial_mask"]) >= 0.9


def test_brain_mask_from_t1(gre_oblique_lps):
    shape_g, aff_g, gre = gre_oblique_lps
    shape_a, aff_a = P.phantom_grid(2.5, flip=(True, True, False))
    M_true = A.rigid_matrix((3, 2, -4), (2, -3, 4), center=(0, -18, 8))
    # participant anatomy: the template scaled by 5 % and moved (affine, like a real head)
    S = A.rigid_matrix(center=(0, -18, 8))
    S[:3, :3] *= 1.05
    t1 = P.mni_head_phantom(shape_a, aff_a, np.linalg.inv(M_true) @ S, contrasts=("T1w",),
                            noise=0.01)
    g = P.mni_head_phantom(shape_g, aff_g, S, contrasts=("GRE",), noise=0.02)
    mask, method, det = A.brain_mask_from_t1(t1["T1w"], aff_a, M_true, g["GRE"], aff_g,
                                             working_mm=3.0, return_details=True)
    assert method.startswith("mni152")
    d = A.dice(mask, g["intracranial_mask"])
    assert d >= 0.93, d
    # the template landed on the T1w: its brain mask there overlaps the phantom's brain
    prior_dice = A.dice(det["prior"], g["intracranial_mask"])
    assert prior_dice >= 0.85, prior_dice


# ------------------------------------------------------------------------------------------
# QC figures
# ------------------------------------------------------------------------------------------

def test_qc_pngs(tmp_path, gre_oblique_lps):
    shape, aff, gre = gre_oblique_lps
    p1 = qc.qc_registration_png(gre["GRE"], gre["GRE"], tmp_path / "reg.png", affine=aff,
                               title="t")
    p2 = qc.qc_mask_png(gre["GRE"], gre["brain_mask"], tmp_path / "mask.png", affine=aff)
    for p in (p1, p2):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
