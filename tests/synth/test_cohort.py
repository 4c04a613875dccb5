"""Cohort shapes the README promises to handle: unannotated participants are processed (QSM,
SWI, prediction) whatever the number of annotated ones."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_minimal_bids

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


@pytest.mark.parametrize("census", [
    "census: {enabled: false}\n",
    "",
], ids=["census-off", "default"])
@pytest.mark.parametrize("n_annotated", [0, 1])
def test_fewer_than_two_annotated_participants_still_run(tmp_path, n_annotated, census):
    bids = make_minimal_bids(tmp_path / "bids", subjects=("sub-01", "sub-02", "sub-03"))
    for sub in ("sub-01", "sub-02", "sub-03")[n_annotated:]:
        shutil.rmtree(bids / "derivatives" / "annotations" / sub)
    (tmp_path / "config.yaml").write_text(f"bids_dir: {bids}\noutput_dir: results\n{census}")
    res = subprocess.run([str(SNAKEMAKE), "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(tmp_path), "-n",
                          "--configfile", str(tmp_path / "config.yaml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    for rule in ("inputs", "qsm", "swi", "montage"):
        assert res.stdout.count(f"rule {rule}:") == 3, (rule, res.stdout[-3000:])
