"""kill -9 anywhere: interrupt the workflow with SIGKILL at random moments, resume it with the
same command, and compare every final output with an uninterrupted run.

One uninterrupted reference run, then N trials, each in a fresh folder: start the workflow,
SIGKILL Snakemake and every process it started at a random moment (uniform between
``--earliest`` seconds and 95 % of the reference run's duration), then run the same command
again until it finishes. A hard kill leaves Snakemake's lock behind; the resume unlocks
(``--unlock``) only after checking that no process of the killed tree is left, as the README
tells a person to do. At the end it compares, file by file, the output folder of each trial
with the reference: NIfTI data arrays and affines bit for bit, .npz arrays, TSV / JSON /
Markdown / text exactly (the benchmark tables, which hold timings, and PNG figures are left
out), files missing or extra, and temporary files left behind. It prints how many trials
ended identical and every difference.

Usage (CPU; the tiny two-participant configuration of the SLURM test by default):
    .venv/bin/python bench/chaos.py                       # N = 20
    .venv/bin/python bench/chaos.py --n 2 --cores 2 --work /tmp/chaos
    .venv/bin/python bench/chaos.py --reference /tmp/chaos/ref    # reuse a finished reference
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = ("report/benchmarks.tsv", "report/benchmarks.md")      # wall times: differ by design
SKIPPED_DIRS = ("logs/", "benchmarks/")     # the jobs' logs and Snakemake benchmarks (times, pids)


# ------------------------------------------------------------------------------ processes
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def _tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill_tree(proc: subprocess.Popen) -> list[int]:
    """SIGKILL Snakemake and every descendant (its process group and any that left it)."""
    pids = _tree(proc.pid)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.time() + 30
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    return pids


# ------------------------------------------------------------------------------ the workflow
class Workflow:
    def __init__(self, configfile: Path, cores: int, targets: list[str]):
        self.configfile, self.cores, self.targets = configfile.resolve(), cores, targets
        cfg = yaml.safe_load(configfile.read_text()) or {}
        self.output_dir = str(cfg.get("output_dir") or "results")

    def command(self, work: Path, *extra: str) -> list[str]:
        return [str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "workflow" / "Snakefile"),
                "--directory", str(work), "--configfile", str(self.configfile),
                "--profile", str(ROOT / "profiles" / "local"), "--cores", str(self.cores), *extra,
                *(["--", *self.targets] if self.targets else [])]

    def start(self, work: Path, log: str) -> subprocess.Popen:
        work.mkdir(parents=True, exist_ok=True)
        with open(work / log, "a") as fh:
            return subprocess.Popen(self.command(work), stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def run(self, work: Path, log: str) -> int:
        return self.start(work, log).wait()

    def resume(self, work: Path, killed: list[int], log: str) -> tuple[int, bool]:
        """The same command again; after a LockException, unlock (only when no process of the
        killed tree is alive) and run it once more. Returns (exit code, unlocked)."""
        rc = self.run(work, log)
        text = (work / log).read_text()
        if rc == 0 or "LockException" not in text[-5000:]:
            return rc, False
        if any(_alive(p) for p in killed):
            raise SystemExit(f"chaos: a killed process is still alive in {work}; not unlocking")
        with open(work / log, "a") as fh:
            subprocess.run(self.command(work, "--unlock"), stdout=fh, stderr=subprocess.STDOUT, check=True)
        return self.run(work, log), True


# ------------------------------------------------------------------------------ comparison
def _nifti(path: Path):
    import nibabel as nib
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def _same_array(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _differs(a: Path, b: Path) -> str | None:
    """None when a and b hold the same result, else a short reason."""
    name = a.name
    if name.endswith((".nii", ".nii.gz")):
        (da, aa), (db, ab) = _nifti(a), _nifti(b)
        if not _same_array(da, db):
            n = int(np.sum(~((da == db) | (np.isnan(da) & np.isnan(db))))) if da.shape == db.shape else -1
            return f"NIfTI data differ ({n} voxels)" if n >= 0 else f"shape {da.shape} vs {db.shape}"
        return None if np.array_equal(aa, ab) else "affine differs"
    if name.endswith(".npz"):
        with np.load(a) as za, np.load(b) as zb:
            if sorted(za.files) != sorted(zb.files):
                return "arrays differ in name"
            bad = [k for k in za.files if not _same_array(za[k], zb[k])]
        return f"arrays differ: {', '.join(bad)}" if bad else None
    if name.endswith(".json"):
        return None if json.loads(a.read_text()) == json.loads(b.read_text()) else "JSON differs"
    if name.endswith((".tsv", ".md", ".txt", ".csv")):
        return None if a.read_bytes() == b.read_bytes() else "text differs"
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def output_files(root: Path) -> set[str]:
    """The files of an output folder (paths relative to it), the jobs' logs and benchmarks left out."""
    return {f for f in (str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())
            if not f.startswith(SKIPPED_DIRS)}


def compared(f: str) -> bool:
    """Whether an output file's content is compared (not the timing tables, not the figures)."""
    return f not in SKIPPED and not f.endswith(".png")


def compare(ref: Path, run: Path) -> tuple[list[str], int]:
    """The differences of run's output folder from ref's, and how many files were compared."""
    fa, fb = output_files(ref), output_files(run)
    diffs = [f"left behind: {f}" for f in sorted(fb) if Path(f).name.startswith(".tmp-")]
    fb = {f for f in fb if not Path(f).name.startswith(".tmp-")}
    diffs += [f"missing: {f}" for f in sorted(fa - fb)] + [f"extra: {f}" for f in sorted(fb - fa)]
    same = [f for f in sorted(fa & fb) if compared(f)]
    for f in same:
        why = _differs(ref / f, run / f)
        if why:
            diffs.append(f"{f}: {why}")
    return diffs, len(same)


def _running_jobs(log: Path) -> str:
    """The rules Snakemake had started and not finished when it was killed (from its log)."""
    started, done, rule = {}, set(), None
    for line in log.read_text(errors="replace").splitlines():
        s = line.strip()
        if s.startswith(("rule ", "localrule ")) and s.endswith(":"):
            rule = s.split()[1].rstrip(":")
        elif s.startswith("jobid:") and rule:
            started[s.split()[1]] = rule
        elif s.startswith("Finished job"):
            done.add(s.split()[2].rstrip("."))
    return ", ".join(sorted({r for j, r in started.items() if j not in done})) or "none"


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="interrupted runs")
    p.add_argument("--config", type=Path, default=ROOT / "tests" / "workflow" / "slurm_config.yaml")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("chaos-work"), help="scratch folder (one sub-folder per run)")
    p.add_argument("--reference", type=Path, help="a finished uninterrupted run folder to reuse")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--earliest", type=float, default=2.0, help="seconds before the earliest kill")
    p.add_argument("--keep", action="store_true", help="keep every trial folder (default: only differing ones)")
    p.add_argument("targets", nargs="*", help="snakemake targets (default: the default target)")
    args = p.parse_args(argv)

    wf = Workflow(args.config, args.cores, args.targets)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    ref = args.reference
    if ref is None:
        ref = args.work / "ref"
        shutil.rmtree(ref, ignore_errors=True)
        t0 = time.time()
        rc = wf.run(ref, "snakemake.log")
        if rc:
            sys.exit(f"chaos: the uninterrupted run failed (exit {rc}); see {ref / 'snakemake.log'}")
        (ref / "duration_s").write_text(f"{time.time() - t0:.1f}\n")
    duration = float((ref / "duration_s").read_text()) if (ref / "duration_s").exists() else 300.0
    print(f"reference: {ref} ({duration:.0f} s)", flush=True)

    rng = random.Random(args.seed)
    results = []
    for i in range(1, args.n + 1):
        work = args.work / f"run-{i:02d}"
        shutil.rmtree(work, ignore_errors=True)
        at = rng.uniform(min(args.earliest, 0.5 * duration), 0.95 * duration)
        proc = wf.start(work, "snakemake.log")
        try:
            proc.wait(timeout=at)
            killed, running = [], "finished before the kill"
        except subprocess.TimeoutExpired:
            killed = _kill_tree(proc)
            running = _running_jobs(work / "snakemake.log")
        with open(work / "snakemake.log", "a") as fh:
            fh.write(f"\n#### chaos: SIGKILL after {at:.1f} s ({len(killed)} processes)\n")
        rc, unlocked = wf.resume(work, killed, "snakemake.log")
        diffs, n = ([f"resume failed (exit {rc}); see {work / 'snakemake.log'}"], 0) if rc else \
            compare(ref / wf.output_dir, work / wf.output_dir)
        results.append((i, at, running, unlocked, diffs))
        print(f"run {i:2d}: killed at {at:6.1f} s while running {running}; "
              f"{'unlocked, ' if unlocked else ''}resumed; {n} files compared: "
              f"{'identical' if not diffs else f'{len(diffs)} difference(s)'}", flush=True)
        if not diffs and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    same = sum(not d for *_, d in results)
    print(f"\n{same}/{len(results)} interrupted runs ended identical to the uninterrupted run")
    for i, at, running, unlocked, diffs in results:
        for d in diffs:
            print(f"  run {i:2d} (killed at {at:.1f} s during {running}): {d}")
    return 0 if same == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
