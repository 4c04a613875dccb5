# Evaluation and report (method.md §6): lesion-wise metrics of every experiment's
# leave-one-out prediction, statistics, Table 3 / S3.1, figures, the mimic analysis and the QSM
# accuracy table of the synthetic cohort, and summary.md, the workflow's final target.
#
# Experiments come from the learning stage: config["learn"]["experiments"], name ->
# {channels: [SWI, QSM, T2], labels: cmb|iron|union|multiclass}. They are read lazily (input
# functions), so this file works whichever rule file is included first; with no experiment
# (or learn.enabled false) the report is written with empty tables.
import json
import shlex

from deepmir.evaluate.summary import aggregate_output_names as _aggregate_output_names

validate(config, "../schemas/evaluate.schema.yaml")

EVAL = config["evaluate"]
REPORT = f"{OUT}/report"


def _eval_experiments():
    """experiment name -> {"modalities": "SWI+QSM", "mode": "union", "channels": [...]}."""
    learn = config.get("learn") or {}
    if not learn.get("enabled", True):
        return {}
    exps = {}
    for name, spec in (learn.get("experiments") or {}).items():
        spec = spec or {}
        channels = ["T2" if str(c).upper() in ("T2", "T2W") else str(c).upper()
                    for c in spec.get("channels", [])]
        exps[name] = {"modalities": "+".join(channels), "channels": channels,
                      "mode": spec.get("labels") or spec.get("label_mode")}
    return exps


def _metrics(experiment, pid):
    return out("evaluate", pid, f"desc-{experiment}_metrics.tsv")


def _eval_pids(experiment):
    """Participants with a leave-one-out prediction in this experiment (learning stage)."""
    return [p for p in ANNOTATED if p in _folds(experiment)]


def _all_metrics(wildcards):
    return [_metrics(e, p) for e in _eval_experiments() for p in _eval_pids(e)]


def _mimic_inputs(pid):
    if not SYNTHETIC:
        return {}
    return {"mimics": truth_path(pid, "space-MEGRE_desc-lesions_dseg.nii.gz"),
            "mimic_table": truth_path(pid, "lesions.tsv")}


def _mimic_args(input):
    if "mimics" not in input.keys():
        return ""
    return f"--mimics {shlex.quote(input.mimics)} --mimic-table {shlex.quote(input.mimic_table)}"


def _overlay_pids():
    exp = _overlay_experiment()
    have = _eval_pids(exp) if exp else []
    pids = EVAL["overlay"]["participants"] or have[: EVAL["overlay"]["n_participants"]]
    missing = sorted(set(pids) - set(ANNOTATED))
    if missing:
        sys.exit(f"deepmir: error: evaluate.overlay.participants not annotated: {', '.join(missing)}")
    return list(pids)


def _overlay_experiment():
    exps = _eval_experiments()
    name = EVAL["overlay"]["experiment"]
    if name:
        if name not in exps:
            sys.exit(f"deepmir: error: evaluate.overlay.experiment {name!r} is not in learn.experiments")
        return name
    return max(exps, key=lambda e: len(exps[e]["channels"])) if exps else None


def _overlay_images(pid):
    images = {"SWI": out("swi", pid, "space-MEGRE_swi.nii.gz"),
              "QSM": out("qsm", pid, "space-MEGRE_Chimap.nii.gz")}
    if has_anat(pid, "T2w"):
        images["T2"] = out("anat", pid, "space-MEGRE_T2w.nii.gz")
    return images


def _overlay_inputs(wildcards):
    exp = _overlay_experiment()
    return {"pred": learn_prediction(exp, wildcards.pid), "ref": annotation_path(wildcards.pid),
            **_overlay_images(wildcards.pid), **_mimic_inputs(wildcards.pid)}


def _overlays():
    return [f"{REPORT}/overlay_{pid}.png" for pid in _overlay_pids()]


_TOL_TEXT = (f"CMB {EVAL['tolerance']['cmb']:g}, iron {EVAL['tolerance']['iron']:g}, "
             f"CMB ∪ iron {max(EVAL['tolerance']['cmb'], EVAL['tolerance']['iron']):g} "
             + ("voxels (index space)" if EVAL["tolerance_unit"] == "vox" else "mm"))
_QSM_TABLE = SYNTHETIC and EVAL["qsm_accuracy"]

# what the report shows: file name in REPORT -> (caption, category, subcategory)
_REPORTED = {
    "table3.tsv": ("evaluate_table3.rst", "Tables", "Table 3"),
    "table_s3_1.tsv": ("evaluate_table_s3_1.rst", "Tables", "Table S3.1"),
    "aggregate.tsv": ("evaluate_aggregate.rst", "Tables", "Dataset-level metrics"),
    "wilcoxon.tsv": ("evaluate_wilcoxon.rst", "Tables", "Statistics"),
    "mimics.tsv": ("evaluate_mimics.rst", "Tables", "Mimic analysis"),
    "outliers.tsv": ("evaluate_outliers.rst", "Outlier analysis", "Beta fit"),
    "table3_without_outliers.tsv": ("evaluate_table3_without_outliers.rst", "Outlier analysis",
                                    "Table 3 without outliers"),
    "table_s3_1_without_outliers.tsv": ("evaluate_table3_without_outliers.rst",
                                        "Outlier analysis", "Table S3.1 without outliers"),
    "metrics_participants.tsv": ("evaluate_metrics.rst", "Tables", "Per participant"),
    "fig4_joint_single_class.png": ("evaluate_fig_joint.rst", "Figures", "Sensitivity vs precision"),
    "fig5_joint_multiclass.png": ("evaluate_fig_joint.rst", "Figures", "Sensitivity vs precision"),
    "figS3_joint_union.png": ("evaluate_fig_joint.rst", "Figures", "Sensitivity vs precision"),
    "fig6_magnitude_accuracy.png": ("evaluate_fig_magnitude.rst", "Figures", "Magnitude accuracy"),
}


def _aggregate_output(name):
    path = f"{REPORT}/{name}"
    if name in _REPORTED:
        caption, category, sub = _REPORTED[name]
        return report(path, caption=f"../report/{caption}", category=category,
                      subcategory=sub)
    return path


def _qsm_rule_inputs(experiment, pid):
    """The QSM map when the QSM rule's rows are wanted (evaluate.qsm_rule, CMB experiments)."""
    if EVAL["qsm_rule"] and _eval_experiments()[experiment]["mode"] in ("cmb", "union", "multiclass"):
        return {"chi": out("qsm", pid, "space-MEGRE_Chimap.nii.gz")}
    return {}


rule evaluate_participant:
    """Lesion-wise metrics of one experiment's prediction for one (held-out) participant; with
    evaluate.qsm_rule also the CMB rows after the QSM rule (calcification and vein candidates
    dropped)."""
    input:
        unpack(lambda wc: {"pred": learn_prediction(wc.experiment, wc.pid),
                           "ref": annotation_path(wc.pid), **_mimic_inputs(wc.pid),
                           **_qsm_rule_inputs(wc.experiment, wc.pid)}),
    output:
        _metrics("{experiment}", "{pid}"),
    params:
        modalities=lambda wc: _eval_experiments()[wc.experiment]["modalities"],
        mode=lambda wc: _eval_experiments()[wc.experiment]["mode"],
        cfg=settings_json(EVAL, "tolerance", "tolerance_unit"),
        mimics=lambda wc, input: _mimic_args(input),
        rule=lambda wc, input: f"--qsm-rule-chi {shlex.quote(input.chi)}" if "chi" in input.keys() else "",
    wildcard_constraints:
        experiment=r"[A-Za-z0-9]+",
    conda:
        "../envs/base.yaml"
    log:
        log_path("evaluate/{experiment}", "{pid}"),
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "deepmir evaluate --pred {input.pred:q} --ref {input.ref:q} --mode {params.mode:q} "
        "--participant {wildcards.pid:q} --experiment {params.modalities:q} "
        "--run {wildcards.experiment:q} --config-json {params.cfg:q} "
        "{params.mimics} {params.rule} --out {output:q} > {log:q} 2>&1"


rule evaluate_aggregate:
    """Statistics over all participants and experiments: means with SEM and 95 % CI, pooled
    metrics, count agreement, Wilcoxon rank-sum against SWI alone, the beta outlier analysis,
    Table 3 / S3.1 (TSV, Markdown), the mimic table and Figures 4, 5, 6, S3."""
    input:
        _all_metrics,
    output:
        [_aggregate_output(n) for n in _aggregate_output_names()],
    params:
        out_dir=REPORT,
        cfg=settings_json(EVAL, "baseline", "outlier_quantile", "outlier_scale"),
    conda:
        "../envs/base.yaml"
    log:
        OUT + "/logs/evaluate/aggregate.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "deepmir aggregate --metrics {input:q} --out-dir {params.out_dir:q} "
        "--config-json {params.cfg:q} > {log:q} 2>&1"


rule evaluate_overlay:
    """Example figure (Figures 1, 7, 8): SWI / QSM / T2 slices of one participant with the
    predicted and reference lesions and the mimics the model hit or rejected."""
    input:
        unpack(_overlay_inputs),
    output:
        report(f"{REPORT}/overlay_{{pid}}.png", caption="../report/evaluate_overlay.rst",
               category="Figures", subcategory="Examples"),
    params:
        images=lambda wc, input: " ".join(f"--image {shlex.quote(f'{k}={input[k]}')}"
                                          for k in ("SWI", "QSM", "T2") if k in input.keys()),
        mimics=lambda wc, input: _mimic_args(input),
        title=lambda wc: f"{wc.pid}: {_overlay_experiment()}",
        cfg=json.dumps({"tolerance": EVAL["tolerance"], "overlay": {"n_slices": EVAL["overlay"]["n_slices"]}}, sort_keys=True),
    conda:
        "../envs/base.yaml"
    log:
        OUT + "/logs/evaluate/overlay_{pid}.log",
    resources:
        mem_mb=1500,
        runtime=5,
    shell:
        "deepmir overlay {params.images} --pred {input.pred:q} --ref {input.ref:q} {params.mimics} "
        "--config-json {params.cfg:q} --title {params.title:q} "
        "--out {output:q} > {log:q} 2>&1"


if _QSM_TABLE:

    rule evaluate_qsm_accuracy:
        """QSM (MEDI and, next to it, TKD and closed-form L2 of the same local field) of one
        participant against the synthetic truth, inside the pipeline's brain mask, with
        deep-GM ROI errors and lesion moments."""
        input:
            chi=out("qsm", "{pid}", "space-MEGRE_Chimap.nii.gz"),
            chi_tkd=out("qsm", "{pid}", "space-MEGRE_desc-tkd_Chimap.nii.gz"),
            chi_cfl2=out("qsm", "{pid}", "space-MEGRE_desc-cfl2_Chimap.nii.gz"),
            truth=truth_path("{pid}", "space-MEGRE_Chimap.nii.gz"),
            tissue=truth_path("{pid}", "space-MEGRE_desc-tissue_dseg.nii.gz"),
            mask=out("anat", "{pid}", "space-MEGRE_desc-brain_mask.nii.gz"),
            lesion_map=truth_path("{pid}", "space-MEGRE_desc-lesions_dseg.nii.gz"),
            lesions=truth_path("{pid}", "lesions.tsv"),
        output:
            out("evaluate", "{pid}", "desc-qsm_accuracy.tsv"),
        conda:
            "../envs/base.yaml"
        log:
            log_path("evaluate/qsm", "{pid}"),
        resources:
            mem_mb=1500,
            runtime=5,
        shell:
            "deepmir qsm-accuracy --chi {input.chi:q} --chi-tkd {input.chi_tkd:q} "
            "--chi-cfl2 {input.chi_cfl2:q} "
            "--truth {input.truth:q} --tissue {input.tissue:q} --mask {input.mask:q} "
            "--lesion-map {input.lesion_map:q} --lesions {input.lesions:q} "
            "--participant {wildcards.pid:q} --out {output:q} > {log:q} 2>&1"

    rule evaluate_qsm_table:
        """The QSM accuracy table of the synthetic cohort."""
        input:
            [out("evaluate", p, "desc-qsm_accuracy.tsv") for p in PIDS],
        output:
            tsv=report(f"{REPORT}/qsm_accuracy.tsv", caption="../report/evaluate_qsm_accuracy.rst",
                       category="Tables", subcategory="QSM accuracy"),
            md=f"{REPORT}/qsm_accuracy.md",
        conda:
            "../envs/base.yaml"
        log:
            OUT + "/logs/evaluate/qsm_table.log",
        shell:
            "deepmir qsm-table --inputs {input:q} --out-tsv {output.tsv:q} --out-md {output.md:q} "
            "> {log:q} 2>&1"


rule report:
    """summary.md: every table of the report with the matching rule and links to the figures;
    the workflow's final target (the HTML report: snakemake --report results/report/report.html)."""
    input:
        tables=[f"{REPORT}/{n}" for n in _aggregate_output_names()],
        overlays=lambda wc: _overlays() if _overlay_experiment() else [],
        qsm=[f"{REPORT}/qsm_accuracy.md"] if _QSM_TABLE else [],
    output:
        report(f"{REPORT}/summary.md", caption="../report/report_summary.rst",
               category="Summary"),
    params:
        report_dir=REPORT,
        qsm=lambda wc, input: f"--qsm-table {shlex.quote(input.qsm[0])}" if input.qsm else "",
        tolerances=_TOL_TEXT,
    conda:
        "../envs/base.yaml"
    log:
        OUT + "/logs/report/summary.log",
    shell:
        "deepmir summary --report-dir {params.report_dir:q} {params.qsm} "
        "--figures {input.overlays:q} --tolerances {params.tolerances:q} --out {output:q} > {log:q} 2>&1"


REPORT_TARGETS = [f"{REPORT}/summary.md"]
ALL_TARGETS.extend(REPORT_TARGETS)
