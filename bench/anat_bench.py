"""Benchmark and accuracy of the anatomical stage on synthetic participants.

For each participant: simulate it (``deepmir.synth.cohort.simulate``), write its raw T1w/T2w
and 4D MEGRE magnitude to a scratch folder, run every anatomical stage exactly as the workflow
does (``deepmir n4 | register | brainmask`` as subprocesses, scheduled as Snakemake does with
``--cores 2`` and the default ``anat.threads: 1``: the T1w chain n4 → register → brainmask
beside the T2w chain n4 → register; ``--jobs 1 --threads 2`` runs them one after the other
instead) and print, per stage, wall seconds, CPU seconds and peak memory (max RSS of the
subprocess), the participant's elapsed time and the peak of both chains together (the sum
of each chain's largest stage when they run side by side), then the accuracy against
the truth: mean displacement of brain voxels between estimated and true T1w/T2w → MEGRE
transforms, N4 white-matter CV before/after (and the CV of image/true-bias, the floor no bias
correction can go below) and the correlation of estimated and true bias in the brain, and the
Dice of both brain-mask methods.

A summary line per participant closes the output (the acceptance numbers; several
participants: ``--participants 0 1 2 …``; each paper-scale one takes ≈ 1–2 min to simulate
and ≈ 1.5–3 min to run, so ``--sim-cache`` helps when repeating).

Usage:
    .venv/bin/python bench/anat_bench.py --scale paper --participants 0
    .venv/bin/python bench/anat_bench.py --scale demo --participants 0 --oblique-lps
    .venv/bin/python bench/anat_bench.py --participants 0 1 2 3 --sim-cache /tmp/anat-sim
Extra ``deepmir n4`` options go after ``--n4``, e.g. ``--n4 --config-json '{"n4": {"iterations": [50, 50, 50]}}'``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from deepmir import anat, niio
from deepmir.synth.cohort import simulate
from deepmir.synth.config import settings

WM_LABEL = 3  # deepmir.atlas.head.WM


def _vm_hwm_mb(pid):
    """Peak resident memory (VmHWM) of a running process, MB; None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def run_stage(name, argv, threads):
    """Run ``deepmir argv`` in a subprocess; wall s, CPU s (user + system, all threads) and
    peak memory MB. The peak is the subprocess's own VmHWM, polled every 50 ms (ru_maxrss
    would carry this big parent process's resident size over fork and exec)."""
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "deepmir.cli"] + [str(a) for a in argv] + \
        ["--threads", str(threads)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0.0
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        hwm = _vm_hwm_mb(proc.pid)
        if hwm is not None:
            peak = max(peak, hwm)
        time.sleep(0.05)
    wall = time.time() - t0
    text = proc.stdout.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"stage {name} failed:\n{text}")
    return {"stage": name, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
            "peak_mb": peak, "load1": os.getloadavg()[0], "log": text.strip()}


def eroded(mask):
    from scipy import ndimage as ndi
    return mask & ~ndi.binary_dilation(~mask)


def simulated(cfg, seed, index, cache=None):
    """What the benchmark needs of ``simulate(cfg, seed, index)``; with ``cache`` (a folder)
    kept there as a pickle and re-used by later runs with the same settings (delete the
    folder after changing the simulation code)."""
    import hashlib
    import pickle
    key = hashlib.sha1(json.dumps([cfg, seed, index], sort_keys=True).encode()).hexdigest()
    path = None if cache is None else Path(cache) / f"anat-sim-{key[:16]}.pkl"
    if path is not None and path.is_file():
        with open(path, "rb") as fh:
            return pickle.load(fh)
    sim = simulate(cfg, seed, index)
    keep = {"gre_affine": sim["gre_affine"], "mag": sim["mag"],
            "echo_times": sim["echo_times"], "truth": {"brain": sim["truth"]["brain"]},
            "anat": {c: {k: a[k] for k in ("image", "affine", "bias", "brain", "tissue",
                                             "xfm_to_gre")}
                     for c, a in sim["anat"].items()}}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".tmp"), "wb") as fh:
            pickle.dump(keep, fh, protocol=4)
        os.replace(path.with_suffix(".tmp"), path)
    return keep


def one_participant(cfg, seed, index, work, threads, jobs, n4_extra, cache=None):
    t0 = time.time()
    sim = simulated(cfg, seed, index, cache)
    sim_s = time.time() - t0
    work.mkdir(parents=True, exist_ok=True)
    g_aff = sim["gre_affine"]
    mag = np.stack(sim["mag"], -1)
    niio.save(work / "mag.nii.gz", mag, g_aff)
    niio.write_json(work / "MEGRE.json", {"EchoTime": [float(t) for t in sim["echo_times"]]})
    acc = {}

    def chain(c):
        """One contrast's stages in the workflow's order (the T1w's ends with the mask)."""
        niio.save(work / f"{c}.nii.gz", sim["anat"][c]["image"], sim["anat"][c]["affine"])
        out = [run_stage(f"n4 {c}", ["n4", "--input", work / f"{c}.nii.gz",
                                      "--output", work / f"n4_{c}.nii.gz",
                                      "--bias", work / f"bias_{c}.nii.gz"] + n4_extra, threads)]
        out.append(run_stage(f"register {c}", [
            "register", "--moving", work / f"n4_{c}.nii.gz", "--mag", work / "mag.nii.gz",
            "--info", work / "MEGRE.json", "--xfm", work / f"{c}_xfm.txt",
            "--output", work / f"space-MEGRE_{c}.nii.gz", "--qc", work / f"{c}_qc.png"],
            threads))
        if c == "T1w":
            out.append(run_stage("brainmask (T1w)", [
                "brainmask", "--mag", work / "mag.nii.gz", "--info", work / "MEGRE.json",
                "--t1w", work / "n4_T1w.nii.gz", "--xfm", work / "T1w_xfm.txt",
                "--output", work / "mask_t1.nii.gz", "--json", work / "mask_t1.json",
                "--qc", work / "mask_t1.png"], threads))
        return out

    # as Snakemake runs them with --cores (jobs × threads): the T1w and T2w chains side by
    # side when jobs ≥ 2, one after the other otherwise
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        rows = [r for rs in pool.map(chain, ("T1w", "T2w")) for r in rs]
    elapsed = time.time() - t0
    rows.append(run_stage("brainmask (magnitude)", [
        "brainmask", "--mag", work / "mag.nii.gz", "--info", work / "MEGRE.json",
        "--output", work / "mask_mag.nii.gz", "--json", work / "mask_mag.json"], threads))

    # accuracy against the truth
    brain = sim["truth"]["brain"]
    pts = anat.world_coords(brain.shape, g_aff)[brain]      # brain voxels, MEGRE world
    for c in ("T1w", "T2w"):
        a = sim["anat"][c]
        M_true = a["xfm_to_gre"]
        M_est = np.loadtxt(work / f"{c}_xfm.txt")
        # the same anatomical points in the anat world (true inverse), moved by both
        p_anat = anat.apply_transform(np.linalg.inv(M_true), pts)
        acc[f"{c} displacement_mm"] = anat.mean_displacement(M_est, M_true, p_anat)
        corr, _ = niio.load(work / f"n4_{c}.nii.gz")
        bias, _ = niio.load(work / f"bias_{c}.nii.gz")
        wm = eroded(a["tissue"] == WM_LABEL)
        cv0 = anat.coefficient_of_variation(a["image"], wm)
        cv1 = anat.coefficient_of_variation(corr, wm)
        floor = anat.coefficient_of_variation(a["image"] / a["bias"], wm)
        acc[f"{c} WM CV raw"] = cv0
        acc[f"{c} WM CV N4"] = cv1
        acc[f"{c} WM CV floor"] = floor
        acc[f"{c} CV reduction %"] = 100 * (1 - cv1 / cv0)
        # share of the bias-caused CV removed (CVs of independent factors add in quadrature)
        ex0 = np.sqrt(max(cv0 ** 2 - floor ** 2, 0))
        ex1 = np.sqrt(max(cv1 ** 2 - floor ** 2, 0))
        acc[f"{c} bias-CV removed %"] = 100 * (1 - ex1 / ex0) if ex0 > 0 else float("nan")
        acc[f"{c} bias r (brain)"] = float(np.corrcoef(bias[a["brain"]],
                                                       a["bias"][a["brain"]])[0, 1])
    for k in ("t1", "mag"):
        m, _ = niio.load(work / f"mask_{k}.nii.gz")
        acc[f"mask Dice ({'T1w' if k == 't1' else 'magnitude'})"] = anat.dice(m > 0, brain)
    info = {"grid": f"GRE {mag.shape[:3]} @ {anat.voxel_sizes(g_aff).round(2).tolist()} mm, "
                    f"anat {sim['anat']['T1w']['image'].shape} @ "
                    f"{anat.voxel_sizes(sim['anat']['T1w']['affine']).round(2).tolist()} mm",
            "simulate_s": sim_s, "elapsed_s": elapsed}
    return rows, acc, info


def summary(results):
    """One line per participant: the acceptance numbers of the anatomical stage (registration
    < 0.5 mm, N4 WM-CV drop ≥ 50 % and bias r ≥ 0.9, mask Dice ≥ 0.95 / 0.90, ≤ 90 s)."""
    print("\n== summary (drop: WM CV reduction by N4, in brackets by the true bias = floor)")
    head = (f"{'pid':8s} {'T1w mm':>7s} {'T2w mm':>7s} {'T1w r':>6s} {'T1w drop':>15s} "
            f"{'T2w r':>6s} {'T2w drop':>15s} {'Dice T1w':>8s} {'Dice mag':>8s} "
            f"{'elapsed':>7s} {'cpu s':>7s} {'peak MB':>7s} {'load1':>5s}")
    print(head)
    for res in results:
        a = res["accuracy"]

        def drop(c):
            cv0 = a[f"{c} WM CV raw"]
            return (f"{a[f'{c} CV reduction %']:5.1f}% ({100 * (1 - a[f'{c} WM CV floor'] / cv0):4.1f}%)")
        load = max(r["load1"] for r in res["stages"])
        print(f"{res['pid']:8s} {a['T1w displacement_mm']:7.3f} {a['T2w displacement_mm']:7.3f} "
              f"{a['T1w bias r (brain)']:6.3f} {drop('T1w'):>15s} {a['T2w bias r (brain)']:6.3f} "
              f"{drop('T2w'):>15s} {a['mask Dice (T1w)']:8.4f} {a['mask Dice (magnitude)']:8.4f} "
              f"{res['total_wall_s']:7.1f} {res['total_cpu_s']:7.1f} {res['peak_mb']:7.0f} "
              f"{load:5.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="paper", choices=("demo", "paper"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--participants", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1,
                    help="threads per stage (the workflow's anat.threads, default 1)")
    ap.add_argument("--jobs", type=int, default=2,
                    help="stages run at once (Snakemake --cores / anat.threads; default 2)")
    ap.add_argument("--oblique-lps", action="store_true",
                    help="GRE and anatomical grids LPS-ordered, GRE 15° oblique")
    ap.add_argument("--workdir", type=Path, help="keep the files here (default: temporary)")
    ap.add_argument("--json", type=Path, help="also write all numbers as JSON")
    ap.add_argument("--sim-cache", type=Path,
                    help="keep the simulated participants here and re-use them")
    ap.add_argument("--n4", nargs=argparse.REMAINDER, default=[],
                    help="extra `deepmir n4` options (must come last)")
    args = ap.parse_args(argv)
    cfg = settings({"scale": args.scale})
    if args.oblique_lps:
        cfg = copy.deepcopy(cfg)
        cfg["gre"]["orientation"] = "LPS"
        cfg["gre"]["oblique_deg"] = 15.0
        cfg["anat"]["orientation"] = "LPS"
    results = []
    with tempfile.TemporaryDirectory(prefix="anat-bench-") as tmp:
        root = args.workdir or Path(tmp)
        for i in args.participants:
            rows, acc, info = one_participant(cfg, args.seed, i, root / f"p{i}", args.threads,
                                              args.jobs, args.n4, args.sim_cache)
            pid = f"sub-{i + 1:03d}"
            print(f"\n== {pid} ({args.scale}{', oblique+LPS' if args.oblique_lps else ''}; "
                  f"{info['grid']}; simulated in {info['simulate_s']:.0f} s)")
            print(f"{'stage':24s} {'wall s':>8s} {'cpu s':>8s} {'peak MB':>8s} {'load1':>6s}")
            for r in rows:
                print(f"{r['stage']:24s} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} "
                      f"{r['peak_mb']:8.0f} {r['load1']:6.2f}")
            main_rows = [r for r in rows if r["stage"] != "brainmask (magnitude)"]
            tw = sum(r["wall_s"] for r in main_rows)
            tc = sum(r["cpu_s"] for r in main_rows)
            peak = max(r["peak_mb"] for r in main_rows)
            if args.jobs > 1:  # bound on both chains' stages at once
                peak = sum(max(r["peak_mb"] for r in main_rows if c in r["stage"])
                           for c in ("T1w", "T2w"))
            print(f"{'sum of stages':24s} {tw:8.1f} {tc:8.1f} {peak:8.0f}")
            print(f"{'elapsed, ' + str(args.jobs) + ' at once':24s} {info['elapsed_s']:8.1f}")
            for k, v in acc.items():
                print(f"  {k:28s} {v:.4f}")
            results.append({"pid": pid, "stages": [{k: v for k, v in r.items() if k != "log"}
                                                   for r in rows], "accuracy": acc,
                            "sum_wall_s": tw, "total_wall_s": info["elapsed_s"],
                            "total_cpu_s": tc, "peak_mb": peak, **info})
            if args.json:  # written after every participant: a long run keeps what it has
                args.json.write_text(json.dumps(results, indent=2))
    summary(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
