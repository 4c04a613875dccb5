"""Nothing from a config or a model card runs as a command or writes outside output_dir: config
paths with shell metacharacters reach every job quoted (the printed commands are run with a
stub `deepmir` that records its arguments), what cannot be quoted is refused in one line,
model cards are checked against their schema, and the loaders stay safe (no pickles)."""
import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_minimal_bids
from deepmir.errors import InputError
from deepmir.learn.modelcard import read_model_card

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
EVIL = "o x;touch pwned;$(touch pwned)`touch pwned`"
CARD = {"experiment": "swiqsmMulti", "channels": ["SWI", "QSM"], "labels": "multiclass",
        "slice_size": 256, "qsm_clip_sigma": 4.0}


def smk(workdir, config: str, *args):
    (workdir / "config.yaml").write_text(config)
    return subprocess.run([str(SNAKEMAKE), "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir),
                           "--cores", "1", "--configfile", str(workdir / "config.yaml"), *args],
                          capture_output=True, text=True, cwd=workdir)


def refused(res):
    """The one 'deepmir: error:' line of a refused dry run."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0 and len(lines) == 1 and lines[0].startswith("deepmir: error: "), res.stderr
    return lines[0]


def model_dir(root: Path, **card) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "best.pt").write_bytes(b"")
    (root / "model.json").write_text(json.dumps({**CARD, **card}))
    return root / "best.pt"


# commands of the rules in learn.smk and census.smk (quoted on the learner's branch)
LEARNER_COMMANDS = {"stack", "folds", "train", "predict", "lesion-counts", "final-split", "mni-warp",
                    "census", "cohort-table", "bench-table"}


def run_printed_commands(workdir: Path, text: str, skip=()) -> list[list[str]]:
    """Run every shell command of a `-n -p` dry run (but the `deepmir` subcommands in skip) with
    bash, `deepmir` being a stub that records its arguments; return the recorded arguments."""
    stub = workdir / "stub"
    stub.mkdir()
    record = workdir / "argv.jsonl"
    (stub / "deepmir").write_text(f"#!{sys.executable}\nimport json, sys\n"
                                  f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    (stub / "deepmir").chmod(0o755)
    commands = [ln.split("Shell command: ", 1)[1] for ln in text.splitlines() if "Shell command: " in ln]
    commands = [c for c in commands if c.startswith("deepmir ") and c.split()[1] not in skip]
    assert commands
    for cmd in commands:
        words = shlex.split(cmd)
        for i, w in enumerate(words[:-1]):
            if w == ">":
                (workdir / words[i + 1]).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", "-c", cmd], cwd=workdir, env={"PATH": f"{stub}:/usr/bin:/bin"}, check=True)
    return [json.loads(ln) for ln in record.read_text().splitlines()]


@pytest.mark.parametrize("skip", [
    LEARNER_COMMANDS,
    (),
], ids=["inputs-anat-qsm-swi-evaluate", "every-rule"])
def test_config_paths_with_shell_metacharacters_reach_every_job_quoted(tmp_path, skip):
    bids = make_minimal_bids(tmp_path / "b x;touch pwned;$(touch pwned)`touch pwned`",
                             subjects=("sub-01", "sub-02", "sub-03"))
    learn = {"experiments": {"swiqsmCmb": {"channels": ["SWI", "QSM"], "labels": "cmb"}}}
    res = smk(tmp_path, json.dumps({"bids_dir": bids.name, "output_dir": EVIL, "learn": learn}), "-n", "-p")
    assert res.returncode == 0, res.stderr[-3000:]
    calls = run_printed_commands(tmp_path, res.stdout, skip)
    assert {"inputs", "montage", "n4", "register", "brainmask", "qsm-run", "swi", "evaluate", "aggregate",
            "overlay", "summary", "atlas"} <= {argv[0] for argv in calls}
    assert not list(tmp_path.rglob("pwned")), "a path was run as a command"
    assert [bids.name] in [argv[i + 1:i + 2] for argv in calls for i, a in enumerate(argv) if a == "--bids-dir"]
    for argv in calls:          # every value with an odd name arrived whole, as one argument
        for a in argv:
            if "pwned" in a:
                assert re.sub(r"^[A-Z0-9]+=", "", a).startswith((EVIL + "/", bids.name)), a


@pytest.mark.parametrize("key,value,problem", [
    ("output_dir", "out{pid}", "contains { or }"),
    ("output_dir", "out\nx", "control character"),
    ("output_dir", "-rf", "starts with '-'"),
    ("output_dir", "/", "is empty"),
    ("bids_dir", "data{x}", "contains { or }"),
    ("census", {"model": "m{x}/best.pt"}, "contains { or }"),
    ("annotations", "../elsewhere", "annotations"),
    ("annotations", "a/b", "annotations"),
    ("participants", ["sub-01;touch pwned"], "participants.0"),
    ("qsm", {"device": "cpu;touch pwned"}, "qsm.device"),
])
def test_config_values_that_cannot_be_quoted_are_refused_in_one_line(tmp_path, key, value, problem):
    bids = make_minimal_bids(tmp_path / "bids")
    cfg = {"bids_dir": str(bids), "output_dir": "results", key: value}
    line = refused(smk(tmp_path, json.dumps(cfg), "-n"))
    assert problem in line, line
    assert not (tmp_path / "results").exists() and not list(tmp_path.rglob("pwned"))


INJECTIONS = [";touch pwned;", "$(touch pwned)", "`touch pwned`", "../../pwned", "a b", "x\n", ""]


@pytest.mark.parametrize("experiment", INJECTIONS)
def test_a_model_card_with_an_unsafe_experiment_is_refused(tmp_path, experiment):
    model = model_dir(tmp_path / "model", experiment=experiment)
    with pytest.raises(InputError, match="model card experiment") as err:
        read_model_card(model.parent / "model.json")
    assert "\n" not in str(err.value)
    bids = make_minimal_bids(tmp_path / "bids", subjects=("sub-01", "sub-02", "sub-03"))
    res = smk(tmp_path, json.dumps({"bids_dir": str(bids), "output_dir": "results",
                                    "learn": {"enabled": False}, "census": {"model": str(model)}}), "-n", "-p")
    assert "model.json: model card experiment" in refused(res)
    assert not (tmp_path / "results").exists() and not list(tmp_path.rglob("pwned"))


@pytest.mark.parametrize("change,problem", [
    ({"channels": ["SWI", "SWI"]}, "channels"),
    ({"channels": ["SWI", "DWI"]}, "channels.1"),
    ({"channels": []}, "channels"),
    ({"labels": "all"}, "labels"),
    ({"slice_size": 4}, "slice_size"),
    ({"slice_size": 256.5}, "slice_size"),
    ({"slice_size": True}, "slice_size"),
    ({"qsm_clip_sigma": 0}, "qsm_clip_sigma"),
    ({"qsm_clip_sigma": "4"}, "qsm_clip_sigma"),
    ({"normalisation": 3}, "normalisation"),
    ({"split": {"train": ["sub-01", "../x"]}}, "split.train.1"),
    ({"split": ["sub-01"]}, "split"),
    ({"learn": "yes"}, "learn"),
    ({"experiment": None}, "experiment"),
])
def test_model_card_fields_are_checked(tmp_path, change, problem):
    model = model_dir(tmp_path, **change)
    with pytest.raises(InputError, match=re.escape(f"model card {problem}")):
        read_model_card(model.parent / "model.json")


def test_model_card_file_problems(tmp_path):
    card = tmp_path / "model.json"
    with pytest.raises(InputError, match="model card not found"):
        read_model_card(card)
    card.write_bytes(b"\xff\xfe{")
    with pytest.raises(InputError, match="not UTF-8"):
        read_model_card(card)
    card.write_text("{experiment: x}")
    with pytest.raises(InputError, match="not valid JSON"):
        read_model_card(card)
    card.write_text("[1, 2]")
    with pytest.raises(InputError, match="is not of type 'object'"):
        read_model_card(card)
    card.unlink()
    os.mkfifo(card)                                  # would block a reader forever
    with pytest.raises(InputError, match="not a regular file"):
        read_model_card(card)
    card.unlink()
    card.write_text(json.dumps({**CARD, "extra": {"anything": 1}}))
    assert read_model_card(card)["extra"] == {"anything": 1}          # unknown keys are kept


def test_every_planned_output_stays_inside_output_dir(tmp_path):
    """Learning, the final model and the census with an applied model: every file the workflow
    plans is under output_dir, its logs and Snakemake benchmarks too (nothing in the checkout
    or the working folder)."""
    bids = make_minimal_bids(tmp_path / "bids", subjects=("sub-01", "sub-02", "sub-03"))
    learn = {"experiments": {"swiqsmCmb": {"channels": ["SWI", "QSM"], "labels": "cmb"}}}
    schema = yaml.safe_load((Path(__file__).parents[2] / "workflow/schemas/learn.schema.yaml").read_text())
    clip = schema["properties"]["learn"]["properties"]["qsm_clip_sigma"]["default"]   # folds share the stacks
    applied = model_dir(tmp_path / "m", qsm_clip_sigma=clip)
    for name, extra in (("trained", {}), ("applied", {"census": {"model": str(applied)}})):
        res = smk(tmp_path, json.dumps({"bids_dir": str(bids), "output_dir": "out/deep", "learn": learn,
                                        **extra}), "--summary", "--forceall")
        assert res.returncode == 0, res.stderr[-2000:]
        files = [ln.split("\t")[0] for ln in res.stdout.splitlines()[1:] if "\t" in ln]
        assert len(files) > 50, (name, files)
        plan = smk(tmp_path, (tmp_path / "config.yaml").read_text(), "-n", "--forceall")
        logs = re.findall(r"^\s+(?:log|benchmark): (.+)$", plan.stdout, re.M)
        assert len(logs) > 20, (name, plan.stdout[-2000:])
        files += [f for ln in logs for f in ln.split(", ")]
        outside = [f for f in files if not (tmp_path / f).resolve().is_relative_to((tmp_path / "out" / "deep").resolve())]
        assert outside == [], (name, outside)


# ---------------------------------------------------------------- safe loaders, pinned

def _calls(tree, attr):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == attr]


def _kw(call, name):
    kw = next((k for k in call.keywords if k.arg == name), None)
    return None if kw is None else getattr(kw.value, "value", "not a constant")


PY_FILES = sorted((ROOT / "src").rglob("*.py"))      # the pipeline (bench/anat_bench.py pickles its own cache)


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_loaders_never_unpickle(path):
    tree = ast.parse(path.read_text())
    for call in _calls(tree, "load"):
        owner = getattr(call.func.value, "id", "")
        if owner == "torch":
            assert _kw(call, "weights_only") is True, f"{path}:{call.lineno} torch.load without weights_only=True"
        if owner == "np":
            assert _kw(call, "allow_pickle") in (None, False), f"{path}:{call.lineno} np.load with pickles"
        if owner == "yaml":
            raise AssertionError(f"{path}:{call.lineno} yaml.load (use yaml.safe_load)")
        assert owner not in ("pickle", "dill", "joblib"), f"{path}:{call.lineno} {owner}.load"
    for name in ("unsafe_load", "full_load", "loads"):
        for call in _calls(tree, name):
            assert getattr(call.func.value, "id", "") not in ("yaml", "pickle"), f"{path}:{call.lineno}"


def test_the_safe_loader_calls_are_there():
    """The pins above are not vacuous: the checkpoint, stack and YAML loaders exist."""
    src = "".join(p.read_text() for p in PY_FILES)
    rules = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    assert len(re.findall(r"torch\.load\([^)]*weights_only=True", src)) >= 2
    assert len(re.findall(r"np\.load\([^)]*allow_pickle=False", src)) >= 1
    assert "yaml.safe_load" in src and "yaml.safe_load" in rules
    assert not re.search(r"yaml\.(unsafe_|full_)?load\(", rules)
    import inspect

    import numpy as np
    assert inspect.signature(np.load).parameters["allow_pickle"].default is False
