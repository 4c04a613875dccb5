"""A configuration key's default is written once, in its schema (workflow/schemas/): the code
reads it from there (deepmir.settings) and config/README.md shows it. Each place that could
still drift is compared with the schema here: the commands' option defaults, the settings
objects, the numerics functions the stages call with a config value, and the README."""
import inspect
import re
from pathlib import Path

import pytest
import yaml

from deepmir import settings
from deepmir.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]

# the config section each command reads ("" : the top-level keys)
COMMAND_SECTION = {"validate": "", "inputs": "", "n4": "anat.n4", "register": "anat.registration",
                   "brainmask": "anat.brain_mask", "qsm": "qsm", "qsm-run": "qsm", "swi": "swi",
                   "stack": "learn", "iron-region": "learn", "folds": "learn", "train": "learn",
                   "predict": "learn", "evaluate": "evaluate", "aggregate": "evaluate",
                   "overlay": "evaluate", "census": "census", "mni-warp": "census", "final-split": "census"}
# an option whose name is not its key's
OPTION_KEY = {("qsm", "lam"): "qsm.lambda", ("iron-region", "margin_mm"): "learn.iron_region_margin_mm",
              ("train", "tol_cmb"): "evaluate.tolerance.cmb", ("train", "tol_iron"): "evaluate.tolerance.iron",
              ("train", "tol_unit"): "evaluate.tolerance_unit", ("final-split", "seed"): "learn.seed",
              ("overlay", "tolerance"): "evaluate.tolerance.cmb",
              # job resources (the rule passes its {threads}) and the prediction's own batch
              ("qsm", "threads"): None, ("train", "threads"): None, ("predict", "threads"): None,
              ("predict", "batch_size"): None}


def schema_defaults() -> dict:
    """{dotted key: default} of every key a workflow schema gives a default (leaves only)."""
    out = {}

    def walk(node, prefix):
        for k, sub in (node.get("properties") or {}).items():
            if sub.get("type") == "object" and sub.get("properties"):
                walk(sub, prefix + k + ".")
            elif "default" in sub:
                out[prefix + k] = sub["default"]
    for f in sorted((ROOT / "workflow" / "schemas").glob("*.schema.yaml")):
        if f.name != "model_card.schema.yaml":
            walk(yaml.safe_load(f.read_text()), "")
    return out


DEFAULTS = schema_defaults()


def same(a, b) -> bool:
    """Equal as configuration values: 5 == 5.0, a tuple equals its list."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b and type(a is None) is type(b is None)


def option_defaults():
    """(command, option dest, key, default) of every command option with a default that
    stands for a config key."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command, parser in sub.choices.items():
        if command not in COMMAND_SECTION:
            continue
        section = COMMAND_SECTION[command]
        for action in parser._actions:
            if action.default in (None, "==SUPPRESS==") or not action.option_strings:
                continue
            key = OPTION_KEY.get((command, action.dest), ".".join(filter(None, (section, action.dest))))
            if key in DEFAULTS:
                yield command, action.dest, key, action.default


def test_the_commands_show_the_schema_defaults():
    found = list(option_defaults())
    assert len(found) >= 12, found          # the check reaches the options it is meant for
    wrong = [(c, d, k, v, DEFAULTS[k]) for c, d, k, v in found if not same(v, DEFAULTS[k])]
    assert not wrong, f"option default differs from its schema's: {wrong}"


def test_settings_objects_are_the_schemas():
    from deepmir.anat import template
    from deepmir.learn import postprocess as pp
    from deepmir.learn.learner import LearnerConfig
    from deepmir.qsm.defaults import DEFAULTS as QSM
    from deepmir.qsm.defaults import RESOURCES

    patch = settings.defaults("learn")["patch"]
    assert same(list(LearnerConfig().as_dict().items()), list(patch.items()))
    assert QSM == {k: v for k, v in settings.read("qsm").items() if k not in RESOURCES}
    assert same(pp.DEFAULT_THRESHOLDS, patch["thresholds"]) and same(pp.DEFAULT_MIN_SIZES, patch["min_sizes"])
    assert pp.MAX_CMB_DIAMETER_MM == patch["max_cmb_diameter_mm"]
    assert same(template.DEFAULT_SYN["iterations"], DEFAULTS["census.syn_iterations"])
    assert template.DEFAULT_SYN["working_mm"] == DEFAULTS["census.syn_working_mm"]


def _numerics():
    """(function, parameter, key) of the numerics the stages call with a config value (they
    read these defaults from the schema too)."""
    from deepmir import anat
    from deepmir.census.count import lesion_census
    from deepmir.evaluate.metrics import evaluate_volumes
    from deepmir.evaluate.summary import outlier_table
    from deepmir.learn.dataset import make_stack
    from deepmir.learn.folds import loo_folds, train_val_split
    from deepmir.swi.weighting import minip, swi

    return [(anat.n4, "shrink_factor", "anat.n4.shrink_factor"),
            (anat.n4, "spline_distance_mm", "anat.n4.spline_distance_mm"),
            (anat.n4, "mask", "anat.n4.mask"), (anat.n4, "crop_mm", "anat.n4.crop_mm"),
            # (anat.rigid_register keeps ANTs' own defaults, 4 levels; the stage passes all of
            # anat.registration, 3 levels)
            (anat.brain_mask_from_t1, "margin_mm", "anat.brain_mask.margin_mm"),
            (anat.brain_mask_from_t1, "min_rel_signal", "anat.brain_mask.min_rel_signal"),
            (anat.brain_mask_from_t1, "close_mm", "anat.brain_mask.close_mm"),
            (anat.brain_mask_from_t1, "working_mm", "anat.brain_mask.working_mm"),
            (anat.brain_mask_from_magnitude, "smooth_mm", "anat.brain_mask.smooth_mm"),
            (anat.brain_mask_from_magnitude, "open_mm", "anat.brain_mask.open_mm"),
            (anat.brain_mask_from_magnitude, "close_mm", "anat.brain_mask.mag_close_mm"),
            (anat.brain_mask_from_magnitude, "threshold_scale", "anat.brain_mask.threshold_scale"),
            (swi, "power", "swi.power"), (minip, "n_slices", "swi.minip_slices"),
            (make_stack, "qsm_clip_sigma", "learn.qsm_clip_sigma"),
            (loo_folds, "seed", "learn.seed"), (loo_folds, "val_fraction", "learn.val_fraction"),
            (train_val_split, "val_fraction", "census.val_fraction"),
            (evaluate_volumes, "tol_cmb", "evaluate.tolerance.cmb"),
            (evaluate_volumes, "tol_iron", "evaluate.tolerance.iron"),
            (evaluate_volumes, "unit", "evaluate.tolerance_unit"),
            (outlier_table, "q", "evaluate.outlier_quantile"),
            (outlier_table, "scale_factor", "evaluate.outlier_scale"),
            (lesion_census, "exclude_calcifications", "census.exclude_calcifications"),
            (lesion_census, "exclude_veins", "census.exclude_veins")]


def test_numerics_defaults_are_the_schemas():
    wrong = []
    for fn, param, key in _numerics():
        p = inspect.signature(fn).parameters[param]
        if p.default is not inspect.Parameter.empty and not same(p.default, DEFAULTS[key]):
            wrong.append(f"{fn.__module__}.{fn.__name__}({param}={p.default!r}) but {key}: {DEFAULTS[key]!r}")
    assert not wrong, wrong


def readme_defaults() -> dict:
    """{key: default cell} of config/README.md's tables with a default column (not synth's)."""
    out, has_default = {}, False
    for line in (ROOT / "config" / "README.md").read_text().splitlines():
        if line.startswith("| key |"):
            has_default = line.rstrip(" |").endswith("default")
        m = re.match(r"^\| (`[^|]+`) \|", line)
        if not (m and has_default):
            continue
        keys = re.findall(r"`([^`]+)`", m.group(1))
        prefix = keys[0].rsplit(".", 1)[0] + "." if "." in keys[0] else ""
        keys = [k if "." in k or not prefix else prefix + k for k in keys]
        cell = line.rstrip().rstrip("|").rsplit(" | ", 1)[1].strip()
        cell = re.sub(r"\s*\(.*\)$", "", cell).replace("`", "")
        parts = [cell] if len(keys) == 1 else [p.strip() for p in cell.split(",")]
        if len(parts) == len(keys):
            out.update(zip(keys, parts))
    return out


def _value(text):
    try:
        return float(text)          # YAML reads 1e-7 as a string
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def test_the_readme_shows_the_schema_defaults():
    """Where config/README.md gives a default it is the schema's (its other rows say "see
    schema"; test_config_readme checks that every key has a row)."""
    shown = {k: v for k, v in readme_defaults().items() if v not in ("see schema", "")}
    compared = [k for k in DEFAULTS if k in shown and not k.startswith("learn.experiments")]
    assert len(compared) >= 100, sorted(set(DEFAULTS) - set(shown))
    wrong = [(k, shown[k], DEFAULTS[k]) for k in compared if not same(_value(shown[k]), DEFAULTS[k])]
    assert not wrong, f"config/README.md shows another default than the schema: {wrong}"


@pytest.mark.parametrize("key", ["qsm.lambda_factor", "anat.n4.shrink_factor", "learn.patch.iterations"])
def test_a_schema_default_reaches_the_code(monkeypatch, key):
    """The code takes its defaults from the schema file itself: edit it, and they follow."""
    section, *path = key.split(".")
    data = yaml.safe_load((settings.SCHEMA_DIR / f"{settings.SECTION_FILE[section]}.schema.yaml").read_text())
    node = data["properties"][section]
    for p in path:
        node = node["properties"][p]
    node["default"] = node["default"] * 2
    monkeypatch.setattr(settings, "schema_file", lambda name: data)
    got = settings.read(section)
    for p in path:
        got = got[p]
    assert got == node["default"]
