"""Anatomical preprocessing numerics: N4 bias correction, rigid registration of T1w/T2w onto
the GRE (MEGRE / SWI) grid, brain masks, QC figures (method.md §2).

Conventions (used by every function here and by the files the ``deepmir`` commands write)
-----------------------------------------------------------------------------------------
* An image is a numpy array plus its NIfTI affine ``A`` (4×4): ``A @ (i, j, k, 1)`` is the
  world position of voxel (i, j, k) in **RAS millimetres** (x → Right, y → Anterior,
  z → Superior; nibabel / NIfTI convention). Any orientation is allowed: oblique, LPS- or
  RAS-ordered arrays, slices along any array axis.
* A spatial transform is a 4×4 matrix ``M`` in world RAS mm that maps a point of the
  **moving** image to the **fixed** image, for the same anatomical location::

      x_fixed_world = M @ x_moving_world          (homogeneous column vectors)

  so ``from-T1w_to-MEGRE`` is the ``M`` with the T1w as moving image and the GRE as fixed
  image, ``x_MEGRE = M @ x_T1w``. Composition reads right to left:
  ``M_tpl_to_gre = M_t1_to_gre @ M_tpl_to_t1``.
  To *resample* a moving image onto the fixed grid one needs the opposite direction (pull
  back): fixed voxel v → ``inv(A_moving) @ inv(M) @ A_fixed @ v`` (see ``resample_to``).
* ANTs (ITK) works in **LPS** (x → Left, y → Posterior) and its registration transforms map
  **fixed → moving** points (the pull-back direction). The one conversion point is
  ``to_ants`` / ``from_ants`` for images and ``_ants_to_ras`` / ``_ras_to_ants`` for affine
  transforms: ``T_ras = F @ T_lps @ F`` with ``F = diag(-1, -1, 1, 1)``, and
  ``M = inv(T_ras)``.
* Determinism: every ANTs call here runs with a fixed random seed (``seed``) for its metric
  sampling; set ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1`` for bit-identical results across
  machines with different core counts (multi-threaded sums may differ in the last bits).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from deepmir import niio
from deepmir.geometry import voxel_sizes

_F = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)

DEFAULT_N4_CONVERGENCE = {"iters": [50, 50, 50, 50], "tol": 1e-7}


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------

def _ants():
    import ants  # imported lazily: slow import, and only the numerics need it
    return ants


@contextlib.contextmanager
def _ants_seed(seed):
    """Run ANTs calls with ``--random-seed seed`` (antspyx reads ``ants.config``)."""
    ants = _ants()
    old = ants.config._random_seed
    ants.config._random_seed = None if seed is None else int(seed)
    try:
        yield
    finally:
        ants.config._random_seed = old


def _check_3d(a, name):
    a = np.asarray(a)
    if a.ndim != 3:
        raise ValueError(f"{name}: expected a 3D array, got shape {a.shape}")
    return a


def world_coords(shape, affine, index=None):
    """World RAS mm of voxel indices (``index`` (N,3)), or of every voxel of ``shape``
    (returned as an array of shape shape + (3,))."""
    affine = np.asarray(affine, dtype=float)
    if index is None:
        grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
        return (affine[:3, :3] @ grid + affine[:3, 3:4]).T.reshape(tuple(shape) + (3,))
    index = np.asarray(index, dtype=float)
    return index @ affine[:3, :3].T + affine[:3, 3]


def apply_transform(M, points):
    """``M @ p`` for points (N,3) in world mm."""
    M = np.asarray(M, dtype=float)
    p = np.asarray(points, dtype=float)
    return p @ M[:3, :3].T + M[:3, 3]


def rigid_matrix(rotation_deg=(0.0, 0.0, 0.0), translation_mm=(0.0, 0.0, 0.0),
                 center=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4×4 world transform: rotation about x, then y, then z (degrees, right-handed, about
    ``center`` in world mm) followed by a translation (mm)."""
    ax, ay, az = np.deg2rad(rotation_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    r = rz @ ry @ rx
    c = np.asarray(center, dtype=float)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(translation_mm, dtype=float)
    return m


def mean_displacement(M_est, M_true, points_world) -> float:
    """Mean ‖M_est p − M_true p‖ (mm) over world points ``points_world`` (N,3)."""
    d = apply_transform(M_est, points_world) - apply_transform(M_true, points_world)
    return float(np.mean(np.linalg.norm(d, axis=1)))


def dice(a, b) -> float:
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / s) if s else 1.0


def coefficient_of_variation(image, mask) -> float:
    v = np.asarray(image, dtype=float)[np.asarray(mask, bool)]
    return float(v.std() / v.mean())


# --------------------------------------------------------------------------------------
# numpy + affine  <->  ANTs  (the one conversion point)
# --------------------------------------------------------------------------------------

def to_ants(array, affine):
    """ANTsImage (float32, LPS physical space) of a 3D array with a RAS NIfTI affine.

    The affine must be a rotation/reflection times voxel sizes (no shear), which is what
    NIfTI qforms and scanner sforms are; a sheared affine raises ``ValueError``.
    """
    ants = _ants()
    array = _check_3d(array, "image")
    lps = _F @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError("affine has a zero-length voxel axis")
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("affine has shear (its 3×3 part is not rotation × voxel sizes)")
    return ants.from_numpy(np.ascontiguousarray(array, dtype=np.float32),
                           origin=tuple(float(x) for x in lps[:3, 3]),
                           spacing=tuple(float(x) for x in spacing),
                           direction=direction)


def from_ants(img):
    """(array, RAS affine) of a 3D ANTsImage."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.direction, dtype=float) @ np.diag(img.spacing)
    lps[:3, 3] = img.origin
    return img.numpy(), _F @ lps


def _ants_to_ras(tx) -> np.ndarray:
    """4×4 RAS matrix of an ANTs/ITK affine transform (same direction as the ITK one).

    ITK: ``p' = A (p − c) + t + c`` in LPS with parameters = (A row-major, t) and fixed
    parameters = c.
    """
    par = np.asarray(tx.parameters, dtype=float)
    c = np.asarray(tx.fixed_parameters, dtype=float)
    a = par[:9].reshape(3, 3)
    t = par[9:12]
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = t + c - a @ c
    return _F @ lps @ _F


def _ras_to_ants(T_ras, path):
    """Write the RAS matrix ``T_ras`` (same direction as the wanted ITK transform) as an ITK
    AffineTransform file and return the path."""
    ants = _ants()
    lps = _F @ np.asarray(T_ras, dtype=float) @ _F
    tx = ants.create_ants_transform(transform_type="AffineTransform", precision="double",
                                    dimension=3, matrix=lps[:3, :3],
                                    translation=lps[:3, 3], center=(0.0, 0.0, 0.0))
    ants.write_transform(tx, str(path))
    return str(path)


# --------------------------------------------------------------------------------------
# N4
# --------------------------------------------------------------------------------------

def head_mask(image, affine, scale=0.5, close_mm=4.0):
    """Foreground (head) mask of an anatomical image, the region N4 fits its field on:
    voxels above ``scale`` × the Otsu threshold of the positive voxels, morphological
    closing (``close_mm``), largest connected component, holes filled. Excluding the
    air background (noise only) keeps N4 from fitting the field to noise."""
    img = np.asarray(_check_3d(image, "image"), dtype=np.float32)
    pos = img[img > 0]
    if pos.size == 0:
        return np.zeros(img.shape, bool)
    m = img > otsu_threshold(pos) * scale
    if close_mm > 0:
        ball = _ball(close_mm, affine)
        pad = max(ball.shape)
        m = ndi.binary_closing(np.pad(m, pad), structure=ball)[
            tuple(slice(pad, -pad) for _ in range(3))]
    return fill_holes(largest_component(m))


def _bbox(mask, affine, margin_mm):
    """Index slices of the bounding box of ``mask`` widened by ``margin_mm`` (clipped to the
    grid) and the affine of the cropped grid."""
    idx = np.argwhere(mask)
    m = np.ceil(float(margin_mm) / voxel_sizes(affine)).astype(int)
    lo = np.maximum(idx.min(0) - m, 0)
    hi = np.minimum(idx.max(0) + m + 1, mask.shape)
    aff = np.asarray(affine, dtype=float).copy()
    aff[:3, 3] = aff[:3, :3] @ lo + aff[:3, 3]
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), aff


def n4_brain_mask(image, affine, working_mm=2.0):
    """Brain mask N4 can fit its field on, from a T1w/T2w (uncorrected: a smooth ±20 % field
    moves the Otsu threshold little): ``brain_mask_from_magnitude`` (Otsu, opening that cuts the scalp off, largest component,
    closing, holes filled) at ``working_mm`` isotropic (for speed; the mask only has to tell
    brain from scalp, skull and air), back on the image grid."""
    img = np.asarray(_check_3d(image, "image"), dtype=np.float32)
    small, s_aff = downsample(img, affine, working_mm)
    m, _ = brain_mask_from_magnitude(small, s_aff)
    return resample_to(m.astype(np.float32), s_aff, None, img.shape, affine, order=1) > 0.5


def _n4_fit(img, affine, mask, shrink_factor, conv, spline, rescale_intensities, weight_mask,
            crop_mm):
    """The bias field antspyx's N4 fits on ``mask`` (cropped to its box widened by
    ``crop_mm``), on the whole image grid."""
    ants = _ants()
    sl = tuple(slice(0, n) for n in img.shape)
    aff = np.asarray(affine, dtype=float)
    if mask is not None and crop_mm is not None:
        sl, aff = _bbox(mask, affine, crop_mm)
    a_img = to_ants(img[sl], aff)
    a_mask = None if mask is None else to_ants(mask[sl].astype(np.float32), aff)
    a_w = None if weight_mask is None else to_ants(
        np.asarray(weight_mask, np.float32)[sl], aff)
    bias = ants.n4_bias_field_correction(
        a_img, mask=a_mask, rescale_intensities=rescale_intensities,
        shrink_factor=int(shrink_factor), convergence=conv, spline_param=spline,
        return_bias_field=True, weight_mask=a_w).numpy().astype(np.float32)
    if bias.shape != img.shape:
        # outside the box (air only) the field continues with its edge values
        bias = np.pad(bias, [(a.start, n - a.stop) for a, n in zip(sl, img.shape)],
                      mode="edge")
    return bias


def n4(image, affine, mask="brain", shrink_factor=4, convergence=None, spline_distance_mm=200.0,
       return_bias=True, rescale_intensities=False, weight_mask=None, crop_mm=10.0):
    """N4 bias-field correction (antspyx ``n4_bias_field_correction``).

    Defaults are the standard ANTs settings (``N4BiasFieldCorrection`` as called by
    antsBrainExtraction / antsCorticalThickness / fMRIPrep): ``shrink_factor`` 4,
    ``convergence`` ``{'iters': [50, 50, 50, 50], 'tol': 1e-7}`` (4 fitting levels),
    B-spline of order 3 with an initial knot spacing of ``spline_distance_mm`` 200 mm
    (the mesh doubles at every level; ``None`` = antspyx's mesh of one element per axis),
    no intensity rescaling. ``weight_mask`` (array) weights the voxels.

    ``mask`` selects the voxels the field is fitted on:

    * ``'head'``: ``head_mask`` (Otsu foreground, closed, holes filled);
    * ``'brain'`` (default; antsCorticalThickness' final N4 also fits on the brain): the
      brain of the input itself (``n4_brain_mask``): scalp fat, skull and their partial
      volumes do not pull the field, the fit is on the tissue classes whose histogram N4
      sharpens, and there are fewer voxels to fit (paper-scale synthetic cohort, T2w: bias
      r 0.94 → 0.99 and about half the time of the head mask);
    * ``None`` (every voxel, as bare N4) or a boolean array on the image grid.

    ``crop_mm``: N4 runs on the bounding box of the mask widened by this much (None: on the
    whole grid). Only the fit's domain shrinks, the voxels it fits are the same; outside the
    box the field keeps its edge values. N4 pads its domain to a whole number of knot spans
    (a 224 mm axis becomes 400 mm with 200 mm knots), so a box within 200 mm saves some
    time (≈ 10 % here: the fit's cost is mostly in the masked voxels).

    Negative intensities (interpolation undershoot) are clipped to 0 first; N4 works on the
    logarithm. Returns ``(corrected, bias)`` (float32, ``corrected = image / bias``) or only
    ``corrected`` when ``return_bias`` is False. The bias field is defined up to a constant
    factor; N4 fits it so that the corrected image keeps the input's scale roughly.
    """
    img = np.clip(np.asarray(_check_3d(image, "image"), dtype=np.float32), 0, None)
    conv = dict(DEFAULT_N4_CONVERGENCE if convergence is None else convergence)
    conv["iters"] = [int(i) for i in conv["iters"]]
    conv["tol"] = float(conv["tol"])
    if not conv["iters"] or min(conv["iters"]) < 1:
        raise ValueError("N4 iterations: at least one level, each ≥ 1 iteration")
    if int(shrink_factor) < 1:
        raise ValueError("shrink_factor must be ≥ 1")
    # antspyx: a scalar spline_param is a knot spacing in mm (formatted "[%i]"), None a mesh
    # of one element per axis; the B-spline order is ANTs' default 3
    spline = None if spline_distance_mm is None else int(round(float(spline_distance_mm)))
    if spline is not None and spline <= 0:
        raise ValueError("spline_distance_mm must be positive")
    if crop_mm is not None and float(crop_mm) < 0:
        raise ValueError("crop_mm must be ≥ 0")
    if isinstance(mask, str) and mask not in ("head", "brain"):
        raise ValueError(f"unknown N4 mask {mask!r} (head, brain, or an array)")
    if weight_mask is not None and np.shape(weight_mask) != img.shape:
        raise ValueError(f"weight mask shape {np.shape(weight_mask)} != image shape "
                         f"{img.shape}")
    if isinstance(mask, str) and mask == "brain":
        mask = n4_brain_mask(img, affine)
        if mask.sum() < 1000:
            raise ValueError("N4: the brain mask of the input is (nearly) empty")
    elif isinstance(mask, str):
        mask = head_mask(img, affine)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != img.shape:
            raise ValueError(f"mask shape {mask.shape} != image shape {img.shape}")
        if not mask.any():
            raise ValueError("N4 mask is empty")
    bias = _n4_fit(img, affine, mask, shrink_factor, conv, spline, rescale_intensities,
                   weight_mask, crop_mm)
    # corrected = input / bias is exactly what N4 outputs (without rescaling); computing it
    # here avoids a second N4 run.
    corrected = np.where(bias > 0, img / np.where(bias > 0, bias, 1), 0).astype(np.float32)
    return (corrected, bias) if return_bias else corrected


# --------------------------------------------------------------------------------------
# Rigid registration
# --------------------------------------------------------------------------------------

def gre_reference(magnitudes, method="first"):
    """The fixed image for T1w/T2w → GRE registration, from the echo magnitudes (a 4D array
    with echoes on the last axis, a list of 3D echoes, shortest TE first, or one 3D array).

    ``method`` 'first' (default): the **first-echo magnitude**; 'rss': the root-sum-of-squares
    over echoes. Echo 1 because (i) it has the least T2* dephasing, so the least signal
    drop-out near air–tissue interfaces (frontal sinus, temporal bones), where later echoes
    (and so the RSS) have voids that the T1w/T2w do not have and that would pull the mutual
    information, (ii) veins, iron and microbleeds are least dark, so its contrast is closest
    to the T1w/T2w anatomy, (iii) it is the echo SWI is computed from, so the SWI grid and the
    fixed image are the same data, and (iv) its SNR is the highest of all echoes and ample
    for a 6-parameter fit over ~10⁶ voxels, so the RSS's SNR gain buys nothing measurable
    (on the synthetic cohort both give < 0.05 mm mean displacement).
    """
    if isinstance(magnitudes, np.ndarray):
        if magnitudes.ndim == 3:
            return np.asarray(magnitudes, dtype=np.float32)
        if magnitudes.ndim != 4:
            raise ValueError(f"expected 3D or 4D magnitudes, got shape {magnitudes.shape}")
        echoes = [magnitudes[..., k] for k in range(magnitudes.shape[-1])]
    else:
        echoes = [np.asarray(m) for m in magnitudes]
    if method == "first":
        return np.asarray(echoes[0], dtype=np.float32)
    if method == "rss":
        return np.sqrt(sum(np.asarray(e, dtype=np.float64) ** 2 for e in echoes)).astype(
            np.float32)
    raise ValueError(f"unknown GRE reference {method!r} (first, rss)")


def _com_world(array, affine, mask=None):
    a = np.clip(np.asarray(array, dtype=float), 0, None)
    if mask is not None:
        a = a * np.asarray(mask, bool)
    s = a.sum()
    if s <= 0:
        return world_coords(array.shape, affine, [(np.array(array.shape) - 1) / 2.0])[0]
    idx = np.array(ndi.center_of_mass(a))
    return world_coords(array.shape, affine, idx[None])[0]


def initial_transform(moving, moving_affine, fixed, fixed_affine, init="auto",
                      max_shift_mm=40.0):
    """Starting 4×4 (moving → fixed world) for ``rigid_register``.

    ``init``: ``'identity'`` (trust the scanner world coordinates — images of one session),
    ``'com'`` (translate the moving intensity centre of mass onto the fixed one),
    ``'auto'`` (identity unless the two centres of mass are more than ``max_shift_mm`` apart
    in world space, then 'com': scanner images of one session start from their world
    alignment, images with unrelated world origins from their centres), or a 4×4 matrix.
    """
    if not isinstance(init, str):
        m = np.asarray(init, dtype=float)
        if m.shape != (4, 4):
            raise ValueError("init matrix must be 4×4")
        return m
    if init == "identity":
        return np.eye(4)
    c_m = _com_world(moving, moving_affine)
    c_f = _com_world(fixed, fixed_affine)
    shift = np.eye(4)
    shift[:3, 3] = c_f - c_m
    if init == "com":
        return shift
    if init == "auto":
        return np.eye(4) if np.linalg.norm(c_f - c_m) <= max_shift_mm else shift
    raise ValueError(f"unknown init {init!r}")


def rigid_register(moving, moving_affine, fixed, fixed_affine, metric="mattes",
                   transform="Rigid", init="auto", fixed_mask=None, moving_mask=None,
                   bins=32, sampling_rate=0.2, iterations=(2100, 1200, 1200, 10),
                   shrink_factors=(6, 4, 2, 1), smoothing_sigmas=(3, 2, 1, 0),
                   seed=42, finest_mm=None, return_info=False):
    """Register ``moving`` onto ``fixed`` with antspyx (default: rigid, Mattes mutual
    information, 32 bins, 20 % regular-random sampling, ANTs' 4-level pyramid) and return
    the 4×4 **world RAS** matrix ``M`` with ``x_fixed_world = M @ x_moving_world``.

    For T1w/T2w → GRE use the GRE first-echo magnitude as ``fixed`` (``gre_reference``).
    ``metric``: 'mattes' (mutual information, default, for different contrasts), 'mi'
    (joint-histogram MI), 'gc' or 'meansquares'/'cc' for same-contrast data.
    ``transform``: 'Rigid' (6 dof), 'Similarity' or 'Affine' (12 dof, used for template →
    participant). ``init``: see ``initial_transform``. Masks are boolean arrays on the
    fixed / moving grid restricting where the metric is evaluated. ``seed`` fixes the
    metric's random sampling so results are reproducible.

    ``finest_mm`` (e.g. 2.0) replaces the 4-level pyramid by 3 levels whose finest one works
    at about that voxel size: both images are first brought to voxels of at least
    ``finest_mm`` (``downsample``: Gaussian pre-filter, linear resampling; axes already
    coarser are kept), then shrink factors (4f, 2f, f) with f = max(1, ⌊finest_mm / smallest
    fixed voxel⌋) (1 after the downsampling), smoothing σ (1.5f, f, 0.5f) voxels,
    ``iterations`` (give 3). ANTs then never touches the full-resolution grids (its pyramid
    smoothing and the two warped images it writes are the bulk of a rigid fit's time),
    for a rigid fit that stays far below 0.5 mm (paper-scale synthetic cohort: see
    bench/anat_bench.py). The returned matrix is in world mm, valid on the full grids.

    With ``return_info`` also returns a dict (initial matrix, ANTs fixed→moving LPS matrix).
    """
    ants = _ants()
    metric_name = {"mattes": "mattes", "mi": "mattes", "gc": "GC", "meansquares": "meansquares",
                   "cc": "CC"}.get(str(metric).lower())
    if metric_name is None:
        raise ValueError(f"unknown metric {metric!r}")
    if str(metric).lower() == "mi":
        metric_name = "MI"
    moving = np.asarray(_check_3d(moving, "moving"), dtype=np.float32)
    fixed = np.asarray(_check_3d(fixed, "fixed"), dtype=np.float32)
    m0 = initial_transform(moving, moving_affine, fixed, fixed_affine, init)
    if finest_mm is not None:
        # ANTs would smooth and warp the full-resolution images at every level (and write
        # both warped images); the finest level works at finest_mm anyway, so hand it
        # images already at about that voxel size (Gaussian pre-filtered, ``downsample``)
        finest_mm = float(finest_mm)
        if finest_mm <= 0:
            raise ValueError("finest_mm must be positive")
        fixed_affine_full, moving_affine_full = fixed_affine, moving_affine
        fixed, fixed_affine = downsample(fixed, fixed_affine, finest_mm)
        moving, moving_affine = downsample(moving, moving_affine, finest_mm)
        if fixed_mask is not None:
            fixed_mask = resample_to(np.asarray(fixed_mask, np.float32), fixed_affine_full,
                                     None, fixed.shape, fixed_affine, order=1) > 0.5
        if moving_mask is not None:
            moving_mask = resample_to(np.asarray(moving_mask, np.float32),
                                      moving_affine_full, None, moving.shape, moving_affine,
                                      order=1) > 0.5
        f = max(1, int(np.floor(finest_mm / voxel_sizes(fixed_affine).min() + 1e-6)))
        shrink_factors = (4 * f, 2 * f, f)
        smoothing_sigmas = (1.5 * f, 1.0 * f, 0.5 * f)
    n = len(iterations)
    if not (len(shrink_factors) == len(smoothing_sigmas) == n):
        raise ValueError("iterations, shrink_factors and smoothing_sigmas differ in length")
    a_fix = to_ants(fixed, fixed_affine)
    a_mov = to_ants(moving, moving_affine)
    a_fmask = None if fixed_mask is None else to_ants(np.asarray(fixed_mask, np.float32),
                                                      fixed_affine)
    a_mmask = None if moving_mask is None else to_ants(np.asarray(moving_mask, np.float32),
                                                       moving_affine)
    with tempfile.TemporaryDirectory(prefix="deepmir-reg-") as tmp, _ants_seed(seed):
        # ITK initial transform maps fixed -> moving points: inverse of m0, in LPS
        init_path = _ras_to_ants(np.linalg.inv(m0), Path(tmp) / "init.mat")
        reg = ants.registration(
            fixed=a_fix, moving=a_mov, type_of_transform=transform,
            initial_transform=[init_path], outprefix=str(Path(tmp) / "reg_"),
            mask=a_fmask, moving_mask=a_mmask, aff_metric=metric_name, aff_sampling=bins,
            aff_random_sampling_rate=sampling_rate,
            aff_iterations=tuple(int(i) for i in iterations),
            aff_shrink_factors=tuple(int(s) for s in shrink_factors),
            aff_smoothing_sigmas=tuple(float(s) for s in smoothing_sigmas),
            singleprecision=False)
        fwd = reg["fwdtransforms"]
        # antspyx composes the initial transform into its output (-z 1 collapses it into
        # the single GenericAffine); guard against versions that list it separately.
        T_ras = np.eye(4)
        for f in fwd:
            T_ras = T_ras @ _ants_to_ras(ants.read_transform(f))
    M = np.linalg.inv(T_ras)
    if return_info:
        return M, {"init": m0, "ants_fixed_to_moving_lps": _F @ T_ras @ _F,
                   "transforms": [os.path.basename(f) for f in fwd]}
    return M


def resample_to(moving, moving_affine, M, target_shape, target_affine, order=1, cval=0.0):
    """Resample ``moving`` onto the target grid (e.g. the GRE grid) given
    ``x_target_world = M @ x_moving_world``: target voxel v samples the moving image at
    ``inv(A_moving) @ inv(M) @ A_target @ v``. ``order`` 0 (labels/masks, dtype kept),
    1 (linear) or 3 (cubic spline); outside the moving field of view → ``cval``."""
    moving = _check_3d(moving, "moving")
    M = np.eye(4) if M is None else np.asarray(M, dtype=float)
    vox = np.linalg.inv(np.asarray(moving_affine, float)) @ np.linalg.inv(M) @ \
        np.asarray(target_affine, float)
    src = moving if order == 0 else np.asarray(moving, dtype=np.float32)
    if src.dtype == bool:
        src = src.astype(np.uint8)
    out = ndi.affine_transform(src, vox[:3, :3], offset=vox[:3, 3],
                               output_shape=tuple(int(s) for s in target_shape), order=order,
                               mode="constant", cval=cval, prefilter=order > 1)
    if np.asarray(moving).dtype == bool:
        out = out.astype(bool)
    return out


# --------------------------------------------------------------------------------------
# Brain masks
# --------------------------------------------------------------------------------------

def _ball(radius_mm, affine):
    vs = voxel_sizes(affine)
    r = np.maximum(np.floor(radius_mm / vs + 1e-6).astype(int), 0)
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    d2 = sum((g * v) ** 2 for g, v in zip(grids, vs))
    return d2 <= radius_mm ** 2 + 1e-6


def largest_component(mask):
    lab, n = ndi.label(mask)
    if n <= 1:
        return lab > 0
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def otsu_threshold(values, nbins=256) -> float:
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    hist, edges = np.histogram(v, bins=nbins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


def fill_holes(mask):
    """3D hole filling, then slice-wise along every axis (closes holes that touch the
    volume only through a slab, e.g. a ventricle at a cropped field of view)."""
    m = ndi.binary_fill_holes(mask)
    for ax in range(3):
        m = np.moveaxis(np.stack([ndi.binary_fill_holes(s) for s in np.moveaxis(m, ax, 0)]),
                        0, ax)
    return m


def refine_mask_on_magnitude(mask, mag, affine, min_rel_signal=0.15, close_mm=2.0):
    """Refine a (registered atlas) brain mask on the GRE magnitude: drop no-signal voxels
    (below ``min_rel_signal`` × the median magnitude inside the mask: bone, air, sinus
    drop-out), close small notches (``close_mm``; kept inside the input mask), keep the
    largest connected component, fill holes (dark lesions, veins)."""
    mask = np.asarray(mask, bool)
    mag = np.asarray(mag, dtype=np.float32)
    if not mask.any():
        return mask
    thr = min_rel_signal * float(np.median(mag[mask]))
    m = mask & (mag > thr)
    if close_mm > 0:
        ball = _ball(close_mm, affine)
        pad = max(ball.shape)
        m = ndi.binary_closing(np.pad(m, pad), structure=ball)[
            tuple(slice(pad, -pad) for _ in range(3))] & mask
    m = largest_component(m)
    return fill_holes(m)


def brain_mask_from_magnitude(mag, affine, smooth_mm=1.0, open_mm=3.0, close_mm=4.0,
                              threshold_scale=1.0):
    """Brain mask from a magnitude image alone (participants without a T1w).

    Gaussian smoothing (``smooth_mm``), Otsu threshold of the non-zero voxels (× 
    ``threshold_scale``), morphological opening with a ball of ``open_mm`` (cuts the thin
    bridges to scalp / optic nerves through the dark skull), largest connected component,
    closing with ``close_mm`` (sulcal CSF), hole filling. Returns ``(mask, method)``.
    """
    mag = np.asarray(_check_3d(mag, "magnitude"), dtype=np.float32)
    vs = voxel_sizes(affine)
    sm = ndi.gaussian_filter(mag, smooth_mm / vs / 2.3548) if smooth_mm > 0 else mag
    pos = sm[sm > 0]
    if pos.size == 0:
        return np.zeros(mag.shape, bool), "magnitude-otsu"
    thr = otsu_threshold(pos) * threshold_scale
    m = sm > thr
    if open_mm > 0:
        m = ndi.binary_opening(m, structure=_ball(open_mm, affine))
    m = largest_component(m)
    if close_mm > 0:
        ball = _ball(close_mm, affine)
        pad = max(ball.shape)
        m = ndi.binary_closing(np.pad(m, pad), structure=ball)[
            tuple(slice(pad, -pad) for _ in range(3))]
    m = fill_holes(m)
    return m, "magnitude-otsu"


def downsample(image, affine, voxel_mm):
    """(image, affine) resampled to isotropic ``voxel_mm`` over the same field of view after a
    Gaussian anti-aliasing filter (σ = √(new² − old²)/2.355 per axis). Images already at or
    above that voxel size are returned unchanged."""
    image = np.asarray(_check_3d(image, "image"), dtype=np.float32)
    affine = np.asarray(affine, dtype=float)
    vs = voxel_sizes(affine)
    if np.all(vs >= voxel_mm - 1e-6):
        return image, affine
    sig = np.sqrt(np.maximum(voxel_mm ** 2 - vs ** 2, 0)) / 2.3548 / vs
    sm = ndi.gaussian_filter(image, sig)
    new_vs = np.maximum(vs, voxel_mm)
    extent = (np.array(image.shape) - 1) * vs
    shape = np.floor(extent / new_vs).astype(int) + 1
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] / vs * new_vs
    # keep the field-of-view centre
    c_old = affine[:3, :3] @ ((np.array(image.shape) - 1) / 2.0) + affine[:3, 3]
    new[:3, 3] = c_old - new[:3, :3] @ ((shape - 1) / 2.0)
    return resample_to(sm, affine, None, shape, new, order=1), new


@lru_cache(maxsize=2)
def mni_template(resolution_mm=2.0):
    """nilearn's bundled MNI152 template (ICBM 2009a nonlinear symmetric, skull-stripped; read
    from inside the wheel, nothing is downloaded) at ``resolution_mm``: ``(template, brain
    mask, distance outside the mask in mm, affine)``. The brain mask is the template's
    support (> 0, closed, holes filled), i.e. brain plus the CSF the skull-stripping kept."""
    from nilearn.datasets import load_mni152_template
    img = load_mni152_template(resolution=1)
    tpl = np.asarray(img.dataobj, dtype=np.float32)
    aff = img.affine.copy()
    mask = fill_holes(ndi.binary_closing(np.pad(tpl > 0, 3), iterations=2)[3:-3, 3:-3, 3:-3])
    if resolution_mm > 1:
        tpl, aff2 = downsample(tpl, aff, resolution_mm)
        mask = resample_to(mask.astype(np.float32), aff, None, tpl.shape, aff2, order=1) > 0.5
        aff = aff2
    dist = ndi.distance_transform_edt(~mask, sampling=voxel_sizes(aff)).astype(np.float32)
    return tpl, mask, dist, aff


def template_to_t1(t1, t1_affine, seed=42, working_mm=2.0, return_rough=False):
    """Affine registration of nilearn's MNI152 brain template onto the participant T1w
    (bias-corrected): both at ``working_mm`` isotropic (the mask it carries needs no more),
    Mattes MI, rigid then affine (12 dof). The template is skull-stripped, the T1w is not, so
    the metric is restricted to a dilated (8 mm) rough brain estimate of the T1w
    (``brain_mask_from_magnitude`` on it), whose centre also gives the starting translation.
    Returns ``M_tpl_to_t1`` (x_T1w = M @ x_MNI)."""
    tpl, tpl_mask, _, tpl_aff = mni_template(working_mm)
    t1, t1_aff = downsample(np.asarray(_check_3d(t1, "T1w"), dtype=np.float32), t1_affine,
                            working_mm)
    rough, _ = brain_mask_from_magnitude(t1, t1_aff)
    init = np.eye(4)
    init[:3, 3] = _com_world(rough.astype(np.float32), t1_aff) - \
        _com_world(tpl_mask.astype(np.float32), tpl_aff)
    fmask = ndi.binary_dilation(rough, structure=_ball(8.0, t1_aff)) if rough.any() else None
    m_rigid = rigid_register(tpl, tpl_aff, t1, t1_aff, init=init, fixed_mask=fmask,
                             iterations=(1000, 500, 100), shrink_factors=(4, 2, 1),
                             smoothing_sigmas=(2, 1, 0), seed=seed)
    m_aff = rigid_register(tpl, tpl_aff, t1, t1_aff, transform="Affine", init=m_rigid,
                           fixed_mask=fmask, iterations=(500, 250, 50),
                           shrink_factors=(4, 2, 1), smoothing_sigmas=(2, 1, 0), seed=seed)
    if return_rough:
        return m_aff, rough
    return m_aff


def brain_mask_from_t1(t1, t1_affine, M_t1_to_gre, gre_mag, gre_affine, seed=42,
                       margin_mm=5.0, min_rel_signal=0.3, close_mm=2.0, working_mm=3.0,
                       return_details=False):
    """Brain mask on the GRE grid from the (bias-corrected) participant T1w.

    1. Register nilearn's MNI152 brain template to the T1w (``template_to_t1``: rigid then
       affine, Mattes MI, at ``working_mm``).
    2. Carry the template brain mask to the GRE grid through ``M_t1_to_gre @ M_tpl_to_t1``,
       widened by ``margin_mm`` (the mask is "template distance ≤ margin_mm"; linear
       interpolation of the template's distance map): the margin takes in the extra-cerebral
       CSF up to the inner skull and absorbs what an affine template fit misses.
    3. Refine on the GRE magnitude (``refine_mask_on_magnitude``): drop no-signal voxels
       (bone, air; below ``min_rel_signal`` × the median magnitude in the mask), largest
       component, fill holes.

    Returns ``(mask, method)``; with ``return_details`` also a dict holding the matrices and
    the unrefined prior.
    """
    gre_mag = np.asarray(_check_3d(gre_mag, "GRE magnitude"), dtype=np.float32)
    _, _, dist, tpl_aff = mni_template(working_mm)
    m_tpl_t1 = template_to_t1(t1, t1_affine, seed=seed, working_mm=working_mm)
    m_tpl_gre = np.asarray(M_t1_to_gre, dtype=float) @ m_tpl_t1
    d_gre = resample_to(dist, tpl_aff, m_tpl_gre, gre_mag.shape, gre_affine, order=1,
                        cval=1e6)
    prior = d_gre <= margin_mm
    mask = refine_mask_on_magnitude(prior, gre_mag, gre_affine,
                                    min_rel_signal=min_rel_signal, close_mm=close_mm)
    method = "mni152-affine+gre-refined"
    if return_details:
        return mask, method, {"M_tpl_to_t1": m_tpl_t1, "M_tpl_to_gre": m_tpl_gre,
                              "prior": prior}
    return mask, method


# --------------------------------------------------------------------------------------
# QC figures (matplotlib, Agg)
# --------------------------------------------------------------------------------------

def _display_orient(arrays, affine):
    """Reorder arrays to the closest RAS axis order for display (if an affine is given);
    also returns the voxel sizes along the reordered axes (for the aspect ratio)."""
    if affine is None:
        return arrays, np.ones(3)
    import nibabel.orientations as no
    ornt = no.io_orientation(np.asarray(affine, float))
    vs = voxel_sizes(affine)[np.argsort(ornt[:, 0])]
    return [no.apply_orientation(np.asarray(a), ornt) for a in arrays], vs


def _center_slices(shape, ref=None):
    if ref is not None and np.any(ref):
        c = np.round(ndi.center_of_mass(np.asarray(ref, bool))).astype(int)
    else:
        c = np.array(shape) // 2
    return c


def _planes(vol, c):
    # sagittal (x fixed), coronal (y fixed), axial (z fixed); rotate so superior/anterior
    # are up in the figure
    return [np.rot90(vol[c[0], :, :]), np.rot90(vol[:, c[1], :]), np.rot90(vol[:, :, c[2]])]


def _aspects(vs):
    """imshow aspect (row / column spacing) of the three planes of ``_planes``."""
    return [vs[2] / vs[1], vs[2] / vs[0], vs[1] / vs[0]]


def _robust_limits(a):
    v = a[np.isfinite(a)]
    v = v[v > 0] if np.any(v > 0) else v
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [1, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def _edges(vol, pct=90.0):
    v = ndi.gaussian_filter(np.asarray(vol, dtype=np.float32), 1.0)
    g = np.sqrt(sum(ndi.sobel(v, axis=a) ** 2 for a in range(3)))
    nz = g[np.asarray(vol) > 0]
    thr = np.percentile(nz, pct) if nz.size else np.inf
    return g > thr


def _save_fig(fig, path):
    return niio.write_png(path, fig, dpi=100, bbox_inches="tight", facecolor="black")


def qc_registration_figure(gre_mag, moved, affine=None, title=None):
    """Figure: edges of the moved T1w/T2w (red) over the GRE magnitude, three planes."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    (gre_mag, moved), vs = _display_orient([gre_mag, moved], affine)
    edges = _edges(moved)
    c = _center_slices(gre_mag.shape, moved > 0)
    lo, hi = _robust_limits(gre_mag)
    fig = Figure(figsize=(12, 4.4))
    axes = fig.subplots(1, 3)
    for ax, g, e, asp in zip(axes, _planes(gre_mag, c), _planes(edges, c), _aspects(vs)):
        ax.imshow(g, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=asp)
        rgba = np.zeros(e.shape + (4,))
        rgba[e] = (1.0, 0.15, 0.15, 0.9)
        ax.imshow(rgba, interpolation="nearest", aspect=asp)
        ax.axis("off")
    if title:
        fig.suptitle(title, color="white")
    return fig


def qc_registration_png(gre_mag, moved_t2, path, affine=None, title=None):
    """PNG: edges of the moved T2w (or T1w) over the GRE magnitude in three planes."""
    return _save_fig(qc_registration_figure(gre_mag, moved_t2, affine, title), path)


def qc_mask_figure(gre_mag, mask, affine=None, title=None):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    (gre_mag, mask), vs = _display_orient([gre_mag, np.asarray(mask, bool)], affine)
    c = _center_slices(gre_mag.shape, mask)
    lo, hi = _robust_limits(gre_mag)
    fig = Figure(figsize=(12, 4.4))
    axes = fig.subplots(1, 3)
    for ax, g, m, asp in zip(axes, _planes(gre_mag, c), _planes(mask.astype(float), c),
                             _aspects(vs)):
        ax.imshow(g, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=asp)
        if m.any() and not m.all():
            ax.contour(m, levels=[0.5], colors=["#00ff66"], linewidths=1.0)
        ax.axis("off")
    if title:
        fig.suptitle(title, color="white")
    return fig


def qc_mask_png(gre_mag, mask, path, affine=None, title=None):
    """PNG: brain-mask contour over the GRE magnitude in three planes."""
    return _save_fig(qc_mask_figure(gre_mag, mask, affine, title), path)


# --------------------------------------------------------------------------------------
# Template-derived head phantom (tests, benchmark)
# --------------------------------------------------------------------------------------

# relative intensities per tissue: csf, gm, wm, skull, scalp
PHANTOM_CONTRASTS = {
    "T1w": (0.20, 0.55, 0.85, 0.05, 1.00),   # MPRAGE-like: WM bright, fat bright
    "T2w": (1.00, 0.55, 0.40, 0.05, 0.60),   # CSF bright
    "GRE": (0.60, 0.93, 1.00, 0.04, 1.60),   # echo-1 GRE, TR 35 ms flip 15°: fat bright
}
_TISSUES = ("csf", "gm", "wm", "skull", "scalp")


@lru_cache(maxsize=1)
def _phantom_tissues_1mm(pad_mm=18):
    """Partial-volume tissue maps at 1 mm built from nilearn's MNI152 brain mask and GM/WM
    probability templates, plus an extra-axial shell: CSF 0–3 mm, skull 3–8 mm, scalp
    8–13 mm outside the brain. Returns (dict of float32 maps, affine)."""
    from nilearn.datasets import (load_mni152_brain_mask, load_mni152_gm_template,
                                  load_mni152_wm_template)
    mimg = load_mni152_brain_mask(resolution=1)
    brain = np.asarray(mimg.dataobj) > 0
    gm = np.asarray(load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32) * brain
    wm = np.asarray(load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32) * brain
    idx = np.argwhere(brain)
    lo = idx.min(0)
    hi = idx.max(0) + 1
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    p = int(pad_mm)
    brain, gm, wm = (np.pad(x[sl], p) for x in (brain, gm, wm))
    affine = mimg.affine.copy()
    affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ (lo - p)
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0, 1)
    d = ndi.distance_transform_edt(~brain).astype(np.float32)
    csf = np.where(brain, csf, ((d > 0) & (d <= 3)).astype(np.float32))
    skull = ((d > 3) & (d <= 8)).astype(np.float32)
    scalp = ((d > 8) & (d <= 13)).astype(np.float32)
    maps = {"csf": csf, "gm": gm, "wm": wm, "skull": skull, "scalp": scalp,
            "brain": brain.astype(np.float32),
            "intracranial": (brain | ((d > 0) & (d <= 3))).astype(np.float32)}
    return maps, affine


def phantom_grid(voxel_size=2.0, rotation_deg=(0, 0, 0), flip=(False, False, False),
                 axes=(0, 1, 2), margin_mm=0.0):
    """(shape, affine) of a grid covering the head phantom: voxel sizes ``voxel_size``
    (scalar or per array axis), array axis k running along world axis ``axes[k]``
    (reversed when ``flip[k]``, e.g. flip x and y for an LPS-ordered array), the whole grid
    rotated by ``rotation_deg`` about the head centre (oblique)."""
    maps, aff1 = _phantom_tissues_1mm()
    shape1 = np.array(maps["brain"].shape)
    lo = aff1[:3, 3]
    hi = lo + (shape1 - 1)
    center = (lo + hi) / 2
    extent = hi - lo + 2 * margin_mm
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
    cols = np.zeros((3, 3))
    shape = np.zeros(3, dtype=int)
    for k in range(3):
        w = axes[k]
        cols[w, k] = -vs[k] if flip[k] else vs[k]
        shape[k] = int(np.ceil(extent[w] / vs[k])) + 1
    r = rigid_matrix(rotation_deg)[:3, :3]
    A = np.eye(4)
    A[:3, :3] = r @ cols
    A[:3, 3] = center - A[:3, :3] @ ((shape - 1) / 2.0)
    return tuple(int(s) for s in shape), A


def mni_head_phantom(shape, affine, M=None, contrasts=("T1w", "T2w", "GRE"), noise=0.0,
                     seed=0, smooth=True):
    """Template-derived head images on the grid (shape, affine).

    The anatomy (nilearn MNI152 brain + a CSF/skull/scalp shell) sits at ``M @ x`` for its
    MNI world position x (``M`` None = identity), so two phantoms made with M_a and M_b
    are related by ``x_b = M_b @ inv(M_a) @ x_a``. Intensities per tissue are
    ``PHANTOM_CONTRASTS``; the 1 mm maps are smoothed to the target voxel size before
    sampling (``smooth``). ``noise`` adds Rician noise with that standard deviation
    (relative to WM ≈ 1). Returns a dict with one float32 array per contrast, ``brain_mask``
    (bool), ``intracranial_mask`` (brain + CSF shell), ``wm_mask`` (bool, WM fraction > 0.5)
    and the tissue fractions (``pv_<tissue>``).
    """
    maps, aff1 = _phantom_tissues_1mm()
    vs = voxel_sizes(affine)
    sig = np.sqrt(np.maximum(vs ** 2 - 1.0, 0)) / 2.3548
    out = {}
    for name in _TISSUES + ("brain",):
        m = maps[name]
        if smooth and np.any(sig > 0):
            m = ndi.gaussian_filter(m, sig.max())
        out["pv_" + name] = np.clip(resample_to(m, aff1, M, shape, affine, order=1), 0, 1)
    rng = np.random.default_rng(seed)
    for c in contrasts:
        img = sum(w * out["pv_" + t] for w, t in zip(PHANTOM_CONTRASTS[c], _TISSUES))
        img = np.asarray(img, dtype=np.float32)
        if noise > 0:
            img = np.hypot(img + rng.normal(0, noise, img.shape),
                           rng.normal(0, noise, img.shape)).astype(np.float32)
        out[c] = img
    # the brain mask on this grid: nearest-neighbour of the 1 mm mask (unsmoothed)
    out["brain_mask"] = resample_to(maps["brain"], aff1, M, shape, affine, order=1) > 0.5
    out["wm_mask"] = resample_to(maps["wm"], aff1, M, shape, affine, order=1) > 0.5
    # intracranial: brain plus the CSF shell up to the skull (what the synthetic cohort's
    # truth brain mask is, and what the brain-mask functions aim at)
    out["intracranial_mask"] = resample_to(maps["intracranial"], aff1, M, shape, affine,
                                           order=1) > 0.5
    return out
