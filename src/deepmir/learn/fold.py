"""One fold's training, stacks in → checkpoint out (rule learn_train, and census's final_train):
the stacks read and checked, then the learner that the config's ``learn.learner`` names — the
patch learner (:mod:`.learner`) or the study's full-slice protocol (:mod:`.train`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deepmir.device import check_device, set_threads
from deepmir.errors import InputError
from deepmir.learn.dataset import class_value
from deepmir.learn.stack import gather, labelled_stacks, volumes


def read_stacks(train_paths, val_paths, channels=None):
    """Training and validation stacks (labelled, same channels and orientation, disjoint):
    ([(x, stack)], [(x, stack)], (channels, left-right axis))."""
    tr, ref = labelled_stacks(train_paths, channels)
    va, vref = labelled_stacks(val_paths, list(ref[0]))
    if vref != ref:
        raise InputError(val_paths[0], "validation stacks differ from the training stacks")
    common = set(map(os.path.realpath, train_paths)) & set(map(os.path.realpath, val_paths))
    if common:
        raise InputError(sorted(common)[0], "stack is in both the training and the validation set")
    return tr, va, ref


def _patch(stacks, cfg: dict, out: Path, info, run: dict):
    from deepmir.learn.learner import SAMPLED_LABELS, LearnerConfig, train_patches

    try:
        patch = LearnerConfig.from_dict(cfg["patch"])
    except (ValueError, TypeError) as err:
        raise InputError("--config-json", f"config learn.patch: {err}") from None
    (tr, va, ref), paths, label_mode = stacks
    f = 2 ** (patch.depth - 1)
    odd = [p for p, (x, _) in zip(paths, tr + va) if x.shape[-1] % f]
    if odd:       # the patch size is checked by LearnerConfig
        raise InputError(odd[0], f"slice size must be divisible by 2^(depth-1) = {f}")
    tv, vv = volumes(tr), volumes(va)
    if not any(np.isin(v["y"], SAMPLED_LABELS[label_mode]).any() for v in tv):
        raise InputError(paths[0], f"no '{label_mode}' label in the training stacks")
    _start(cfg["device"], out, run["threads"])
    return train_patches(tv, vv, label_mode, patch, seed=cfg["seed"], out_dir=out, device=cfg["device"],
                         tolerances=run["tolerances"], unit=run["unit"], progress=run["progress"],
                         stop_after=run["stop_after"], amp=run["amp"], model_info=info(ref))


def _paper(stacks, cfg: dict, out: Path, info, run: dict):
    from deepmir.learn import augment as aug
    from deepmir.learn.dataset import n_classes_for
    from deepmir.learn.train import train

    (tr, va, ref), paths, label_mode = stacks
    size = max(x.shape[-1] for x, _ in tr + va)     # stacks fitted per participant: pad to the largest
    tx, ty, tel = gather(tr, label_mode, size)
    vx, vy, vel = gather(va, label_mode, size)
    m = cfg["model"]
    if tx.shape[-1] % 2 ** (m["depth"] - 1):
        raise InputError(paths[0], f"slice size {tx.shape[-1]} not divisible by 2^(depth-1)")
    n_classes = n_classes_for(label_mode)
    try:
        augment = aug.from_config(cfg["augment"], n_classes)
    except ValueError as err:
        raise InputError("--config-json", f"config learn.augment: {err}") from None
    if not ty.any():
        raise InputError(paths[0], f"no '{label_mode}' label in the training stacks")
    _start(cfg["device"], out, run["threads"])
    model_config = {"depth": m["depth"], "base_width": m["base_width"], "max_width": m["max_width"]}
    if not m["head_relu"]:
        model_config["head_relu"] = False
    return train(
        tx, ty, vx, vy, n_classes=n_classes, model_config=model_config, epochs=cfg["epochs"],
        batch_size=cfg["batch_size"], lr=cfg["lr"], seed=cfg["seed"], augment=augment,
        augment_val=cfg["augment"]["validation"] or not cfg["augment"]["enabled"], train_eligible=tel,
        val_eligible=vel, flip_dim=ref[1], checkpoint_dir=out, device=cfg["device"], amp=run["amp"],
        stop_after_epoch=run["stop_after_epoch"], progress=run["progress"],
        model_info={"title": info(ref)["title"], "label_mode": label_mode, "channels": list(ref[0]),
                    "pad_to": size, "class_value": info(ref)["class_value"]},
        on_mismatch="error" if run["keep_mismatched"] else "restart",
        fg_weight=cfg["fg_weight"], prior_bias=m["prior_bias"])


def _start(device, out: Path, threads) -> None:
    """Checked inputs, then the device checked and the CPU threads set: training begins."""
    check_device(device, out)
    set_threads(threads)


def train_fold(train_paths, val_paths, label_mode: str, channels, cfg: dict, out: Path, tolerances: dict,
               unit: str, *, threads=0, amp=None, progress=True, stop_after=None, stop_after_epoch=None,
               keep_mismatched=False):
    """One fold's model in ``out`` (best.pt, last.pt, log.tsv, learning curve; resumed from
    last.pt) by the learner of ``cfg`` (the config's learn section, read by deepmir.settings):
    ``patch`` (:func:`deepmir.learn.learner.train_patches`, selecting with the matching
    ``tolerances`` in ``unit``) or ``paper`` (:func:`deepmir.learn.train.train`). Every input
    and setting is checked (one InputError) before training starts."""
    out = Path(out)
    stacks = (read_stacks(train_paths, val_paths, channels), list(train_paths) + list(val_paths), label_mode)
    info = lambda ref: {"title": f"{out.parent.name}/{out.name}: {label_mode}, {' + '.join(ref[0])}",  # noqa: E731
                        "channels": list(ref[0]), "class_value": class_value(label_mode)}
    run = dict(threads=threads, amp=amp, progress=progress, stop_after=stop_after, tolerances=tolerances,
               unit=unit, stop_after_epoch=stop_after_epoch, keep_mismatched=keep_mismatched)
    result = (_patch if cfg["learner"] == "patch" else _paper)(stacks, cfg, out, info, run)
    if result.completed and not cfg["keep_last_checkpoint"]:
        (out / "last.pt").unlink(missing_ok=True)  # the resume state: model + optimizer, ~3× best.pt
    return result
