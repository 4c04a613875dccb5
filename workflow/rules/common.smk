# Shared by every rule file: config validation, the participant list and the one helper that
# builds every path (see docs/conventions.md).
import json
import os
import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate as _smk_validate

from deepmir.inputs import bids as _bids
from deepmir.configkeys import schema_keys as _schema_keys
from deepmir.configkeys import schema_paths as _schema_paths
from deepmir.configkeys import unknown_key_message as _unknown_key_message
from deepmir.configkeys import unknown_keys as _unknown_keys
from deepmir.errors import InputError
from deepmir.learn.modelcard import read_model_card as _read_model_card
from deepmir.synth.config import ATLAS_CODE_FILES as _ATLAS_CODE_FILES
from deepmir.synth.config import code_digest as _synth_code_digest
from deepmir.synth.config import settings as _synth_settings


def _typed(x):
    """`--config key='{a: {b: 2}}'` gives string leaves ('2'); read each string leaf as YAML
    so that numbers and booleans validate (paths and ids stay strings)."""
    if isinstance(x, dict):
        return {k: _typed(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_typed(v) for v in x]
    if isinstance(x, str):
        try:
            v = yaml.safe_load(x)
        except yaml.YAMLError:
            return x
        return v if isinstance(v, (int, float, bool, list, dict)) or v is None else x
    return x


def validate(data, schema):
    """snakemake.utils.validate (fills in the schema's defaults); a config that does not fit
    the schema stops the workflow with one line naming the key."""
    try:
        _smk_validate(data, schema)
    except WorkflowError as err:
        bad = err.__cause__ or err.__context__      # the jsonschema ValidationError
        if not hasattr(bad, "absolute_path"):
            raise
        if bad.validator == "additionalProperties" and isinstance(bad.instance, dict):
            known = (bad.schema.get("properties") or {}) if isinstance(bad.schema, dict) else {}
            extra = [k for k in bad.instance if k not in known]
            if known and extra:
                sys.exit("deepmir: error: " + _unknown_key_message(
                    list(bad.absolute_path), extra[0], known, _schema_paths(bad.schema)))
        key = ".".join(str(k) for k in bad.absolute_path) or "(top level)"
        sys.exit(f"deepmir: error: config {key}: {' '.join(bad.message.split())}")


_SCHEMA_DIR = os.path.join(str(workflow.current_basedir), "..", "schemas")


def _refuse_unknown_top_level_keys():
    """Every top-level key must be one that some stage's schema defines: a typo such as
    bids-dir would otherwise run the synthetic demo instead of the user's data."""
    schemas = []
    for name in sorted(os.listdir(_SCHEMA_DIR)):
        if name.endswith(".schema.yaml") and name != "model_card.schema.yaml":
            with open(os.path.join(_SCHEMA_DIR, name)) as fh:
                schemas.append(yaml.safe_load(fh))
    bad = _unknown_keys(dict(config), _schema_keys(schemas))
    if bad:
        sys.exit(f"deepmir: error: {bad[0]}")


def _refuse_unsafe_path(key, value):
    """A config path goes into file patterns and shell commands: refuse what Snakemake would
    read as a wildcard ({ }), what a command line would read as an option (leading -), and
    control characters; anything else is quoted where it reaches a shell."""
    v = str(value)
    problem = ("is empty" if not v.strip("/") else
               "contains a control character" if any(ord(c) < 32 or ord(c) == 127 for c in v) else
               "contains { or } (Snakemake wildcards)" if "{" in v or "}" in v else
               "starts with '-'" if v.startswith("-") else None)
    if problem:
        sys.exit(f"deepmir: error: config {key} {v!r}: {problem}")


config.update(_typed(dict(config)))
_refuse_unknown_top_level_keys()
validate(config, "../schemas/config.schema.yaml")
_CENSUS = config.get("census") if isinstance(config.get("census"), dict) else {}
for _key, _value in (("output_dir", config["output_dir"]), ("bids_dir", config.get("bids_dir")),
                     ("census.model", _CENSUS.get("model"))):
    if _value or _key == "output_dir":
        _refuse_unsafe_path(_key, _value)

# jobs call the `deepmir` command of the environment that runs Snakemake (.venv/bin when
# started as .venv/bin/snakemake), unless --sdm conda gives each rule its env from workflow/envs/
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
# --sdm conda: each env's post-deploy script installs deepmir from this checkout (with --no-deps;
# a relative path in an env file would be read from .snakemake/conda/, which moves with --directory)
os.environ.setdefault("DEEPMIR_SOURCE", os.path.dirname(os.path.realpath(workflow.basedir)))


def _applied_model_card():
    """model.json beside `census.model` (a trained model applied without training), checked
    against its schema before any of it reaches a path or a command; None without one."""
    if not _CENSUS.get("model") or _CENSUS.get("enabled") is False:
        return None
    model = os.path.normpath(str(_CENSUS["model"]))
    card = os.path.join(os.path.dirname(model), "model.json")
    for f, what in ((model, "no such file"), (card, "no model.json beside it")):
        if not os.path.isfile(f):
            sys.exit(f"deepmir: error: census.model {model}: {what}")
    try:
        return _read_model_card(card)
    except InputError as err:
        sys.exit(f"deepmir: error: {err}")


MODEL_CARD = _applied_model_card()

OUT = str(config["output_dir"]).rstrip("/")
ANNOTATIONS = config["annotations"]
SYNTHETIC = not config.get("bids_dir")
BIDS = f"{OUT}/synthetic_bids" if SYNTHETIC else str(config["bids_dir"]).rstrip("/")

wildcard_constraints:
    pid=r"sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?",


def _select(pids):
    """config participants: sub-X (all its sessions) or sub-X_ses-Y; empty = all."""
    wanted = config.get("participants") or []
    if not wanted:
        return list(pids)

    def picks(w, p):
        return p == w or ("_" not in w and p.startswith(w + "_ses-"))
    missing = sorted(w for w in wanted if not any(picks(w, p) for p in pids))
    if missing:
        sys.exit(f"deepmir: error: config participants not in the dataset: {', '.join(missing)}")
    return [p for p in pids if any(picks(w, p) for w in wanted)]


if SYNTHETIC:
    # the phantom code (and torch) is imported only for the synthetic cohort: a dry run on a
    # BIDS dataset starts seconds faster
    from deepmir.synth import write as _synth_write
    from deepmir.synth.cohort import participant_ids as _synth_ids

    try:
        SYNTH = _synth_settings(config.get("synth"))
    except ValueError as _err:
        sys.exit(f"deepmir: error: {_err}")
    N_ECHOES = len(SYNTH["gre"]["echo_times"])
    PIDS = _select(_synth_ids(SYNTH["n_participants"]))
    RECORDS = {}
    ANNOTATED = list(PIDS)
else:
    # header-level validation of every participant before any job starts; the voxel-level
    # checks run in each participant's `inputs` job, the first job of its chain
    try:
        RECORDS = {r.pid: r for r in _bids.discover(BIDS, ANNOTATIONS, filters=config["bids_filters"])}
        PIDS = _select(sorted(RECORDS))
        # a job run by a cluster executor (or in a subprocess) parses this file again: the
        # header checks ran once, when the workflow was planned, and not again in every job
        if not (workflow.remote_exec or workflow.subprocess_exec):
            for _pid in PIDS:
                _bids.check_headers(RECORDS[_pid], config["min_echoes"])
    except InputError as _err:
        sys.exit(f"deepmir: error: {_err}")
    ANNOTATED = [p for p in PIDS if RECORDS[p].annotation is not None]


def settings_json(section: dict, *keys) -> str:
    """The keys of a config section that a rule's command reads, as the rule's --config-json
    (deepmir.settings fills in the rest from the schema). Only these: a change to another key
    of the section does not re-run the rule."""
    return json.dumps({k: section[k] for k in keys}, sort_keys=True)


def out(stage, pid, name):
    """{output_dir}/{stage}/{pid}/{pid}_{name}: every per-participant output path."""
    return f"{OUT}/{stage}/{pid}/{pid}_{name}"


def log_path(stage, pid):
    """Logs and Snakemake benchmarks live under output_dir: two datasets run from one checkout
    keep their own (only Snakemake's own .snakemake/ stays in the working folder)."""
    return f"{OUT}/logs/{stage}/{pid}.log"


def bench_path(stage, pid):
    return f"{OUT}/benchmarks/{stage}/{pid}.tsv"


def _anat_dir(pid):
    sub, _, ses = pid.partition("_")
    return f"{BIDS}/{sub}/{ses}/anat" if ses else f"{BIDS}/{sub}/anat"


def anat_path(pid, suffix):
    """The participant's raw T1w or T2w, or None when it has none."""
    if SYNTHETIC:
        return f"{_anat_dir(pid)}/{pid}_{suffix}.nii.gz"
    p = getattr(RECORDS[pid], suffix.lower())
    return None if p is None else str(p)


def has_anat(pid, suffix):
    return anat_path(pid, suffix) is not None


def _anat_mask_uses_t1w(pid):
    """Whether the participant's brain mask is made from its T1w (and its JSON places the MNI
    template); config["anat"] as validated by anat.smk or learn.smk."""
    return bool(config["anat"]["brain_mask"]["use_t1w"]) and has_anat(pid, "T1w")


def annotation_path(pid):
    """The participant's annotation dseg on the MEGRE grid, or None."""
    if SYNTHETIC:
        sub, _, ses = pid.partition("_")
        return f"{BIDS}/derivatives/{ANNOTATIONS}/{sub}/anat/{pid}_space-MEGRE_dseg.nii.gz"
    p = RECORDS[pid].annotation
    return None if p is None else str(p)


def truth_path(pid, name):
    """Ground truth of the synthetic cohort (only when SYNTHETIC)."""
    return f"{BIDS}/derivatives/{_synth_write.TRUTH}/{pid}/anat/{pid}_{name}"


def raw_inputs(pid):
    """Every raw file of a participant (so that a changed input re-runs its chain)."""
    if SYNTHETIC:
        return [f"{BIDS}/dataset_description.json"] + [
            f"{BIDS}/{f}" for f in _synth_write.participant_files(pid, N_ECHOES, ANNOTATIONS)
            if "derivatives/truth" not in f]
    r = RECORDS[pid]
    files = r.mag + r.phase + [r.sidecar(p) for p in r.mag + r.phase]
    files += [p for p in (r.t1w, r.t2w, r.annotation) if p is not None]
    return [str(p) for p in files]


# targets that each rule file adds to; rule `all` (in the Snakefile) requires them all
ALL_TARGETS = []
# what one participant makes from its own data alone (the BIDS-App participant level:
# `deepmir run … participant` asks for rule `participant`; rule `all` asks for both lists)
PARTICIPANT_TARGETS = []
