"""Volumes → 2D training stacks and back (pure functions on arrays, no file I/O).

A *stack* is what the network sees: ``x`` float32 ``[S, C, H, W]`` (one axial slice per row,
one z-scored channel per modality, zero-padded and centred to ``pad_to × pad_to``), ``y``
uint8 ``[S, H, W]`` (the label slices on the same grid) and ``meta``, a JSON-serialisable dict
that lets :func:`unstack` put slice-wise predictions back on the original 3D grid exactly.

Normalisation follows supplement S3.1 of the preprint: every channel is z-scored with the
mean and standard deviation of its voxels inside the brain mask; the channel named ``QSM``
is first truncated to ``[−k·σ, k·σ]`` (k = ``qsm_clip_sigma``, the config's `learn.qsm_clip_sigma`,
10 by default; the study's 5; σ its standard deviation inside the mask).
Voxels outside the mask are set to 0 (the channel mean, and the same value as the padding).
"""
from __future__ import annotations

import numpy as np

from deepmir import settings

_LEARN = settings.defaults("learn")      # the schema's learn defaults

LABEL_MODES = ("cmb", "iron", "union", "multiclass")
CMB, IRON = 1, 2


def label_mode(labels: np.ndarray, mode: str) -> np.ndarray:
    """Map a dseg (0 background, 1 CMB, 2 iron deposit, anything else ignored → 0) to the
    training targets of an experiment: 'cmb' (1→1), 'iron' (2→1), 'union' (1, 2→1),
    'multiclass' (0, 1, 2 kept). Returns uint8 of the same shape."""
    lab = np.asarray(labels)
    if mode == "cmb":
        out = lab == CMB
    elif mode == "iron":
        out = lab == IRON
    elif mode == "union":
        out = (lab == CMB) | (lab == IRON)
    elif mode == "multiclass":
        return np.where((lab == CMB) | (lab == IRON), lab, 0).astype(np.uint8)
    else:
        raise ValueError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")
    return out.astype(np.uint8)


def n_classes_for(mode: str) -> int:
    """Network outputs for a label mode: 1 sigmoid logit, or 3 softmax classes."""
    if mode not in LABEL_MODES:
        raise ValueError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")
    return 3 if mode == "multiclass" else 1


def class_value(mode: str) -> int:
    """The dseg label a single-class prediction stands for (union → 1)."""
    return IRON if mode == "iron" else CMB


def zscore(volume: np.ndarray, mask: np.ndarray, clip_sigma: float | None = None) -> np.ndarray:
    """Z-score ``volume`` with the statistics of its voxels inside ``mask``; optionally first
    truncate to ±clip_sigma·σ (σ inside the mask). Outside the mask → 0. float32."""
    v = np.asarray(volume, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        raise ValueError("brain mask is empty")
    inside = v[m]
    if not np.all(np.isfinite(inside)):
        raise ValueError("non-finite values inside the brain mask")
    if clip_sigma is not None:
        s = inside.std()
        inside = np.clip(inside, -clip_sigma * s, clip_sigma * s)
    mu, sd = inside.mean(), inside.std()
    out = np.zeros(v.shape, dtype=np.float32)
    out[m] = ((inside - mu) / (sd if sd > 0 else 1.0)).astype(np.float32)
    return out


def _fit(n: int, size: int) -> tuple[int, int, int]:
    """(start in the original axis, start in the stack axis, length) for centring ``n`` into
    ``size``: pad when n ≤ size, centre-crop when larger."""
    if n <= size:
        return 0, (size - n) // 2, n
    return (n - size) // 2, 0, size


def make_stack(channels: dict, mask: np.ndarray, labels: np.ndarray | None, axial_axis: int,
               pad_to: int = 256, qsm_clip_sigma: float | None = _LEARN["qsm_clip_sigma"], lr_axis: int | None = None):
    """Build a participant's stack.

    channels: name → 3D array (all the same shape as ``mask``), in the order of the network's
    input channels. labels: 3D integer array (already mapped with :func:`label_mode`, or the
    raw dseg) or None. axial_axis: the array axis closest to the scanner z axis. lr_axis: the
    in-plane array axis closest to left-right (default: the first in-plane axis); recorded as
    ``meta['flip_dim']`` (−2 or −1 on the slice) for left-right flip augmentation.

    Returns (x float32 [S, C, pad_to, pad_to], y uint8 [S, pad_to, pad_to] or None, meta).
    Slices larger than ``pad_to`` are centre-cropped and ``meta['cropped']`` is True.
    """
    if not channels:
        raise ValueError("no input channels")
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {mask.shape}")
    shape = mask.shape
    for name, vol in channels.items():
        if np.shape(vol) != shape:
            raise ValueError(f"channel {name!r} has shape {np.shape(vol)}, mask has {shape}")
    if labels is not None and np.shape(labels) != shape:
        raise ValueError(f"labels have shape {np.shape(labels)}, mask has {shape}")
    axial_axis = int(axial_axis) % 3
    inplane = [a for a in range(3) if a != axial_axis]
    if lr_axis is None:
        lr_axis = inplane[0]
    lr_axis = int(lr_axis) % 3
    if lr_axis not in inplane:
        raise ValueError(f"lr_axis {lr_axis} is the axial axis")

    n_s = shape[axial_axis]
    h, w = shape[inplane[0]], shape[inplane[1]]
    (oh, sh, lh), (ow, sw, lw) = _fit(h, pad_to), _fit(w, pad_to)

    x = np.zeros((n_s, len(channels), pad_to, pad_to), dtype=np.float32)
    for c, (name, vol) in enumerate(channels.items()):
        clip = qsm_clip_sigma if name.upper() == "QSM" else None
        z = np.moveaxis(zscore(vol, mask, clip), axial_axis, 0)
        x[:, c, sh:sh + lh, sw:sw + lw] = z[:, oh:oh + lh, ow:ow + lw]
    y = None
    if labels is not None:
        lab = np.moveaxis(np.asarray(labels), axial_axis, 0)
        y = np.zeros((n_s, pad_to, pad_to), dtype=np.uint8)
        y[:, sh:sh + lh, sw:sw + lw] = lab[:, oh:oh + lh, ow:ow + lw]
    brain = np.moveaxis(mask, axial_axis, 0).reshape(n_s, -1).any(axis=1)
    meta = {
        "shape": [int(s) for s in shape],
        "axial_axis": axial_axis,
        "pad_to": int(pad_to),
        "orig_start": [oh, ow],
        "stack_start": [sh, sw],
        "length": [lh, lw],
        "cropped": bool(lh < h or lw < w),
        "channels": list(channels),
        "flip_dim": -2 if lr_axis == inplane[0] else -1,
        "brain_slices": [int(i) for i in np.flatnonzero(brain)],
    }
    return x, y, meta


def unstack(pred: np.ndarray, meta: dict, fill=0) -> np.ndarray:
    """Put slice-wise predictions back on the original grid: ``[S, H, W]`` → the original 3D
    shape, ``[S, K, H, W]`` → original shape + ``[K]`` (class last, as in a 4D NIfTI). Voxels
    that were cropped away get ``fill``."""
    pred = np.asarray(pred)
    shape = tuple(meta["shape"])
    ax = meta["axial_axis"]
    (oh, ow), (sh, sw), (lh, lw) = meta["orig_start"], meta["stack_start"], meta["length"]
    if pred.ndim not in (3, 4) or pred.shape[0] != shape[ax] or pred.shape[-2:] != (meta["pad_to"],) * 2:
        raise ValueError(f"prediction shape {pred.shape} does not fit the stack meta")
    inplane = [shape[a] for a in range(3) if a != ax]
    if pred.ndim == 4:  # [S, K, H, W] → [S, H, W, K]
        pred = np.moveaxis(pred, 1, -1)
    out = np.full((shape[ax], *inplane, *pred.shape[3:]), fill, dtype=pred.dtype)
    out[:, oh:oh + lh, ow:ow + lw] = pred[:, sh:sh + lh, sw:sw + lw]
    return np.moveaxis(out, 0, ax)


def slices_with_label(y: np.ndarray) -> np.ndarray:
    """Boolean [S]: which slices contain any foreground label."""
    y = np.asarray(y)
    return y.reshape(y.shape[0], -1).any(axis=1)


def restack(volume: np.ndarray, meta: dict, fill=0) -> np.ndarray:
    """A 3D volume on the original grid → ``[S, H, W]`` on the stack's grid (the inverse of
    :func:`unstack`; padding gets ``fill``)."""
    v = np.moveaxis(np.asarray(volume), meta["axial_axis"], 0)
    (oh, ow), (sh, sw), (lh, lw) = meta["orig_start"], meta["stack_start"], meta["length"]
    out = np.full((v.shape[0], meta["pad_to"], meta["pad_to"]), fill, dtype=v.dtype)
    out[:, sh:sh + lh, sw:sw + lw] = v[:, oh:oh + lh, ow:ow + lw]
    return out


def stack_voxel_size(affine, meta: dict) -> tuple[float, float, float]:
    """Voxel size (mm) along the stack's axes: slice, row, column."""
    vs = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(0))
    ax = meta["axial_axis"]
    return tuple(float(v) for v in [vs[ax]] + [vs[a] for a in range(3) if a != ax])
