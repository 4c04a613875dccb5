"""QSM / SWI speed and accuracy benchmark.

    python bench/qsm_bench.py --size 160 [--device cpu|cuda] [--threads 2]
    python bench/qsm_bench.py --synth paper --seed 99 --index 0 [--device cuda]

Prints, per stage, seconds and peak memory (CPU: process max RSS; GPU: torch peak allocated),
the number of FFTs MEDI did × the measured time of one FFT pair on its grid (what bounds
MEDI's time), and NRMSE (demeaned, in the mask, %) of MEDI-L1 and TKD against the truth.

``--size N``: an N³ phantom at 1 mm (ellipsoidal brain with deep-grey-matter-like nuclei,
white/grey matter, microbleeds, a calcification, a vein; air around the head as a background
source; 4 echoes with noise). ``--synth SCALE``: one participant of the synthetic cohort
(``deepmir.synth``; demo or paper scale), truth from the simulator.
"""
from __future__ import annotations

import argparse
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
from deepmir.qsm.inversion import extract_csf_mask, medi_l1, tkd  # noqa: E402
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
    return dict(mag=np.stack(d["mag"], -1), phase=np.stack(d["phase"], -1),
                te=np.asarray(d["echo_times"]), mask=t["brain"], chi=t["chi"] * t["brain"],
                local=t["local_field"], vs=tuple(voxel_sizes(aff)), b0=tuple(b0_direction(aff)),
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


def fft_pair_seconds(grid, dev, reps=5):
    x = torch.randn(grid, device=dev)
    k = torch.fft.rfftn(x)
    torch.fft.irfftn(k, s=grid)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        k = torch.fft.rfftn(x)
        x = torch.fft.irfftn(k, s=grid)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--synth", choices=("demo", "paper"))
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--medi-max-iter", type=int, default=10)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    t = time.perf_counter()
    d = synth_participant(a.synth, a.seed, a.index) if a.synth else phantom(a.size)
    print(f"# {d['name']}: data made in {time.perf_counter() - t:.1f} s; device {dev}, "
          f"{a.threads} CPU threads")
    m, vs, b0 = d["mask"], d["vs"], d["b0"]
    st = Stage(dev)
    fit = st.run("field fit", lambda: fit_multi_echo(d["mag"], d["phase"], d["te"], mask=m,
                                                     device=dev))
    dt = fit["delta_te"]
    imag = np.sqrt((d["mag"] ** 2).sum(-1))
    u = st.run("unwrap (Laplacian)", lambda: unwrap_laplacian(fit["field"] * dt, vs, imag, m,
                                                              device=dev))
    total = field_ppm_from_phase_rate(u, dt, 3.0, 1) * m
    noise = inflate_noise(fit["noise_std"] / (2 * np.pi * hz_per_ppm(3.0)), fit["relres"], m)
    r2s = st.run("R2*", lambda: r2star_map(d["mag"], d["te"], m, device=dev))
    bg = st.run("PDF", lambda: pdf(total, m, vs, b0, noise_std=noise, device=dev))
    local = bg["local"]
    csf = extract_csf_mask(r2s, m, vs)
    res = st.run("MEDI-L1", lambda: medi_l1(local, m, vs, b0, magnitude=imag, noise_std=noise,
                                            delta_te=dt, csf_mask=csf if csf.any() else None,
                                            max_iter=a.medi_max_iter, device=dev))
    k = st.run("TKD", lambda: tkd(local, m, vs, b0, device=dev))
    st.run("SWI", lambda: swi(d["mag"][..., 0], d["phase"][..., 0], b0, 1, device=dev))
    print(f"{'stage':<20}{'seconds':>10}{'peak MiB':>12}")
    for name, sec, mem in st.rows:
        print(f"{name:<20}{sec:>10.2f}{mem:>12.0f}")
    tot = sum(r[1] for r in st.rows)
    print(f"{'total':<20}{tot:>10.2f}")
    tf = fft_pair_seconds(res["grid"], dev)
    medi_s = [r[1] for r in st.rows if r[0] == "MEDI-L1"][0]
    print(f"\nMEDI grid {res['grid']}: {res['iterations']} Gauss-Newton steps, CG {res['cg_iterations']}, "
          f"{res['n_fft']} FFTs × {tf / 2 * 1e3:.2f} ms = {res['n_fft'] * tf / 2:.1f} s "
          f"of {medi_s:.1f} s measured")
    print(f"\n{'method':<10}{'NRMSE %':>10}{'local-field NRMSE %':>22}")
    lf = nrmse(local, d["local"], m)
    print(f"{'MEDI-L1':<10}{nrmse(res['chi'], d['chi'], m):>10.1f}{lf:>22.1f}")
    print(f"{'TKD':<10}{nrmse(k, d['chi'], m):>10.1f}{lf:>22.1f}")


if __name__ == "__main__":
    main()
