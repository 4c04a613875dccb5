# Learning (method.md §5): a training stack per participant, leave-one-out folds per
# experiment, one U-Net per (experiment, fold) and the prediction of the fold's held-out
# participant back on the MEGRE grid. Every fold is its own DAG target:
#   snakemake results/learn/<experiment>/fold-<pid>/<pid>_space-MEGRE_desc-<experiment>_dseg.nii.gz
# builds exactly that fold's split, model and prediction (and the stacks it needs).
# Helpers for other stages: learn_predictions(), learn_prediction(experiment, pid, kind),
# LEARN_EXPERIMENTS, learn_participants(experiment).
import functools as _functools
import json
import shlex
from pathlib import Path

from deepmir import niio as _niio
from deepmir.learn import nnunet as _nnunet
from deepmir.learn.folds import loo_folds as _loo_folds
from deepmir.learn.modelcard import channel_settings as _channel_settings
from deepmir.learn.modelcard import settings_mismatch as _settings_mismatch


validate(config, "../schemas/learn.schema.yaml")
validate(config, "../schemas/census.schema.yaml")
validate(config, "../schemas/evaluate.schema.yaml")   # the matching rule the patch learner selects with
validate(config, "../schemas/anat.schema.yaml")       # whether a brain mask places the atlas (iron region)

LEARN = config["learn"]
LEARN_EXPERIMENTS = LEARN["experiments"] if LEARN["enabled"] else {}
if LEARN["slice_size"] is not None and LEARN["slice_size"] % 2 ** (LEARN["model"]["depth"] - 1):
    sys.exit(f"deepmir: error: config learn.slice_size {LEARN['slice_size']} is not divisible by "
             f"2^(learn.model.depth - 1) = {2 ** (LEARN['model']['depth'] - 1)}")
_CHANNEL_ORDER = ("SWI", "QSM", "T2")
# An applied model's card sets what the stacks hold: its channels and its QSM clipping (the
# normalisation it was trained with). Slices are padded to learn.slice_size, or the larger of
# it and the card's (the network is fully convolutional; `deepmir stack` refuses a size that
# would cut the brain); with either of them null, each participant's own matrix is fitted.
APPLIED_CARD = MODEL_CARD   # read and checked against its schema in common.smk
if APPLIED_CARD:
    # the channels must be made as the model's were (QSM, SWI and anat settings)
    if "settings" not in APPLIED_CARD:
        print(f"deepmir: census.model {config['census']['model']}: its card records no channel "
              "settings (a card older than deepmir 0.1.0's); they are not checked", file=sys.stderr)
    else:
        _diff = _settings_mismatch(APPLIED_CARD["settings"], _channel_settings(config, APPLIED_CARD["channels"]))
        if _diff:
            sys.exit(f"deepmir: error: census.model {config['census']['model']}: its channels were made "
                     f"with other settings: {_diff} (set the model's value or apply another model)")
_SIZES = [LEARN["slice_size"]] + ([APPLIED_CARD["slice_size"]] if APPLIED_CARD else [])
STACK_SETTINGS = {"slice_size": "auto" if None in _SIZES else max(int(v) for v in _SIZES),
                  "multiple": max(32, 2 ** (LEARN["model"]["depth"] - 1)),
                  "qsm_clip_sigma": (APPLIED_CARD or LEARN)["qsm_clip_sigma"]}
# where an iron deposit may lie (the patch learner's iron lesions outside it become microbleeds):
# the applied model's learn.iron_region_margin_mm, else this config's; null: anywhere. Placed by
# the brain mask's MNI affine, so only participants with a T1w-based mask get one.
_REGION_LEARN = APPLIED_CARD.get("learn", {}) if APPLIED_CARD else LEARN
IRON_REGION_MM = (_REGION_LEARN.get("iron_region_margin_mm")
                  if _REGION_LEARN.get("learner", "patch") == "patch" else None)


def iron_region_path(pid):
    return out("stacks", pid, "space-MEGRE_desc-ironregion_mask.nii.gz")


def _iron_region_input(pid):
    return {"iron_region": iron_region_path(pid)} if IRON_REGION_MM is not None and _anat_mask_uses_t1w(pid) else {}


def _channel_path(pid, channel):
    return {
        "SWI": out("swi", pid, "space-MEGRE_swi.nii.gz"),
        "QSM": out("qsm", pid, "space-MEGRE_Chimap.nii.gz"),
        "T2": out("anat", pid, "space-MEGRE_T2w.nii.gz"),
    }[channel]


def _stack_channels(pid):
    """The channels any experiment needs, in network order; T2 only where there is a T2w."""
    wanted = {c for e in LEARN_EXPERIMENTS.values() for c in e["channels"]}
    wanted |= set(APPLIED_CARD["channels"] if APPLIED_CARD else ())
    return [c for c in _CHANNEL_ORDER if c in wanted and (c != "T2" or has_anat(pid, "T2w"))]


# the config is fixed for the run: the participants and folds of an experiment are computed
# once (input functions ask for them in every job; uncached, a cohort of N costs O(N²) each)
@_functools.cache
def _learn_participants(experiment):
    need = set(LEARN_EXPERIMENTS[experiment]["channels"])
    return tuple(p for p in ANNOTATED if need <= set(_stack_channels(p)))


def learn_participants(experiment):
    """Annotated participants that have every channel of the experiment (its folds)."""
    return list(_learn_participants(experiment))


@_functools.cache
def _folds(experiment):
    pids = learn_participants(experiment)
    if len(pids) < 3:
        return {}
    return {f["test"][0]: f for f in _loo_folds(pids, seed=LEARN["seed"], val_fraction=LEARN["val_fraction"])}


for _exp in LEARN_EXPERIMENTS:
    if len(learn_participants(_exp)) < 3:
        print(f"deepmir: learn experiment {_exp}: fewer than 3 annotated participants with channels "
              f"{LEARN_EXPERIMENTS[_exp]['channels']}; it is left out", file=sys.stderr)
    elif len(learn_participants(_exp)) < len(ANNOTATED):
        left = sorted(set(ANNOTATED) - set(learn_participants(_exp)))
        print(f"deepmir: learn experiment {_exp}: {', '.join(left)} left out (no T2w)", file=sys.stderr)

if APPLIED_CARD and any(_folds(e) for e in LEARN_EXPERIMENTS) and (
        float(LEARN["qsm_clip_sigma"]) != float(STACK_SETTINGS["qsm_clip_sigma"])):
    sys.exit(f"deepmir: error: census.model was trained on QSM clipped at qsm_clip_sigma "
             f"{STACK_SETTINGS['qsm_clip_sigma']}, learn.qsm_clip_sigma is {LEARN['qsm_clip_sigma']} and the "
             f"folds share the stacks: set it to the model's or learn.enabled: false")

LEARN_DIR = f"{OUT}/learn"


def _fold_dir(experiment="{experiment}", pid="{pid}"):
    return f"{LEARN_DIR}/{experiment}/fold-{pid}"


def stack_path(pid):
    return out("stacks", pid, "stack.npz")


def learn_prediction(experiment, pid, kind="dseg"):
    """A fold's prediction of its held-out participant: kind 'dseg' (labels 0/1/2) or 'probseg'
    (class probabilities; 3D single class, 4D background/CMB/iron multi-class)."""
    return f"{_fold_dir(experiment, pid)}/{pid}_space-MEGRE_desc-{experiment}_{kind}.nii.gz"


def learn_predictions(kind="dseg"):
    """Every fold's prediction, all experiments (for the evaluation stage and `all`)."""
    return [learn_prediction(e, p, kind) for e in LEARN_EXPERIMENTS for p in _folds(e)]


def _train_outputs(folder, caption, category, subcategory):
    """A training job's declared outputs (the patch learner also writes selection.json: the
    iteration, thresholds and minimum sizes it chose)."""
    outs = {"model": f"{folder}/best.pt", "log": f"{folder}/log.tsv",
            "curve": report(f"{folder}/learning_curve.png", caption=f"../report/{caption}",
                            category=category, subcategory=subcategory)}
    if LEARN["learner"] == "patch":
        outs["selection"] = f"{folder}/selection.json"
    return outs


# the shell line of every prediction job (learn_predict and census's apply): the model's own
# operating point for the patch learner, learn.threshold for the paper learner
PREDICT_SHELL = ("deepmir predict --model {input.model:q} --stack {input.stack:q} --out-labels {output.dseg:q} "
                 "--out-probs {output.probseg:q} --config-json {params.cfg:q} --threads {threads} > {log:q} 2>&1")



if LEARN_EXPERIMENTS or APPLIED_CARD:

    if IRON_REGION_MM is not None:

        rule iron_region:
            """Where an iron deposit may lie: the brain within learn.iron_region_margin_mm of the
            atlas's basal ganglia (caudate, putamen, pallidum), placed by the brain mask's MNI affine."""
            input:
                mask=out("anat", "{pid}", "space-MEGRE_desc-brain_mask.nii.gz"),
                mask_json=out("anat", "{pid}", "space-MEGRE_desc-brain_mask.json"),
                atlas=rules.atlas.output[0],
            output:
                iron_region_path("{pid}"),
            params:
                margin=IRON_REGION_MM,
            conda:
                "../envs/base.yaml"
            log:
                log_path("iron_region", "{pid}"),
            benchmark:
                bench_path("iron_region", "{pid}")
            shell:
                "deepmir iron-region --mask {input.mask:q} --mask-json {input.mask_json:q} "
                "--atlas {input.atlas:q} --margin-mm {params.margin} --output {output:q} > {log:q} 2>&1"

    rule stack:
        """A participant's training/prediction stack: each channel z-scored in the brain (QSM
        clipped to ±k·σ first), axial slices padded to slice_size² (or the participant's own
        matrix rounded up), labels when annotated."""
        input:
            unpack(lambda wc: {
                **{c: _channel_path(wc.pid, c) for c in _stack_channels(wc.pid)},
                "mask": out("anat", wc.pid, "space-MEGRE_desc-brain_mask.nii.gz"),
                **({"dseg": annotation_path(wc.pid)} if annotation_path(wc.pid) else {}),
                **_iron_region_input(wc.pid),
            }),
        output:
            stack_path("{pid}"),
        params:
            channels=lambda wc, input: " ".join(f"--channel {shlex.quote(f'{c}={input[c]}')}"
                                                for c in _stack_channels(wc.pid)),
            dseg=lambda wc, input: f"--dseg {shlex.quote(input.dseg)}" if "dseg" in input.keys() else "",
            region=lambda wc, input: (f"--iron-region {shlex.quote(input.iron_region)}"
                                      if "iron_region" in input.keys() else ""),
            size=STACK_SETTINGS["slice_size"],
            multiple=STACK_SETTINGS["multiple"],
            clip=STACK_SETTINGS["qsm_clip_sigma"],
        conda:
            "../envs/base.yaml"
        log:
            log_path("stacks", "{pid}"),
        benchmark:
            bench_path("stacks", "{pid}")
        resources:
            mem_mb=lambda wc, attempt: LEARN["stack_mem_mb"] * attempt,
            runtime=10,
        shell:
            "deepmir stack {params.channels} --mask {input.mask:q} {params.dseg} {params.region} --out {output:q} "
            "--pad-to {params.size} --pad-multiple {params.multiple} --qsm-clip-sigma {params.clip} > {log:q} 2>&1"


if LEARN_EXPERIMENTS:

    wildcard_constraints:
        experiment="|".join(LEARN_EXPERIMENTS),

    rule learn_split:
        """One leave-one-out fold: the test participant, training and validation participants."""
        output:
            f"{_fold_dir()}/split.json",
        params:
            pids=lambda wc: learn_participants(wc.experiment),
            cfg=settings_json(LEARN, "seed", "val_fraction"),
        conda:
            "../envs/base.yaml"
        log:
            log_path("learn", "{experiment}/fold-{pid}_split"),
        shell:
            "deepmir folds --participants {params.pids:q} --config-json {params.cfg:q} "
            "--fold {wildcards.pid:q} --fold-out {output:q} > {log:q} 2>&1"

    rule learn_splits_final:
        """All folds of an experiment in nnU-Net's splits_final.json format."""
        output:
            f"{LEARN_DIR}/{{experiment}}/splits_final.json",
        params:
            pids=lambda wc: learn_participants(wc.experiment),
            cfg=settings_json(LEARN, "seed", "val_fraction"),
        conda:
            "../envs/base.yaml"
        log:
            log_path("learn", "{experiment}/splits_final"),
        shell:
            "deepmir folds --participants {params.pids:q} --config-json {params.cfg:q} "
            "--splits-final {output:q} > {log:q} 2>&1"

    def nnunet_dataset(experiment):
        """The experiment's raw nnU-Net dataset folder (IDs from learn.nnunet_dataset_id on, in
        the order of learn.experiments)."""
        nid = LEARN["nnunet_dataset_id"] + list(LEARN_EXPERIMENTS).index(experiment)
        return f"{OUT}/nnunet/{_nnunet.dataset_name(nid, experiment)}"

    if LEARN["nnunet_dataset_id"] + len(LEARN_EXPERIMENTS) - 1 > 999:
        sys.exit(f"deepmir: error: config learn.nnunet_dataset_id {LEARN['nnunet_dataset_id']}: "
                 f"{len(LEARN_EXPERIMENTS)} experiments need IDs up to 999 (nnU-Net's largest)")

    rule learn_export_nnunet:
        """An experiment's channels and annotations as a raw nnU-Net dataset (imagesTr,
        labelsTr, dataset.json) with its folds as splits_final.json; on request (target nnunet)."""
        input:
            images=lambda wc: [_channel_path(p, c) for p in learn_participants(wc.experiment)
                               for c in LEARN_EXPERIMENTS[wc.experiment]["channels"]],
            dseg=lambda wc: [annotation_path(p) for p in learn_participants(wc.experiment)],
            splits=rules.learn_splits_final.output[0],
        output:
            directory(f"{OUT}/nnunet/Dataset{{nid}}_{{experiment}}"),
        wildcard_constraints:
            nid=r"\d{3}",
        params:
            channels=lambda wc: LEARN_EXPERIMENTS[wc.experiment]["channels"],
            labels=lambda wc: LEARN_EXPERIMENTS[wc.experiment]["labels"],
            cases=lambda wc: " ".join(
                "--case " + " ".join(shlex.quote(f) for f in
                                     [p, *(_channel_path(p, c) for c in LEARN_EXPERIMENTS[wc.experiment]["channels"]),
                                      annotation_path(p)])
                for p in learn_participants(wc.experiment)),
        conda:
            "../envs/base.yaml"
        log:
            log_path("learn", "{experiment}/nnunet_Dataset{nid}"),
        shell:
            "deepmir export-nnunet --out {output:q} --channels {params.channels:q} --label-mode {params.labels} "
            "{params.cases} --splits {input.splits:q} > {log:q} 2>&1"

    rule nnunet:
        """Every experiment (with folds) as a raw nnU-Net dataset under output_dir/nnunet."""
        input:
            lambda wc: [nnunet_dataset(e) for e in LEARN_EXPERIMENTS if _folds(e)],

    def _train_options(wildcards=None):
        """The training command's settings: the learn section (learner, seed, learn.patch or the
        paper learner's keys) and the evaluation's matching rule (the patch learner selects for
        lesion-wise F1 with it)."""
        ev = config["evaluate"]
        keys = ["learner", "seed", "device", "keep_last_checkpoint"] + (
            ["patch"] if LEARN["learner"] == "patch" else ["epochs", "batch_size", "lr", "fg_weight", "model", "augment"])
        return (f"--config-json {shlex.quote(settings_json(LEARN, *keys))} --tol-cmb {ev['tolerance']['cmb']} "
                f"--tol-iron {ev['tolerance']['iron']} --tol-unit {ev['tolerance_unit']}")

    rule learn_train:
        """Train one fold's U-Net (learn.learner): the patch learner keeps the iteration and the
        operating point (threshold, minimum size) with the best validation lesion-wise F1
        (selection.json), the paper learner the best validation-IoU epoch; resume state in
        last.pt (not a declared output, so a killed job resumes where it stopped)."""
        input:
            split=rules.learn_split.output[0],
            train=lambda wc: [stack_path(p) for p in _folds(wc.experiment)[wc.pid]["train"]],
            val=lambda wc: [stack_path(p) for p in _folds(wc.experiment)[wc.pid]["val"]],
        output:
            **_train_outputs(_fold_dir(), "learn_curve.rst", "Learning", "{experiment}"),
        params:
            dir=_fold_dir(),
            labels=lambda wc: LEARN_EXPERIMENTS[wc.experiment]["labels"],
            channels=lambda wc: LEARN_EXPERIMENTS[wc.experiment]["channels"],
            options=_train_options,
        threads: LEARN["threads"]
        conda:
            "../envs/torch.yaml"
        log:
            log_path("learn", "{experiment}/fold-{pid}_train"),
        benchmark:
            bench_path("learn", "{experiment}/fold-{pid}_train")
        resources:
            mem_mb=lambda wc, attempt: LEARN["train_mem_mb"] * attempt,
            runtime=LEARN["train_runtime"],
            **({"gpu": 1} if LEARN["gpu"] else {}),
        shell:
            "deepmir train --train-stacks {input.train:q} --val-stacks {input.val:q} "
            "--label-mode {params.labels} --channels {params.channels:q} {params.options} "
            "--threads {threads} --out-dir {params.dir:q} > {log:q} 2>&1"

    rule learn_predict:
        """The fold's held-out participant: labels (0/1/2) and probabilities on the MEGRE grid."""
        input:
            model=rules.learn_train.output.model,
            stack=stack_path("{pid}"),
        output:
            dseg=learn_prediction("{experiment}", "{pid}", "dseg"),
            probseg=learn_prediction("{experiment}", "{pid}", "probseg"),
        params:
            cfg=settings_json(LEARN, "threshold", "device"),
        threads: LEARN["threads"]
        conda:
            "../envs/torch.yaml"
        log:
            log_path("learn", "{experiment}/fold-{pid}_predict"),
        benchmark:
            bench_path("learn", "{experiment}/fold-{pid}_predict")
        resources:
            mem_mb=lambda wc, attempt: LEARN["predict_mem_mb"] * attempt,
            runtime=15,
            **({"gpu": 1} if LEARN["gpu"] else {}),
        shell:
            PREDICT_SHELL

    rule learn_lesion_counts:
        """Per participant: lesions in the annotation vs in the held-out prediction (a quick
        look; the study's metrics come from the evaluation stage)."""
        input:
            pred=lambda wc: [learn_prediction(wc.experiment, p) for p in _folds(wc.experiment)],
            ref=lambda wc: [annotation_path(p) for p in _folds(wc.experiment)],
        output:
            report(f"{LEARN_DIR}/{{experiment}}/lesion_counts.tsv", caption="../report/learn_counts.rst",
                   category="Learning", subcategory="{experiment}"),
        params:
            pids=lambda wc: list(_folds(wc.experiment)),
            labels=lambda wc: LEARN_EXPERIMENTS[wc.experiment]["labels"],
        conda:
            "../envs/base.yaml"
        log:
            log_path("learn", "{experiment}/lesion_counts"),
        shell:
            "deepmir lesion-counts --participants {params.pids:q} --pred {input.pred:q} --ref {input.ref:q} "
            "--label-mode {params.labels} --out {output:q} > {log:q} 2>&1"

    _LEARN_READY = [e for e in LEARN_EXPERIMENTS if _folds(e)]
    ALL_TARGETS += learn_predictions()
    ALL_TARGETS += expand(f"{LEARN_DIR}/{{experiment}}/splits_final.json", experiment=_LEARN_READY)
    ALL_TARGETS += expand(f"{LEARN_DIR}/{{experiment}}/lesion_counts.tsv", experiment=_LEARN_READY)
