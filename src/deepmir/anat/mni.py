"""The MNI152 template (nilearn's, read from inside the wheel) registered affinely to the
T1w, and the brain mask it carries onto the GRE grid (method.md §2)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from deepmir import settings
from deepmir.anat.ants import _check_3d
from deepmir.anat.mask import _ball, brain_mask_from_magnitude, fill_holes, refine_mask_on_magnitude
from deepmir.anat.register import _com_world, downsample, resample_to, rigid_register
from deepmir.geometry import voxel_sizes

_MASK = settings.defaults("anat")["brain_mask"]      # the schema's anat.brain_mask defaults


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
                       margin_mm=_MASK["margin_mm"], min_rel_signal=_MASK["min_rel_signal"],
                       close_mm=_MASK["close_mm"], working_mm=_MASK["working_mm"],
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


def brain_mask(ref, gre_affine, b: dict, seed, t1=None, t1_affine=None, M_t1_to_gre=None):
    """(mask, method, description) of the brain on the GRE grid: through the MNI template and the
    T1w when one is given (:func:`brain_mask_from_t1`), else from the GRE magnitude ``ref``
    (:func:`brain_mask_from_magnitude`); ``b`` is the config's anat.brain_mask section. The
    description (for the mask's JSON sidecar) holds the settings used and, from a T1w, the
    template's transforms: TemplateToMEGRE (x_MEGRE = M @ x_MNI) places the atlas for the census."""
    if t1 is not None:
        mask, method, det = brain_mask_from_t1(
            t1, t1_affine, M_t1_to_gre, ref, gre_affine, seed=seed, margin_mm=b["margin_mm"],
            min_rel_signal=b["min_rel_signal"], close_mm=b["close_mm"], working_mm=b["working_mm"],
            return_details=True)
        return mask, method, dict(
            Template="MNI152 ICBM 2009a nonlinear symmetric (nilearn)",
            TemplateToT1w=det["M_tpl_to_t1"].round(6).tolist(), TemplateToMEGRE=det["M_tpl_to_gre"].round(6).tolist(),
            margin_mm=b["margin_mm"], min_rel_signal=b["min_rel_signal"], close_mm=b["close_mm"],
            working_mm=b["working_mm"])
    mask, method = brain_mask_from_magnitude(ref, gre_affine, smooth_mm=b["smooth_mm"], open_mm=b["open_mm"],
                                             close_mm=b["mag_close_mm"], threshold_scale=b["threshold_scale"])
    return mask, method, dict(smooth_mm=b["smooth_mm"], open_mm=b["open_mm"], close_mm=b["mag_close_mm"],
                              threshold_scale=b["threshold_scale"])
