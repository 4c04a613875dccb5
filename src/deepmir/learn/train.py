"""Training of one fold (preprint §2.4, supplement S2/S3): Adam, cross-entropy (BCE with
logits for a single class), at most ``epochs`` epochs over the augmented training plan; after
each epoch the foreground IoU over the whole (augmented) validation set; the epoch with the
highest validation IoU is kept.

Restartable: after every epoch ``checkpoint_dir/last.pt`` holds model, optimizer, grad-scaler
and RNG states, the epoch, the best weights so far and the history; calling :func:`train`
again with the same arguments resumes after the last finished epoch, and on CPU ends with
weights bit-identical to an uninterrupted run (every random draw comes from ``seed``: model
initialisation, augmentation plans, and a per-epoch shuffle seeded with ``(seed, epoch)``).
``checkpoint_dir/best.pt`` holds the best model (see :func:`deepmir.learn.predict.model_from_checkpoint`).
Checkpoints contain only tensors and plain types: ``torch.load(path, weights_only=True)``.

On CUDA: automatic mixed precision (bf16 where supported, else fp16 with a GradScaler),
channels-last memory format, and the source stacks kept on the GPU, where the augmentation
is rendered batch by batch. The same code runs on CPU in float32.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deepmir import niio
from deepmir.device import pick_device
from deepmir.learn.augment import AugmentConfig, Plan, make_plan, render
from deepmir.learn.dataset import slices_with_label
from deepmir.learn.unet import UNet

CHECKPOINT_FORMAT = 1
LOG_COLUMNS = ("epoch", "train_loss", "train_iou", "val_iou", "seconds")


@dataclass
class TrainResult:
    model: UNet                 # best epoch's weights loaded, eval mode
    best_epoch: int
    best_val_iou: float
    history: list = field(default_factory=list)   # one dict per epoch (LOG_COLUMNS)
    completed: bool = True      # False when stopped by stop_after_epoch
    last_state: dict | None = None  # state_dict after the last epoch run


def amp_settings(device: torch.device, amp: bool | None):
    """(enabled, dtype, needs_grad_scaler). Default: on for CUDA (bf16 if the GPU supports it,
    else fp16 + GradScaler), off on CPU (bf16 if asked for)."""
    enabled = device.type == "cuda" if amp is None else bool(amp)
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16
    return enabled, dtype, enabled and dtype == torch.float16


def predicted_labels(logits: torch.Tensor) -> torch.Tensor:
    """Class map [B, H, W]: logit > 0 for one class, argmax otherwise."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def iou_counts(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[2, K] (intersection, union) voxel counts of each foreground class (K = 1 for a single
    class, n_classes − 1 otherwise)."""
    classes = range(1, max(2, n_classes))
    rows = []
    for c in classes:
        p, t = pred == c, target == c
        rows.append(torch.stack([(p & t).sum(), (p | t).sum()]))
    return torch.stack(rows, dim=1).to(torch.float64)


def iou_from_counts(counts) -> float:
    """Mean over foreground classes of intersection / union; classes with an empty union
    (nothing to find, nothing predicted) are left out; 1.0 when all are empty."""
    c = np.asarray(counts.cpu() if torch.is_tensor(counts) else counts, dtype=np.float64)
    ok = c[1] > 0
    return float(np.mean(c[0, ok] / c[1, ok])) if ok.any() else 1.0


def loss_fn(logits: torch.Tensor, target: torch.Tensor, fg_weight: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy on the single logit, or cross-entropy over classes; foreground
    voxels weighted ``fg_weight`` (1: the plain cross-entropy of the study)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        pw = None if fg_weight == 1 else torch.tensor(float(fg_weight), device=logits.device)
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), pos_weight=pw)
    w = None
    if fg_weight != 1:
        w = torch.full((logits.shape[1],), float(fg_weight), device=logits.device)
        w[0] = 1.0
    return F.cross_entropy(logits, target, weight=w)


def set_prior_bias(model: UNet, y: np.ndarray, floor: float = 1e-6) -> None:
    """Start the head at the class frequencies of ``y`` instead of 50 %: sigmoid bias
    log(p / (1 − p)); softmax biases log p_c, or with the head ReLU (outputs ≥ 0) a positive
    background bias log(p_bg / mean foreground p) and 0 elsewhere. Tiny lesions make p ~ 1e-4,
    and from 50 % the optimiser would spend hundreds of steps just moving the bias.
    ``floor``: no class starts below this probability (0.01 is RetinaNet's prior: a rarer
    start leaves the softmax so saturated that a rare class can stay at 0 for good)."""
    k = model.n_classes
    y = np.asarray(y)
    counts = np.bincount(y.ravel(), minlength=max(2, k)).astype(np.float64)
    freq = np.clip(counts / max(1.0, counts.sum()), floor, 1.0)
    with torch.no_grad():
        b = model.head.bias
        if k == 1:
            p = min(freq[1:].sum(), 0.5)
            b.fill_(float(np.log(p / (1 - p))))
        elif model.config["head_relu"]:
            b.zero_()
            b[0] = float(max(0.0, np.log(freq[0] / freq[1:k].mean())))
        else:
            b.copy_(torch.as_tensor(np.log(freq[:k]), dtype=b.dtype))


def _digest(*arrays) -> str:
    """SHA-1 over arrays' shapes, dtypes and bytes."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.data)
    return h.hexdigest()


def _as_tensor(a, dtype) -> torch.Tensor:
    return torch.from_numpy(np.require(a, dtype=dtype, requirements=["C", "W"]))


def _save(obj, path: Path):
    """torch.save through the atomic writer (a killed job leaves the previous file whole), into
    an open file: the zip records are then named 'archive/' (saved to a path, torch names them
    after the temporary file, whose name holds the writer's process id)."""
    with niio.atomic(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def write_log(path, history):
    lines = ["\t".join(LOG_COLUMNS)]
    for r in history:
        lines.append("\t".join(str(r["epoch"]) if k == "epoch" else f"{r[k]:.6g}" for k in LOG_COLUMNS))
    niio.write_text(path, "\n".join(lines) + "\n")


def plot_curve(path, history, title: str | None = None):
    """Learning curve PNG: training loss (left axis), training and validation IoU (right)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ep = [r["epoch"] for r in history]
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    ax.plot(ep, [r["train_loss"] for r in history], "k-o", ms=3, label="train loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_ylabel("training loss")
    ax2 = ax.twinx()
    ax2.plot(ep, [r["train_iou"] for r in history], "b-s", ms=3, label="train IoU")
    ax2.plot(ep, [r["val_iou"] for r in history], "r-^", ms=3, label="validation IoU")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("IoU")
    best = max(history, key=lambda r: r["val_iou"])
    ax2.axvline(best["epoch"], color="r", ls=":", lw=1)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="center right", fontsize=8)
    fig.tight_layout()
    niio.write_png(path, fig)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu_state(model) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def build_model(n_classes: int, in_channels: int, model_config: dict | None, seed: int) -> UNet:
    """A UNet initialised from ``seed`` alone (the global torch RNG is left untouched)."""
    cfg = dict(model_config or {})
    cfg.pop("in_channels", None)
    cfg.pop("n_classes", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return UNet(in_channels, n_classes, **cfg)


def train(train_x, train_y, val_x, val_y, *, n_classes: int, model_config: dict | None = None,
          epochs: int = 30, batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
          augment: AugmentConfig | None | bool = None, augment_val: bool = True,
          train_eligible=None, val_eligible=None, flip_dim: int = -2,
          checkpoint_dir=None, log_path=None, curve_path=None, device=None, amp: bool | None = None,
          channels_last: bool | None = None, deterministic: bool | None = None,
          stop_after_epoch: int | None = None, on_epoch_end=None, progress: bool = True,
          model_info: dict | None = None, on_mismatch: str = "error", fg_weight: float = 1.0,
          prior_bias: bool = True) -> TrainResult:
    """Train a UNet on stacks ``train_x [S, C, H, W]`` / ``train_y [S, H, W]`` (targets already
    mapped: {0, 1} for n_classes = 1, {0 .. n_classes−1} otherwise) and select the epoch by the
    IoU on ``val_x`` / ``val_y``.

    augment: an :class:`AugmentConfig`; None → the study's (single- or multi-class counts);
    False → no augmentation (every slice once). ``*_eligible``: bool [S], slices that may be
    drawn as unlabelled (e.g. containing brain). ``flip_dim``: the left-right slice axis.
    model_config: UNet keyword arguments (depth, base_width, max_width, head_relu).
    checkpoint_dir: where last.pt / best.pt go (resume from last.pt if it exists).
    log_path / curve_path: per-epoch TSV and learning-curve PNG (default: in checkpoint_dir).
    stop_after_epoch: return after that epoch's checkpoint (to test resuming).
    on_epoch_end(record): called after each epoch's checkpoint; may raise to stop.
    model_info: extra plain values stored in best.pt (label mode, channel names, …).
    fg_weight: loss weight of foreground voxels (1: plain cross-entropy, as in the study).
    prior_bias: initialise the head's bias at the class frequencies of the training slices
    (:func:`set_prior_bias`) rather than at 50 %.
    on_mismatch: what to do when ``last.pt`` was made with other data or settings (or went
    past ``epochs``): "error" (raise ValueError) or "restart" (train from scratch, overwriting).

    Raising ``epochs`` and calling again continues training from the last checkpoint. When it
    returns, ``best.pt``, the log and the curve exist (also when nothing was left to train).
    """
    if on_mismatch not in ("error", "restart"):
        raise ValueError(f"on_mismatch must be 'error' or 'restart', got {on_mismatch!r}")
    if n_classes < 1 or n_classes == 2:
        raise ValueError("n_classes must be 1 (sigmoid) or ≥ 3 (softmax over bg, CMB, iron, …)")
    train_x, val_x = np.asarray(train_x), np.asarray(val_x)
    train_y, val_y = np.asarray(train_y), np.asarray(val_y)
    for name, x, y in (("training", train_x, train_y), ("validation", val_x, val_y)):
        if x.ndim != 4 or y.shape != (x.shape[0], *x.shape[2:]):
            raise ValueError(f"{name} stack: x {x.shape} and y {y.shape} do not match [S, C, H, W] / [S, H, W]")
        if y.size and int(y.max()) >= max(2, n_classes):
            raise ValueError(f"{name} labels go up to {int(y.max())}, more than n_classes={n_classes} allows")
    if val_x.shape[1:] != train_x.shape[1:]:
        raise ValueError(f"validation slices {val_x.shape[1:]} differ from training slices {train_x.shape[1:]}")
    dev = pick_device(device)
    use_amp, amp_dtype, use_scaler = amp_settings(dev, amp)
    channels_last = dev.type == "cuda" if channels_last is None else bool(channels_last)
    deterministic = dev.type == "cpu" if deterministic is None else bool(deterministic)
    if augment is None:
        augment = AugmentConfig.multi_class() if n_classes > 1 else AugmentConfig.single_class()

    # plans: every draw from seed
    def plan_for(y, eligible, stream, do_aug):
        if not do_aug:
            return Plan.identity(np.arange(len(y)))
        return make_plan(slices_with_label(y), augment, seed=[int(seed), stream], eligible=eligible)

    train_plan = plan_for(train_y, train_eligible, 1, augment is not False)
    val_plan = plan_for(val_y, val_eligible, 2, augment is not False and augment_val)
    if len(train_plan) == 0:
        raise ValueError("the training set has no labelled slice to learn from")
    if len(val_plan) == 0:  # no labelled validation slice: every slice once
        val_plan = Plan.identity(np.arange(len(val_y)))

    in_ch = train_x.shape[1]
    model = build_model(n_classes, in_ch, model_config, seed)
    if prior_bias:
        set_prior_bias(model, train_y[np.unique(train_plan.index)])
    signature = {
        "fg_weight": float(fg_weight), "prior_bias": bool(prior_bias),
        "format": CHECKPOINT_FORMAT, "n_classes": n_classes, "model": model.config,
        "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed),
        "augment": augment.as_dict() if augment is not False else None, "augment_val": bool(augment_val),
        "flip_dim": int(flip_dim), "n_train_plan": len(train_plan), "n_val_plan": len(val_plan),
        "train_shape": list(train_x.shape), "val_shape": list(val_x.shape),
        "data": _digest(train_x, train_y, val_x, val_y),   # other data (e.g. a new QSM): start over
    }
    sig_json = json.dumps(signature, sort_keys=True)

    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
        log_path = ckdir / "log.tsv" if log_path is None else log_path
        curve_path = ckdir / "learning_curve.png" if curve_path is None else curve_path

    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)

    start_epoch, history = 1, []
    best_epoch, best_iou, best_state = 0, -math.inf, None
    last = ckdir / "last.pt" if ckdir is not None else None
    if last is not None and last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        problem = None
        if ck.get("signature") != sig_json:
            problem = "checkpoint was made with different data or settings"
        elif int(ck["epoch"]) > epochs:
            problem = f"checkpoint is at epoch {int(ck['epoch'])}, past epochs={epochs}"
        if problem is not None and on_mismatch == "error":
            raise ValueError(f"{last}: {problem}; remove it or use another checkpoint directory")
        if problem is not None:
            if progress:
                print(f"{last}: {problem}; training from scratch", file=sys.stderr, flush=True)
            ck = None
    else:
        ck = None
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"])
        start_epoch = int(ck["epoch"]) + 1
        history = list(ck["history"])
        best_epoch, best_iou, best_state = int(ck["best_epoch"]), float(ck["best_iou"]), ck["best_model"]
        if progress:
            print(f"resuming from {last} after epoch {start_epoch - 1}", file=sys.stderr, flush=True)

    def save_best():
        _save({"config": model.config, "state_dict": best_state, "epoch": best_epoch,
               "val_iou": best_iou, "info": dict(model_info or {})}, ckdir / "best.pt")

    # source stacks on the device; augmentation is rendered there batch by batch
    xt, yt = _as_tensor(train_x, np.float32).to(dev), _as_tensor(train_y, np.uint8).to(dev)
    xv, yv = _as_tensor(val_x, np.float32).to(dev), _as_tensor(val_y, np.uint8).to(dev)
    autocast = lambda: torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=use_amp)  # noqa: E731

    def batch(x, y, plan, rows):
        xb, yb = render(x, y, plan.index[rows], plan.params[rows], flip_dim)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, yb

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    completed = True
    try:
        for epoch in range(start_epoch, epochs + 1):
            t0 = time.perf_counter()
            model.train()
            perm = np.random.default_rng([int(seed), 3, epoch]).permutation(len(train_plan))
            loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
            counts = torch.zeros((2, max(1, n_classes - 1)), dtype=torch.float64, device=dev)
            for b in range(0, len(perm), batch_size):
                rows = perm[b:b + batch_size]
                xb, yb = batch(xt, yt, train_plan, rows)
                with autocast():
                    logits = model(xb)
                loss = loss_fn(logits, yb, fg_weight)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                loss_sum += loss.detach().double() * len(rows)
                counts += iou_counts(predicted_labels(logits.detach()), yb, n_classes)
            train_loss = float(loss_sum) / len(perm)
            train_iou = iou_from_counts(counts)

            model.eval()
            vcounts = torch.zeros_like(counts)
            with torch.no_grad():
                for b in range(0, len(val_plan), batch_size):
                    rows = np.arange(b, min(b + batch_size, len(val_plan)))
                    xb, yb = batch(xv, yv, val_plan, rows)
                    with autocast():
                        logits = model(xb)
                    vcounts += iou_counts(predicted_labels(logits), yb, n_classes)
            val_iou = iou_from_counts(vcounts)
            if val_iou > best_iou:
                best_epoch, best_iou, best_state = epoch, val_iou, _cpu_state(model)
                if ckdir is not None:
                    save_best()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            record = {"epoch": epoch, "train_loss": train_loss, "train_iou": train_iou,
                      "val_iou": val_iou, "seconds": time.perf_counter() - t0}
            history.append(record)
            if ckdir is not None:
                _save({"signature": sig_json, "epoch": epoch, "model": _cpu_state(model),
                       "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
                       "history": history, "best_epoch": best_epoch, "best_iou": best_iou,
                       "best_model": best_state}, last)
            if log_path is not None:
                write_log(log_path, history)
            if curve_path is not None:
                plot_curve(curve_path, history, (model_info or {}).get("title"))
            if progress:
                print(f"epoch {epoch}/{epochs}  train_loss {train_loss:.4f}  train_iou {train_iou:.3f}  "
                      f"val_iou {val_iou:.3f}  best {best_iou:.3f}@{best_epoch}  {record['seconds']:.1f}s "
                      f"({len(perm) / record['seconds']:.1f} slices/s)", file=sys.stderr, flush=True)
            if on_epoch_end is not None:
                on_epoch_end(record)
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < epochs:
                completed = False
                break
    finally:
        if deterministic:
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)

    if completed and history:
        # outputs may have been removed (e.g. by Snakemake before re-running a killed job) after
        # their epoch was checkpointed: write them again from the checkpointed state
        if ckdir is not None and best_state is not None:
            save_best()
        if log_path is not None:
            write_log(log_path, history)
        if curve_path is not None:
            plot_curve(curve_path, history, (model_info or {}).get("title"))
    last_state = _cpu_state(model)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model=model, best_epoch=best_epoch, best_val_iou=best_iou, history=history,
                       completed=completed, last_state=last_state)
