"""``deepmir stack | folds | train | predict | lesion-counts``: the learning steps, file in → file out.

stack    build a participant's 2D stack (.npz) from NIfTI channels, brain mask and dseg
folds    leave-one-out splits: fold-<participant>.json per fold and splits_final.json
train    train one fold's UNet from training and validation stacks (resumes after a kill)
predict  label and probability NIfTI of a participant's stack with a trained model
lesion-counts  predicted vs reference lesion counts per participant (a quick check)

All inputs are checked before anything is computed; a bad one stops the command with
``<file>: <problem>`` and nothing is written.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np

from deepmir import niio
from deepmir.errors import InputError

STACK_KEYS = ("x", "meta", "affine", "mask")


# ---------------------------------------------------------------- files ----------------------

def _exists(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "no such file")
    return p


def _load_nifti(path, dtype=np.float32):
    p = _exists(path)
    try:
        data, affine = niio.load(p, dtype=dtype)
    except Exception as err:  # nibabel raises many kinds
        raise InputError(p, f"not a readable NIfTI image ({err})") from None
    data = np.squeeze(data)
    if data.ndim != 3:
        raise InputError(p, f"expected a 3D image, got shape {data.shape}")
    return data, affine


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
    p = _exists(path)
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
    axial = int(np.argmax(cos[2]))
    inplane = [a for a in range(3) if a != axial]
    lr = inplane[int(np.argmax(cos[0, inplane]))]
    return axial, lr


def _set_threads(n):
    import torch

    if n:
        torch.set_num_threads(int(n))


def _check_device(device: str, path):
    import torch

    try:
        dev = torch.device("cpu" if device == "auto" else device)
    except RuntimeError as err:
        raise InputError(path, f"bad --device {device!r} ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(path, f"--device {device}: CUDA is not available here")


# ---------------------------------------------------------------- stack ----------------------

def _parse_channel(spec: str):
    if "=" not in spec:
        raise InputError(spec, "a channel is NAME=PATH, e.g. SWI=sub-01_swi.nii.gz")
    name, path = spec.split("=", 1)
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise InputError(path, f"bad channel name {name!r}")
    return name, path


def _pad_size(args, inplane) -> int:
    """--pad-to as a number, or 'auto': the in-plane matrix rounded up to --pad-multiple."""
    if args.pad_multiple < 1:
        raise InputError(args.out, "--pad-multiple must be positive")
    if args.pad_to == "auto":
        return -(-max(inplane) // args.pad_multiple) * args.pad_multiple
    try:
        size = int(args.pad_to)
    except ValueError:
        size = 0
    if size < 1:
        raise InputError(args.out, f"--pad-to must be a positive number or auto, got {args.pad_to!r}")
    return size


def cmd_stack(args) -> int:
    from deepmir.dataset import make_stack

    specs = [_parse_channel(s) for s in args.channel]
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise InputError(args.channel[0], f"channel names repeat: {names}")
    mask, m_aff = _load_nifti(args.mask)
    if not np.isin(np.unique(mask), (0, 1)).all():
        raise InputError(args.mask, "brain mask must contain only 0 and 1")
    if not mask.any():
        raise InputError(args.mask, "brain mask is empty")
    channels = {}
    for name, path in specs:
        data, aff = _load_nifti(path)
        if data.shape != mask.shape:
            raise InputError(path, f"shape {data.shape} differs from the mask's {mask.shape}")
        if not np.allclose(aff, m_aff, atol=1e-3):
            raise InputError(path, "affine differs from the mask's (not on the same grid)")
        if not np.isfinite(data[mask > 0]).all():
            raise InputError(path, "non-finite values inside the brain mask")
        channels[name] = data
    labels = None
    if args.dseg:
        lab, aff = _load_nifti(args.dseg, dtype=np.float64)
        if lab.shape != mask.shape or not np.allclose(aff, m_aff, atol=1e-3):
            raise InputError(args.dseg, "label image is not on the mask's grid")
        if not np.isfinite(lab).all() or (lab != np.round(lab)).any() or lab.min() < 0 or lab.max() > 255:
            raise InputError(args.dseg, "labels must be integers 0..255 (1 CMB, 2 iron deposit)")
        labels = lab.astype(np.uint8)
    region = None
    if args.iron_region:
        region, aff = _load_nifti(args.iron_region)
        if region.shape != mask.shape or not np.allclose(aff, m_aff, atol=1e-3):
            raise InputError(args.iron_region, "iron-region mask is not on the brain mask's grid")
        if not np.isin(np.unique(region), (0, 1)).all():
            raise InputError(args.iron_region, "iron-region mask must contain only 0 and 1")
    axial, lr = axes_from_affine(m_aff)
    pad_to = _pad_size(args, [n for a, n in enumerate(mask.shape) if a != axial])
    x, y, meta = make_stack(channels, mask > 0, labels, axial, pad_to=pad_to,
                            qsm_clip_sigma=args.qsm_clip_sigma, lr_axis=lr)
    if meta["cropped"]:  # slices larger than --pad-to are centre-cropped: never through the brain
        m = np.moveaxis(mask > 0, axial, 0)
        (oh, ow), (lh, lw) = meta["orig_start"], meta["length"]
        cut = int(m.sum() - m[:, oh:oh + lh, ow:ow + lw].sum())
        if cut:
            raise InputError(args.mask, f"slices of {m.shape[1]}×{m.shape[2]} voxels do not fit --pad-to "
                                        f"{pad_to} (learn.slice_size) without cutting {cut} brain voxels: "
                                        f"raise it to at least {max(m.shape[1:])}, a multiple of 2^(depth−1), "
                                        f"or set it to null (fitted)")
    save_stack(args.out, x, y, meta, m_aff, mask > 0, None if region is None else region > 0)
    return 0


# ---------------------------------------------------------------- folds ----------------------

def _read_participants(path) -> list[str]:
    p = _exists(path)
    lines = [ln.rstrip("\n").split("\t") for ln in p.read_text().splitlines() if ln.strip()]
    if not lines:
        raise InputError(p, "empty participants file")
    if "participant_id" in lines[0]:
        col = lines[0].index("participant_id")
        return [row[col] for row in lines[1:] if len(row) > col]
    return [row[0] for row in lines]


def cmd_folds(args) -> int:
    from deepmir.folds import loo_folds, nnunet_splits

    source = args.participants_tsv or "--participants"
    pids = list(args.participants or []) + (_read_participants(args.participants_tsv) if args.participants_tsv else [])
    if len(set(pids)) != len(pids):
        raise InputError(source, "participants listed more than once")
    if len(pids) < 3:
        raise InputError(source, "leave-one-out needs at least 3 participants")
    bad = [p for p in pids if not re.fullmatch(r"[A-Za-z0-9_.\-]+", p)]
    if bad:
        raise InputError(source, f"participant ids unusable as file names: {bad}")
    if not 0 < args.val_fraction < 1:
        raise InputError(source, "--val-fraction must be between 0 and 1")
    if not (args.out_dir or args.fold_out or args.splits_final):
        raise InputError(source, "nothing to write: give --out-dir, --fold/--fold-out or --splits-final")
    if bool(args.fold) != bool(args.fold_out):
        raise InputError(source, "--fold and --fold-out go together")
    if args.fold and args.fold not in pids:
        raise InputError(source, f"--fold {args.fold} is not among the participants")
    folds = loo_folds(pids, seed=args.seed, val_fraction=args.val_fraction)
    record = lambda f: {**f, "seed": args.seed, "val_fraction": args.val_fraction}  # noqa: E731
    if args.out_dir:
        out = Path(args.out_dir)
        for f in folds:
            niio.write_json(out / f"fold-{f['test'][0]}.json", record(f))
        niio.write_json(out / "splits_final.json", nnunet_splits(folds))
    if args.fold:
        niio.write_json(args.fold_out, record(next(f for f in folds if f["test"] == [args.fold])))
    if args.splits_final:
        niio.write_json(args.splits_final, nnunet_splits(folds))
    return 0


# ---------------------------------------------------------------- train ----------------------

def _labelled_stacks(paths, channels):
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


def _pad_square(a: np.ndarray, size: int) -> np.ndarray:
    """Centre ``a``'s last two (square) axes in ``size × size`` zeros."""
    o = (size - a.shape[-1]) // 2
    out = np.zeros(a.shape[:-2] + (size, size), a.dtype)
    out[..., o:o + a.shape[-2], o:o + a.shape[-1]] = a
    return out


def _gather(stacks, label_mode, size):
    """The paper learner's arrays: slices of every stack padded to ``size``, mapped labels,
    and which slices hold brain."""
    from deepmir.dataset import label_mode as map_labels

    xs, ys, eligible = [], [], []
    for x, st in stacks:
        xs.append(_pad_square(x, size))
        ys.append(_pad_square(map_labels(st["y"], label_mode), size))
        el = np.zeros(len(x), dtype=bool)
        el[st["meta"]["brain_slices"]] = True
        eligible.append(el)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(eligible)


def _volumes(stacks):
    """The patch learner's volumes: dicts of x (the channels, in order), y (raw dseg 0/1/2),
    brain (stack grid) and voxel_size (slice, row, column)."""
    from deepmir.dataset import restack, stack_voxel_size

    return [{"x": x, "y": np.where((st["y"] == 1) | (st["y"] == 2), st["y"], 0).astype(np.uint8),
             "brain": restack(st["mask"].astype(bool), st["meta"], fill=False),
             "iron_region": _iron_region(st),
             "voxel_size": stack_voxel_size(st["affine"], st["meta"])} for x, st in stacks]


def _iron_region(st):
    """The stack's iron region on the stack grid, or None (iron anywhere)."""
    from deepmir.dataset import restack

    return None if st.get("iron_region") is None else restack(st["iron_region"].astype(bool), st["meta"], fill=False)


def _train_and_val_stacks(args):
    """Training and validation stacks (labelled, same channels and orientation, disjoint)."""
    tr, ref = _labelled_stacks(args.train_stacks, args.channels)
    va, vref = _labelled_stacks(args.val_stacks, list(ref[0]))
    if vref != ref:
        raise InputError(args.val_stacks[0], "validation stacks differ from the training stacks")
    common = set(map(os.path.realpath, args.train_stacks)) & set(map(os.path.realpath, args.val_stacks))
    if common:
        raise InputError(sorted(common)[0], "stack is in both the training and the validation set")
    return tr, va, ref


def _train_patch(args, out: Path) -> int:
    from deepmir.dataset import class_value
    from deepmir.learner import LearnerConfig, train_patches

    try:
        cfg = LearnerConfig.from_dict(json.loads(args.patch_json) if args.patch_json else {})
    except (ValueError, TypeError) as err:
        raise InputError(out, f"--patch-json: {err}") from None
    tr, va, ref = _train_and_val_stacks(args)
    f = 2 ** (cfg.depth - 1)
    odd = [p for p, (x, _) in zip(args.train_stacks + args.val_stacks, tr + va) if x.shape[-1] % f]
    if odd:       # the patch size is checked by LearnerConfig
        raise InputError(odd[0], f"slice size must be divisible by 2^(depth-1) = {f}")
    tv, vv = _volumes(tr), _volumes(va)
    from deepmir.learner import SAMPLED_LABELS
    if not any(np.isin(v["y"], SAMPLED_LABELS[args.label_mode]).any() for v in tv):
        raise InputError(args.train_stacks[0], f"no '{args.label_mode}' label in the training stacks")
    _check_device(args.device, out)
    _set_threads(args.threads)
    tol = {"cmb": args.tol_cmb, "iron": args.tol_iron, "union": max(args.tol_cmb, args.tol_iron)}
    result = train_patches(
        tv, vv, args.label_mode, cfg, seed=args.seed, out_dir=out, device=args.device, tolerances=tol,
        unit=args.tol_unit, progress=not args.quiet, stop_after=args.stop_after,
        amp=False if args.no_amp else None,
        model_info={"title": f"{out.parent.name}/{out.name}: {args.label_mode}, {' + '.join(ref[0])}",
                    "channels": list(ref[0]), "class_value": class_value(args.label_mode)})
    if result.completed and args.drop_last:
        (out / "last.pt").unlink(missing_ok=True)
    return 0


def cmd_train(args) -> int:
    from deepmir.augment import AugmentConfig
    from deepmir.dataset import class_value, n_classes_for
    from deepmir.train import train

    out = Path(args.out_dir)
    if args.learner == "patch":
        return _train_patch(args, out)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise InputError(out, f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0 or args.fg_weight <= 0:
        raise InputError(out, "--lr and --fg-weight must be positive")
    tr, va, ref = _train_and_val_stacks(args)
    size = max(x.shape[-1] for x, _ in tr + va)     # stacks fitted per participant: pad to the largest
    tx, ty, tel = _gather(tr, args.label_mode, size)
    vx, vy, vel = _gather(va, args.label_mode, size)
    if not tx.shape[-1] % 2 ** (args.depth - 1) == 0:
        raise InputError(args.train_stacks[0], f"slice size {tx.shape[-1]} not divisible by 2^(depth-1)")
    n_classes = n_classes_for(args.label_mode)
    if args.no_augment:
        augment = False
    else:
        base = AugmentConfig.multi_class() if n_classes > 1 else AugmentConfig.single_class()
        over = {k: getattr(args, k) for k in ("n_translations", "n_rotations", "max_shift", "min_angle",
                                              "max_angle", "unlabelled_ratio") if getattr(args, k) is not None}
        if args.no_flip:
            over["flip"] = False
        bad = [k for k, v in over.items() if k != "flip" and v < 0]
        if bad or ("max_angle" in over or "min_angle" in over) and not (
                1 <= over.get("min_angle", base.min_angle) <= over.get("max_angle", base.max_angle)):
            raise InputError(out, "augmentation counts, shifts and ratios must be ≥ 0 and 1 ≤ min angle ≤ max angle")
        augment = AugmentConfig(**{**base.as_dict(), **over})
    if not ty.any():
        raise InputError(args.train_stacks[0], f"no '{args.label_mode}' label in the training stacks")
    _check_device(args.device, out)
    _set_threads(args.threads)
    model_config = {"depth": args.depth, "base_width": args.base_width, "max_width": args.max_width}
    if args.no_head_relu:
        model_config["head_relu"] = False
    result = train(
        tx, ty, vx, vy, n_classes=n_classes, model_config=model_config, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, augment=augment,
        augment_val=not args.no_augment_val, train_eligible=tel, val_eligible=vel, flip_dim=ref[1],
        checkpoint_dir=out, device=args.device, amp=False if args.no_amp else None,
        stop_after_epoch=args.stop_after_epoch, progress=not args.quiet,
        model_info={"title": f"{out.parent.name}/{out.name}: {args.label_mode}, {' + '.join(ref[0])}",
                    "label_mode": args.label_mode, "channels": list(ref[0]), "pad_to": size,
                    "class_value": class_value(args.label_mode)},
        on_mismatch="error" if args.keep_mismatched else "restart",
        fg_weight=args.fg_weight, prior_bias=not args.no_prior_bias,
    )
    if result.completed and args.drop_last:
        (out / "last.pt").unlink(missing_ok=True)  # the resume state: model + optimizer, ~3× best.pt
    return 0


# ---------------------------------------------------------------- predict --------------------

def _predict_patch(model, info, x, st, args):
    """Labels (3D) and probabilities (3D + class) of a patch-learner model at the operating
    point chosen on its validation participants (threshold, minimum size per class), iron
    lesions kept to the stack's iron region when it has one."""
    from deepmir.dataset import restack, stack_voxel_size, unstack
    from deepmir.postprocess import lesions_from_probs
    from deepmir.predict import predict_brain_probs

    meta = st["meta"]
    brain = restack(st["mask"].astype(bool), meta, fill=False)
    probs = predict_brain_probs(model, x, brain, device=args.device, batch_size=args.batch_size,
                                amp=False if args.no_amp else None, context=int(info["context"]),
                                tta=bool(info.get("tta")))
    op = {int(k): v for k, v in info["operating_point"].items()}
    labels = lesions_from_probs(np.moveaxis(probs, 1, 0), info["label_mode"], op,
                                stack_voxel_size(st["affine"], meta), info.get("max_cmb_diameter_mm"), brain,
                                _iron_region(st))
    return unstack(labels, meta, fill=0), unstack(probs, meta, fill=0.0)


def cmd_predict(args) -> int:
    import torch

    from deepmir.predict import model_from_checkpoint, predict_volume

    _check_device(args.device, args.model)
    _set_threads(args.threads)
    mp = _exists(args.model)
    try:
        ck = torch.load(mp, map_location="cpu", weights_only=True)
        model = model_from_checkpoint(ck)
    except Exception as err:
        raise InputError(mp, f"not a deepmir model checkpoint (best.pt) ({err})") from None
    info = ck.get("info", {})
    st = load_stack(args.stack)
    names = st["meta"]["channels"]
    want = info.get("channels") or names
    missing = [c for c in want if c not in names]
    if missing:
        raise InputError(args.stack, f"stack lacks channel(s) {missing} the model was trained on")
    context = int(info.get("context", 0))
    if len(want) * (2 * context + 1) != model.config["in_channels"]:
        raise InputError(mp, "model input channels do not match its recorded channel names")
    f = 2 ** (model.config["depth"] - 1)
    if st["x"].shape[-1] % f:
        raise InputError(args.stack, f"slice size {st['x'].shape[-1]} not divisible by {f}")
    if args.batch_size < 1:
        raise InputError(args.stack, "--batch-size must be at least 1")
    x = st["x"][:, [names.index(c) for c in want]]
    if info.get("learner") == "patch":
        labels, probs = _predict_patch(model, info, x, st, args)
    else:
        labels, probs = predict_volume(
        model, x, st["meta"], model.config["n_classes"], device=args.device, batch_size=args.batch_size,
            class_value=int(info.get("class_value", 1)), threshold=args.threshold,
            mask=None if args.no_mask else st["mask"].astype(bool), amp=False if args.no_amp else None)
    niio.save(args.out_labels, labels, st["affine"], dtype=np.uint8)
    if args.out_probs:
        if probs.shape[-1] == 1:  # single class: one 3D probability map
            probs = probs[..., 0]
        niio.save(args.out_probs, probs, st["affine"], dtype=np.float32)
    return 0


# ---------------------------------------------------------------- lesion counts --------------

def lesion_counts(pred: np.ndarray, ref: np.ndarray, label_mode: str) -> list[dict]:
    """Per class of the experiment: lesions (26-connected components) in the reference, in the
    prediction, and reference lesions touched by a predicted voxel of the same class."""
    from scipy import ndimage as ndi

    from deepmir.dataset import CMB, IRON, label_mode as map_labels

    classes = {"cmb": [("cmb", CMB)], "iron": [("iron", IRON)], "union": [("cmb+iron", CMB)],
               "multiclass": [("cmb", CMB), ("iron", IRON)]}[label_mode]
    r = map_labels(ref, label_mode)
    if label_mode == "iron":
        r = r * IRON
    rows = []
    for name, value in classes:
        ref_c, pred_c = r == value, pred == value
        if label_mode == "union":
            pred_c = pred > 0
        lab_r, n_r = ndi.label(ref_c, structure=np.ones((3, 3, 3)))
        _, n_p = ndi.label(pred_c, structure=np.ones((3, 3, 3)))
        hit = len(set(np.unique(lab_r[pred_c & ref_c])) - {0})
        rows.append({"class": name, "n_true": int(n_r), "n_pred": int(n_p), "n_true_detected": hit})
    return rows


def cmd_lesion_counts(args) -> int:
    from deepmir.dataset import LABEL_MODES

    if not (len(args.pred) == len(args.ref) == len(args.participants)):
        raise InputError(args.out, "--pred, --ref and --participants need the same number of entries")
    if args.label_mode not in LABEL_MODES:
        raise InputError(args.out, f"--label-mode must be one of {LABEL_MODES}")
    pairs = []
    for pid, pp, rp in zip(args.participants, args.pred, args.ref):
        pred, p_aff = _load_nifti(pp, dtype=np.float64)
        ref, r_aff = _load_nifti(rp, dtype=np.float64)
        if pred.shape != ref.shape or not np.allclose(p_aff, r_aff, atol=1e-3):
            raise InputError(pp, f"prediction is not on the grid of {rp}")
        pairs.append((pid, np.rint(pred).astype(np.int16), np.rint(ref).astype(np.int16)))
    lines = ["participant\tclass\tn_true\tn_pred\tn_true_detected"]
    for pid, pred, ref in pairs:
        for row in lesion_counts(pred, ref, args.label_mode):
            lines.append(f"{pid}\t{row['class']}\t{row['n_true']}\t{row['n_pred']}\t{row['n_true_detected']}")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    niio.write_text(out, text)
    print(text, end="")
    return 0


# ---------------------------------------------------------------- parsers --------------------

def register(subparsers) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = subparsers.add_parser(
        "stack", formatter_class=fmt, help="build a participant's 2D slice stack (.npz) for training/prediction",
        description="Z-score each channel inside the brain mask (QSM first clipped to ±k·σ), cut axial "
                    "slices (the array axis closest to the scanner z axis, from the mask's affine), zero-pad "
                    "or centre-crop them to PAD_TO × PAD_TO, and write an uncompressed .npz with x [S, C, H, W], "
                    "y [S, H, W] (the raw dseg), the mask, the affine and the metadata that maps slices back.")
    p.add_argument("--channel", action="append", required=True, metavar="NAME=PATH",
                   help="an input NIfTI on the mask's grid; repeat, in network channel order "
                        "(e.g. --channel SWI=swi.nii.gz --channel QSM=qsm.nii.gz); the channel named QSM is clipped")
    p.add_argument("--mask", required=True, metavar="PATH", help="brain mask NIfTI (0/1)")
    p.add_argument("--dseg", metavar="PATH", help="reference labels NIfTI (0 background, 1 CMB, 2 iron deposit); "
                                                  "omit for a participant to predict only")
    p.add_argument("--iron-region", metavar="PATH",
                   help="mask NIfTI (0/1) of where an iron deposit may lie (`deepmir iron-region`: the basal "
                        "ganglia and a margin); the patch learner's iron lesions outside it become microbleeds")
    p.add_argument("--out", required=True, metavar="PATH", help="output stack (.npz)")
    p.add_argument("--pad-to", default="auto",
                   help="slice size after centred zero-padding / cropping, or auto: the in-plane matrix rounded "
                        "up to --pad-multiple")
    p.add_argument("--pad-multiple", type=int, default=32, help="auto slice sizes are multiples of this")
    p.add_argument("--qsm-clip-sigma", type=float, default=5.0, help="clip QSM to ± this many σ before z-scoring")
    p.set_defaults(func=cmd_stack)

    p = subparsers.add_parser(
        "folds", formatter_class=fmt, help="leave-one-out folds with a random 75/25 train/validation split",
        description="One fold per participant (its test set); the other participants are split at random into "
                    "training and validation (seeded per fold, independent of list order). Writes "
                    "OUT_DIR/fold-<participant>.json ({test, train, val, seed, val_fraction}) and "
                    "OUT_DIR/splits_final.json (nnU-Net format), or one fold (--fold, --fold-out) or "
                    "splits_final.json alone (--splits-final).")
    p.add_argument("--participants", nargs="+", metavar="ID", help="participant ids (those with labels)")
    p.add_argument("--participants-tsv", metavar="PATH",
                   help="TSV with a participant_id column (BIDS participants.tsv), or one id per line")
    p.add_argument("--seed", type=int, default=0, help="random seed of the splits")
    p.add_argument("--val-fraction", type=float, default=0.25, help="fraction of the non-test participants used for validation")
    p.add_argument("--out-dir", metavar="DIR", help="write every fold-<participant>.json and splits_final.json here")
    p.add_argument("--fold", metavar="ID", help="write only the fold whose test participant is ID (to --fold-out)")
    p.add_argument("--fold-out", metavar="PATH", help="output JSON of --fold")
    p.add_argument("--splits-final", metavar="PATH", help="write the nnU-Net splits_final.json here")
    p.set_defaults(func=cmd_folds)

    p = subparsers.add_parser(
        "train", formatter_class=fmt, help="train one fold's U-Net (checkpointed; resumes after a kill)",
        description="--learner patch (default): a compact 2.5D U-Net on sampled patches (lesions oversampled, "
                    "hard negatives mined) for a fixed number of iterations; every --patch-json val_every "
                    "iterations the validation participants are predicted and the threshold and minimum lesion "
                    "size with the best lesion-wise F1 are found; the best iteration is kept with them "
                    "(selection.json). --learner paper: the study's protocol, full slices with slice-selective "
                    "augmentation, Adam and cross-entropy, the epoch with the best validation IoU kept. Writes "
                    "OUT_DIR/best.pt (the model for 'deepmir predict'), last.pt (resume state), log.tsv and "
                    "learning_curve.png; run again with the same arguments to resume.")
    p.add_argument("--learner", choices=("patch", "paper"), default="patch",
                   help="patch: the default learner; paper: the study's full-slice protocol")
    p.add_argument("--patch-json", metavar="JSON",
                   help="patch learner settings as a JSON object (the learn.patch config keys; missing keys "
                        "take their defaults)")
    p.add_argument("--tol-cmb", type=float, default=3.0, help="patch learner: CMB matching tolerance for the F1")
    p.add_argument("--tol-iron", type=float, default=5.0, help="patch learner: iron matching tolerance (union: the larger)")
    p.add_argument("--tol-unit", choices=("vox", "mm"), default="vox", help="patch learner: unit of the tolerances")
    p.add_argument("--stop-after", type=int, help="patch learner: stop after this iteration (checkpointed; run again to resume)")
    p.add_argument("--train-stacks", nargs="+", required=True, metavar="NPZ", help="training stacks (with labels)")
    p.add_argument("--val-stacks", nargs="+", required=True, metavar="NPZ", help="validation stacks (with labels)")
    p.add_argument("--label-mode", required=True, choices=("cmb", "iron", "union", "multiclass"),
                   help="targets: CMB only, iron only, CMB ∪ iron as one class, or CMB and iron as two classes")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="folder for checkpoints, log and curve")
    p.add_argument("--channels", nargs="+", metavar="NAME", help="subset of the stacks' channels, in this order (default: all)")
    p.add_argument("--epochs", type=int, default=30, help="maximum number of epochs")
    p.add_argument("--batch-size", type=int, default=16, help="slices per optimisation step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, augmentation and shuffling")
    p.add_argument("--fg-weight", type=float, default=1.0,
                   help="loss weight of lesion voxels (1: plain cross-entropy, as in the study)")
    p.add_argument("--no-prior-bias", action="store_true",
                   help="start the head's bias at 0 (50 %%) instead of at the lesion frequency")
    p.add_argument("--depth", type=int, default=6, help="number of resolutions of the U-Net (6: five poolings)")
    p.add_argument("--base-width", type=int, default=64, help="feature maps at full resolution (doubled per level)")
    p.add_argument("--max-width", type=int, help="cap on the feature maps per level")
    p.add_argument("--no-head-relu", action="store_true", help="multi-class: no ReLU between the 1×1 head and the softmax")
    p.add_argument("--no-augment", action="store_true", help="no augmentation: every slice once")
    p.add_argument("--no-augment-val", action="store_true", help="validate on the unaugmented validation slices")
    p.add_argument("--n-translations", type=int, help="translations per augmented slice (default 6, multi-class 10)")
    p.add_argument("--n-rotations", type=int, help="rotation angles ±d per augmented slice (default 6, multi-class 16)")
    p.add_argument("--max-shift", type=int, help="largest translation in voxels (default 45)")
    p.add_argument("--min-angle", type=int, help="smallest rotation angle d in degrees (default 1)")
    p.add_argument("--max-angle", type=int, help="largest rotation angle d in degrees (default 60)")
    p.add_argument("--no-flip", action="store_true", help="no left-right flipped copy of each augmented slice")
    p.add_argument("--unlabelled-ratio", type=float, help="unlabelled / labelled source slices drawn (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--stop-after-epoch", type=int, help="stop after this epoch (checkpointed; run again to resume)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress line on stderr")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--drop-last", action="store_true",
                   help="remove OUT_DIR/last.pt once every epoch is done (saves disk; more epochs then start over)")
    p.add_argument("--keep-mismatched", action="store_true",
                   help="stop with an error (instead of training from scratch) when OUT_DIR/last.pt was made "
                        "with other data or settings")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "predict", formatter_class=fmt, help="predict a participant's labels with a trained model",
        description="Run the model of 'deepmir train' (best.pt) on a stack and write the label map (multi-class: "
                    "1 CMB, 2 iron; single class: the experiment's label) and optionally the class probabilities "
                    "(single class: 3D; multi-class: 4D, class last, background first) as NIfTI on the input grid, with the input's affine.")
    p.add_argument("--model", required=True, metavar="PT", help="best.pt written by 'deepmir train'")
    p.add_argument("--stack", required=True, metavar="NPZ", help="the participant's stack ('deepmir stack')")
    p.add_argument("--out-labels", required=True, metavar="PATH", help="label map NIfTI (uint8)")
    p.add_argument("--out-probs", metavar="PATH", help="probability NIfTI (float32; 3D single class, 4D class last multi-class)")
    p.add_argument("--threshold", type=float, default=0.5, help="single class: probability above which a voxel is labelled")
    p.add_argument("--no-mask", action="store_true", help="keep labels outside the brain mask")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser(
        "lesion-counts", formatter_class=fmt, help="lesions per participant: predicted vs reference (quick check)",
        description="For each participant, count the 26-connected lesions of the experiment's class(es) in the "
                    "reference and in the prediction, and the reference lesions touched by the prediction; write "
                    "a TSV and print it. (The study's lesion-wise metrics are 'deepmir evaluate'.)")
    p.add_argument("--participants", nargs="+", required=True, metavar="ID", help="participant ids, in order")
    p.add_argument("--pred", nargs="+", required=True, metavar="PATH", help="predicted dseg NIfTIs, in order")
    p.add_argument("--ref", nargs="+", required=True, metavar="PATH", help="reference dseg NIfTIs (0/1/2), in order")
    p.add_argument("--label-mode", required=True, choices=("cmb", "iron", "union", "multiclass"),
                   help="the experiment's label mode")
    p.add_argument("--out", required=True, metavar="PATH", help="output TSV")
    p.set_defaults(func=cmd_lesion_counts)
