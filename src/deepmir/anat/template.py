"""Where each voxel of a participant lies in MNI space: nilearn's MNI152 template registered
to the bias-corrected T1w — the affine fit of the brain-mask stage refined by a SyN
(symmetric diffeomorphic, antspyx) warp — and written as an "MNI coordinate map" on the
MEGRE grid: three volumes holding, for every MEGRE voxel, its x, y, z in MNI mm (RAS).

A coordinate map is a transform any tool can read (no ITK transform files, no
composition order to get wrong): the census looks up a lesion's region by interpolating
the map at the lesion's centroid. Linear interpolation of the template's own coordinates
through the warp is exact for the affine part and follows the warp elsewhere."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from deepmir import settings
from deepmir.anat.ants import _ants, _ants_seed, _ras_to_ants, to_ants
from deepmir.anat.mask import _ball
from deepmir.anat.mni import mni_template
from deepmir.anat.register import downsample, resample_to, world_coords

# SyN settings: antspyx derives the pyramid from the number of levels (3 levels: shrink 4×2×1,
# smoothing 2×1×0 voxels); 0 iterations at the finest (working_mm) level keeps it at ≈30 s.
# Chosen on the demo cohort (seed 1): Mattes matched the template's tissue labels to the
# truth better than CC, the finest level added ≈1 % for 3× the time.
_CENSUS = settings.defaults("census")          # census.syn_working_mm, census.syn_iterations
DEFAULT_SYN = {"working_mm": _CENSUS["syn_working_mm"], "iterations": tuple(_CENSUS["syn_iterations"]), "flow_sigma": 3.0,
               "total_sigma": 0.0, "grad_step": 0.2, "metric": "mattes", "radius": 32}


_OUTSIDE = 1e6   # ANTs takes no NaN as default value; anything this far is "outside"


def warp_template_to_t1(t1, t1_affine, M_tpl_to_t1, seed=42, syn=None):
    """SyN registration of the MNI152 template (moving) to the participant's bias-corrected
    T1w (fixed), both at ``working_mm``, started from the affine ``M_tpl_to_t1``
    (x_T1w = M @ x_MNI, from the brain-mask stage). The metric is restricted to the
    template's brain mask carried through the affine and dilated by 8 mm (the template is
    skull-stripped, the T1w is not).

    Returns ``(coords, affine)``: the MNI coordinate map on the downsampled T1w grid
    (shape (*grid, 3), RAS mm) and that grid's affine."""
    ants = _ants()
    p = dict(DEFAULT_SYN, **(syn or {}))
    tpl, tpl_mask, _, tpl_aff = mni_template(p["working_mm"])
    t1, t1_aff = downsample(np.asarray(t1, np.float32), t1_affine, p["working_mm"])
    M = np.asarray(M_tpl_to_t1, float)
    prior = resample_to(tpl_mask.astype(np.float32), tpl_aff, M, t1.shape, t1_aff) > 0.5
    fmask = ndi.binary_dilation(prior, structure=_ball(8.0, t1_aff)) if prior.any() else None
    fixed = to_ants(t1, t1_aff)
    moving = to_ants(tpl * tpl_mask, tpl_aff)
    with tempfile.TemporaryDirectory(prefix="deepmir-syn-") as tmp, _ants_seed(seed):
        # ITK transform maps fixed (T1w) points to moving (MNI) points: x_MNI = M⁻¹ x_T1w
        init = _ras_to_ants(np.linalg.inv(M), Path(tmp) / "init.mat")
        reg = ants.registration(
            fixed, moving, type_of_transform="SyNOnly", initial_transform=init,
            mask=None if fmask is None else to_ants(fmask.astype(np.float32), t1_aff),
            syn_metric=p["metric"],
            syn_sampling=p["radius"], reg_iterations=tuple(p["iterations"]),
            flow_sigma=p["flow_sigma"], total_sigma=p["total_sigma"], grad_step=p["grad_step"],
            outprefix=str(Path(tmp) / "syn_"), random_seed=seed)
        transforms = reg["fwdtransforms"]
        if not any(str(t).endswith(".mat") for t in transforms):
            transforms = list(transforms) + [init]
        coords = np.stack([
            ants.apply_transforms(fixed, to_ants(c, tpl_aff), transforms,
                                  interpolator="linear", defaultvalue=_OUTSIDE).numpy()
            for c in np.moveaxis(world_coords(tpl.shape, tpl_aff), -1, 0).astype(np.float32)],
            axis=-1)
    coords[np.abs(coords).max(-1) > _OUTSIDE / 10] = np.nan   # outside the template's grid
    return coords.astype(np.float32), t1_aff


def coordinates_on_grid(coords, coords_affine, M_src_to_target, shape, affine):
    """Carry an MNI coordinate map (*grid, 3) onto another grid (e.g. T1w → MEGRE with
    x_MEGRE = M @ x_T1w), by linear interpolation of each coordinate; NaN outside."""
    return np.stack([resample_to(coords[..., c], coords_affine,
                                      M_src_to_target, shape, affine, order=1, cval=np.nan)
                     for c in range(3)], axis=-1).astype(np.float32)


def mni_at(coords, points_vox):
    """MNI mm (N×3) at voxel positions (N×3, fractional) of a coordinate map (*grid, 3):
    linear interpolation, nearest defined value where the neighbourhood is undefined."""
    pts = np.atleast_2d(np.asarray(points_vox, float))
    out = np.stack([ndi.map_coordinates(np.nan_to_num(coords[..., c], nan=0.0), pts.T, order=1,
                                        mode="nearest") for c in range(3)], axis=1)
    valid = ndi.map_coordinates(np.isfinite(coords[..., 0]).astype(np.float32), pts.T, order=1,
                                mode="nearest")
    out[valid < 0.999] = np.nan
    return out
