"""Entity-aware discovery: files named with acq-/run-/rec-/ce- entities, T2starw with part-,
sessions; several series of one contrast are chosen with bids_filters or refused in one line
naming them (several T1w runs used to become "no T1w")."""
import re
import shutil

import pytest

from conftest import into_session, make_minimal_bids
from deepmir.cli import main
from deepmir.errors import InputError
from deepmir.inputs import bids


def _rename(anat, old, new):
    for f in sorted(anat.iterdir()):
        if old in f.name:
            f.rename(f.with_name(f.name.replace(old, new)))


def _second_series(anat, sub, entity):
    """A copy of the GRE series with an entity inserted after the subject (acq-B, run-2 …)."""
    for f in sorted(anat.glob(f"{sub}_echo-*")):
        shutil.copy(f, f.with_name(f.name.replace(f"{sub}_", f"{sub}_{entity}_")))


def test_parse_name():
    assert bids.parse_name("sub-01_ses-2_acq-wb_run-01_echo-3_part-phase_MEGRE.nii.gz") == (
        {"sub": "01", "ses": "2", "acq": "wb", "run": "01", "echo": "3", "part": "phase"}, "MEGRE")
    assert bids.parse_name("sub-01_T1w.nii") == ({"sub": "01"}, "T1w")
    assert bids.parse_name("sub-01_T1w.json") is None and bids.parse_name("notes.nii.gz") is None


def test_acq_run_entities_and_t2starw(tmp_path):
    root = make_minimal_bids(tmp_path / "bids")
    anat = root / "sub-01" / "anat"
    _rename(anat, "sub-01_echo-", "sub-01_acq-wb_run-01_echo-")
    _rename(anat, "_MEGRE.", "_T2starw.")
    _rename(anat, "sub-01_T2w", "sub-01_acq-fast_T2w")
    (rec,) = bids.discover(root)
    assert [p.name for p in rec.mag] == [f"sub-01_acq-wb_run-01_echo-{n}_part-mag_T2starw.nii.gz" for n in (1, 2, 3)]
    assert rec.t2w.name == "sub-01_acq-fast_T2w.nii.gz" and rec.annotation is not None
    assert bids.check_headers(rec)["EchoTime"] == pytest.approx([0.005, 0.01, 0.015])


def test_several_series_are_chosen_by_filters_or_refused(tmp_path, capsys):
    root = make_minimal_bids(tmp_path / "bids")
    anat = root / "sub-01" / "anat"
    _second_series(anat, "sub-01", "acq-B")
    shutil.copy(anat / "sub-01_T2w.nii.gz", anat / "sub-01_run-2_T2w.nii.gz")
    for s in ("T1w",):                    # two T1w runs: not "no T1w"
        for run in (1, 2):
            shutil.copy(anat / "sub-01_T2w.nii.gz", anat / f"sub-01_run-{run}_{s}.nii.gz")
    with pytest.raises(InputError, match=r"several multi-echo GRE series \(MEGRE, acq-B_MEGRE\): "
                                         r"choose one with bids_filters\.gre"):
        bids.discover(root)
    with pytest.raises(InputError, match=r"several T1w series \(run-1_T1w, run-2_T1w\)"):
        bids.discover(root, filters={"gre": {"acq": "B"}})
    filters = {"gre": {"acq": "B"}, "T1w": {"run": 2}, "T2w": {"run": "2"}}
    (rec,) = bids.discover(root, filters=filters)
    assert rec.mag[0].name == "sub-01_acq-B_echo-1_part-mag_MEGRE.nii.gz"
    assert rec.t1w.name == "sub-01_run-2_T1w.nii.gz" and rec.t2w.name == "sub-01_run-2_T2w.nii.gz"
    # a filter that selects nothing: the GRE is missing (named), a T1w simply absent
    with pytest.raises(InputError, match="that bids_filters.gre selects"):
        bids.discover(root, filters={**filters, "gre": {"acq": "C"}})
    (rec,) = bids.discover(root, filters={**filters, "T1w": {"run": 3}})
    assert rec.t1w is None
    # the command line: one line, exit 2, and with the filter the dataset validates
    assert main(["validate", str(root), "--headers-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"sub-01/anat: several multi-echo GRE series", err[0]), err
    import json
    assert main(["validate", str(root), "--headers-only", "--bids-filters", json.dumps(filters)]) == 0


def test_sessions_with_entities(tmp_path):
    root = make_minimal_bids(tmp_path / "bids", subjects=("sub-01", "sub-02"))
    for sub in ("sub-01", "sub-02"):
        into_session(root, sub, gre="run-1_")
    recs = bids.discover(root)
    assert [r.pid for r in recs] == ["sub-01_ses-1", "sub-02_ses-1"]
    assert all(r.t2w is not None and r.annotation is not None and len(r.mag) == 3 for r in recs)
    (rec,) = [bids.find(root, "sub-02_ses-1")]
    assert rec.mag[0].name == "sub-02_ses-1_run-1_echo-1_part-mag_MEGRE.nii.gz"


def test_the_workflow_passes_its_filters_to_the_jobs(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path
    root_dir = Path(__file__).resolve().parents[2]
    root = make_minimal_bids(tmp_path / "bids", subjects=("sub-01", "sub-02", "sub-03"))
    for sub in ("sub-01", "sub-02", "sub-03"):
        _second_series(root / sub / "anat", sub, "acq-B")

    def dry(config):
        (tmp_path / "config.yaml").write_text(json.dumps(config))
        return subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s", str(root_dir / "workflow" / "Snakefile"),
                               "--directory", str(tmp_path), "-n", "-p", "--cores", "1",
                               "--configfile", str(tmp_path / "config.yaml")], capture_output=True, text=True)
    base = {"bids_dir": str(root), "output_dir": "out", "learn": {"enabled": False}, "census": {"enabled": False}}
    r = dry(base)
    assert r.returncode != 0 and "several multi-echo GRE series (MEGRE, acq-B_MEGRE)" in r.stderr, r.stderr[-2000:]
    r = dry({**base, "bids_filters": {"gre": {"acq": "B"}}})
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = [ln for ln in r.stdout.splitlines() if "deepmir inputs " in ln]
    assert len(jobs) == 3 and all("--bids-filters '{\"gre\": {\"acq\": \"B\"}}'" in j for j in jobs), jobs
