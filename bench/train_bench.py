"""Training throughput of the DEEPMIR U-Net: slices/s, seconds per epoch, FLOPs per slice,
achieved fraction of the device's peak, peak memory.

Times the training loop of :mod:`deepmir.train` (augmentation rendered batch by batch on the
device, forward, cross-entropy, backward, Adam step; AMP + channels-last on CUDA) on random
stacks, after warm-up steps, then extrapolates to an epoch of ``--epoch-slices`` training
slices and ``--val-slices`` validation slices (forward only).

    .venv/bin/python bench/train_bench.py                 # small CPU size (default)
    .venv/bin/python bench/train_bench.py --paper         # the study's network and slices
    python bench/train_bench.py --paper --device cuda     # one GPU

Paper-scale epoch (default of --paper): 17 training participants × ~25 labelled slices ×
(1 + 6 + 12 + 1 = 20 augmented copies) × 2 (as many unlabelled as labelled) ≈ 17 000 slices,
and 6 validation participants likewise ≈ 6 000 slices. Adjust with --epoch-slices/--val-slices.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch

from deepmir.augment import AugmentConfig, make_plan, render
from deepmir.train import amp_settings, build_model, loss_fn, resolve_device
from deepmir.unet import flops_per_slice

# dense peak TFLOP/s by GPU name fragment (bf16/fp16 tensor cores, no sparsity)
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
               "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    for key, val in PEAK_TFLOPS.items():
        if key in name:
            return val
    return None


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return r / 1024.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--paper", action="store_true",
                    help="the study's size: 256², depth 6, width 64, 3 channels, batch 16, paper-scale epoch")
    ap.add_argument("--size", type=int, help="slice size (small 64, paper 256)")
    ap.add_argument("--depth", type=int, help="U-Net resolutions (small 4, paper 6)")
    ap.add_argument("--width", type=int, help="base width (small 8, paper 64)")
    ap.add_argument("--channels", type=int, help="input channels (small 2, paper 3)")
    ap.add_argument("--classes", type=int, default=1, help="1 (sigmoid) or 3 (softmax)")
    ap.add_argument("--batch", type=int, help="batch size (small 8, paper 16)")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--epoch-slices", type=int, help="training slices per epoch, for s/epoch (small 400, paper 17000)")
    ap.add_argument("--val-slices", type=int, help="validation slices per epoch (small 100, paper 6000)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    ap.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    a = ap.parse_args(argv)
    preset = dict(size=256, depth=6, width=64, channels=3, batch=16, epoch_slices=17000, val_slices=6000) \
        if a.paper else dict(size=64, depth=4, width=8, channels=2, batch=8, epoch_slices=400, val_slices=100)
    for k, v in preset.items():  # explicit options win over the preset
        if getattr(a, k) is None:
            setattr(a, k, v)
    torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    use_amp, amp_dtype, use_scaler = amp_settings(dev, False if a.no_amp else None)
    cl = dev.type == "cuda"

    # source stack: random slices, a third with a label dot; an augmentation plan over it
    rng = np.random.default_rng(0)
    n_src = max(8, a.batch)
    x = torch.from_numpy(rng.normal(size=(n_src, a.channels, a.size, a.size)).astype(np.float32)).to(dev)
    y = torch.zeros(n_src, a.size, a.size, dtype=torch.uint8)
    for s in range(0, n_src, 3):
        c = a.size // 2
        y[s, c - 2:c + 2, c - 2:c + 2] = 1 if a.classes == 1 else 1 + s % 2
    y = y.to(dev)
    plan = make_plan(y.cpu().numpy().reshape(n_src, -1).any(1), AugmentConfig(), seed=0)
    model = build_model(a.classes, a.channels, {"depth": a.depth, "base_width": a.width}, seed=0).to(dev)
    if cl:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)
    flops = flops_per_slice(model, a.channels, a.size, a.size)

    def batch(i):
        rows = (np.arange(a.batch) + i * a.batch) % len(plan)
        xb, yb = render(x, y, plan.index[rows], plan.params[rows], -2)
        return (xb.contiguous(memory_format=torch.channels_last) if cl else xb), yb

    def step(i):
        xb, yb = batch(i)
        with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=use_amp):
            logits = model(xb)
        loss = loss_fn(logits, yb)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    model.train()
    for i in range(a.warmup):
        step(i)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for i in range(a.steps):
        step(a.warmup + i)
    sync()
    t_train = (time.perf_counter() - t0) / (a.steps * a.batch)

    model.eval()
    with torch.no_grad():
        xb, _ = batch(0)
        for _ in range(2):
            with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=use_amp):
                model(xb)
        sync()
        t0 = time.perf_counter()
        n_eval = max(1, a.steps // 2)
        for i in range(n_eval):
            xb, _ = batch(i)
            with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=use_amp):
                model(xb)
        sync()
        t_eval = (time.perf_counter() - t0) / (n_eval * a.batch)

    sec_epoch = a.epoch_slices * t_train + a.val_slices * t_eval
    achieved = 3 * flops / t_train / 1e12  # training ≈ forward + 2× backward
    peak = peak_tflops(dev)
    res = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({a.threads} thread(s))",
        "size": a.size, "depth": a.depth, "width": a.width, "channels": a.channels, "classes": a.classes,
        "batch": a.batch, "amp": bool(use_amp), "channels_last": cl,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops_per_slice_fwd": flops / 1e9,
        "train_slices_per_s": 1 / t_train, "eval_slices_per_s": 1 / t_eval,
        "epoch_slices": a.epoch_slices, "val_slices": a.val_slices,
        "seconds_per_epoch": sec_epoch, "minutes_per_30_epochs": 30 * sec_epoch / 60,
        "achieved_tflops": achieved, "fraction_of_peak": None if peak is None else achieved / peak,
        "peak_mem_mb": (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_rss_mb()),
        "peak_mem_kind": "CUDA max allocated" if dev.type == "cuda" else "process max RSS",
    }
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"device            {res['device']}  (AMP {res['amp']}, channels-last {cl})")
    print(f"network           {a.size}² × {a.channels} ch, depth {a.depth}, width {a.width}, "
          f"{a.classes} class(es), {res['params_M']:.2f} M parameters, batch {a.batch}")
    print(f"FLOPs / slice     {res['gflops_per_slice_fwd']:.3f} GFLOP forward, ≈ {3 * res['gflops_per_slice_fwd']:.3f} training")
    print(f"throughput        {res['train_slices_per_s']:.1f} training slices/s, {res['eval_slices_per_s']:.1f} eval slices/s")
    print(f"achieved          {achieved:.4f} TFLOP/s" + ("" if peak is None else f"  ({100 * achieved / peak:.1f} % of {peak:.0f} TFLOP/s peak)"))
    print(f"epoch             {a.epoch_slices} train + {a.val_slices} val slices: {sec_epoch:.1f} s/epoch, "
          f"{res['minutes_per_30_epochs']:.1f} min for 30 epochs")
    print(f"peak memory       {res['peak_mem_mb']:.0f} MB ({res['peak_mem_kind']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
