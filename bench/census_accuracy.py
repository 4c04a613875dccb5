"""The lesion census against the synthetic cohort's truth, through the pipeline's own
registration, QSM and SWI (issue 8's acceptance).

For every participant of a workflow run on the synthetic cohort, the truth lesions are given
to ``deepmir census`` as the "prediction" — CMBs as 1, iron as 2, and calcifications as 1 (a
model that took them for CMBs) — with the run's QSM, SWI, brain-mask JSON and (when present)
MNI coordinate map. Each truth lesion is matched to the census lesion at its centroid; the
script prints, per participant and in total: lesions found, volumes within 10 % of the truth
table, region (group, region, side) equal to the truth's, calcifications flagged by their
negative χ, and every miss.

Usage (after the workflow made qsm, swi and anat outputs for the cohort):
    .venv/bin/python bench/census_accuracy.py --results results
    .venv/bin/python bench/census_accuracy.py --results results --affine-only   # no SyN
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from deepmir import niio

KEY = ["region_group", "region", "hemisphere"]


def _one(results: Path, bids: Path, pid: str, atlas: Path, tmp: Path, affine_only: bool):
    truth = bids / "derivatives" / "truth" / pid / "anat"
    table = pd.read_csv(truth / f"{pid}_lesions.tsv", sep="\t")
    ids, aff = niio.load(truth / f"{pid}_space-MEGRE_desc-lesions_dseg.nii.gz", dtype=np.int32)
    want = table[table.cls.isin(["cmb", "iron", "calcification"]) & (table.n_voxels > 0)]
    labels = np.zeros(ids.shape, np.uint8)
    for row in want.itertuples():
        labels[ids == row.lesion_id] = 2 if row.cls == "iron" else 1
    lab_path = tmp / f"{pid}_labels.nii.gz"
    niio.save(lab_path, labels, aff, dtype=np.uint8)
    out = tmp / f"{pid}_census.tsv"
    coords = results / "anat" / pid / f"{pid}_from-MEGRE_to-MNI152_mode-image_xfm.nii.gz"
    cmd = [sys.executable, "-m", "deepmir.cli", "census", "--labels", str(lab_path),
           "--chi", str(results / "qsm" / pid / f"{pid}_space-MEGRE_Chimap.nii.gz"),
           "--swi", str(results / "swi" / pid / f"{pid}_space-MEGRE_swi.nii.gz"),
           "--mask-json", str(results / "anat" / pid / f"{pid}_space-MEGRE_desc-brain_mask.json"),
           "--atlas", str(atlas), "--output", str(out)]
    if coords.exists() and not affine_only:
        cmd += ["--mni-coords", str(coords)]
    subprocess.run(cmd, check=True)
    census = pd.read_csv(out, sep="\t")
    rows = []
    for t in want.itertuples():
        d = np.sqrt((census.centroid_i - t.centroid_i) ** 2 + (census.centroid_j - t.centroid_j) ** 2
                    + (census.centroid_k - t.centroid_k) ** 2)
        found = len(d) > 0 and d.min() < 1.0
        got = census.iloc[int(np.argmin(d))] if found else None
        rows.append(dict(
            participant=pid, lesion_id=t.lesion_id, cls=t.cls, found=found,
            volume_ok=found and abs(got.volume_mm3 - t.volume_mm3) <= 0.10 * t.volume_mm3,
            region_ok=found and all(str(got[k]) == str(getattr(t, k)) for k in KEY),
            flag_ok=found and bool(got.probable_calcification) == (t.cls == "calcification"),
            truth_region="/".join(str(getattr(t, k)) for k in KEY),
            census_region="/".join(str(got[k]) for k in KEY) if found else "",
            delta_chi=got.delta_chi_ppm if found else np.nan))
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--bids", type=Path, default=None, help="default: RESULTS/synthetic_bids")
    ap.add_argument("--atlas", type=Path, default=None, help="default: RESULTS/atlas/mni_atlas.npz if present")
    ap.add_argument("--affine-only", action="store_true", help="ignore the SyN coordinate maps")
    args = ap.parse_args(argv)
    bids = args.bids or args.results / "synthetic_bids"
    atlas = args.atlas or args.results / "atlas" / "mni_atlas.npz"
    pids = sorted(p.name for p in (args.results / "qsm").glob("sub-*"))
    with tempfile.TemporaryDirectory() as tmp:
        if not atlas.exists():
            atlas = Path(tmp) / "atlas.npz"
            subprocess.run([sys.executable, "-m", "deepmir.cli", "atlas", "--out", str(atlas)], check=True)
        df = pd.concat([_one(args.results, bids, p, atlas, Path(tmp), args.affine_only) for p in pids])
    per = df.groupby("participant")[["found", "volume_ok", "region_ok", "flag_ok"]].sum()
    per.insert(0, "lesions", df.groupby("participant").size())
    print(f"placement: {'affine (brain-mask stage)' if args.affine_only else 'SyN coordinate map where present'}")
    print(per.to_string())
    n = len(df)
    print(f"\nall: {n} lesions ({', '.join(f'{k} {v}' for k, v in df.cls.value_counts().items())})")
    for k in ("found", "volume_ok", "region_ok", "flag_ok"):
        print(f"  {k:10s} {int(df[k].sum()):4d}/{n}  ({100 * df[k].mean():.1f} %)")
    calc = df[df.cls == "calcification"]
    cmb = df[df.cls == "cmb"]
    print(f"  calcifications with Δχ < 0: {int((calc.delta_chi < 0).sum())}/{len(calc)};"
          f" CMBs with Δχ > 0: {int((cmb.delta_chi > 0).sum())}/{len(cmb)}")
    miss = df[~(df.found & df.volume_ok & df.region_ok & df.flag_ok)]
    if len(miss):
        print("\nmisses:")
        print(miss[["participant", "lesion_id", "cls", "found", "volume_ok", "flag_ok", "truth_region",
                    "census_region", "delta_chi"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
