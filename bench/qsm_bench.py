"""QSM speed and accuracy benchmark: the workflow's chain (``deepmir.qsm.pipeline``) at its
defaults, stage by stage.

    python bench/qsm_bench.py --size 160 --device cpu [--threads 1]
    python bench/qsm_bench.py --size 160 --device cuda     # CPU rows first, then CUDA rows
    python bench/qsm_bench.py --synth demo --seed 99 --index 0

Prints, per device: seconds per stage; MEDI's Gauss–Newton steps and CG iterations per step
(below the cap means CG met its tolerance); MEDI's time as a ratio to its FFT floor (the FFTs
it did × the time of one real FFT on its grid, measured in the same run; what is left is
element-wise work), in wall time and, on the CPU, in process CPU time (which waiting for a
core on a shared machine does not inflate); peak memory
(CPU: process max RSS; CUDA: torch peak allocated during the inversion); and the chosen λ.
Then the accuracy against the truth inside the brain mask: NRMSE of MEDI-L1, TKD and CFL2,
and for synthetic participants deep-GM ROI errors, CMB moments and lesion signs.

``--size N``: an N³ phantom at 1 mm (ellipsoidal head, grey/white matter, deep nuclei,
ventricles, microbleeds, a calcification, a vein, skull and air as background sources, 4
echoes with noise); N = 32 runs in seconds. ``--synth SCALE``: one participant of the
synthetic cohort (``deepmir.synth``, demo or paper scale), truth from the simulator.
``--device cuda`` on a machine without CUDA is a one-line error (exit 2).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepmir import GAMMA_BAR_HZ_PER_T  # noqa: E402
from deepmir.dipole import b0_direction, dipole_field, voxel_sizes  # noqa: E402
from deepmir.qsm.pipeline import DEFAULTS, reconstruct  # noqa: E402


def phantom(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = (np.indices((n, n, n)).astype(np.float32) - n / 2) / n
    r_head = np.sqrt((g[0] / 0.42) ** 2 + (g[1] / 0.46) ** 2 + (g[2] / 0.40) ** 2)
    head = r_head < 1
    brain = r_head < 0.85
    chi = np.where(head & ~brain, -0.5, 0.0).astype(np.float32)           # skull-ish
    chi[brain] = -0.03                                                     # WM
    chi[brain & (r_head > 0.75)] = 0.02                                    # cortex
    vent = (np.abs(g[0]) < 0.04) & (np.abs(g[1]) < 0.12) & (np.abs(g[2]) < 0.08)
    chi[vent] = 0.019
    r2s = np.where(brain, 20.0, 40.0).astype(np.float32)
    r2s[vent] = 3.0
    for cx, val, r2 in ((0.12, 0.13, 50), (-0.12, 0.13, 50), (0.18, 0.04, 30), (-0.18, 0.04, 30)):
        blob = ((g[0] - cx) ** 2 + (g[1] / 1.5) ** 2 + (g[2] / 1.2) ** 2) < 0.04 ** 2
        chi[blob], r2s[blob] = val, r2
    lesions = np.zeros(chi.shape, np.int32)
    classes = {}
    for k in range(6):
        c = rng.uniform(-0.25, 0.25, 3)
        rad = max(rng.uniform(1.5, 3.0), 1.2) / n * (n / 64 if n < 64 else 1.0)
        blob = ((g - c[:, None, None, None]) ** 2).sum(0) < rad ** 2
        val = -0.3 if k == 0 else rng.uniform(0.4, 1.0)
        chi[blob] += val
        r2s[blob] = 150
        lesions[blob] = k + 1
        classes[k + 1] = "calcification" if k == 0 else "cmb"
    vein = ((g[0] - 0.05) ** 2 + (g[1] + 0.3) ** 2 < (1.5 / n) ** 2) & brain
    chi[vein], r2s[vein] = 0.45, 45
    air = ~head
    field = dipole_field(np.where(air, 9.2, chi), (1, 1, 1), (0, 0, 1), pad_factor=1.5)
    te = np.array([0.0075, 0.015, 0.0225, 0.03])
    m0 = np.where(head, 1.0, 0.0)
    w = 2 * np.pi * GAMMA_BAR_HZ_PER_T * 3.0 * 1e-6
    sigma = 1 / 40
    sig = [m0 * np.exp(-r2s * t) * np.exp(1j * (w * field * t + 0.4)) for t in te]
    sig = [s + sigma * (rng.normal(size=s.shape) + 1j * rng.normal(size=s.shape)) / np.sqrt(2)
           for s in sig]
    s = np.stack(sig, -1)
    return dict(mag=np.abs(s).astype(np.float32), phase=np.angle(s).astype(np.float32), te=te,
                mask=brain, chi=np.where(brain, chi, 0), vs=(1.0, 1.0, 1.0),
                b0=(0.0, 0.0, 1.0), lesions=lesions, classes=classes, name=f"phantom {n}^3")


def synth_participant(scale: str, seed: int, index: int):
    from deepmir.synth.cohort import simulate
    from deepmir.synth.config import settings

    cfg = settings({"scale": scale})
    d = simulate(cfg, seed, index)
    aff = d["gre_affine"]
    t = d["truth"]
    tab = t["table"]
    return dict(mag=np.stack(d["mag"], -1), phase=np.stack(d["phase"], -1),
                te=np.asarray(d["echo_times"]), mask=t["brain"], chi=t["chi"] * t["brain"],
                vs=tuple(voxel_sizes(aff)), b0=tuple(b0_direction(aff)),
                lesions=t["lesions"], classes=dict(zip(tab["lesion_id"], tab["cls"])),
                tissue=t["tissue"], sign=cfg["gre"]["phase_sign"],
                name=f"synth {scale} seed {seed} #{index} {t['brain'].shape}")


def fft_seconds(grid, dev, reps=20, clock=time.perf_counter):
    """Measured time of one real FFT (mean of a forward rfftn and an inverse irfftn) on
    ``grid``, float32, after a warm-up; ``clock``: wall (perf_counter) or, on the CPU,
    process_time (not inflated by waiting for a core on a shared machine)."""
    x = torch.randn(grid, device=dev)
    for _ in range(2):
        x = torch.fft.irfftn(torch.fft.rfftn(x), s=grid)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = clock()
    for _ in range(reps):
        x = torch.fft.irfftn(torch.fft.rfftn(x), s=grid)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (clock() - t) / (2 * reps)


def peak_mib(dev) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(d, dev):
    """The workflow's chain at its defaults on ``dev``; returns the result and timings."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    res = reconstruct(d["mag"], d["phase"], d["te"], d["mask"], d["vs"], d["b0"], 3.0,
                      d.get("sign", 1), device=dev, log=None)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    res["total_seconds"] = time.perf_counter() - t
    res["peak_mib"] = peak_mib(dev)
    return res


def print_timing(res, dev):
    info = res["info"]
    print(f"{'stage':<16}{'seconds':>10}")
    for name, sec in res["timings"].items():
        print(f"{name:<16}{sec:>10.2f}")
    print(f"{'total':<16}{res['total_seconds']:>10.2f}")
    grid = tuple(info["medi_grid"])
    print(f"\nMEDI grid {grid}: λ = {info['lambda']:.4g} ({info['lambda_rule']}; "
          f"{info['lambda_ppm']:.4g} per ppm·mm)")
    print(f"Gauss-Newton steps: {info['medi_iterations']}; CG iterations per step: "
          f"{info['medi_cg']} (cap {DEFAULTS['medi_cg_max_iter']})")
    clocks = [("wall", time.perf_counter, float(info["medi_seconds"]))]
    if dev.type == "cpu":
        clocks.append(("CPU", time.process_time, float(info["medi_cpu_seconds"])))
    for name, clock, medi_s in clocks:
        tf = fft_seconds(grid, dev, clock=clock)
        floor = info["medi_fft"] * tf
        print(f"MEDI {medi_s:.2f} s ({name} time); FFT floor {info['medi_fft']} FFTs × "
              f"{tf * 1e3:.3f} ms = {floor:.2f} s; MEDI time / FFT floor = {medi_s / floor:.2f}")
    print(f"peak memory: {res['peak_mib']:.0f} MiB "
          f"({'torch peak allocated' if dev.type == 'cuda' else 'process max RSS'})")


def print_accuracy(d, res):
    from deepmir.evaluate.metrics import qsm_accuracy

    m = d["mask"]
    vox = float(np.prod(d["vs"]))
    cols = ["nrmse_percent", "rmse_ppm", "slope"]
    if d.get("tissue") is not None:
        cols += ["deep_gm_abs_error_ppm"]
    cols += ["cmb_moment_ratio", "cmb_n_positive", "cmb_n", "calcification_n_negative",
             "calcification_n"]
    print(f"\naccuracy inside the brain mask ({int(m.sum())} voxels; χ and truth referenced "
          "to their mean there)")
    print(f"{'method':<10}" + "".join(f"{c:>26}" for c in cols))
    for name, key in (("MEDI-L1", "chi"), ("TKD", "chi_tkd"), ("CFL2", "chi_cfl2")):
        row = qsm_accuracy(res[key], d["chi"], m, d.get("lesions"), d.get("classes"),
                           d.get("tissue"), vox)
        print(f"{name:<10}" + "".join(f"{row.get(c, float('nan')):>26.4g}" for c in cols))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--synth", choices=("demo", "paper"))
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="cpu, or cuda (CPU rows first as the reference, then CUDA rows)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("qsm_bench: error: --device cuda: no CUDA device", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    t = time.perf_counter()
    d = synth_participant(a.synth, a.seed, a.index) if a.synth else phantom(a.size)
    print(f"# {d['name']}: data made in {time.perf_counter() - t:.1f} s; {a.threads} CPU "
          f"threads; load average {os.getloadavg()[0]:.2f} (1 min) at start")
    devs = [torch.device("cpu")] + ([torch.device("cuda")] if a.device == "cuda" else [])
    for dev in devs:
        print(f"\n## device {dev.type}"
              + (f" ({torch.cuda.get_device_name(0)})" if dev.type == "cuda" else ""))
        res = run(d, dev)
        print_timing(res, dev)
        print(f"load average {os.getloadavg()[0]:.2f} (1 min) after the run")
        print_accuracy(d, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
