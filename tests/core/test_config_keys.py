"""Unknown configuration keys are refused in one line that names the key and the nearest
known one (a typo must not silently run something else), and a user's experiment set
replaces the demo's."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deepmir.configkeys import nearest, schema_paths, unknown_key_message, unknown_keys
from deepmir.synth.config import settings

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def test_nearest_and_messages():
    known = {"bids_dir": None, "output_dir": None, "learn": {"patch": {"iterations": None}}}
    assert nearest("bids-dir", known) == "bids_dir"
    assert nearest("BIDS_DIR", known) == "bids_dir"
    assert nearest("outpt_dir", known) == "output_dir"
    assert nearest("zzz", known) is None
    assert unknown_keys({"bids-dir": "/d", "learn": {"patch": {"iteration": 3}}}, known) == [
        "config bids-dir: unknown key (did you mean bids_dir?)",
        "config learn.patch.iteration: unknown key (did you mean iterations?)"]
    assert unknown_keys({"bids_dir": "/d", "learn": {"patch": {"iterations": 3}}}, known) == []
    # a key one level too high is found below; nothing near lists what is allowed
    schema = {"properties": {"patch": {"properties": {"iterations": {}}}, "seed": {}}}
    assert schema_paths(schema) == ["patch", "patch.iterations", "seed"]
    assert unknown_key_message(["learn"], "iterations", ["patch", "seed"], schema_paths(schema)) \
        == "config learn.iterations: unknown key (did you mean learn.patch.iterations?)"
    assert unknown_key_message([], "qqq", ["a", "b"]) == "config qqq: unknown key (known: a, b)"


def test_synth_settings_refuse_unknown_keys():
    assert settings({"gre": {"snr": 30}})["gre"]["snr"] == 30
    with pytest.raises(ValueError, match=r"^config synth\.gre\.echo_time: unknown key \(did you mean echo_times\?\)$"):
        settings({"gre": {"echo_time": [0.01, 0.02]}})
    with pytest.raises(ValueError, match=r"synth\.lesion: unknown key \(did you mean lesions\?\)"):
        settings({"lesion": {}})


def _dry(tmp_path, *args):
    return subprocess.run([str(SNAKEMAKE), "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(ROOT / "config" / "config.yaml"), "--cores", "1", "-n", *args],
                          capture_output=True, text=True)


@pytest.mark.parametrize("config, line", [
    ("bids-dir=/data", "deepmir: error: config bids-dir: unknown key (did you mean bids_dir?)"),
    ("qsm={lamda: 30}", "deepmir: error: config qsm.lamda: unknown key (did you mean lambda?)"),
    ("learn={iterations: 30}",
     "deepmir: error: config learn.iterations: unknown key (did you mean learn.patch.iterations?)"),
    ("synth={lesion: {}}", "deepmir: error: config synth.lesion: unknown key (did you mean lesions?)"),
])
def test_the_workflow_refuses_an_unknown_key(tmp_path, config, line):
    r = _dry(tmp_path, "--config", config)
    assert r.returncode != 0 and line in r.stderr.splitlines(), r.stderr[-2000:]
    assert not any(tmp_path.iterdir())        # nothing written


def test_a_config_with_one_experiment_trains_one_experiment(tmp_path):
    def trained(text):
        return set(re.findall(r"output: results/learn/([A-Za-z0-9]+)/fold-", text))

    demo = _dry(tmp_path)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert trained(demo.stdout) == {"swiMulti", "swiqsmMulti"}     # the schema's default pair
    (tmp_path / "one.yaml").write_text("learn:\n  experiments:\n    swiCmb: {channels: [SWI], labels: cmb}\n")
    r = _dry(tmp_path, "--configfile", str(tmp_path / "one.yaml"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert trained(r.stdout) == {"swiCmb"}
