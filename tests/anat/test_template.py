"""The MNI coordinate map (SyN template registration) against a known deformation."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from deepmir import anat
from deepmir.anat import template


def _deformation(points):
    """A smooth known displacement (mm) of 3 mm amplitude, 90–120 mm wavelengths."""
    k = np.array([[1 / 90, 0.3 / 90, 0], [0, 1 / 110, 0.4 / 110], [0.5 / 120, 0, 1 / 120]])
    return 3.0 * np.sin(2 * np.pi * points @ k.T + np.array([0.3, 1.1, 2.0]))


def test_syn_coordinate_map_recovers_a_known_deformation():
    tpl, mask, _, aff = anat.mni_template(2.0)
    ijk = np.indices(tpl.shape).reshape(3, -1).T.astype(float)
    x = ijk @ aff[:3, :3].T + aff[:3, 3]
    true_mni = x + _deformation(x)          # the "participant" shows the template at x + u(x)
    vox = (true_mni - aff[:3, 3]) @ np.linalg.inv(aff[:3, :3]).T
    t1 = ndi.map_coordinates(tpl, vox.T, order=1, mode="constant").reshape(tpl.shape)
    coords, c_aff = template.warp_template_to_t1(t1, aff, np.eye(4))   # default settings
    on_t1 = template.coordinates_on_grid(coords, c_aff, np.eye(4), tpl.shape, aff).reshape(-1, 3)
    brain = ndi.binary_erosion(mask, iterations=3).ravel()
    err_syn = np.linalg.norm(on_t1[brain] - true_mni[brain], axis=1)
    err_affine = np.linalg.norm(x[brain] - true_mni[brain], axis=1)   # what the affine start gives
    assert np.isfinite(err_syn).all()
    assert err_affine.mean() > 2.5
    assert err_syn.mean() < 1.2 and err_syn.mean() < 0.4 * err_affine.mean()


def test_lookup_in_an_affine_coordinate_map_is_exact():
    M = anat.rigid_matrix((5, -3, 8), (4, -2, 7))              # x_target = M @ x_MNI
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    aff[:3, 3] = [-40, -50, -30]
    # the MNI coordinate map of that affine: x_MNI = M⁻¹ x_target at every voxel
    c = anat.apply_transform(np.linalg.inv(M), anat.world_coords((50, 60, 40), aff).reshape(-1, 3))
    c = c.reshape(50, 60, 40, 3).astype(np.float32)
    pts = np.array([[10.25, 20.5, 7.75], [33.0, 41.2, 18.6]])
    world = pts @ aff[:3, :3].T + aff[:3, 3]
    expect = world @ np.linalg.inv(M)[:3, :3].T + np.linalg.inv(M)[:3, 3]
    assert template.mni_at(c, pts) == pytest.approx(expect, abs=1e-3)
    c[:3] = np.nan                                                # undefined near the edge → NaN
    assert np.isnan(template.mni_at(c, [[1.0, 5.0, 5.0]])).all()
