"""The anatomical stage's workflow wiring: its config schema fills every default, and changing
an N4 parameter re-runs N4 and its dependants only (``snakemake -n`` after a change)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "anat.schema.yaml"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def test_schema_fills_every_default():
    from snakemake.utils import validate
    cfg = {}
    validate(cfg, str(SCHEMA))
    a = cfg["anat"]
    assert a["n4"] == {"shrink_factor": 4, "iterations": [50, 50, 50, 50], "tol": 1e-7,
                       "spline_distance_mm": 200, "mask": "brain", "crop_mm": 10}
    assert a["registration"]["fixed"] == "first" and a["registration"]["metric"] == "mattes"
    assert a["brain_mask"]["use_t1w"] is True and a["brain_mask"]["margin_mm"] == 5
    # every property of the schema has a default and a description
    import yaml
    schema = yaml.safe_load(SCHEMA.read_text())

    def walk(node, path):
        for k, v in node.get("properties", {}).items():
            assert "default" in v and "description" in v, f"{path}.{k}"
            walk(v, f"{path}.{k}")
    walk(schema, "")
    cfg = {"anat": {"n4": {"shrink_factor": 2}}}
    validate(cfg, str(SCHEMA))
    assert cfg["anat"]["n4"]["iterations"] == [50, 50, 50, 50]
    with pytest.raises(Exception):
        validate({"anat": {"n4": {"shrink": 2}}}, str(SCHEMA))


def _snakefile(tmp):
    """The project's Snakefile when it includes the anat rules; otherwise one that includes
    the rule files the anat stage needs (common, synth, inputs) and anat.smk."""
    main = ROOT / "workflow" / "Snakefile"
    if "rules/anat.smk" in main.read_text():
        return main
    sf = tmp / "Snakefile"
    rules = ROOT / "workflow" / "rules"
    sf.write_text("".join(f'include: "{rules / n}.smk"\n'
                          for n in ("common", "synth", "inputs", "anat")) +
                  "rule all:\n    default_target: True\n    input: ALL_TARGETS,\n")
    return sf


# the anatomical stage's targets of the one participant (other stages are left out of the DAG so
# that this test depends on no other stage's rules)
TARGETS = [f"results/anat/sub-001/sub-001_{n}" for n in (
    "space-MEGRE_desc-brain_mask.nii.gz", "space-MEGRE_T1w.nii.gz", "space-MEGRE_T2w.nii.gz")] + \
    [f"results/report/anat/sub-001_{n}.png" for n in ("brain-mask", "T1w-to-MEGRE",
                                                       "T2w-to-MEGRE")]


def _smk(tmp, sf, *args):
    cmd = [str(SNAKEMAKE), "-s", str(sf), "--directory", str(tmp), "--cores", "1",
           "--configfile", str(tmp / "config.yaml"), *args, "--", *TARGETS]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def _jobs(text):
    """rule -> count from the 'Job stats' table of a dry run."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal", text, re.S)
    if m is None:
        return {}
    return {line.split()[0]: int(line.split()[1]) for line in m.group(1).splitlines()
            if line.strip()}


def test_n4_param_change_reruns_n4_and_dependants_only(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "bids_dir: null\noutput_dir: results\nannotations: annotations\n"
        "synth: {scale: demo, seed: 1, n_participants: 1}\n")
    sf = _snakefile(tmp_path)
    # every file of the workflow, as empty placeholders with up-to-date metadata
    summary = _smk(tmp_path, sf, "--summary", "--forceall")
    files = [line.split("\t")[0] for line in summary.splitlines()
             if "\t" in line and not line.startswith("output_file")]
    assert any("anat" in f for f in files)
    for f in files:
        p = tmp_path / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    _smk(tmp_path, sf, "--touch", "--forceall", "--quiet")
    # (an out-of-date baseline would show up below as re-run upstream jobs)
    changed = _jobs(_smk(tmp_path, sf, "-n", "--config", "anat={n4: {shrink_factor: 2}}"))
    assert changed.get("anat_n4") == 2  # T1w and T2w
    assert changed.get("anat_register") == 2 and changed.get("anat_brainmask") == 1
    for upstream in ("synth_dataset", "synth_participant", "inputs", "montage"):
        assert upstream not in changed, changed

    # a registration parameter leaves N4 alone
    changed = _jobs(_smk(tmp_path, sf, "-n", "--config", "anat={registration: {bins: 48}}"))
    assert "anat_n4" not in changed and changed.get("anat_register") == 2, changed
    assert "anat_brainmask" in changed  # it reads the T1w transform
