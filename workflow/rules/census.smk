# Cohort application (method.md §8): a final model per chosen experiment trained on all
# annotated participants (validation split for epoch selection), applied to every participant
# — annotated or not, including ones added later (only their jobs run) — and a lesion census
# per participant with cohort tables. With `census.model` set, that trained model is applied
# and nothing is trained (a new BIDS dataset without annotations works).
import importlib.metadata as _metadata
import json

from deepmir import __version__ as _deepmir_version
from deepmir.learn.folds import train_val_split as _train_val_split
from deepmir.learn.modelcard import channel_settings as _channel_settings

CENSUS = config["census"]   # validated (defaults filled) in learn.smk


def _census_spec():
    """(experiment name, {channels, labels}) of the applied model, or (None, None)."""
    if APPLIED_CARD:
        return APPLIED_CARD["experiment"], {k: APPLIED_CARD[k] for k in ("channels", "labels")}
    if not LEARN_EXPERIMENTS:
        return None, None
    multi = [e for e, s in LEARN_EXPERIMENTS.items() if s["labels"] == "multiclass"]
    name = CENSUS["experiment"] or max(multi or list(LEARN_EXPERIMENTS)[:1],
                                       key=lambda e: len(LEARN_EXPERIMENTS[e]["channels"]))
    if name not in LEARN_EXPERIMENTS:
        sys.exit(f"deepmir: error: census.experiment {name!r} is not in learn.experiments")
    return name, LEARN_EXPERIMENTS[name]


CENSUS_EXP, CENSUS_SPEC = _census_spec() if CENSUS["enabled"] else (None, None)
FINAL_DIR = f"{OUT}/final/{CENSUS_EXP}"
CENSUS_PIDS = [p for p in PIDS if set(CENSUS_SPEC["channels"]) <= set(_stack_channels(p))] if CENSUS_EXP else []
_FINAL_TRAINABLE = bool(CENSUS_EXP) and not CENSUS["model"] and len(learn_participants(CENSUS_EXP)) >= 2
FINAL_MODEL = CENSUS["model"] or f"{FINAL_DIR}/best.pt"


def census_path(pid, kind="census.tsv"):
    return out("census", pid, f"desc-{CENSUS_EXP}_{kind}")


if _FINAL_TRAINABLE:
    _FINAL_SPLIT = _train_val_split(learn_participants(CENSUS_EXP), LEARN["seed"], CENSUS["val_fraction"])

    rule final_split:
        output:
            f"{FINAL_DIR}/split.json",
        params:
            pids=learn_participants(CENSUS_EXP),
            seed=LEARN["seed"],
            val_fraction=CENSUS["val_fraction"],
        conda:
            "../envs/base.yaml"
        log:
            OUT + "/logs/final/split.log",
        shell:
            "deepmir final-split --participants {params.pids:q} --seed {params.seed} "
            "--val-fraction {params.val_fraction} --out {output:q} > {log:q} 2>&1"

    rule final_train:
        """The final model: all annotated participants, a validation split picks the epoch."""
        input:
            split=rules.final_split.output[0],
            train=[stack_path(p) for p in _FINAL_SPLIT["train"]],
            val=[stack_path(p) for p in _FINAL_SPLIT["val"]],
        output:
            **_train_outputs(FINAL_DIR, "census_final.rst", "Census", "final model"),
        params:
            dir=FINAL_DIR,
            labels=CENSUS_SPEC["labels"],
            channels=CENSUS_SPEC["channels"],
            options=_train_options,
        threads: LEARN["threads"]
        conda:
            "../envs/torch.yaml"
        log:
            OUT + "/logs/final/train.log",
        benchmark:
            OUT + "/benchmarks/final/train.tsv"
        resources:
            mem_mb=lambda wc, attempt: LEARN["train_mem_mb"] * attempt,
            runtime=LEARN["train_runtime"],
            **({"gpu": 1} if LEARN["gpu"] else {}),
        shell:
            "deepmir train --train-stacks {input.train:q} --val-stacks {input.val:q} "
            "--label-mode {params.labels} --channels {params.channels:q} {params.options} "
            "--threads {threads} --out-dir {params.dir:q} > {log:q} 2>&1"

    # run: no conda: env (Snakemake runs a run: body in its own process)
    rule final_model_card:
        """What applying the model needs: channels, label mode, stack settings, training config
        and (patch learner) the operating point chosen on its validation participants."""
        input:
            model=rules.final_train.output.model,
            **({"selection": rules.final_train.output.selection} if LEARN["learner"] == "patch" else {}),
        output:
            f"{FINAL_DIR}/model.json",
        params:
            card=dict(experiment=CENSUS_EXP, channels=CENSUS_SPEC["channels"], labels=CENSUS_SPEC["labels"],
                      slice_size=LEARN["slice_size"], qsm_clip_sigma=LEARN["qsm_clip_sigma"],
                      normalisation="each channel z-scored inside the brain mask (QSM clipped first)",
                      split=_FINAL_SPLIT, learn=LEARN,
                      settings=_channel_settings(config, CENSUS_SPEC["channels"]),
                      versions={"deepmir": _deepmir_version, "torch": _metadata.version("torch")}),
        run:
            card = dict(params.card)
            if "selection" in input.keys():
                card["selection"] = _niio.read_json(input.selection)
            _niio.write_json(output[0], card)


# a model to apply: census.model, or a final model trained here (≥ 2 annotated participants);
# with neither, the census is left out and every participant still gets its other stages
# a model is applied: the final model trained here, or census.model
CENSUS_APPLIED = bool(CENSUS_EXP and (_FINAL_TRAINABLE or CENSUS["model"]))

if CENSUS_APPLIED:

    rule apply:
        """The final model on one participant (annotated or not): labels and probabilities."""
        input:
            model=FINAL_MODEL,
            stack=stack_path("{pid}"),
        output:
            dseg=out("apply", "{pid}", f"space-MEGRE_desc-{CENSUS_EXP}_dseg.nii.gz"),
            probseg=out("apply", "{pid}", f"space-MEGRE_desc-{CENSUS_EXP}_probseg.nii.gz"),
        params:
            cfg=settings_json(LEARN, "threshold", "device"),
        threads: LEARN["threads"]
        conda:
            "../envs/torch.yaml"
        log:
            log_path("apply", "{pid}"),
        benchmark:
            bench_path("apply", "{pid}")
        resources:
            mem_mb=lambda wc, attempt: LEARN["predict_mem_mb"] * attempt,
            runtime=15,
            **({"gpu": 1} if LEARN["gpu"] else {}),
        shell:
            PREDICT_SHELL

    def _mni_coords(pid):
        return out("anat", pid, "from-MEGRE_to-MNI152_mode-image_xfm.nii.gz")

    def _census_placement(wc):
        """The SyN coordinate map where the participant has a T1w-based mask, else the mask
        JSON's affine alone."""
        if CENSUS["nonlinear_regions"] and _anat_mask_uses_t1w(wc.pid):
            return {"mni_coords": _mni_coords(wc.pid)}
        return {}

    rule mni_warp:
        """MNI coordinate map on the MEGRE grid: the template's affine fit to the T1w refined
        by a SyN warp (antspyx), composed with the T1w→MEGRE transform."""
        input:
            t1w=out("anat", "{pid}", "desc-n4_T1w.nii.gz"),
            mask=out("anat", "{pid}", "space-MEGRE_desc-brain_mask.nii.gz"),
            mask_json=out("anat", "{pid}", "space-MEGRE_desc-brain_mask.json"),
            xfm=out("anat", "{pid}", "from-T1w_to-MEGRE_xfm.txt"),
        output:
            _mni_coords("{pid}"),
        params:
            cfg=settings_json(CENSUS, "syn_iterations", "syn_working_mm"),
        threads: 2
        conda:
            "../envs/ants.yaml"
        log:
            log_path("mni_warp", "{pid}"),
        benchmark:
            bench_path("mni_warp", "{pid}")
        resources:
            mem_mb=3000,
            runtime=20,
        shell:
            "deepmir mni-warp --t1w {input.t1w:q} "
            "--mask-json {input.mask_json:q} --xfm {input.xfm:q} --ref {input.mask:q} "
            "--config-json {params.cfg:q} --threads {threads} "
            "--output {output:q} > {log:q} 2>&1"

    rule census:
        """One participant's lesions: position, size, confidence, χ, SWI contrast, region."""
        input:
            unpack(_census_placement),
            dseg=rules.apply.output.dseg,
            probseg=rules.apply.output.probseg,
            chi=out("qsm", "{pid}", "space-MEGRE_Chimap.nii.gz"),
            swi=out("swi", "{pid}", "space-MEGRE_swi.nii.gz"),
            mask_json=out("anat", "{pid}", "space-MEGRE_desc-brain_mask.json"),
            atlas=rules.atlas.output[0],
        output:
            tsv=census_path("{pid}"),
            qc=report(f"{OUT}/report/census/{{pid}}_lesions.png", caption="../report/census_qc.rst",
                      category="Census", subcategory="{pid}"),
        params:
            cfg=settings_json(CENSUS, "exclude_calcifications", "exclude_veins"),
            placement=lambda wc, input: f"--mni-coords {shlex.quote(input.mni_coords)}" if "mni_coords" in input.keys() else "",
        conda:
            "../envs/ants.yaml"
        log:
            log_path("census", "{pid}"),
        benchmark:
            bench_path("census", "{pid}")
        shell:
            "deepmir census --labels {input.dseg:q} --probs {input.probseg:q} --chi {input.chi:q} "
            "--swi {input.swi:q} --mask-json {input.mask_json:q} {params.placement} --atlas {input.atlas:q} --config-json {params.cfg:q} "
            "--qc {output.qc:q} --output {output.tsv:q} > {log:q} 2>&1"

    rule cohort_table:
        """One row per participant (counts by class × region × size) and the cohort summary."""
        input:
            [census_path(p) for p in CENSUS_PIDS],
        output:
            table=report(f"{OUT}/report/census/cohort_census.tsv", caption="../report/census_table.rst",
                         category="Census"),
            summary=f"{OUT}/report/census/cohort_summary.md",
        conda:
            "../envs/base.yaml"
        log:
            OUT + "/logs/census/cohort.log",
        shell:
            "deepmir cohort-table {input:q} --output {output.table:q} --summary {output.summary:q} > {log:q} 2>&1"

    ALL_TARGETS += [rules.cohort_table.output.table]
    if _FINAL_TRAINABLE:
        ALL_TARGETS += [rules.final_model_card.output[0]]


rule benchmark_table:
    """Seconds, CPU seconds and peak memory of every job (Snakemake benchmarks), per stage,
    summed per participant and per fold. Runs after everything else of the default target."""
    input:
        [t for t in ALL_TARGETS if "/report/" in t and t.endswith((".md", ".tsv"))],
    output:
        tsv=f"{OUT}/report/benchmarks.tsv",
        md=report(f"{OUT}/report/benchmarks.md", caption="../report/benchmarks.rst", category="Benchmarks"),
    conda:
        "../envs/base.yaml"
    log:
        OUT + "/logs/report/benchmarks.log",
    params:
        bench_dir=f"{OUT}/benchmarks",
    shell:
        "deepmir bench-table --dir {params.bench_dir:q} --output {output.tsv:q} --markdown {output.md:q} > {log:q} 2>&1"


ALL_TARGETS += [rules.benchmark_table.output.md]
