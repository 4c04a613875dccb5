"""The workflow's DAG: re-running a stage re-runs only what depends on it, and a participant
added to a dataset runs only its own jobs. Outputs are empty placeholders with up-to-date
Snakemake metadata (`--touch`), so only the DAG logic is exercised (no computation)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import into_session, make_minimal_bids

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
LEARN = "learn: {experiments: {swiqsmCmb: {channels: [SWI, QSM], labels: cmb}}}\n"


def smk(workdir, *args):
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir), "--cores", "1",
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


def _model(tmp_path, **card):
    """A trained-model folder as `census.model` expects it: best.pt and its model.json (the DAG
    only needs the files; nothing is loaded in a dry run)."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "best.pt").write_bytes(b"")
    (d / "model.json").write_text(json.dumps({"experiment": "swiqsmMulti", "channels": ["SWI", "QSM"],
                                              "labels": "multiclass", "slice_size": 256,
                                              "qsm_clip_sigma": 4.0, **card}))
    return d / "best.pt"


def test_a_trained_model_applies_with_learning_off_and_its_own_stack_settings(tmp_path):
    bids = make_minimal_bids(tmp_path / "bids", subjects=("sub-01", "sub-02", "sub-03"))
    model = _model(tmp_path)
    (tmp_path / "config.yaml").write_text(f"bids_dir: {bids}\noutput_dir: results\n"
                                          f"learn: {{enabled: false}}\ncensus: {{model: {model}}}\n")
    out = smk(tmp_path, "-n", "-p")
    jobs = planned(out)
    for rule in ("stack", "apply", "census"):
        assert {p for r, p in jobs if r == rule} == {"sub-01", "sub-02", "sub-03"}, (rule, jobs)
    assert not {r for r, _ in jobs} & {"learn_train", "final_train", "final_split"}
    stacks = [ln for ln in out.splitlines() if "deepmir stack " in ln]
    # slices fitted per participant (learn.slice_size null), the model's QSM clipping
    assert len(stacks) == 3 and all("--pad-to auto " in ln and "--qsm-clip-sigma 4.0" in ln and "--channel QSM="
                                    in ln for ln in stacks), stacks
    # a fixed learn.slice_size: the larger of it and the model's
    (tmp_path / "config.yaml").write_text(f"bids_dir: {bids}\noutput_dir: results\nlearn: {{enabled: false, "
                                          f"slice_size: 192}}\ncensus: {{model: {model}}}\n")
    stacks = [ln for ln in smk(tmp_path, "-n", "-p").splitlines() if "deepmir stack " in ln]
    assert len(stacks) == 3 and all("--pad-to 256 " in ln for ln in stacks), stacks


def test_a_trained_model_whose_normalisation_differs_from_the_folds_is_refused(tmp_path):
    bids = make_minimal_bids(tmp_path / "bids", subjects=("sub-01", "sub-02", "sub-03"))
    for bad, why in (({}, "qsm_clip_sigma 4.0"), (None, "no model.json beside it")):
        work = tmp_path / str(why).split()[0]
        work.mkdir()
        model = _model(work, **(bad or {}))  # clipped at 4 σ; learn's default is 5
        if bad is None:
            (model.parent / "model.json").unlink()
        (work / "config.yaml").write_text(f"bids_dir: {bids}\noutput_dir: results\n" + LEARN
                                          + f"census: {{model: {model}}}\n")
        r = subprocess.run([str(SNAKEMAKE), "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(work), "-n",
                            "--configfile", str(work / "config.yaml")], capture_output=True, text=True)
        assert r.returncode != 0 and why in r.stderr and "deepmir: error" in r.stderr, r.stderr[-2000:]
        assert not (work / "results").exists()


def _default_channel_settings(channels):
    """The channel settings of the default config, filled in by Snakemake's own validate."""
    from snakemake.utils import validate

    from deepmir.learn.modelcard import channel_settings
    cfg = {}
    for stage in ("anat", "qsm"):
        validate(cfg, str(ROOT / "workflow" / "schemas" / f"{stage}.schema.yaml"))
    return channel_settings(cfg, channels)


def test_a_model_whose_channels_were_made_otherwise_is_refused(tmp_path):
    """The card records the anat, swi and qsm settings its channels were made with; applying
    it under other settings is refused, naming the key; the same settings are accepted."""
    bids = make_minimal_bids(tmp_path / "bids", subjects=("sub-01", "sub-02", "sub-03"))
    same = _default_channel_settings(["SWI", "QSM"])
    assert {"anat", "qsm", "swi"} == set(same) and "threads" not in same["qsm"]
    other = json.loads(json.dumps(same))
    other["qsm"]["lambda"] = 100.0
    for settings, why in ((same, None), (other, "qsm.lambda: the model's 100.0, this config's 'auto'")):
        work = tmp_path / ("same" if why is None else "other")
        work.mkdir()
        model = _model(work, settings=settings, versions={"deepmir": "0.1.0", "torch": "2.13.0"})
        (work / "config.yaml").write_text(f"bids_dir: {bids}\noutput_dir: results\nlearn: {{enabled: false}}\n"
                                          f"census: {{model: {model}}}\nqsm: {{threads: 3}}\n")
        r = subprocess.run([str(SNAKEMAKE), "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(work), "-n",
                            "--configfile", str(work / "config.yaml")], capture_output=True, text=True)
        if why is None:      # qsm.threads differs: where a stage runs is not what it makes
            assert r.returncode == 0, r.stderr[-2000:]
        else:
            assert r.returncode != 0 and why in r.stderr and "deepmir: error: census.model" in r.stderr, r.stderr[-2000:]
            assert not (work / "results").exists()


def test_the_output_folder_is_a_bids_derivative_dataset(tmp_path):
    """dataset_description.json (derivative, GeneratedBy deepmir's version, the source dataset
    as a relative URL with its Name/DOI) and the resolved configuration at the output's top."""
    import yaml

    import deepmir
    bids = make_minimal_bids(tmp_path / "bids", subjects=("sub-01", "sub-02", "sub-03"))
    desc = json.loads((bids / "dataset_description.json").read_text())
    (bids / "dataset_description.json").write_text(json.dumps({**desc, "Name": "cohort X",
                                                               "DatasetDOI": "doi:10.1/x"}))
    (tmp_path / "config.yaml").write_text(f"bids_dir: {bids}\noutput_dir: out/deep\nlearn: {{enabled: false}}\n")
    smk(tmp_path, "-p", "out/deep/dataset_description.json", "out/deep/deepmir_config.yaml", "out/deep/.bidsignore")
    d = json.loads((tmp_path / "out/deep/dataset_description.json").read_text())
    assert d["DatasetType"] == "derivative" and d["BIDSVersion"]
    assert d["GeneratedBy"][0]["Name"] == "deepmir" and d["GeneratedBy"][0]["Version"] == deepmir.__version__
    assert d["SourceDatasets"] == [{"URL": "file:../../bids", "DOI": "doi:10.1/x", "Name": "cohort X"}]
    assert d["DatasetLinks"] == {"raw": "../../bids"}
    cfg = yaml.safe_load((tmp_path / "out/deep/deepmir_config.yaml").read_text())
    assert cfg["bids_dir"] == str(bids) and cfg["qsm"]["lambda"] == "auto"      # defaults filled in
    assert not [p for p in (tmp_path / "out/deep").rglob("*") if p.is_file() and "logs" not in p.parts
                and p.name not in ("dataset_description.json", "deepmir_config.yaml", ".bidsignore")]


def test_each_participant_s_maps_and_census_are_published_in_its_bids_folder(tmp_path):
    """sub-X/[ses-Y/]anat/: the maps copied byte for byte from the working folders, sidecars
    with the working sidecar's content, Units, Sources and SpatialReference (BIDS URIs into the
    input dataset, named in DatasetLinks); the applied model's dseg with its label look-up."""
    bids = make_minimal_bids(tmp_path / "bids", subjects=("sub-01", "sub-02", "sub-03"))
    into_session(bids, "sub-03")
    (tmp_path / "config.yaml").write_text(f"bids_dir: {bids}\noutput_dir: results\n" + LEARN)
    files = placeholders(tmp_path)
    res = tmp_path / "results"
    pid, folder = "sub-03_ses-1", res / "sub-03" / "ses-1" / "anat"
    published = [f for f in files if f.startswith("results/sub-03/ses-1/anat/")]
    assert len(published) == 6 * 2 + 6                     # maps and sidecars; census outputs
    assert any(f.startswith("results/sub-01/anat/sub-01_space-MEGRE_Chimap") for f in files)
    for path, content in ((res / "qsm" / pid / f"{pid}_space-MEGRE_Chimap.nii.gz", b"chi bytes"),
                          (res / "qsm" / pid / f"{pid}_space-MEGRE_Chimap.json", b'{"lambda": 7.5}'),
                          (res / "anat" / pid / f"{pid}_space-MEGRE_desc-brain_mask.json", b'{"method": "m"}'),
                          (res / "apply" / pid / f"{pid}_space-MEGRE_desc-swiqsmCmb_dseg.nii.gz", b"labels")):
        st = path.stat()
        path.write_bytes(content)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))     # still up to date for Snakemake
    for f in published:
        (tmp_path / f).unlink()
    smk(tmp_path, "-p", *published)
    assert (folder / f"{pid}_space-MEGRE_Chimap.nii.gz").read_bytes() == b"chi bytes"
    chi = json.loads((folder / f"{pid}_space-MEGRE_Chimap.json").read_text())
    mag1 = "bids:raw:sub-03/ses-1/anat/sub-03_ses-1_echo-1_part-mag_MEGRE.nii.gz"
    assert chi["lambda"] == 7.5 and chi["Units"] == "ppm" and chi["SpatialReference"] == mag1
    assert mag1 in chi["Sources"] and len(chi["Sources"]) == 7          # 3 echoes x 2 parts, T2w
    assert not [s for s in chi["Sources"] if "derivatives" in s]         # not the annotation
    assert json.loads((folder / f"{pid}_space-MEGRE_desc-brain_mask.json").read_text())["method"] == "m"
    assert json.loads((folder / f"{pid}_space-MEGRE_R2starmap.json").read_text())["Units"] == "Hz"
    assert (folder / f"{pid}_space-MEGRE_desc-swiqsmCmb_dseg.nii.gz").read_bytes() == b"labels"
    lut = (folder / f"{pid}_space-MEGRE_desc-swiqsmCmb_dseg.tsv").read_text().splitlines()
    assert lut[0].split("\t") == ["index", "name", "abbreviation"] and lut[2].startswith("1\tcerebral microbleed")
    assert (res / ".bidsignore").exists()


def test_header_checks_run_when_planning_not_in_every_cluster_job(tmp_path):
    """The planning Snakemake refuses a header defect before any job; a job a cluster runs
    (Snakemake's remote mode, which parses the Snakefile again) does not repeat the checks of
    every participant (a cohort of thousands would pay them in each job)."""
    bids = make_minimal_bids(tmp_path / "bids", subjects=("sub-01", "sub-02", "sub-03"))
    side = bids / "sub-02" / "anat" / "sub-02_echo-2_part-phase_MEGRE.json"
    side.write_text(json.dumps({"EchoTime": 0.01, "MagneticFieldStrength": 7}))    # 3 T elsewhere
    (tmp_path / "config.yaml").write_text(f"bids_dir: {bids}\noutput_dir: out\nlearn: {{enabled: false}}\n")
    target = "out/inputs/sub-01/sub-01_part-mag_MEGRE.nii.gz"
    cmd = [str(SNAKEMAKE), target, "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(tmp_path), "-n",
           "--cores", "1", "--configfile", str(tmp_path / "config.yaml")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode != 0 and "MagneticFieldStrength 7" in r.stdout + r.stderr, r.stderr[-2000:]
    r = subprocess.run(cmd + ["--mode", "remote"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
