"""Brain-mask morphology on the GRE magnitude: Otsu, largest component, hole filling,
refinement on the magnitude (method.md §2)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from deepmir import settings
from deepmir.anat.ants import _check_3d
from deepmir.geometry import voxel_sizes

_MASK = settings.defaults("anat")["brain_mask"]      # the schema's anat.brain_mask defaults


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


def brain_mask_from_magnitude(mag, affine, smooth_mm=_MASK["smooth_mm"], open_mm=_MASK["open_mm"],
                              close_mm=_MASK["mag_close_mm"], threshold_scale=_MASK["threshold_scale"]):
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


def dice(a, b) -> float:
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / s) if s else 1.0
