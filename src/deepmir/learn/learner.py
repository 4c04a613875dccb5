"""The default learner: a compact 2.5D U-Net trained on sampled patches for a fixed number of
iterations, with the checkpoint and operating point chosen on validation participants for
lesion-wise F1 (nnU-Net's training ideas, sized for a CPU workstation).

- Batches of ``patch_size²`` patches from :class:`deepmir.learn.patches.PatchSampler`: lesion
  oversampling balanced between CMB and iron, hard negatives mined from the model's own
  false positives after ``hard_start`` of the budget, random brain patches otherwise.
- Loss: cross-entropy + soft Dice over the foreground classes (batch Dice, smooth 1).
- AdamW; the learning rate ramps up over ``warmup`` iterations, then decays polynomially
  (``lr · (1 − i/N)^0.9``, nnU-Net's schedule) to 0 at ``iterations``.
- Every ``val_every`` iterations (and at the end) the validation participants are predicted
  on full slices and :func:`deepmir.learn.postprocess.select_operating_point` finds the threshold
  and minimum size per class with the best lesion-wise F1, minimum sizes no larger than the
  class's smallest training lesion (:func:`min_size_caps`) and CMB thresholds no higher than
  ``max_cmb_threshold``; the iteration with the best mean
  F1 over classes is kept (``best.pt``, ties to the later one) with its operating point.

Deterministic and restartable: the batch of iteration ``i`` is drawn from
``(seed, i)``, the hard-negative pool and every other state is in ``last.pt`` (written every
``checkpoint_every`` iterations and at each validation), and a run resumed after a kill
ends with weights bit-identical (on CPU) to an uninterrupted one. A ``last.pt`` made from
other data (a digest of every training and validation array is in its signature) or other
settings is never resumed. Checkpoints hold only tensors and plain types
(``torch.load(..., weights_only=True)``).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deepmir import niio, settings
from deepmir.device import pick_device
from deepmir.learn import postprocess as pp
from deepmir.learn.dataset import label_mode as map_labels
from deepmir.learn.dataset import n_classes_for
from deepmir.learn.patches import PatchSampler, SamplerConfig, false_positive_centres
from deepmir.learn.predict import predict_brain_probs, predict_probs
from deepmir.learn.train import _cpu_state, _digest, _save, amp_settings, build_model, set_prior_bias
from deepmir.lesions import class_labels

CHECKPOINT_FORMAT = 2
PRIOR_FLOOR = 0.01   # the head starts every lesion class at ≥ 1 % (see train.set_prior_bias)
LOG_COLUMNS = ("iteration", "loss", "lr", "val_f1", "seconds")
#: dseg labels whose lesions are oversampled, per label mode
SAMPLED_LABELS = {"cmb": (1,), "iron": (2,), "union": (1, 2), "multiclass": (1, 2)}


_PATCH = settings.defaults("learn")["patch"]


@dataclass(frozen=True)
class LearnerConfig:
    """Every setting of the default learner: the workflow's ``learn.patch`` section, its
    defaults read from ``workflow/schemas/learn.schema.yaml`` (the only place they are written)."""
    iterations: int = _PATCH["iterations"]
    batch_size: int = _PATCH["batch_size"]
    lr: float = _PATCH["lr"]
    weight_decay: float = _PATCH["weight_decay"]
    warmup: int = _PATCH["warmup"]
    patch_size: int = _PATCH["patch_size"]
    context: int = _PATCH["context"]
    fg_fraction: float = _PATCH["fg_fraction"]
    hard_fraction: float = _PATCH["hard_fraction"]
    hard_start: float = _PATCH["hard_start"]
    blur_prob: float = _PATCH["blur_prob"]
    scale_prob: float = _PATCH["scale_prob"]
    mine_every: int = _PATCH["mine_every"]
    mine_slices: int = _PATCH["mine_slices"]
    pool_size: int = _PATCH["pool_size"]
    val_every: int = _PATCH["val_every"]
    checkpoint_every: int = _PATCH["checkpoint_every"]
    log_every: int = _PATCH["log_every"]
    dice_weight: float = _PATCH["dice_weight"]
    fg_weight: float = _PATCH["fg_weight"]
    tta: bool = _PATCH["tta"]
    depth: int = _PATCH["depth"]
    base_width: int = _PATCH["base_width"]
    max_width: int | None = _PATCH["max_width"]
    thresholds: tuple = tuple(_PATCH["thresholds"])
    min_sizes: tuple = tuple(_PATCH["min_sizes"])
    max_cmb_diameter_mm: float | None = _PATCH["max_cmb_diameter_mm"]
    max_cmb_threshold: float | None = _PATCH["max_cmb_threshold"]

    def __post_init__(self):
        positive = ("iterations", "batch_size", "patch_size", "mine_every", "mine_slices", "pool_size",
                    "val_every", "checkpoint_every", "log_every", "base_width")
        bad = [k for k in positive if not (isinstance(getattr(self, k), int) and getattr(self, k) >= 1)]
        bad += [k for k in ("lr", "weight_decay", "dice_weight", "fg_weight", "warmup", "context")
                if not getattr(self, k) >= 0 or (k == "lr" and not self.lr > 0)]
        bad += [k for k in ("fg_fraction", "hard_fraction", "hard_start", "blur_prob", "scale_prob")
                if not 0 <= getattr(self, k) <= 1]
        if self.fg_fraction + self.hard_fraction > 1:
            bad.append("fg_fraction + hard_fraction")
        if self.depth < 2 or not self.thresholds or not all(0 < t < 1 for t in self.thresholds):
            bad.append("depth" if self.depth < 2 else "thresholds")
        if not self.min_sizes or not all(int(m) >= 1 for m in self.min_sizes):
            bad.append("min_sizes")
        if self.max_cmb_threshold is not None and not 0 < self.max_cmb_threshold < 1:
            bad.append("max_cmb_threshold")
        if not bad and self.patch_size % 2 ** (self.depth - 1):
            bad.append(f"patch_size (a multiple of {2 ** (self.depth - 1)} at depth {self.depth})")
        if bad:
            raise ValueError(f"out of range: {', '.join(bad)}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "LearnerConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown learner setting(s): {', '.join(unknown)}")
        for k in ("thresholds", "min_sizes"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @property
    def sampler(self) -> SamplerConfig:
        return SamplerConfig(self.patch_size, self.context, self.fg_fraction, self.hard_fraction,
                             self.blur_prob, self.scale_prob)

    @property
    def model(self) -> dict:
        return {"depth": self.depth, "base_width": self.base_width, "max_width": self.max_width,
                "head_relu": False, "negative_slope": 0.01}   # leaky ReLUs, as nnU-Net


@dataclass
class LearnResult:
    model: torch.nn.Module       # the selected iteration's weights, eval mode
    best_iteration: int
    operating_point: dict        # {label: {threshold, min_size, f1, tp, fp, fn}}
    history: list = field(default_factory=list)
    completed: bool = True


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0,
                 fg_weight: float = 1.0, voxel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (BCE for one logit), lesion voxels weighted ``fg_weight`` × their
    ``voxel_weight`` (``[B, H, W]``, e.g. :func:`deepmir.learn.patches.lesion_weights`; mean over
    voxels), + ``dice_weight`` · (1 − soft Dice) over the foreground classes, Dice summed over
    the whole batch (smooth 1)."""
    logits = logits.float()
    fg = target > 0
    w = torch.where(fg, float(fg_weight) * (voxel_weight if voxel_weight is not None else 1.0),
                    torch.ones((), device=logits.device))
    if logits.shape[1] == 1:
        t = target.float()
        ce = (F.binary_cross_entropy_with_logits(logits[:, 0], t, reduction="none") * w).mean()
        p = torch.sigmoid(logits[:, 0])
        dice = (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    else:
        ce = (F.cross_entropy(logits, target.long(), reduction="none") * w).mean()
        p = torch.softmax(logits, 1)[:, 1:]
        oh = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
        dice = ((2 * (p * oh).sum((0, 2, 3)) + 1) / (p.sum((0, 2, 3)) + oh.sum((0, 2, 3)) + 1)).mean()
    return ce + dice_weight * (1 - dice)


def train_step(model, opt, scaler, batch, mode: str, cfg: LearnerConfig, amp_dtype=None) -> torch.Tensor:
    """One optimisation step on a sampler batch (x, dseg labels, lesion weights); returns the
    loss. ``amp_dtype``: autocast dtype, or None for float32."""
    dev = next(model.parameters()).device
    x, y, w = batch
    x = torch.from_numpy(x).to(dev).contiguous(memory_format=torch.channels_last)
    t, w = torch.from_numpy(map_labels(y, mode)).to(dev), torch.from_numpy(w).to(dev)
    with torch.autocast(device_type=dev.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        logits = model(x)
    loss = dice_ce_loss(logits, t, cfg.dice_weight, cfg.fg_weight, w)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach()


def lr_at(cfg: LearnerConfig, it: int) -> float:
    """Learning rate of iteration ``it`` (0-based): linear warm-up, then poly decay."""
    warm = min(1.0, (it + 1) / max(1, cfg.warmup))
    return cfg.lr * warm * (1 - it / cfg.iterations) ** 0.9


def min_size_caps(lesions, mode: str) -> dict:
    """{predicted label: the size in voxels of the smallest training lesion of its class} (from
    :func:`deepmir.learn.patches.find_lesions`). The operating point's minimum size is chosen no larger:
    the size filter is there for small false positives, and one that drops lesions as small as
    those the raters labelled would be learnt from the validation participants' few lesions
    against the labels of all the training participants."""
    return {lab: min((len(les.voxels) for les in lesions if les.cls in class_labels(cls)), default=1)
            for lab, cls in pp.MODE_CLASS_OF_LABEL[mode].items()}


def data_digest(volumes) -> str:
    """SHA-1 over every volume's image, label, brain and iron-region arrays (what a checkpoint
    was made from)."""
    return _digest(*[v[k] for v in volumes for k in ("x", "y", "brain", "iron_region") if v.get(k) is not None])


def fg_probability(probs: np.ndarray) -> np.ndarray:
    """Foreground probability ``[S, H, W]`` of ``[S, K, H, W]`` (1 − background for K > 1)."""
    return probs[:, 0] if probs.shape[1] == 1 else 1.0 - probs[:, 0]


def volume_probs(model, vol: dict, cfg: LearnerConfig, device) -> np.ndarray:
    """``[K, S, H, W]`` class probabilities of a volume (as ``deepmir predict`` computes them)."""
    probs = predict_brain_probs(model, vol["x"], vol["brain"], device=device, context=cfg.context, tta=cfg.tta)
    return np.moveaxis(probs, 1, 0)


def _signature(cfg, mode, seed, train_vols, val_vols, tolerances, unit, in_ch, n_classes) -> str:
    return json.dumps({
        "format": CHECKPOINT_FORMAT, "learner": cfg.as_dict(), "mode": mode, "seed": int(seed),
        "tolerances": tolerances, "unit": unit, "in_channels": in_ch, "n_classes": n_classes,
        "train": data_digest(train_vols), "val": data_digest(val_vols),
        "train_shapes": [list(v["x"].shape) for v in train_vols],
        "val_shapes": [list(v["x"].shape) for v in val_vols],
    }, sort_keys=True)


def write_log(path, history):
    lines = ["\t".join(LOG_COLUMNS)]
    for r in history:
        lines.append("\t".join(str(r["iteration"]) if k == "iteration" else f"{r[k]:.6g}" for k in LOG_COLUMNS))
    niio.write_text(path, "\n".join(lines) + "\n")


def plot_curve(path, history, best_iteration: int, title: str | None = None):
    """Learning curve PNG: training loss (left axis) and validation lesion-wise F1 (right)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    ax.plot([r["iteration"] for r in history], [r["loss"] for r in history], "k-", lw=1, label="training loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (CE + Dice)")
    if title:
        ax.set_title(title, fontsize=10)
    ax2 = ax.twinx()
    val = [r for r in history if math.isfinite(r["val_f1"])]
    ax2.plot([r["iteration"] for r in val], [r["val_f1"] for r in val], "r-^", ms=4, label="validation F1")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("validation lesion-wise F1 (mean over classes)")
    if best_iteration:
        ax2.axvline(best_iteration, color="r", ls=":", lw=1)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="center right", fontsize=8)
    fig.tight_layout()
    niio.write_png(path, fig)


def _op_json(op: dict) -> dict:
    return {str(k): v for k, v in op.items()}


def train_patches(train_vols: list[dict], val_vols: list[dict], mode: str, cfg: LearnerConfig, *,
                  seed: int = 0, out_dir=None, device=None, tolerances: dict | None = None,
                  unit: str = "vox", model_info: dict | None = None, progress: bool = True,
                  stop_after: int | None = None, amp: bool | None = None, on_validation=None) -> LearnResult:
    """Train on ``train_vols`` and select on ``val_vols`` (dicts: ``x [S, C, H, W]``,
    ``y [S, H, W]`` dseg 0/1/2, ``brain [S, H, W]``, ``voxel_size`` in stack axis order, and
    optionally ``iron_region [S, H, W]``: where an iron lesion may lie, used in selection).

    out_dir: ``best.pt`` (model, info with the operating point), ``last.pt`` (resume state),
    ``selection.json``, ``log.tsv``, ``learning_curve.png``; a ``last.pt`` with the same
    signature is resumed, another one is replaced. stop_after: return after that iteration's
    checkpoint (to test resuming). on_validation(iteration, mean F1, seconds so far): called
    after each validation; returning True stops training there (benchmarks)."""
    n_classes = n_classes_for(mode)
    tolerances = dict(tolerances or {"cmb": 3.0, "iron": 5.0, "union": 5.0})
    if not train_vols or not val_vols:
        raise ValueError("training needs at least one training and one validation volume")
    in_ch = train_vols[0]["x"].shape[1] * (2 * cfg.context + 1)
    dev = pick_device(device)
    use_amp, amp_dtype, use_scaler = amp_settings(dev, amp)
    sampler = PatchSampler(train_vols, cfg.sampler, SAMPLED_LABELS[mode])
    if not sampler.lesions:
        raise ValueError(f"the training volumes hold no '{mode}' lesion to learn from")
    size_caps = min_size_caps(sampler.lesions, mode)
    model = build_model(n_classes, in_ch, cfg.model, seed)
    _, y0, _ = sampler.batch(np.random.default_rng([int(seed), 5]), 4 * cfg.batch_size)
    set_prior_bias(model, map_labels(y0, mode), floor=PRIOR_FLOOR)
    model.to(dev).to(memory_format=torch.channels_last)   # ~1.4× faster on CPUs too (oneDNN)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)
    sig = _signature(cfg, mode, seed, train_vols, val_vols, tolerances, unit, in_ch, n_classes)

    out = Path(out_dir) if out_dir is not None else None
    state = {"iteration": 0, "history": [], "best_iteration": 0, "best_score": -1.0, "best_op": None,
             "best_model": None, "val_points": [], "loss_sum": 0.0, "loss_n": 0}
    last = out / "last.pt" if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if last.exists():
            ck = torch.load(last, map_location="cpu", weights_only=True)
            if ck.get("signature") == sig and int(ck["state"]["iteration"]) <= cfg.iterations:
                model.load_state_dict(ck["model"])
                opt.load_state_dict(ck["optimizer"])
                scaler.load_state_dict(ck["scaler"])
                state = ck["state"]
                sampler.hard = [tuple(int(v) for v in row) for row in ck["hard"].tolist()]
                if progress:
                    print(f"resuming from {last} at iteration {state['iteration']}", file=sys.stderr, flush=True)
            elif progress:
                print(f"{last}: made from other data or settings; training from scratch", file=sys.stderr, flush=True)
    info = {**dict(model_info or {}), "learner": "patch", "context": cfg.context, "tta": cfg.tta,
            "label_mode": mode, "max_cmb_diameter_mm": cfg.max_cmb_diameter_mm}

    def save_last():
        if out is None:
            return
        hard = torch.tensor(sampler.hard, dtype=torch.int64).reshape(-1, 4)
        _save({"signature": sig, "model": _cpu_state(model), "optimizer": opt.state_dict(),
               "scaler": scaler.state_dict(), "state": state, "hard": hard}, last)

    def save_outputs():
        if out is None or state["best_model"] is None:
            return
        _save({"config": model.config, "state_dict": state["best_model"], "iteration": state["best_iteration"],
               "info": {**info, "operating_point": state["best_op"]}}, out / "best.pt")
        niio.write_json(out / "selection.json", {
            "best_iteration": state["best_iteration"], "mean_f1": state["best_score"],
            "operating_point": _op_json(state["best_op"]), "min_size_caps": _op_json(size_caps),
            "tolerances": tolerances, "unit": unit,
            "validation_points": state["val_points"]})
        write_log(out / "log.tsv", state["history"])
        plot_curve(out / "learning_curve.png", state["history"], state["best_iteration"], info.get("title"))

    def validate(it):
        model.eval()
        probs = [volume_probs(model, v, cfg, dev) for v in val_vols]
        op, grid = pp.select_operating_point(
            probs, [v["y"] for v in val_vols], mode, tolerances, unit, [v["voxel_size"] for v in val_vols],
            cfg.thresholds, cfg.min_sizes, cfg.max_cmb_diameter_mm, [v["brain"] for v in val_vols], size_caps,
            cfg.max_cmb_threshold, [v.get("iron_region") for v in val_vols])
        model.train()
        score = pp.mean_f1(op)
        state["val_points"].append({"iteration": it, "mean_f1": score, "operating_point": _op_json(op)})
        if score >= state["best_score"]:
            state.update(best_iteration=it, best_score=score, best_op=op, best_model=_cpu_state(model))
        return score

    def mine(it):
        rng = np.random.default_rng([int(seed), 11, it])
        model.eval()
        for _ in range(cfg.mine_slices):
            v = int(rng.integers(len(train_vols)))
            vol = train_vols[v]
            brain_sl = np.flatnonzero(vol["brain"].reshape(len(vol["brain"]), -1).any(1))
            s = int(brain_sl[rng.integers(len(brain_sl))])
            p = fg_probability(predict_probs(model, vol["x"], device=dev, context=cfg.context, slices=[s]))
            t = map_labels(vol["y"][[s]], mode)
            cents = false_positive_centres(p * vol["brain"][[s]], t)
            cents[:, 0] += s
            sampler.add_hard(v, cents, cfg.pool_size)
        model.train()

    prev_det = torch.are_deterministic_algorithms_enabled()
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    model.train()
    t_start, done_start = time.perf_counter(), state["iteration"]
    t_log = time.perf_counter()
    completed = True
    try:
        for it in range(state["iteration"], cfg.iterations):
            hard_on = it >= cfg.hard_start * cfg.iterations
            if hard_on and cfg.hard_fraction > 0 and (it - math.ceil(cfg.hard_start * cfg.iterations)) % cfg.mine_every == 0:
                mine(it)
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, it)
            batch = sampler.batch(np.random.default_rng([int(seed), 7, it]), cfg.batch_size, hard_on)
            loss = train_step(model, opt, scaler, batch, mode, cfg, amp_dtype if use_amp else None)
            state["loss_sum"] += float(loss)
            state["loss_n"] += 1
            done = it + 1
            state["iteration"] = done
            is_val = done % cfg.val_every == 0 or done == cfg.iterations
            val_f1 = validate(done) if is_val else float("nan")
            if done % cfg.log_every == 0 or is_val:
                now = time.perf_counter()
                rate = (done - done_start) / max(now - t_start, 1e-9)
                mean_loss = state["loss_sum"] / state["loss_n"]
                state["history"].append({"iteration": done, "loss": mean_loss, "lr": lr_at(cfg, it),
                                         "val_f1": val_f1, "seconds": now - t_log})
                if progress:
                    f1 = f"  val_F1 {val_f1:.3f} (best {state['best_score']:.3f}@{state['best_iteration']})" \
                        if is_val else ""
                    print(f"iter {done}/{cfg.iterations}  loss {mean_loss:.4f}  lr {lr_at(cfg, it):.2e}{f1}  "
                          f"hard negatives {len(sampler.hard)}  {rate:.2f} it/s ({rate * cfg.batch_size:.0f} patches/s)  "
                          f"ETA {(cfg.iterations - done) / max(rate, 1e-9):.0f}s", file=sys.stderr, flush=True)
                state["loss_sum"], state["loss_n"], t_log = 0.0, 0, now
            if done % cfg.checkpoint_every == 0 or is_val:
                save_last()
                if is_val:
                    save_outputs()
            stop = is_val and on_validation is not None and on_validation(done, val_f1, time.perf_counter() - t_start)
            if stop or stop_after is not None and done >= stop_after and done < cfg.iterations:
                save_last()
                completed = False
                break
    finally:
        if dev.type == "cpu":
            torch.use_deterministic_algorithms(prev_det)
    if completed:
        save_outputs()   # again: outputs may have been removed after their iteration was checkpointed
    if state["best_model"] is not None:
        model.load_state_dict(state["best_model"])
    model.eval()
    return LearnResult(model=model, best_iteration=state["best_iteration"], operating_point=state["best_op"],
                       history=state["history"], completed=completed)
