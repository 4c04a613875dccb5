"""Seconds per participant for the whole cohort-application path — raw BIDS → inputs → N4 →
registration → brain mask → MNI warp → QSM → SWI → stack → model → census — and what a
cohort of 1,000 participants would need.

It runs the real workflow (`snakemake --cores N`) for one or more participants in a scratch
folder, applying an already trained model (`census.model`, the "I have a trained model and a
new BIDS dataset" path: nothing is trained), then reads every job's Snakemake benchmark
(wall s, CPU s, peak RSS) and prints one row per stage, the per-participant totals and the
1,000-participant projection. The projection's CPU time is the whole run's (rusage of
Snakemake and all its jobs), since the benchmarks' ``cpu_time`` under-reads threaded jobs.
The network part (`apply`) is the only GPU-capable stage.

Usage:
    .venv/bin/python bench/apply_bench.py                        # demo scale: results/synthetic_bids
    .venv/bin/python bench/apply_bench.py --synth paper          # a fresh paper-scale participant
    .venv/bin/python bench/apply_bench.py --bids /data/bids --participants sub-01 --model m/best.pt
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["inputs", "anat/n4_T1w", "anat/n4_T2w", "anat/register_T1w", "anat/register_T2w",
          "anat/brainmask", "mni_warp", "qsm", "swi", "stacks", "apply", "census"]


def _machine():
    load = os.getloadavg()[0]
    try:
        import torch
        dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    except ImportError:
        dev = "torch missing"
    return f"{platform.node()} · {os.cpu_count()} CPUs · {dev} · load {load:.1f} at start"


def _snakemake(work: Path, configfile: str, cores: int, targets: list[str]) -> float:
    """The workflow in ``work`` (its log in work/snakemake.log); exits with the log's tail on
    failure. Returns the CPU seconds (user + system) of Snakemake and every job it ran: the
    rusage of reaped children, which counts all threads of every process (Snakemake's own
    benchmark ``cpu_time`` under-reads multi-threaded and ITK jobs)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "workflow" / "Snakefile"),
           "--directory", str(work), "--configfile", str(work / configfile), "--cores", str(cores),
           "--", *targets]
    with open(work / "snakemake.log", "a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        sys.exit(f"apply_bench: snakemake failed ({work / 'snakemake.log'}):\n"
                 + (work / "snakemake.log").read_text()[-2000:])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bids", type=Path, default=ROOT / "results" / "synthetic_bids")
    ap.add_argument("--synth", choices=["demo", "paper"], default=None,
                    help="generate a one-participant synthetic dataset at this scale instead")
    ap.add_argument("--participants", nargs="+", default=["sub-001"])
    ap.add_argument("--model", type=Path, default=None,
                    help="trained best.pt with model.json beside it (default: results/final/*/best.pt)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="device of the network stage (cpu, cuda, auto)")
    ap.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: temporary)")
    args = ap.parse_args(argv)

    model = args.model or next(iter(sorted(ROOT.glob("results/final/*/best.pt"))), None)
    if model is None or not Path(model).with_name("model.json").exists():
        sys.exit("apply_bench: no trained model: run the workflow first (results/final/<exp>/best.pt) "
                 "or pass --model")
    card = json.loads(Path(model).with_name("model.json").read_text())
    work = args.keep or Path(tempfile.mkdtemp(prefix="deepmir-apply-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = {"output_dir": "results", "participants": args.participants,
           "census": {"model": str(Path(model).resolve())},
           "learn": {"enabled": False, "device": args.device,
                     "slice_size": 256 if args.synth == "paper" else card["slice_size"]}}
    if args.synth:
        cfg["synth"] = {"scale": args.synth, "n_participants": len(args.participants)}
        (work / "synth.yaml").write_text(yaml.safe_dump(cfg))
        _snakemake(work, "synth.yaml", args.cores, ["synth_dataset", *[
            f"results/synthetic_bids/{p}/anat/{p}_T1w.nii.gz" for p in args.participants]])
        cfg["bids_dir"] = str(work / "results" / "synthetic_bids")
        cfg.pop("synth")
    else:
        cfg["bids_dir"] = str(args.bids.resolve())
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    exp = card["experiment"]
    targets = [f"results/census/{p}/{p}_desc-{exp}_census.tsv" for p in args.participants]
    print(f"machine: {_machine()}\nmodel: {model} ({exp}: {', '.join(card['channels'])}, {card['labels']})\n"
          f"dataset: {cfg['bids_dir']} — {', '.join(args.participants)}; workdir {work}", flush=True)
    t0 = time.time()
    run_cpu = _snakemake(work, "config.yaml", args.cores, targets)
    elapsed = time.time() - t0

    rows = []
    for stage in STAGES:
        for p in args.participants:
            f = work / cfg["output_dir"] / "benchmarks" / stage / f"{p}.tsv"
            if f.exists():
                b = pd.read_csv(f, sep="\t").iloc[-1]
                rows.append(dict(stage=stage, participant=p, s=b["s"], cpu_s=b["cpu_time"],
                                 max_rss_mb=b["max_rss"]))
    df = pd.DataFrame(rows)
    per_stage = df.groupby("stage", sort=False)[["s", "cpu_s", "max_rss_mb"]].mean()
    n = len(args.participants)
    print(f"\nper participant (mean of {n}), cores {args.cores}:")
    print(per_stage.round(1).to_string())
    wall_sum, cpu_sum = df.s.sum() / n, df.cpu_s.sum() / n
    net = per_stage.loc["apply"] if "apply" in per_stage.index else None
    run_cpu /= n
    print(f"\nsum of job wall s {wall_sum:.0f} · CPU s {cpu_sum:.0f} (Snakemake benchmarks; they "
          f"under-read threaded jobs) · peak RSS {df.max_rss_mb.max():.0f} MB · "
          f"workflow elapsed {elapsed / n:.0f} s per participant (with --cores {args.cores})\n"
          f"CPU s of the whole run (Snakemake and every job, all threads): {run_cpu:.0f} per participant")
    if net is not None:
        print(f"network stage (apply) on {args.device}: {net.s:.1f} s of it")
    days = 1000 * elapsed / n / 86400
    print(f"\n1,000 participants: {1000 * run_cpu / 3600:.0f} CPU core-hours; on this machine "
          f"({args.cores} cores, one participant after another) ≈ {days:.1f} days; on a cluster the "
          f"participants run in parallel (SLURM profile), one job per stage.")
    print("H100 row for the network stage: not measured here (run with --device cuda on a GPU machine).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
