"""bench/gpu_check.sh, the one script a lent GPU runs, at its tiny CPU size: it must keep
working although no GPU is there to run it for real."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_tiny_runs_on_cpu():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--tiny"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "| default (patch) |" in out and "patches/s" in out     # training throughput table
    assert out.count("| default (patch) |") == 2                    # AMP on and off
    assert "MEDI-L1" in out and "FFT" in out                        # the QSM part
