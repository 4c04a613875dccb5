"""How long finding and checking a large BIDS dataset takes: what every Snakemake start (and,
on SLURM, every job, which parses the Snakefile again) pays before any work.

    python bench/discovery_bench.py --n 1000 [--work /tmp/disc] [--echoes 4] [--snakemake]

Generates N participants (demo GRE matrix 128×160×72, 4 echoes, magnitude and phase with JSON
sidecars, a T1w, a T2w and an annotation; every NIfTI is a gzip of zeros, so the headers are
real and the tree is small), then prints the seconds of:
- ``bids.discover`` (listing the folders and naming every file by its BIDS entities);
- ``bids.check_headers`` for every participant (NIfTI headers and JSON sidecars, as the
  workflow does at parse time);
- with ``--snakemake``: ``snakemake -n`` of the whole workflow on that dataset (parse, the
  checks above, the DAG of every job); of a single target; and of that target in Snakemake's
  remote mode, i.e. what every job on a cluster pays when it parses the Snakefile again
  (the header checks are skipped there: they ran when the workflow was planned).
The reference in the same run: the time to ``stat`` every file of the tree once.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from deepmir import bids  # noqa: E402

SHAPE = (128, 160, 72)


def _template(path: Path, shape, dtype=np.float32):
    """A NIfTI of zeros (a real header; gzip makes the data tiny)."""
    img = nib.Nifti1Image(np.zeros(shape, dtype), np.diag([1.5, 1.5, 2.25, 1.0]))
    raw = img.header.binaryblock + b"\0" * 4 + np.zeros(shape, dtype).tobytes()
    path.write_bytes(gzip.compress(raw, compresslevel=9))
    return path


def make_tree(root: Path, n: int, echoes: int) -> int:
    if root.exists():
        shutil.rmtree(root)
    (root / "tmpl").mkdir(parents=True)
    gre = _template(root / "tmpl" / "gre.nii.gz", SHAPE)
    anat = _template(root / "tmpl" / "anat.nii.gz", (120, 120, 120))
    dseg = _template(root / "tmpl" / "dseg.nii.gz", SHAPE, np.uint8)
    bids_dir = root / "bids"
    bids_dir.mkdir()
    (bids_dir / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"}))
    subs = [f"sub-{i:04d}" for i in range(1, n + 1)]
    (bids_dir / "participants.tsv").write_text("participant_id\n" + "\n".join(subs) + "\n")
    files = 2
    for s in subs:
        a = bids_dir / s / "anat"
        a.mkdir(parents=True)
        for e in range(1, echoes + 1):
            for part in ("mag", "phase"):
                stem = a / f"{s}_echo-{e}_part-{part}_MEGRE"
                os.link(gre, f"{stem}.nii.gz")
                Path(f"{stem}.json").write_text(json.dumps({"EchoTime": 0.0075 * e, "MagneticFieldStrength": 3.0}))
                files += 2
        for suffix in ("T1w", "T2w"):
            os.link(anat, a / f"{s}_{suffix}.nii.gz")
            files += 1
        d = bids_dir / "derivatives" / "annotations" / s / "anat"
        d.mkdir(parents=True)
        os.link(dseg, d / f"{s}_space-MEGRE_dseg.nii.gz")
        files += 1
    return files


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--echoes", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/deepmir-discovery-bench"))
    ap.add_argument("--snakemake", action="store_true", help="also time snakemake -n on the dataset")
    a = ap.parse_args(argv)
    t_make, files = timed(lambda: make_tree(a.work, a.n, a.echoes))
    bids_dir = a.work / "bids"
    t_stat, _ = timed(lambda: sum(1 for p in bids_dir.rglob("*") if p.stat()))
    t_disc, recs = timed(lambda: bids.discover(bids_dir))
    t_check, _ = timed(lambda: [bids.check_headers(r, 2) for r in recs])
    print(f"# {a.n} participants, {files} files ({a.echoes} echoes); tree made in {t_make:.1f} s; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'step':<44}{'seconds':>9}{'per participant (ms)':>22}{'× stat of the tree':>20}")
    rows = [("stat every file once (reference)", t_stat), ("bids.discover", t_disc),
            ("bids.check_headers, every participant", t_check)]
    if a.snakemake:
        cfg = a.work / "config.yaml"
        cfg.write_text(json.dumps({"bids_dir": str(bids_dir), "output_dir": str(a.work / "out")}))
        smk = [str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "workflow" / "Snakefile"), "-d", str(a.work),
               "--configfile", str(cfg), "-n", "--cores", "1"]
        one = str(a.work / "out" / "qsm" / "sub-0001" / "sub-0001_space-MEGRE_Chimap.nii.gz")
        for name, extra in (("snakemake -n, the whole workflow", []),
                            ("snakemake -n, one qsm job (planning)", [one]),
                            ("the same as a cluster job parses it", ["--mode", "remote", one])):
            t, r = timed(lambda: subprocess.run(smk + extra, capture_output=True, text=True))
            if r.returncode:
                print(r.stderr[-2000:], file=sys.stderr)
                return 1
            rows.append((name, t))
    for name, t in rows:
        print(f"{name:<44}{t:>9.2f}{1000 * t / a.n:>22.2f}{t / t_stat:>20.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
