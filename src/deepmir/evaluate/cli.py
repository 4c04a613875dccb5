"""The evaluation commands (rules in workflow/rules/evaluate.smk): ``deepmir evaluate``
(lesion-wise metrics of one prediction), ``aggregate`` (statistics, Table 3 / S3.1 and figures
over many metrics files), ``qsm-accuracy`` and ``qsm-table``, ``overlay`` (example figure),
``summary`` (the report's summary page) and ``bench-table`` (the report's timing table).
Settings come from the config's ``evaluate`` section (``--config-json``), flags override them.

All inputs are read and checked before anything is computed or written; a bad input raises
:class:`deepmir.errors.InputError` naming the file and leaves no output behind.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from nibabel.affines import voxel_sizes

from deepmir import niio, settings
from deepmir.errors import InputError
from deepmir.evaluate import inputs as ei
from deepmir.evaluate.summary import QSM_RULE_SUFFIX
from deepmir.lesions import MODE_CLASSES


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not np.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def _settings(args) -> dict:
    """The evaluate section (``--config-json``), with the flags given overriding it."""
    over = {k: getattr(args, k) for k in ("baseline", "outlier_quantile", "outlier_scale")
            if getattr(args, k, None) is not None}
    tol = {c: getattr(args, f"tol_{c}", None) for c in ("cmb", "iron")}
    tol["cmb"] = getattr(args, "tolerance", None) or tol["cmb"]
    if any(v is not None for v in tol.values()):
        over["tolerance"] = {c: v for c, v in tol.items() if v is not None}
    if getattr(args, "tol_unit", None):
        over["tolerance_unit"] = args.tol_unit
    if getattr(args, "n_slices", None) is not None:
        over["overlay"] = {"n_slices": args.n_slices}
    return settings.overridden("evaluate", args.config_json, over)


def _ids(df: pd.DataFrame, args, experiment: str, run: str | None) -> pd.DataFrame:
    df = df.copy()
    df.insert(0, "mode", args.mode)
    df.insert(0, "experiment", experiment)
    df.insert(0, "participant", args.participant)
    if run:
        df.insert(3, "run", run)
    return df


def run_evaluate(args) -> int:
    from deepmir.evaluate.metrics import evaluate_volumes
    from deepmir.evaluate.tables import to_tsv

    cfg = _settings(args)
    tol = (cfg["tolerance"]["cmb"], cfg["tolerance"]["iron"], cfg["tolerance_unit"])
    pred, ref, ref_aff = ei.read_label_pair(args.pred, args.ref)
    mimics, table = ei.read_mimics(args.mimics, args.mimic_table, (args.ref, ref, ref_aff))
    chi = None
    if args.qsm_rule_chi is not None:
        chi, _ = ei.load_on_grid(args.qsm_rule_chi, "QSM map", (args.ref, ref, ref_aff))
    vs = voxel_sizes(ref_aff)
    df = _ids(evaluate_volumes(pred, ref, args.mode, vs, *tol, mimics, table), args, args.experiment, args.run)
    if chi is not None:
        from deepmir.learn.postprocess import qsm_rule

        ruled = evaluate_volumes(qsm_rule(pred, chi, vs), ref, args.mode, vs, *tol, mimics, table)
        ruled = ruled[ruled["class"].isin(["cmb", "union"])]
        df = pd.concat([df, _ids(ruled, args, args.experiment + QSM_RULE_SUFFIX,
                                 args.run and args.run + "QsmRule")], ignore_index=True)
    niio.write_text(args.out, to_tsv(df))
    return 0


def run_aggregate(args) -> int:
    from deepmir.evaluate.summary import aggregate_files, read_metrics

    cfg = _settings(args)
    outputs = aggregate_files(read_metrics(args.metrics), cfg["baseline"], cfg["outlier_quantile"],
                              cfg["outlier_scale"])
    for name, content in outputs.items():
        niio.write_text(args.out_dir / name, content)
    return 0


def run_qsm_accuracy(args) -> int:
    from deepmir.evaluate.metrics import qsm_accuracy
    from deepmir.evaluate.tables import to_tsv

    chi, truth, mask, lesion_map, classes, tissue, aff = ei.read_qsm_truth(
        args.chi, args.truth, args.mask, args.lesion_map, args.lesions, args.tissue)
    grid = (args.chi, chi, aff)
    vox = float(abs(np.linalg.det(np.asarray(aff, float)[:3, :3])))
    vs = tuple(np.sqrt((np.asarray(aff, float)[:3, :3] ** 2).sum(0)))
    try:
        row = qsm_accuracy(chi, truth, mask, lesion_map, classes, tissue, vox, vs)
    except ValueError as err:
        raise InputError(args.chi, str(err))
    for prefix, path, what in (("tkd", args.chi_tkd, "TKD map"), ("cfl2", args.chi_cfl2, "CFL2 map")):
        if path is not None:
            other = qsm_accuracy(ei.load_on_grid(path, what, grid)[0], truth, mask, lesion_map, classes,
                                 tissue, vox, vs)
            row.update({f"{prefix}_{k}": v for k, v in other.items() if k != "n_voxels"})
    niio.write_text(args.out, to_tsv(pd.DataFrame([{"participant": args.participant, **row}])))
    return 0


def run_qsm_table(args) -> int:
    from deepmir.evaluate.summary import qsm_table, read_qsm_accuracy

    tsv, md = qsm_table(read_qsm_accuracy(args.inputs))
    with niio.together():
        niio.write_text(args.out_tsv, tsv)
        niio.write_text(args.out_md, md)
    return 0


def run_overlay(args) -> int:
    from deepmir.evaluate import figures
    from deepmir.evaluate.metrics import mimic_status
    from deepmir.geometry import axial_axis

    cfg = _settings(args)
    pred, ref, ref_aff = ei.read_label_pair(args.pred, args.ref)
    images = {}
    for item in args.image:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(item, "expected NAME=PATH")
        images[name] = ei.load_on_grid(Path(path), name, (args.ref, ref, ref_aff))[0]
    mimics, table = ei.read_mimics(args.mimics, args.mimic_table, (args.ref, ref, ref_aff))
    status = None if mimics is None else mimic_status(pred, mimics, table, cfg["tolerance"]["cmb"])
    fig, _ = figures.overlay_volume(images, pred, ref, status, axial_axis(ref_aff),
                                    max(1, cfg["overlay"]["n_slices"]), title=args.title)
    niio.write_text(args.out, figures.png_bytes(fig))
    return 0


def run_summary(args) -> int:
    from deepmir.evaluate.report import summary_markdown

    if not args.report_dir.is_dir():
        raise InputError(args.report_dir, "report folder not found")
    if args.qsm_table is not None:
        niio.regular_file(args.qsm_table, "QSM table")
    niio.write_text(args.out, summary_markdown(args.report_dir, args.qsm_table, args.figures, args.tolerances))
    return 0


def register(subparsers) -> None:
    d = settings.read("evaluate")
    p = subparsers.add_parser(
        "evaluate", help="lesion-wise metrics of a predicted label map against a reference",
        description="Match predicted to reference lesions (26-connected components, centroid "
                    "distance strictly below the tolerance, one-to-one greedy by distance) "
                    "and write one row per class: TP, FP, FN, sensitivity, precision, ... "
                    "Labels: 0 background, 1 CMB, 2 iron deposit, in both files.")
    p.add_argument("--pred", required=True, type=Path, help="predicted dseg NIfTI (0/1/2)")
    p.add_argument("--ref", required=True, type=Path, help="reference dseg NIfTI (0/1/2)")
    p.add_argument("--mode", required=True, choices=sorted(MODE_CLASSES),
                   help="label mode: cmb (label 1), iron (label 2), union (1 or 2 as one "
                        "class), multiclass (1 and 2 separately)")
    p.add_argument("--participant", required=True, help="participant id, e.g. sub-01")
    p.add_argument("--experiment", required=True,
                   help="modality set of the model, e.g. SWI, SWI+QSM, SWI+T2, SWI+QSM+T2 "
                        "(SWI is the statistics baseline)")
    p.add_argument("--out", required=True, type=Path, help="metrics TSV to write")
    p.add_argument("--run", help="name of the workflow experiment (written as column 'run')")
    settings.add_option(p, "evaluate")
    p.add_argument("--tol-cmb", type=_positive, help=f"CMB tolerance (evaluate.tolerance.cmb: {d['tolerance']['cmb']})")
    p.add_argument("--tol-iron", type=_positive, help=f"iron tolerance (evaluate.tolerance.iron: "
                                                      f"{d['tolerance']['iron']}); union: the larger")
    p.add_argument("--tol-unit", choices=("vox", "mm"), help=f"vox: distance in voxel index space; mm: in "
                                                            f"millimetres (evaluate.tolerance_unit: {d['tolerance_unit']})")
    p.add_argument("--mimics", type=Path,
                   help="optional mimic label NIfTI on the same grid (needs --mimic-table)")
    p.add_argument("--mimic-table", type=Path,
                   help="TSV with columns index, name (vein, calcification, epvs)")
    p.add_argument("--qsm-rule-chi", type=Path, metavar="CHIMAP",
                   help="QSM map (ppm) on the same grid: also write the CMB (and CMB ∪ iron) rows after "
                        "the QSM rule, which drops predicted CMBs that QSM shows to be calcifications "
                        "(diamagnetic against their surroundings) or veins (on an elongated "
                        f"paramagnetic structure), as experiment '<EXPERIMENT>{QSM_RULE_SUFFIX}'")
    p.set_defaults(func=run_evaluate)

    a = subparsers.add_parser(
        "aggregate", help="statistics, Table 3 / S3.1 and figures over metrics TSVs",
        description="Aggregate per-participant metrics (means with SEM and t-based 95% CI, "
                    "magnitude accuracy, FP per participant, pooled metrics, count ICC(2,1) "
                    "and Bland-Altman), Wilcoxon rank-sum tests against the baseline, "
                    "Table 3 and Table S3.1 (TSV and Markdown), figures and the beta "
                    "outlier analysis of reference CMB counts.")
    a.add_argument("--metrics", required=True, nargs="*", type=Path,
                   help="metrics TSVs written by 'deepmir evaluate' (none: empty tables)")
    a.add_argument("--out-dir", required=True, type=Path, help="folder for the outputs")
    settings.add_option(a, "evaluate")
    a.add_argument("--baseline", help=f"baseline experiment (evaluate.baseline: {d['baseline']})")
    a.add_argument("--outlier-quantile", type=float,
                   help=f"participants whose reference CMB count is above this quantile of the fitted beta "
                        f"distribution are left out of the repeated analysis (evaluate.outlier_quantile: "
                        f"{d['outlier_quantile']})")
    a.add_argument("--outlier-scale", type=float, help=f"counts are divided by this factor times (max count + 1) "
                                                       f"before the beta fit (evaluate.outlier_scale: {d['outlier_scale']})")
    a.set_defaults(func=run_aggregate)

    q = subparsers.add_parser(
        "qsm-accuracy", help="accuracy of a QSM map against the synthetic truth",
        description="RMSE, NRMSE, Pearson r and slope of chi against the true chi inside the "
                    "brain mask (both referenced to their mean in the mask), and the mean chi "
                    "of each lesion class (cmb, iron, calcification, vein, epvs) against its "
                    "true value. One row per participant.")
    q.add_argument("--chi", required=True, type=Path, help="QSM map (ppm)")
    q.add_argument("--truth", required=True, type=Path, help="true susceptibility map (ppm)")
    q.add_argument("--mask", required=True, type=Path, help="brain mask on the same grid")
    q.add_argument("--lesion-map", type=Path, help="lesion id map (needs --lesions)")
    q.add_argument("--lesions", type=Path, help="lesions.tsv with lesion_id and cls")
    q.add_argument("--chi-tkd", dest="chi_tkd", type=Path,
                   help="TKD map (ppm) of the same local field: its accuracy is added as "
                        "tkd_* columns next to the main map's")
    q.add_argument("--chi-cfl2", dest="chi_cfl2", type=Path,
                   help="closed-form L2 map (ppm) of the same local field: cfl2_* columns")
    q.add_argument("--tissue", type=Path,
                   help="true tissue dseg: adds the deep grey matter ROI errors")
    q.add_argument("--participant", required=True, help="participant id")
    q.add_argument("--out", required=True, type=Path, help="TSV to write")
    q.set_defaults(func=run_qsm_accuracy)

    t = subparsers.add_parser(
        "qsm-table", help="collect per-participant QSM accuracy rows into one table",
        description="Concatenate 'deepmir qsm-accuracy' TSVs, add a mean row, write TSV and "
                    "Markdown.")
    t.add_argument("--inputs", required=True, nargs="*", type=Path, help="qsm-accuracy TSVs")
    t.add_argument("--out-tsv", required=True, type=Path)
    t.add_argument("--out-md", required=True, type=Path)
    t.set_defaults(func=run_qsm_table)

    o = subparsers.add_parser(
        "overlay", help="example figure: images with predicted and reference lesions and mimics",
        description="Rows = the axial slices with the most lesions, columns = the images; "
                    "predicted (solid) and reference (dashed) contours; mimics of the truth "
                    "filled when a prediction fell on them, open when rejected.")
    o.add_argument("--image", action="append", required=True, metavar="NAME=PATH",
                   help="an image on the label grid; repeat (e.g. SWI=swi.nii.gz QSM=...)")
    o.add_argument("--pred", required=True, type=Path, help="predicted dseg")
    o.add_argument("--ref", required=True, type=Path, help="reference dseg")
    o.add_argument("--mimics", type=Path, help="mimic / lesion id map (needs --mimic-table)")
    o.add_argument("--mimic-table", type=Path, help="index/name TSV or lesions.tsv")
    settings.add_option(o, "evaluate")
    o.add_argument("--tolerance", type=_positive, help=f"mimic hit tolerance in voxels (evaluate.tolerance.cmb: "
                                                       f"{d['tolerance']['cmb']})")
    o.add_argument("--n-slices", type=int, help=f"rows (evaluate.overlay.n_slices: {d['overlay']['n_slices']})")
    o.add_argument("--title", help="figure title")
    o.add_argument("--out", required=True, type=Path, help="PNG to write")
    o.set_defaults(func=run_overlay)

    m = subparsers.add_parser(
        "summary", help="the plain-text summary of the report folder (summary.md)",
        description="Collect the tables of 'deepmir aggregate' (and the QSM accuracy table "
                    "when given) with the matching rule and links to the figures into one "
                    "Markdown file.")
    m.add_argument("--report-dir", required=True, type=Path,
                   help="folder written by 'deepmir aggregate'")
    m.add_argument("--qsm-table", type=Path, help="qsm-table Markdown to include")
    m.add_argument("--figures", nargs="*", type=Path, default=[],
                   help="further figures to link (overlays)")
    m.add_argument("--tolerances", default="", help="text describing the tolerances used")
    m.add_argument("--out", required=True, type=Path, help="summary.md to write")
    m.set_defaults(func=run_summary)


