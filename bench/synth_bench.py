"""Generation time and peak memory of one synthetic participant at demo and paper scale.

    .venv/bin/python bench/synth_bench.py [--scales demo paper] [--participants 2]

Each participant is generated (simulated and written as BIDS) in a fresh process, with the
head model read from a cache built once (its build time is reported on its own line).
Prints a table; numbers depend on the machine and its load — report both."""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import sys, time, json, resource
from deepmir.atlas import head as anatomy
from deepmir.synth import write
from deepmir.synth.config import settings
cfg = settings({"scale": sys.argv[1], "n_participants": int(sys.argv[3]) + 1})
anatomy.head_model(sys.argv[4])
t, c = time.perf_counter(), time.process_time()
write.write_participant(sys.argv[2], cfg, int(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - t, "cpu": time.process_time() - c,
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def run_child(args):
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True)
    if res.returncode:
        sys.exit(res.stderr)
    import json
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out["seconds"], out["cpu"], time.perf_counter() - t, out["peak_gb"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", nargs="+", default=["demo", "paper"])
    ap.add_argument("--participants", type=int, default=2)
    a = ap.parse_args()
    from deepmir.synth.config import settings
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "head_model.npz"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"from deepmir.atlas import head; head.head_model({str(cache)!r})"],
                       check=True)
        build = time.perf_counter() - t
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
              f"{os.getloadavg()[0]:.1f}, "
              f"torch threads default, Python {platform.python_version()}")
        print(f"head model (once per cohort, cached): {build:.1f} s\n")
        print(f"{'scale':<6} {'participant':<12} {'GRE matrix':<14} {'voxel (mm)':<14} "
              f"{'generate (s)':>12} {'CPU (s)':>8} {'process (s)':>12} {'peak RSS (GB)':>14}")
        for scale in a.scales:
            cfg = settings({"scale": scale})
            for i in range(a.participants):
                gen, cpu, total, peak = run_child([scale, Path(tmp) / scale, i, cache])
                print(f"{scale:<6} sub-{i + 1:03d}      {'x'.join(map(str, cfg['gre']['matrix'])):<14} "
                      f"{'x'.join(f'{v:g}' for v in cfg['gre']['voxel_size']):<14} {gen:>12.1f} {cpu:>8.1f} "
                      f"{total:>12.1f} {peak:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
