"""Where a participant's lesions lie in MNI space (the census's placement): the maps and
matrices that carry the MEGRE grid to the atlas, read and checked on the label map's grid."""
from __future__ import annotations

import numpy as np

from deepmir import niio
from deepmir.errors import InputError


def on_grid(path, ref_shape, ref_aff, what):
    """An image (3D or 4D) on the label map's grid, or a one-line InputError."""
    a, aff = niio.load_image(path, what, ndim=(3, 4))
    if a.shape[:3] != tuple(ref_shape) or not np.allclose(aff, ref_aff, atol=1e-3):
        raise InputError(path, f"{what} is not on the grid of the label map {tuple(ref_shape)}")
    return a


def placement(shape, aff, mni_coords="", mni_xfm="", mask_json=""):
    """x_MEGRE → x_MNI (mm) of the placement given — a SyN coordinate map, a 4×4 matrix, or a
    brain-mask JSON's template affine, in that order of preference — or None."""
    from deepmir.atlas import regions

    if mni_coords:
        from deepmir.anat import template

        coords = on_grid(mni_coords, shape, aff, "MNI coordinate map")
        if coords.ndim != 4 or coords.shape[3] != 3:
            raise InputError(mni_coords, f"expected 3 volumes (MNI x, y, z), found shape {coords.shape}")
        inv_aff = np.linalg.inv(aff)
        return lambda x: template.mni_at(coords, np.asarray(x) @ inv_aff[:3, :3].T + inv_aff[:3, 3])
    m = None
    if mni_xfm:
        m = niio.read_matrix(mni_xfm)
    elif mask_json:
        m = regions.megre_to_mni(niio.read_json(mask_json, "brain-mask JSON"))
    return None if m is None else (lambda x: np.asarray(x) @ m[:3, :3].T + m[:3, 3])
