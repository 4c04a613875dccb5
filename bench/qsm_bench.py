"""QSM / SWI speed and accuracy benchmark.

    python bench/qsm_bench.py --size 160 [--device cpu|cuda] [--threads 2]
    python bench/qsm_bench.py --synth paper --seed 99 --index 0 [--device cuda]

Prints, per stage, seconds and peak memory (CPU: process max RSS; GPU: torch peak allocated),
the number of FFTs MEDI did × the measured time of one real FFT on its grid next to MEDI's
measured time (what bounds it), the load average, and the accuracy against the truth inside
the brain mask: NRMSE of MEDI-L1 and TKD, and for synthetic participants the deep-GM ROI
errors, the CMB moment ratio and the signs of CMB and calcification moments. GPU rows follow
the CPU rows when CUDA is available, else they say "no CUDA device".

What bounds MEDI-L1's time: every CG iteration applies (∇ᵀ M V M ∇ + 2λ DᵀW²D) once, i.e.
4 real FFTs on the mask's bounding box (+8 voxels, even 5-smooth lengths) plus about twenty
element-wise passes over the grid (finite differences and their adjoint, weights, CG vector
updates); the toolbox's defaults let CG run to its cap of 100 in most Gauss–Newton steps, so
the time is ≈ (#CG iterations) × (4 FFTs + element-wise work). The bench prints the FFT
share (#FFTs × measured time of one FFT) next to the measured total; on a shared CPU both
shares scale with the load, which it prints too.

``--size N``: an N³ phantom at 1 mm (ellipsoidal brain with deep-grey-matter-like nuclei,
white/grey matter, microbleeds, a calcification, a vein; air around the head as a background
source; 4 echoes with noise). ``--synth SCALE``: one participant of the synthetic cohort
(``deepmir.synth``; demo or paper scale), truth from the simulator.
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

from deepmir.dipole import b0_direction, dipole_field, voxel_sizes  # noqa: E402
from deepmir.qsm.background import pdf  # noqa: E402
from deepmir.qsm.fit import fit_multi_echo, r2star_map  # noqa: E402
from deepmir.qsm.defaults import DEFAULTS  # noqa: E402
from deepmir.qsm.inversion import erode_mask, extract_csf_mask, medi_l1, tkd  # noqa: E402
from deepmir.qsm.pipeline import field_ppm_from_phase_rate, hz_per_ppm, inflate_noise  # noqa: E402
from deepmir.qsm.unwrap import unwrap_laplacian  # noqa: E402
from deepmir.swi import swi  # noqa: E402

GAMMA = 42.577478e6


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
    lesions = []
    for k in range(6):
        c = rng.uniform(-0.25, 0.25, 3)
        rad = rng.uniform(1.5, 3.0) / n
        blob = ((g - c[:, None, None, None]) ** 2).sum(0) < rad ** 2
        val = -0.3 if k == 0 else rng.uniform(0.4, 1.0)
        chi[blob] += val
        r2s[blob] = 150
        lesions.append((blob, val))
    vein = ((g[0] - 0.05) ** 2 + (g[1] + 0.3) ** 2 < (1.5 / n) ** 2) & brain
    chi[vein], r2s[vein] = 0.45, 45
    air = ~head
    field = dipole_field(np.where(air, 9.2, chi), (1, 1, 1), (0, 0, 1), pad_factor=1.5)
    local = dipole_field(np.where(brain, chi, 0), (1, 1, 1), (0, 0, 1), pad_factor=1.5)
    te = np.array([0.0075, 0.015, 0.0225, 0.03])
    m0 = np.where(head, 1.0, 0.0)
    w = 2 * np.pi * GAMMA * 3.0 * 1e-6
    sig = [m0 * np.exp(-r2s * t) * np.exp(1j * (w * field * t + 0.4)) for t in te]
    sigma = 1 / 40
    sig = [s + sigma * (rng.normal(size=s.shape) + 1j * rng.normal(size=s.shape)) / np.sqrt(2)
           for s in sig]
    s = np.stack(sig, -1)
    return dict(mag=np.abs(s).astype(np.float32), phase=np.angle(s).astype(np.float32), te=te,
                mask=brain, chi=np.where(brain, chi, 0), local=local, vs=(1.0, 1.0, 1.0),
                b0=(0.0, 0.0, 1.0), name=f"phantom {n}^3")


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
                local=t["local_field"], vs=tuple(voxel_sizes(aff)), b0=tuple(b0_direction(aff)),
                lesions=t["lesions"], classes=dict(zip(tab["lesion_id"], tab["cls"])),
                tissue=t["tissue"], sign=cfg["gre"]["phase_sign"],
                name=f"synth {scale} seed {seed} #{index} {t['brain'].shape}")


def nrmse(x, t, m):
    a = x[m] - x[m].mean()
    b = t[m] - t[m].mean()
    return 100 * np.linalg.norm(a - b) / np.linalg.norm(b)


class Stage:
    def __init__(self, dev):
        self.dev = dev
        self.rows = []

    def run(self, name, fn):
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = fn()
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            mem = torch.cuda.max_memory_allocated() / 2 ** 20
        else:
            mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.rows.append((name, time.perf_counter() - t, mem))
        return out


def fft_seconds(grid, dev, reps=20):
    """Measured time of one real FFT (mean of a forward rfftn and an inverse irfftn) on
    ``grid``, float32, after a warm-up."""
    x = torch.randn(grid, device=dev)
    for _ in range(2):
        x = torch.fft.irfftn(torch.fft.rfftn(x), s=grid)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        x = torch.fft.irfftn(torch.fft.rfftn(x), s=grid)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / (2 * reps)


def run_chain(d, dev, medi_max_iter=10):
    """The QSM chain of ``deepmir.qsm.pipeline.reconstruct`` with its defaults, stage by
    stage, timed (seconds, process peak RSS or GPU peak)."""
    m, vs, b0 = d["mask"], d["vs"], d["b0"]
    st = Stage(dev)
    fit = st.run("field fit", lambda: fit_multi_echo(d["mag"], d["phase"], d["te"], mask=m,
                                                     device=dev))
    dt = fit["delta_te"]
    imag = np.sqrt((d["mag"] ** 2).sum(-1))
    u = st.run("unwrap (Laplacian)", lambda: unwrap_laplacian(fit["field"] * dt, vs, imag, m,
                                                              device=dev))
    total = field_ppm_from_phase_rate(u, dt, 3.0, d.get("sign", 1)) * m
    noise = inflate_noise(fit["noise_std"] / (2 * np.pi * hz_per_ppm(3.0)), fit["relres"], m)
    r2s = st.run("R2*", lambda: r2star_map(d["mag"], d["te"], m, device=dev))
    mq = erode_mask(m, vs, DEFAULTS["mask_erode_mm"])
    bg = st.run("PDF", lambda: pdf(total * mq, mq, vs, b0, noise_std=noise, device=dev))
    local = bg["local"]
    csf = extract_csf_mask(r2s, mq, vs)
    res = st.run("MEDI-L1", lambda: medi_l1(local, mq, vs, b0, magnitude=imag,
                                            noise_std=noise, delta_te=dt, merit=DEFAULTS["merit"],
                                            csf_mask=csf if csf.any() else None,
                                            max_iter=medi_max_iter, device=dev))
    k = st.run("TKD", lambda: tkd(local, mq, vs, b0, device=dev))
    if csf.any():
        k = (k - k[csf].mean()) * mq
    st.run("SWI", lambda: swi(d["mag"][..., 0], d["phase"][..., 0], b0, 1, device=dev))
    return st, res, k, local, mq


def print_timing(st, res, dev):
    print(f"{'stage':<20}{'seconds':>10}{'peak MiB':>12}")
    for name, sec, mem in st.rows:
        print(f"{name:<20}{sec:>10.2f}{mem:>12.0f}")
    print(f"{'total':<20}{sum(r[1] for r in st.rows):>10.2f}")
    print("(peak MiB: process max RSS on CPU, torch peak allocated on GPU)")
    tf = fft_seconds(res["grid"], dev)
    medi_s = [r[1] for r in st.rows if r[0] == "MEDI-L1"][0]
    print(f"\nMEDI grid {res['grid']}: {res['iterations']} Gauss-Newton steps "
          f"(update ratios {', '.join(f'{r:.3g}' for r in res['ratios'])}), "
          f"CG {res['cg_iterations']}")
    print(f"MEDI FFT bound: {res['n_fft']} FFTs × {tf * 1e3:.2f} ms = {res['n_fft'] * tf:.1f} s; "
          f"measured {medi_s:.1f} s (the rest, {medi_s - res['n_fft'] * tf:.1f} s, is the "
          f"element-wise work: finite differences, weights, CG vector updates)")


def print_accuracy(d, res, k, local, mq):
    from deepmir.evaluate import qsm_accuracy

    m = d["mask"]
    lesions = d.get("lesions")
    vox = float(np.prod(d["vs"]))
    rows = [("MEDI-L1", qsm_accuracy(res["chi"], d["chi"], m, lesions, d.get("classes"),
                                     d.get("tissue"), vox)),
            ("TKD", qsm_accuracy(k, d["chi"], m, lesions, d.get("classes"), d.get("tissue"),
                                 vox))]
    print(f"\naccuracy inside the brain mask ({m.sum()} voxels; QSM mask = brain mask eroded "
          f"by {DEFAULTS['mask_erode_mm']} mm, {mq.sum() / m.sum():.3f} of it; χ and truth "
          f"referenced to their brain-mask mean); local-field NRMSE "
          f"{nrmse(local, d['local'], mq):.1f} % in the QSM mask")
    cols = ["nrmse_percent", "rmse_ppm", "pearson_r"]
    if d.get("tissue") is not None:
        cols += ["deep_gm_abs_error_ppm", "caudate_error_ppm", "putamen_error_ppm",
                 "pallidum_error_ppm", "thalamus_error_ppm"]
    if lesions is not None:
        cols += ["cmb_moment_ratio", "cmb_n_positive", "cmb_n", "calcification_n_negative",
                 "calcification_n"]
    print(f"{'method':<10}" + "".join(f"{c:>26}" for c in cols))
    for name, row in rows:
        print(f"{name:<10}" + "".join(f"{row.get(c, float('nan')):>26.4g}" for c in cols))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--synth", choices=("demo", "paper"))
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu (GPU rows follow when CUDA exists)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--medi-max-iter", type=int, default=10)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t = time.perf_counter()
    d = synth_participant(a.synth, a.seed, a.index) if a.synth else phantom(a.size)
    print(f"# {d['name']}: data made in {time.perf_counter() - t:.1f} s; {a.threads} CPU "
          f"threads; load average {os.getloadavg()[0]:.2f} (1 min) at start")
    devs = [torch.device(a.device)]
    if devs[0].type == "cpu":
        devs.append(torch.device("cuda") if torch.cuda.is_available() else None)
    for dev in devs:
        print(f"\n## device {dev.type if dev is not None else 'cuda'}")
        if dev is None or (dev.type == "cuda" and not torch.cuda.is_available()):
            print("GPU: no CUDA device (no GPU timings)")
            continue
        st, res, k, local, mq = run_chain(d, dev, a.medi_max_iter)
        print_timing(st, res, dev)
        print(f"load average {os.getloadavg()[0]:.2f} (1 min) after the run")
        if dev == devs[0]:
            print_accuracy(d, res, k, local, mq)


if __name__ == "__main__":
    main()
