"""A participant's 2D slice stack (.npz): the file format (:func:`save_stack`,
:func:`load_stack`), the slice axis, and the arrays the two learners train on (method.md §5)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from deepmir import niio
from deepmir.errors import InputError
from deepmir.geometry import axial_axis

STACK_KEYS = ("x", "meta", "affine", "mask")


def save_stack(path, x, y, meta, affine, mask, iron_region=None):
    """Write a stack as an uncompressed .npz (atomically); ``mask`` and ``iron_region`` (where
    an iron lesion may lie; optional) on the image grid."""
    arrays = {"x": x, "meta": np.array(json.dumps(meta)), "affine": np.asarray(affine, dtype=np.float64),
              "mask": np.asarray(mask, dtype=np.uint8)}
    if y is not None:
        arrays["y"] = y
    if iron_region is not None:
        arrays["iron_region"] = np.asarray(iron_region, dtype=np.uint8)
    with niio.atomic(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def load_stack(path, need_labels: bool = False) -> dict:
    """A stack written by :func:`save_stack`: dict(x, y or None, meta, affine, mask,
    iron_region or None)."""
    p = niio.regular_file(path, "stack")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in STACK_KEYS if k not in f.files]
            if missing:
                raise InputError(p, f"not a deepmir stack (missing {', '.join(missing)})")
            out = {k: f[k] for k in f.files}
        out["meta"] = json.loads(str(out["meta"]))
    except InputError:
        raise
    except Exception as err:
        raise InputError(p, f"not a readable stack ({err})") from None
    out.setdefault("y", None)
    out.setdefault("iron_region", None)
    if need_labels and out["y"] is None:
        raise InputError(p, "stack has no labels (build it with --dseg)")
    return out


def axes_from_affine(affine) -> tuple[int, int]:
    """(axial axis, left-right axis): the array axes closest to the scanner z and x axes."""
    m = np.asarray(affine, dtype=float)[:3, :3]
    cos = np.abs(m / np.linalg.norm(m, axis=0))
    axial = axial_axis(affine)
    inplane = [a for a in range(3) if a != axial]
    lr = inplane[int(np.argmax(cos[0, inplane]))]
    return axial, lr


def labelled_stacks(paths, channels):
    """[(x with ``channels`` in order, stack)] of labelled stacks, and their common key
    (channels, left-right axis); a stack without labels or a channel, or differing from the
    first one, is refused."""
    out, ref = [], None
    for path in paths:
        st = load_stack(path, need_labels=True)
        names = st["meta"]["channels"]
        want = list(channels or names)
        missing = [c for c in want if c not in names]
        if missing:
            raise InputError(path, f"stack lacks channel(s) {missing} (has {names})")
        key = (tuple(want), st["meta"]["flip_dim"])
        if ref is None:
            ref = key
        elif key != ref:
            raise InputError(path, "stack differs from the first one in channels or orientation")
        out.append((np.ascontiguousarray(st["x"][:, [names.index(c) for c in want]]), st))
    return out, ref


def pad_square(a: np.ndarray, size: int) -> np.ndarray:
    """Centre ``a``'s last two (square) axes in ``size × size`` zeros."""
    o = (size - a.shape[-1]) // 2
    out = np.zeros(a.shape[:-2] + (size, size), a.dtype)
    out[..., o:o + a.shape[-2], o:o + a.shape[-1]] = a
    return out


def gather(stacks, label_mode, size):
    """The paper learner's arrays: slices of every stack padded to ``size``, mapped labels,
    and which slices hold brain."""
    from deepmir.learn.dataset import label_mode as map_labels

    xs, ys, eligible = [], [], []
    for x, st in stacks:
        xs.append(pad_square(x, size))
        ys.append(pad_square(map_labels(st["y"], label_mode), size))
        el = np.zeros(len(x), dtype=bool)
        el[st["meta"]["brain_slices"]] = True
        eligible.append(el)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(eligible)


def volumes(stacks):
    """The patch learner's volumes: dicts of x (the channels, in order), y (raw dseg 0/1/2),
    brain (stack grid) and voxel_size (slice, row, column)."""
    from deepmir.learn.dataset import restack, stack_voxel_size

    return [{"x": x, "y": np.where((st["y"] == 1) | (st["y"] == 2), st["y"], 0).astype(np.uint8),
             "brain": restack(st["mask"].astype(bool), st["meta"], fill=False),
             "iron_region": iron_region(st),
             "voxel_size": stack_voxel_size(st["affine"], st["meta"])} for x, st in stacks]


def iron_region(st):
    """The stack's iron region on the stack grid, or None (iron anywhere)."""
    from deepmir.learn.dataset import restack

    return None if st.get("iron_region") is None else restack(st["iron_region"].astype(bool), st["meta"], fill=False)


def read_channels(specs, mask_path, dseg_path=None, region_path=None):
    """The inputs of a stack, read and checked: {name: channel} on the brain mask's grid
    (finite in the brain), the mask (0/1, not empty) as bool, its affine, the labels (integers
    0..255) and the iron region (0/1) as bool, each None when not given. ``specs``: (name,
    path) pairs."""
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise InputError(specs[0][1], f"channel names repeat: {names}")
    mask, m_aff = niio.load_image(mask_path, "brain mask")
    if not np.isin(np.unique(mask), (0, 1)).all():
        raise InputError(mask_path, "brain mask must contain only 0 and 1")
    if not mask.any():
        raise InputError(mask_path, "brain mask is empty")
    channels = {}
    for name, path in specs:
        data, aff = niio.load_image(path, f"channel {name}")
        if data.shape != mask.shape:
            raise InputError(path, f"shape {data.shape} differs from the mask's {mask.shape}")
        if not np.allclose(aff, m_aff, atol=1e-3):
            raise InputError(path, "affine differs from the mask's (not on the same grid)")
        if not np.isfinite(data[mask > 0]).all():
            raise InputError(path, "non-finite values inside the brain mask")
        channels[name] = data
    labels = region = None
    if dseg_path:
        lab, aff = niio.load_image(dseg_path, "label image", dtype=np.float64)
        if lab.shape != mask.shape or not np.allclose(aff, m_aff, atol=1e-3):
            raise InputError(dseg_path, "label image is not on the mask's grid")
        if not np.isfinite(lab).all() or (lab != np.round(lab)).any() or lab.min() < 0 or lab.max() > 255:
            raise InputError(dseg_path, "labels must be integers 0..255 (1 CMB, 2 iron deposit)")
        labels = lab.astype(np.uint8)
    if region_path:
        region, aff = niio.load_image(region_path, "iron-region mask")
        if region.shape != mask.shape or not np.allclose(aff, m_aff, atol=1e-3):
            raise InputError(region_path, "iron-region mask is not on the brain mask's grid")
        if not np.isin(np.unique(region), (0, 1)).all():
            raise InputError(region_path, "iron-region mask must contain only 0 and 1")
        region = region > 0
    return channels, mask > 0, m_aff, labels, region


def cut_brain_voxels(mask, axial: int, meta: dict) -> int:
    """Brain voxels that the centre crop of slices larger than the stack's leaves out."""
    if not meta["cropped"]:
        return 0
    m = np.moveaxis(mask, axial, 0)
    (oh, ow), (lh, lw) = meta["orig_start"], meta["length"]
    return int(m.sum() - m[:, oh:oh + lh, ow:ow + lw].sum())


def parse_channel(spec: str):
    """(name, path) of a NAME=PATH channel argument."""
    if "=" not in spec:
        raise InputError(spec, "a channel is NAME=PATH, e.g. SWI=sub-01_swi.nii.gz")
    name, path = spec.split("=", 1)
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise InputError(path, f"bad channel name {name!r}")
    return name, path


def pad_size(pad_to, multiple: int, inplane, where) -> int:
    """The stack's slice size: ``pad_to`` as a number, or 'auto': the in-plane matrix rounded up
    to ``multiple``."""
    if multiple < 1:
        raise InputError(where, "--pad-multiple must be positive")
    if pad_to == "auto":
        return -(-max(inplane) // multiple) * multiple
    size = int(pad_to) if re.fullmatch(r"\d+", str(pad_to)) else 0
    if size < 1:
        raise InputError(where, f"--pad-to must be a positive number or auto, got {pad_to!r}")
    return size
