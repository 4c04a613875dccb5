"""The forward model: dipole field of a uniformly magnetised sphere against the analytic
field, B0 direction from affines."""
import numpy as np
import pytest

from deepmir.dipole import b0_direction, dipole_field, dipole_kernel
from deepmir.synth.cohort import grid_affine


def sphere_case(b0, n=64, radius=6.0, dchi=1.0, vs=(1.0, 1.0, 1.0)):
    c = (np.asarray([n, n, n]) - 1) / 2
    ijk = np.indices((n, n, n)).reshape(3, -1).T - c
    r_mm = ijk * np.asarray(vs)
    r = np.linalg.norm(r_mm, axis=1)
    # sub-voxel occupancy (4³ samples) so the discrete sphere is a good sphere
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    off = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3) * np.asarray(vs)
    near = np.abs(r - radius) < 1.5 * max(vs)
    occ = (r <= radius).astype(float)
    occ[near] = (np.linalg.norm(r_mm[near][:, None, :] + off[None], axis=2) <= radius).mean(1)
    chi = (dchi * occ).reshape(n, n, n)
    field = dipole_field(chi, vs, b0, pad_factor=2.0).ravel()
    cos = (r_mm @ np.asarray(b0)) / np.maximum(r, 1e-9)
    analytic = dchi / 3 * (radius / np.maximum(r, 1e-9)) ** 3 * (3 * cos ** 2 - 1)
    return r, field, analytic


@pytest.mark.parametrize("b0", [(0, 0, 1), (0, np.sin(0.3), np.cos(0.3)), (0.3, -0.2, 0.93)])
def test_sphere_field_outside_matches_analytic(b0):
    b0 = np.asarray(b0, float) / np.linalg.norm(b0)
    radius = 6.0
    r, field, analytic = sphere_case(b0, radius=radius)
    peak = 2 / 3  # the field at the poles, Δχ = 1
    outside = (r > radius + 1.5) & (r < 28)
    err = np.abs(field[outside] - analytic[outside]).max()
    assert err < 0.05 * peak, err
    # inside a uniformly magnetised sphere the (Lorentz-corrected) field is zero
    inside = r < radius - 1.5
    assert np.abs(field[inside]).max() < 0.1 * peak  # discrete-kernel ringing inside
    # paramagnetic sphere: positive field along B0 above and below it
    axis_pts = (r > radius + 2) & (np.abs(analytic - peak * (radius / np.maximum(r, 1e-9)) ** 3) < 1e-6)
    assert np.all(field[axis_pts] > 0)


def test_sphere_field_anisotropic_voxels():
    r, field, analytic = sphere_case((0, 0, 1), n=64, radius=7.0, vs=(1.0, 1.0, 1.5))
    outside = (r > 7.0 + 2.5) & (r < 30)
    assert np.abs(field[outside] - analytic[outside]).max() < 0.05 * 2 / 3


def test_kernel_zero_at_dc_and_symmetric():
    d = dipole_kernel((16, 18, 20), (1, 1, 2), (0, 0, 1)).numpy()
    assert d[0, 0, 0] == 0
    assert d.max() <= 1 / 3 + 1e-6 and d.min() >= -2 / 3 - 1e-6
    # k along B0 gives −2/3, k perpendicular gives +1/3
    assert d[0, 0, 1] == pytest.approx(-2 / 3)
    assert d[1, 0, 0] == pytest.approx(1 / 3)


@pytest.mark.parametrize("orientation,oblique", [("RAS", 0), ("LPS", 0), ("RAS", 20), ("LPS", -15)])
def test_b0_direction_from_affine(orientation, oblique):
    aff = grid_affine((10, 12, 8), (1.0, 1.2, 2.0), orientation, oblique)
    b = b0_direction(aff)
    t = np.deg2rad(oblique)
    # the grid is tilted about x by `oblique`; LPS flips the first two axes
    expected = np.array([0.0, np.sin(t), np.cos(t)]) * (np.array([1, -1, 1]) if orientation == "LPS" else 1)
    assert np.allclose(b, expected, atol=1e-9)
    # the B0 direction in world coordinates is z, whatever the grid
    world = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0) @ b
    assert np.allclose(world, [0, 0, 1], atol=1e-9)
