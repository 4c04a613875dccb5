"""Training speed of the two learners: throughput, achieved FLOP/s, a paper fold's projected
time, and (with stacks) the time each needs to reach a validation lesion-wise F1 of 0.8.

    .venv/bin/python bench/train_bench.py                        # throughput table, CPU
    .venv/bin/python bench/train_bench.py --device cuda          # one GPU (AMP on and off)
    .venv/bin/python bench/train_bench.py --f1-train A.npz B.npz --f1-val C.npz [--budget-s 900]

**Throughput.** ``default`` is the patch learner (``deepmir.learn.learner``) with its default
settings (``learn.patch``: patch size, 2.5D context of 2 modalities × 3 slices, the compact
U-Net, batch size; the table prints them), patches drawn by its sampler (lesion
oversampling, flips) — patches/s includes the sampling.
``paper`` is the study's network on full 256² slices (depth 6, width 64, 3 channels, batch
16) with the study's augmentation rendered per batch (``deepmir.learn.augment``). Both: Adam(W)
steps on random data after warm-up steps; FLOPs from the convolutions
(``deepmir.learn.unet.flops_per_slice`` × 3 for a training step), the fraction of the chip's dense
bf16 peak on CUDA. A paper fold is projected from the paper epoch: 17 training participants ×
~25 labelled slices × 44 augmented copies (multi-class) × 2 (as many unlabelled) ≈ 37 000
slices + 6 validation participants likewise (forward only) × 30 epochs.

**Time to F1 0.8** (``--f1-train``/``--f1-val``, e.g. the demo's ``results/stacks``): each
network trained by the patch learner's loop (same sampling, loss and validation), validated
every ``--val-every`` iterations; prints the wall time at the first validation with mean
lesion-wise F1 ≥ 0.8, or "not reached" with the best F1 and the time spent when the budget
runs out. Timings drift with the machine's load, which is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

from deepmir.device import pick_device as resolve_device  # noqa: E402
from deepmir.learn.augment import AugmentConfig, make_plan, render
from deepmir.learn.learner import LearnerConfig, train_patches, train_step
from deepmir.learn.patches import PatchSampler
from deepmir.learn.train import amp_settings, build_model, loss_fn
from deepmir.learn.unet import flops_per_slice

# dense peak TFLOP/s by GPU name fragment (bf16/fp16 tensor cores, no sparsity)
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
               "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
PAPER = dict(size=256, depth=6, width=64, channels=3, batch=16)
PAPER_EPOCH_SLICES, PAPER_VAL_SLICES, PAPER_EPOCHS = 37400, 13200, 30


def peak_tflops(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(step, dev, warmup: int, steps: int) -> float:
    """Seconds per call of ``step(i)`` after ``warmup`` untimed calls."""
    for i in range(warmup):
        step(i)
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    _sync(dev)
    return (time.perf_counter() - t0) / steps


def _random_volume(rng, slices, channels, size):
    x = rng.normal(size=(slices, channels, size, size)).astype(np.float32)
    y = np.zeros((slices, size, size), np.uint8)
    for k, s in enumerate(range(2, slices - 2, 4)):
        c = int(rng.integers(16, size - 16))
        y[s, c - 1:c + 2, c - 1:c + 2] = 1 + k % 2
    brain = np.zeros_like(y, dtype=bool)
    brain[:, size // 8:-size // 8, size // 8:-size // 8] = True
    return {"x": x, "y": y, "brain": brain, "voxel_size": (1.5, 1.0, 1.0)}


def patch_throughput(dev, amp, steps, warmup, cfg: LearnerConfig, modalities=2, slice_size=160) -> dict:
    """Patches/s of the default learner's training step (sampling included)."""
    rng = np.random.default_rng(0)
    vols = [_random_volume(rng, 24, modalities, slice_size) for _ in range(2)]
    sampler = PatchSampler(vols, cfg.sampler)
    in_ch = modalities * (2 * cfg.context + 1)
    model = build_model(3, in_ch, cfg.model, seed=0).to(dev).to(memory_format=torch.channels_last).train()
    use_amp, dtype, use_scaler = amp_settings(dev, amp)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)

    def step(i):
        train_step(model, opt, scaler, sampler.batch(np.random.default_rng([0, i]), cfg.batch_size), "multiclass",
                   cfg, dtype if use_amp else None)

    sec = _timed(step, dev, warmup, steps)
    flops = flops_per_slice(model, in_ch, cfg.patch_size, cfg.patch_size)
    return {"learner": "default (patch)", "input": f"{cfg.patch_size}² × {in_ch} ch",
            "network": f"depth {cfg.depth}, width {cfg.base_width}", "batch": cfg.batch_size,
            "amp": bool(use_amp), "per_s": cfg.batch_size / sec, "unit": "patches/s",
            "gflop_fwd": flops / 1e9, "tflops": 3 * flops * cfg.batch_size / sec / 1e12,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6}


def paper_throughput(dev, amp, steps, warmup, batch=None) -> dict:
    """Slices/s of the study's network and augmentation, and a paper fold's projected time."""
    p = dict(PAPER, batch=batch or PAPER["batch"])
    rng = np.random.default_rng(0)
    n_src = max(8, p["batch"])
    x = torch.from_numpy(rng.normal(size=(n_src, p["channels"], p["size"], p["size"])).astype(np.float32)).to(dev)
    y = torch.zeros(n_src, p["size"], p["size"], dtype=torch.uint8)
    y[::3, 126:130, 126:130] = 1
    y = y.to(dev)
    plan = make_plan(y.cpu().numpy().reshape(n_src, -1).any(1), AugmentConfig.multi_class(), seed=0)
    model = build_model(3, p["channels"], {"depth": p["depth"], "base_width": p["width"]}, seed=0).to(dev)
    cl = dev.type == "cuda"
    if cl:
        model.to(memory_format=torch.channels_last)
    use_amp, dtype, use_scaler = amp_settings(dev, amp)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)

    def batch(i):
        rows = (np.arange(p["batch"]) + i * p["batch"]) % len(plan)
        xb, yb = render(x, y, plan.index[rows], plan.params[rows], -2)
        return (xb.contiguous(memory_format=torch.channels_last) if cl else xb), yb

    def step(i):
        xb, yb = batch(i)
        with torch.autocast(device_type=dev.type, dtype=dtype, enabled=use_amp):
            logits = model(xb)
        loss = loss_fn(logits, yb)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    model.train()
    sec = _timed(step, dev, warmup, steps)
    model.eval()
    with torch.no_grad():
        xb, _ = batch(0)

        def fwd(i):
            with torch.autocast(device_type=dev.type, dtype=dtype, enabled=use_amp):
                model(xb)
        sec_eval = _timed(fwd, dev, 1, max(1, steps // 2))
    flops = flops_per_slice(model, p["channels"], p["size"], p["size"])
    per_slice = sec / p["batch"]
    fold_s = PAPER_EPOCHS * (PAPER_EPOCH_SLICES * per_slice + PAPER_VAL_SLICES * sec_eval / p["batch"])
    return {"learner": "paper", "input": f"{p['size']}² × {p['channels']} ch",
            "network": f"depth {p['depth']}, width {p['width']}", "batch": p["batch"], "amp": bool(use_amp),
            "per_s": 1 / per_slice, "unit": "slices/s", "gflop_fwd": flops / 1e9,
            "tflops": 3 * flops / per_slice / 1e12, "paper_fold_h": fold_s / 3600,
            "params_M": sum(q.numel() for q in model.parameters()) / 1e6}


def time_to_f1(train_paths, val_paths, dev, budget_s, val_every, target=0.8) -> list[dict]:
    """Both networks trained by the patch learner's loop until validation F1 ≥ target."""
    from deepmir.learn.stack import labelled_stacks as _labelled_stacks
    from deepmir.learn.stack import volumes as _volumes

    tr, ref = _labelled_stacks(train_paths, None)
    tv, vv = _volumes(tr), _volumes(_labelled_stacks(val_paths, list(ref[0]))[0])
    rows = []
    for name, over in (("default (patch)", {}),
                       ("paper network", {"depth": PAPER["depth"], "base_width": PAPER["width"],
                                          "patch_size": 2 ** (PAPER["depth"] - 1) * 2})):
        cfg = LearnerConfig.from_dict({"iterations": 100000, "val_every": val_every, **over})
        seen = {"best": 0.0, "t": None, "it": None, "elapsed": 0.0}

        def on_val(it, f1, elapsed):
            seen["best"], seen["elapsed"] = max(seen["best"], f1), elapsed
            if f1 >= target and seen["t"] is None:
                seen["t"], seen["it"] = elapsed, it
            return seen["t"] is not None or elapsed > budget_s

        train_patches(tv, vv, "multiclass", cfg, seed=0, device=dev, progress=False, on_validation=on_val)
        rows.append({"learner": name, "reached": seen["t"] is not None, "seconds": seen["t"] or seen["elapsed"],
                     "iteration": seen["it"], "best_f1": seen["best"]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per measurement")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--paper-batch", type=int, help="paper network batch (default 16; on a CPU 2 keeps it short)")
    ap.add_argument("--tiny", action="store_true", help="small default-learner patches and no paper network (CI)")
    ap.add_argument("--amp", choices=("auto", "on", "off", "both"), default="auto",
                    help="mixed precision (auto: on for CUDA); both measures each network with and without")
    ap.add_argument("--f1-train", nargs="+", metavar="NPZ", help="training stacks for the time-to-F1 runs")
    ap.add_argument("--f1-val", nargs="+", metavar="NPZ", help="validation stacks for the time-to-F1 runs")
    ap.add_argument("--budget-s", type=float, default=900, help="time-to-F1: give up after this many seconds")
    ap.add_argument("--val-every", type=int, default=50, help="time-to-F1: iterations between validations")
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    amps = {"auto": [None], "on": [True], "off": [False], "both": [True, False]}[a.amp]
    load = os.getloadavg()[0]
    host = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {a.threads} thread(s)"
    print(f"# train_bench on {host}; load average {load:.2f} on {os.cpu_count()} cores at start")

    rows = []
    cfg = LearnerConfig.from_dict({"patch_size": 32, "batch_size": 4, "depth": 3, "base_width": 8} if a.tiny else {})
    for amp in amps:
        rows.append(patch_throughput(dev, amp, a.steps, a.warmup, cfg))
        if not a.tiny:
            rows.append(paper_throughput(dev, amp, a.steps, a.warmup, a.paper_batch))
    peak = peak_tflops(dev)
    if a.json:
        for r in rows:
            print(json.dumps({**r, "device": host, "peak_tflops": peak}))
    else:
        print("| learner | input | network | params (M) | batch | AMP | throughput | GFLOP/sample fwd | "
              "achieved TFLOP/s | of bf16 peak | paper fold (30 epochs) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            frac = f"{100 * r['tflops'] / peak:.1f} %" if peak else "—"
            fold = f"{r['paper_fold_h']:.1f} h" if "paper_fold_h" in r else "—"
            print(f"| {r['learner']} | {r['input']} | {r['network']} | {r['params_M']:.2f} | {r['batch']} | "
                  f"{'on' if r['amp'] else 'off'} | {r['per_s']:.1f} {r['unit']} | {r['gflop_fwd']:.3f} | "
                  f"{r['tflops']:.4f} | {frac} | {fold} |")
    if a.f1_train:
        if not a.f1_val:
            ap.error("--f1-train needs --f1-val")
        print(f"\n# time to a validation lesion-wise F1 ≥ 0.8 (multi-class, budget {a.budget_s:.0f} s each)")
        print("| network (patch learner loop) | reached | seconds | iteration | best F1 |")
        print("| --- | --- | --- | --- | --- |")
        for r in time_to_f1(a.f1_train, a.f1_val, dev, a.budget_s, a.val_every):
            print(f"| {r['learner']} | {'yes' if r['reached'] else 'no'} | {r['seconds']:.0f} | "
                  f"{r['iteration'] or '—'} | {r['best_f1']:.3f} |")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"# peak memory {torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MB (CUDA)" if dev.type == "cuda"
          else f"# peak memory {rss:.0f} MB (process max RSS)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
