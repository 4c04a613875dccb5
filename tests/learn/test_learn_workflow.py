"""Dry runs of workflow/rules/learn.smk (with common.smk, synth.smk and stub rules for the
SWI / QSM / anat outputs it reads): job counts, one fold as one target, GPU resources, the
study's 16 experiments, config validation."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")

pytestmark = pytest.mark.skipif(SNAKEMAKE is None or not (ROOT / "workflow/rules/common.smk").exists(),
                                reason="needs snakemake and workflow/rules/common.smk")

SNAKEFILE = """
include: "{root}/workflow/rules/common.smk"
include: "{root}/workflow/rules/synth.smk"
include: "{root}/workflow/rules/learn.smk"

rule stub_upstream:
    output:
        swi=out("swi", "{{pid}}", "space-MEGRE_swi.nii.gz"),
        qsm=out("qsm", "{{pid}}", "space-MEGRE_Chimap.nii.gz"),
        t2=out("anat", "{{pid}}", "space-MEGRE_T2w.nii.gz"),
        mask=out("anat", "{{pid}}", "space-MEGRE_desc-brain_mask.nii.gz"),
        mask_json=out("anat", "{{pid}}", "space-MEGRE_desc-brain_mask.json"),
    shell: "touch {{output}}"

rule all:
    default_target: True
    input: ALL_TARGETS
"""


def dry_run(tmp_path, config, *targets):
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(root=ROOT))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    res = subprocess.run([SNAKEMAKE, *targets, "-n", "-s", "Snakefile", "--configfile", "config.yaml", "-c1",
                          "--quiet", "rules"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    return res.returncode, res.stdout + res.stderr


def job_counts(text):
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M)}


BASE = {"bids_dir": None, "annotations": "annotations", "output_dir": "results", "synth": {"n_participants": 4}}


def test_default_demo_dag(tmp_path):
    rc, text = dry_run(tmp_path, BASE)
    assert rc == 0, text
    n = job_counts(text)
    # the schema's default experiments: the demo's pair (SWI and SWI+QSM, multi-class)
    assert n["stack"] == 4 and n["learn_split"] == 8 and n["learn_train"] == 8 and n["learn_predict"] == 8
    assert n["learn_splits_final"] == 2 and n["learn_lesion_counts"] == 2
    assert n["iron_region"] == 4          # each participant's basal ganglia (+ margin), in its stack


def test_one_fold_is_one_target(tmp_path):
    target = "results/learn/swiqsmMulti/fold-sub-002/sub-002_space-MEGRE_desc-swiqsmMulti_dseg.nii.gz"
    rc, text = dry_run(tmp_path, BASE, target)
    assert rc == 0, text
    n = job_counts(text)
    assert n["learn_train"] == 1 and n["learn_predict"] == 1 and n["learn_split"] == 1
    assert n["stack"] == 4 and "learn_splits_final" not in n  # test + 2 training + 1 validation stacks


def test_paper_experiments_gpu_and_custom(tmp_path):
    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    cfg = {**BASE, "synth": {"n_participants": 3}, "learn": paper["learn"]}
    (tmp_path / "a").mkdir()
    rc, text = dry_run(tmp_path / "a", cfg)
    assert rc == 0, text
    n = job_counts(text)
    assert n["learn_train"] == 16 * 3 and n["learn_predict"] == 16 * 3 and n["stack"] == 3
    assert n["learn_splits_final"] == 16 and "iron_region" not in n   # the paper learner: no iron region
    # a GPU per training job
    (tmp_path / "b").mkdir()
    target = "results/learn/swiqsmt2Multi/fold-sub-001/best.pt"
    (tmp_path / "b" / "Snakefile").write_text(SNAKEFILE.format(root=ROOT))
    (tmp_path / "b" / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([SNAKEMAKE, target, "-n", "-s", "Snakefile", "--configfile", "config.yaml", "-c1"],
                         cwd=tmp_path / "b", capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    train_block = res.stdout[res.stdout.index("rule learn_train"):]
    assert "gpu=1" in train_block.split("\n\n")[0]


def test_bad_config_rejected(tmp_path):
    rc, text = dry_run(tmp_path, {**BASE, "learn": {"experiments": {"swi_cmb": {"channels": ["SWI"], "labels": "cmb"}}}})
    assert rc != 0 and "does not match" in text
    rc, text = dry_run(tmp_path, {**BASE, "learn": {"slice_size": 100}})
    assert rc != 0 and "not divisible" in text
    rc, text = dry_run(tmp_path, {**BASE, "learn": {"enabled": False}})
    assert rc == 0 and "learn_train" not in job_counts(text)
