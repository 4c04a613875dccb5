"""Data weights of the dipole inversion and the brain-edge treatment (docs/qsm.md, "Brain
edge"): instead of cutting the outer millimetres of the brain mask away (χ would be 0 at
juxtacortical microbleeds), every voxel is kept and weighted by how far its field can be
trusted.

- the noise of the field: the error-propagated noise map of the multi-echo fit
  (``fit.fit_multi_echo``), or, for a field computed elsewhere, ∝ 1/magnitude (the phase
  noise of a GRE voxel is σ/|S|);
- the brain edge: the field of the outermost voxels is not the field of brain tissue alone
  (partial volume with bone and air, intra-voxel dephasing, the background fields that
  background removal cannot separate there), so the weight falls as (d / ``edge_mm``)²
  with the distance d (mm) from the outside of the mask;
- regions of voxels whose normalised weight falls below a threshold, touching the edge or
  large,
  are *missing*: MEDI fills them in from their neighbours (the morphology mask lets the
  regulariser act across them) and the closed-form baselines (TKD, CFL2) take their field
  as 0 (:func:`missing_voxels`);
- where the echoes do not follow one frequency the noise is inflated by the fit's residual
  (:func:`inflate_noise`), but not in *lesion cores*, small interior islands where it stands
  out of its neighbourhood (:func:`lesion_cores`): a calcification's or a microbleed's fast
  decay makes its fit fail as the brain edge's does, yet its field is the signal
  (``pipeline.reconstruct`` combines the two).

Everything is an array in and out (numpy); noise in the unit of the field (ppm).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def noise_from_magnitude(magnitude, mask) -> np.ndarray:
    """Relative field noise of a single field map ∝ 1/|S| (mean 1 over the mask; voxels
    without signal get the largest value seen in the mask, i.e. the least weight)."""
    m = np.asarray(mask) != 0
    a = np.abs(np.nan_to_num(np.asarray(magnitude, np.float32)))
    if a.ndim == 4:
        a = np.sqrt((a ** 2).sum(-1))
    pos = a[m][a[m] > 0]
    if pos.size == 0:
        return m.astype(np.float32)
    floor = float(np.percentile(pos, 1)) * 0.1
    n = 1.0 / np.maximum(a, floor)
    return (n / n[m].mean() * m).astype(np.float32)


def edge_ramp(mask, voxel_size, edge_mm: float) -> np.ndarray:
    """min(1, d / edge_mm)² with d the distance (mm) of a voxel centre to the nearest voxel
    outside ``mask`` (the outermost voxels have d = one voxel); 1 everywhere for 0."""
    m = np.asarray(mask) != 0
    if not edge_mm > 0:
        return m.astype(np.float32)
    d = ndi.distance_transform_edt(np.pad(m, 1), sampling=voxel_size)[1:-1, 1:-1, 1:-1]
    return (np.minimum(d / float(edge_mm), 1.0) ** 2 * m).astype(np.float32)


def effective_noise(noise_std, mask, voxel_size, edge_mm: float) -> np.ndarray:
    """The noise map the inversion weights by: ``noise_std`` / edge ramp (inf-free: 0
    outside the mask)."""
    m = np.asarray(mask) != 0
    ramp = edge_ramp(m, voxel_size, edge_mm)
    n = np.asarray(noise_std, np.float32)
    out = np.zeros(m.shape, np.float32)
    out[m] = n[m] / np.maximum(ramp[m], 1e-12)
    return out


def normalised_weight(noise_std, mask) -> np.ndarray:
    """W = 1/noise, normalised to mean 1 over the mask (MEDI's data weight; 0 where the
    noise is 0 or not finite)."""
    m = np.asarray(mask) != 0
    n = np.asarray(noise_std, np.float64)
    ok = m & np.isfinite(n) & (n > 0)
    w = np.zeros(m.shape)
    w[ok] = 1.0 / n[ok]
    mean = w[m].mean() if m.any() else 0.0
    return (w / mean if mean > 0 else w).astype(np.float32)


#: lesion cores (:func:`lesion_cores`): inflated noise above this factor × its local median...
CORE_NOISE_FACTOR = 3.0
#: ...over a cube about this wide (mm), grown by one voxel (the lesion's partial-volume rim)
CORE_WINDOW_MM = 7.5


def _edge_or_large(low, mask, voxel_size, min_mm3: float) -> np.ndarray:
    """The voxels of ``low`` in 26-connected regions that touch the outermost layer of
    ``mask`` or hold at least ``min_mm3`` mm³."""
    lab, n = ndi.label(low, structure=np.ones((3, 3, 3), bool))
    vol = float(np.prod(voxel_size))
    big = np.bincount(lab.ravel(), minlength=n + 1) * vol >= float(min_mm3)
    outer = mask & ~ndi.binary_erosion(mask, border_value=0)
    at_edge = np.zeros(n + 1, bool)
    at_edge[np.unique(lab[low & outer])] = True
    keep = big | at_edge
    keep[0] = False
    return keep[lab]


def inflate_noise(noise_std, relres, mask) -> np.ndarray:
    """Model-error weighting (an addition to MEDI's ``Fit_ppm_complex``, which propagates
    only the noise): N_std × sqrt(max(1, relres / median relres in the mask)). Voxels whose
    echoes do not follow one frequency (intra-voxel dephasing at the brain edge, next to
    air or bone) then count little in PDF and MEDI, like MEDI's ``merit`` does afterwards.
    The pipeline keeps N_std in :func:`lesion_cores`: inflated there, a calcification's data
    weight fell to 1/40 of its surroundings' and MEDI's TV filled it with their χ
    (docs/qsm.md, report seed 2, participant 3)."""
    m = np.asarray(mask) != 0
    rr = np.asarray(relres, np.float64)
    ref = np.median(rr[m]) if m.any() else 0.0
    if not ref > 0:
        return np.asarray(noise_std, np.float32)
    return (noise_std * np.sqrt(np.maximum(rr / ref, 1.0))).astype(np.float32)


def lesion_cores(noise_std, mask, voxel_size, min_mm3: float) -> np.ndarray:
    """Voxels of ``mask`` whose noise exceeds ``CORE_NOISE_FACTOR`` × its median over a cube
    of about ``CORE_WINDOW_MM`` (half-width round(CORE_WINDOW_MM / 2 / voxel size), at least
    one voxel), in 26-connected regions that neither touch the mask's outermost layer nor
    hold ``min_mm3`` mm³, grown by one voxel."""
    m = np.asarray(mask) != 0
    n = np.asarray(noise_std, np.float32)
    if not m.any():
        return m
    size = [max(3, 2 * int(round(CORE_WINDOW_MM / (2 * float(v)))) + 1) for v in voxel_size]
    local = ndi.median_filter(np.where(m, n, np.median(n[m])), size=size)
    high = m & (n > CORE_NOISE_FACTOR * local)
    cores = high & ~_edge_or_large(high, m, voxel_size, min_mm3)
    return ndi.binary_dilation(cores, np.ones((3, 3, 3), bool)) & m


def missing_voxels(noise_std, mask, voxel_size, threshold: float, min_mm3: float) -> np.ndarray:
    """The voxels of ``mask`` without usable data: normalised weight below ``threshold``, in
    a connected region (26-neighbourhood) that touches the outermost layer of the mask or
    holds at least ``min_mm3`` mm³ (the field next to a sinus). Small low-weight islands
    inside the brain are lesion cores (a microbleed's or a calcification's fast decay), not
    missing: their data are kept (and their noise not inflated, :func:`lesion_cores`)."""
    m = np.asarray(mask) != 0
    low = m & (normalised_weight(noise_std, m) < float(threshold))
    return _edge_or_large(low, m, voxel_size, min_mm3) if low.any() else low
