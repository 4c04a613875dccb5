"""A test phantom for the anatomical stage: T1w / T2w / GRE-like heads built from nilearn's
MNI152 brain mask and GM/WM probability templates plus an extra-axial shell (CSF, skull,
scalp), on any grid and pose. Used by the anat tests only."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from deepmir.anat import resample_to, rigid_matrix
from deepmir.geometry import voxel_sizes

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
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_gm_template, load_mni152_wm_template
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
