"""The workflow's DAG: re-running a stage re-runs only what depends on it, and a participant
added to a dataset runs only its own jobs. Outputs are empty placeholders with up-to-date
Snakemake metadata (`--touch`), so only the DAG logic is exercised (no computation)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import make_minimal_bids

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
LEARN = "learn: {experiments: {swiqsmCmb: {channels: [SWI, QSM], labels: cmb}}}\n"


def smk(workdir, *args):
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "1",
           "--configfile", str(workdir / "config.yaml"), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def placeholders(workdir):
    """Every output of the workflow as an empty file with up-to-date metadata."""
    summary = smk(workdir, "--summary", "--forceall")
    files = [ln.split("\t")[0] for ln in summary.splitlines() if "\t" in ln and not ln.startswith("output_file")]
    for f in files:
        p = workdir / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    smk(workdir, "--touch", "--forceall", "--quiet")
    return files


def planned(text):
    """(rule, pid or None) of every job of a dry run."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if m:
            w = re.search(r"wildcards:.*?pid=([\w-]+)", block)
            jobs.append((m.group(1), w.group(1) if w else None))
    return jobs


def test_changing_a_qsm_parameter_reruns_qsm_and_dependants_only(tmp_path):
    (tmp_path / "config.yaml").write_text("output_dir: results\nsynth: {n_participants: 3}\n" + LEARN)
    placeholders(tmp_path)
    assert planned(smk(tmp_path, "-n")) == []                     # up to date
    jobs = planned(smk(tmp_path, "-n", "--config", "qsm={lambda: 500}"))
    rules = {r for r, _ in jobs}
    assert ("qsm", "sub-001") in jobs and ("qsm", "sub-003") in jobs
    assert {"stack", "learn_train", "learn_predict", "evaluate_participant", "apply", "census"} <= rules
    assert not rules & {"synth_participant", "inputs", "montage", "anat_n4", "anat_register",
                        "anat_brainmask", "mni_warp", "swi"}, rules
    # --until one stage: nothing past it
    until = {r for r, _ in planned(smk(tmp_path, "-n", "-R", "swi", "--until", "swi"))}
    assert until == {"swi"}, until


def test_a_new_synthetic_participant_leaves_the_others_alone(tmp_path):
    (tmp_path / "config.yaml").write_text("output_dir: results\nsynth: {n_participants: 3}\n" + LEARN)
    placeholders(tmp_path)
    jobs = planned(smk(tmp_path, "-n", "--config", "synth={n_participants: 4}"))
    for rule in ("synth_participant", "inputs", "anat_n4", "qsm", "swi", "montage", "mni_warp"):
        assert {p for r, p in jobs if r == rule} == {"sub-004"}, (rule, jobs)


def test_an_unannotated_participant_added_to_a_bids_dataset_runs_only_its_jobs(tmp_path):
    bids = make_minimal_bids(tmp_path / "bids", subjects=("sub-01", "sub-02", "sub-03"))
    (tmp_path / "config.yaml").write_text(f"bids_dir: {bids}\noutput_dir: results\n" + LEARN)
    placeholders(tmp_path)
    # a new participant, without annotations
    new = bids / "sub-04" / "anat"
    new.mkdir(parents=True)
    for f in (bids / "sub-01" / "anat").iterdir():
        shutil.copy(f, new / f.name.replace("sub-01", "sub-04"))
    with open(bids / "participants.tsv", "a") as fh:
        fh.write("sub-04\n")
    jobs = planned(smk(tmp_path, "-n"))
    per_pid = {p for _, p in jobs if p is not None}
    assert per_pid == {"sub-04"}, jobs
    rules = {r for r, _ in jobs}
    assert {"inputs", "qsm", "swi", "stack", "apply", "census", "cohort_table"} <= rules, rules
    # no training: the folds and the final model only use annotated participants
    assert not rules & {"learn_train", "final_train", "evaluate_participant", "evaluate_aggregate"}, rules
