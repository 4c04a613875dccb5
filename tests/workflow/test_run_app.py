"""`deepmir run BIDS_DIR OUTPUT_DIR participant|group`: the workflow as a BIDS App. Dry runs and
--touch runs (the DAG, not the computation) on a cohort with sessions and run-/acq- entities."""
import re
from pathlib import Path

import pytest

from conftest import into_session, make_minimal_bids
from deepmir.app import PARTICIPANT_RULES
from deepmir.cli import main


def _cohort(root):
    subs = ("sub-01", "sub-02", "sub-03")
    make_minimal_bids(root, subjects=subs)
    for sub in subs:
        into_session(root, sub, gre="acq-wb_run-1_", t2w="run-1_")
    return root


def _jobs(text):
    """(rule, participant) of every job of a dry run's plan."""
    out = []
    for block in re.split(r"^\[[^\]\n]+\]$", text, flags=re.M):
        m = re.search(r"^\s*(?:local)?rule (\w+):", block, re.M)
        if m and m.group(1) not in ("participant", "all"):
            pid = re.search(r"wildcards: .*?pid=(sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?)", block)
            out.append((m.group(1), pid.group(1) if pid else None))
    return out


def test_participant_then_group(tmp_path, capfd):
    bids, out = _cohort(tmp_path / "bids"), tmp_path / "out"
    learn = tmp_path / "learn.yaml"
    learn.write_text("learn:\n  experiments:\n    swiqsmMulti: {channels: [SWI, QSM], labels: multiclass}\n")
    # participant level, one label: only that participant's own jobs
    assert main(["run", str(bids), str(out), "participant", "--participant-label", "02",
                 "--config-file", str(learn), "--cores", "1", "--", "-n"]) == 0
    jobs = _jobs(capfd.readouterr().out)
    assert jobs and {p for _, p in jobs} == {"sub-02_ses-1"}, jobs
    assert {r for r, _ in jobs} == set(PARTICIPANT_RULES), jobs
    # every participant's level done (empty placeholders with up-to-date metadata instead of
    # the computation), label by label; then group plans the rest only
    for lab in ("sub-01", "02", "sub-03_ses-1"):
        capfd.readouterr()
        assert main(["run", str(bids), str(out), "participant", "--participant-label", lab,
                     "--config-file", str(learn), "--cores", "1", "--", "--summary", "--forceall"]) == 0
        summary = capfd.readouterr().out
        for f in [ln.split("\t")[0] for ln in summary.splitlines() if "\t" in ln][1:]:
            Path(f).parent.mkdir(parents=True, exist_ok=True)
            Path(f).touch()
        assert main(["run", str(bids), str(out), "participant", "--participant-label", lab,
                     "--config-file", str(learn), "--cores", "1", "--", "--touch", "--forceall", "--quiet"]) == 0
    capfd.readouterr()
    assert main(["run", str(bids), str(out), "group", "--config-file", str(learn), "--cores", "1", "--", "-n"]) == 0
    jobs = _jobs(capfd.readouterr().out)
    rules = {r for r, _ in jobs}
    assert not rules & set(PARTICIPANT_RULES), rules
    assert {"learn_train", "evaluate_aggregate", "report"} <= rules, rules
    assert (out / ".snakemake").is_dir() and (out / "logs").is_dir() and not (tmp_path / ".snakemake").exists()


@pytest.mark.parametrize("args, why", [
    (["/nonexistent", "OUT", "participant"], "/nonexistent: BIDS directory does not exist"),
    (["BIDS", "OUT", "subject"], "subject: analysis level must be participant or group"),
    (["--demo", "BIDS", "OUT", "participant"], "expected OUTPUT_DIR LEVEL (with --demo)"),
])
def test_bad_arguments_are_refused_in_one_line(tmp_path, capsys, args, why):
    (tmp_path / "BIDS").mkdir()
    args = [a if not a.isupper() else str(tmp_path / a) for a in args]
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0], err
    assert not (tmp_path / "OUT").exists()
