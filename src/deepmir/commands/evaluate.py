"""``deepmir evaluate`` (lesion-wise metrics of one prediction) and ``deepmir aggregate``
(statistics, Table 3 / S3.1 and figures over many metrics files).

All inputs are read and checked before anything is computed or written; a bad input raises
:class:`deepmir.errors.InputError` naming the file and leaves no output behind.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from nibabel.affines import voxel_sizes

from deepmir import niio
from deepmir.errors import InputError
from deepmir.evaluate import (MIMIC_CLASSES, MODE_CLASSES, class_mask, match_lesions, mimic_hits,
                              participant_metrics, validate_labels)

AFFINE_ATOL = 1e-3  # mm
QSM_RULE_SUFFIX = " +QSM rule"   # experiment name of the rows after the QSM rule
ID_COLUMNS = ["participant", "experiment", "mode"]


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not np.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def register(subparsers) -> None:
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
    p.add_argument("--tol-cmb", type=_positive, default=3.0, help="CMB tolerance (default 3)")
    p.add_argument("--tol-iron", type=_positive, default=5.0,
                   help="iron tolerance (default 5); union mode uses max(tol-cmb, tol-iron)")
    p.add_argument("--tol-unit", choices=("vox", "mm"), default="vox",
                   help="vox: distance in voxel index space (default); mm: in millimetres")
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
    a.add_argument("--baseline", default="SWI", help="baseline experiment (default SWI)")
    a.add_argument("--outlier-quantile", type=float, default=0.99,
                   help="participants whose reference CMB count is above this quantile of "
                        "the fitted beta distribution are excluded in the repeated analysis "
                        "(*_without_outliers files; default 0.99)")
    a.add_argument("--outlier-scale", type=float, default=2.0,
                   help="counts are divided by this factor times (max count + 1) before the "
                        "beta fit (default 2; see deepmir.stats.beta_outliers)")
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
    o.add_argument("--tolerance", type=_positive, default=3.0,
                   help="mimic hit tolerance in voxels (default 3)")
    o.add_argument("--n-slices", type=int, default=3, help="rows (default 3)")
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


# --------------------------------------------------------------------------- evaluate
def _load_labels(path: Path, what: str):
    if not path.is_file():
        raise InputError(path, f"{what} file not found")
    try:
        data, affine = niio.load(path, dtype=np.float64)
    except Exception as err:  # nibabel raises many kinds
        raise InputError(path, f"cannot read {what} as NIfTI ({err.__class__.__name__}: {err})")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"{what} must be a 3D volume, got shape {data.shape}")
    return data, affine


def _check_grid(path: Path, data, affine, ref_path: Path, ref_data, ref_affine, what: str):
    if data.shape != ref_data.shape:
        raise InputError(path, f"{what} shape {data.shape} differs from reference "
                               f"{ref_path} shape {ref_data.shape}")
    if not np.allclose(affine, ref_affine, atol=AFFINE_ATOL):
        raise InputError(path, f"{what} affine differs from reference {ref_path} affine "
                               f"(max difference {np.abs(affine - ref_affine).max():.4g})")


def _check_labels(path: Path, data, what: str):
    bad = validate_labels(data)
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5]) + (" ..." if bad.size > 5 else "")
        raise InputError(path, f"{what} has labels other than 0/1/2: {shown}")
    return data.astype(np.uint8)


def _read_mimic_table(path: Path) -> pd.DataFrame:
    """Mimic labels of the mimic map: a TSV with ``index`` and ``name`` (BIDS dseg.tsv style)
    or the synthetic truth's ``lesions.tsv`` (``lesion_id``, ``cls``; its cmb/iron rows are
    not mimics and are dropped)."""
    if not path.is_file():
        raise InputError(path, "mimic table not found")
    try:
        t = pd.read_csv(path, sep="\t")
    except Exception as err:
        raise InputError(path, f"cannot read mimic table ({err})")
    if {"index", "name"} <= set(t.columns):
        idx_col, name_col = "index", "name"
    elif {"lesion_id", "cls"} <= set(t.columns):
        idx_col, name_col = "lesion_id", "cls"
    else:
        raise InputError(path, "mimic table needs columns 'index' and 'name' "
                               "(or 'lesion_id' and 'cls' as in lesions.tsv)")
    names = t[name_col].astype(str).str.strip().str.lower()
    keep = ~names.isin(["cmb", "iron"])
    unknown = sorted(set(names[keep]) - set(MIMIC_CLASSES))
    if unknown:
        raise InputError(path, f"unknown mimic classes: {', '.join(unknown)}")
    try:
        idx = t.loc[keep, idx_col].astype(int)
    except (ValueError, TypeError):
        raise InputError(path, f"mimic table '{idx_col}' must hold integers")
    return pd.DataFrame({"index": idx.to_numpy(), "name": names[keep].to_numpy()})


def _write_text(path: Path, text: str | bytes) -> None:
    niio.write_text(path, text)


MIMIC_COLUMNS = [f"mimic_{m}_{what}" for m in MIMIC_CLASSES
                 for what in ("hits", "fp_hits", "count", "detected")]


def evaluate_volumes(pred, ref, mode: str, voxel_size, tol_cmb=3.0, tol_iron=5.0,
                     unit="vox", mimics=None, mimic_table=None) -> pd.DataFrame:
    """Metrics rows of one participant (no ids), one per class of ``mode``.

    With a mimic map (``mimics``, ``mimic_table``) each row also gets, per mimic class
    ``m`` (vein, calcification, epvs) and with the class's tolerance:
    ``mimic_<m>_hits`` predicted components of the class on a mimic of class m (shared voxel
    or centroid strictly closer than the tolerance, see ``deepmir.evaluate.mimic_hits``),
    ``mimic_<m>_fp_hits`` those among them that are false positives (matched to no
    reference lesion), ``mimic_<m>_count`` mimic components in the map and
    ``mimic_<m>_detected`` mimic components hit by a predicted component (the rest were
    rejected).
    """
    tolerances = {"cmb": tol_cmb, "iron": tol_iron, "union": max(tol_cmb, tol_iron)}
    classes = MODE_CLASSES[mode]
    df = participant_metrics(pred, ref, classes, tolerances, voxel_size, unit)
    if mimics is not None:
        unit_key = "tolerance_mm" if unit == "mm" else "tolerance_vox"
        cols = {c: [] for c in MIMIC_COLUMNS}
        for cls in classes:
            kw = {unit_key: tolerances[cls]}
            m = match_lesions(pred, ref, cls, voxel_size=voxel_size, **kw)
            fp_mask = np.isin(m.pred.labels, [i + 1 for i in m.unmatched_pred])
            h_all = mimic_hits(class_mask(pred, cls), mimics, mimic_table,
                               voxel_size=voxel_size, **kw).set_index("mimic")
            h_fp = mimic_hits(fp_mask, mimics, mimic_table, voxel_size=voxel_size,
                              **kw).set_index("mimic")
            for mc in MIMIC_CLASSES:
                cols[f"mimic_{mc}_hits"].append(int(h_all.loc[mc, "n_pred_hits"]))
                cols[f"mimic_{mc}_fp_hits"].append(int(h_fp.loc[mc, "n_pred_hits"]))
                cols[f"mimic_{mc}_count"].append(int(h_all.loc[mc, "n_mimics"]))
                cols[f"mimic_{mc}_detected"].append(int(h_all.loc[mc, "n_mimics_hit"]))
        for c, v in cols.items():
            df[c] = v
    return df


def _rows(df: pd.DataFrame, args, experiment: str, run: str | None) -> pd.DataFrame:
    df = df.copy()
    df.insert(0, "mode", args.mode)
    df.insert(0, "experiment", experiment)
    df.insert(0, "participant", args.participant)
    if run:
        df.insert(3, "run", run)
    return df


def run_evaluate(args) -> int:
    # read and check every input first
    ref, ref_aff = _load_labels(args.ref, "reference")
    pred, pred_aff = _load_labels(args.pred, "prediction")
    _check_grid(args.pred, pred, pred_aff, args.ref, ref, ref_aff, "prediction")
    ref = _check_labels(args.ref, ref, "reference")
    pred = _check_labels(args.pred, pred, "prediction")
    mimics = table = None
    if (args.mimics is None) != (args.mimic_table is None):
        missing = "--mimic-table" if args.mimic_table is None else "--mimics"
        given = args.mimics if args.mimics is not None else args.mimic_table
        raise InputError(given, f"needs {missing} as well")
    if args.mimics is not None:
        table = _read_mimic_table(args.mimic_table)
        mimics, m_aff = _load_labels(args.mimics, "mimic map")
        _check_grid(args.mimics, mimics, m_aff, args.ref, ref, ref_aff, "mimic map")
        if np.any(mimics != np.round(mimics)) or np.any(~np.isfinite(mimics)):
            raise InputError(args.mimics, "mimic map must hold integer labels")
        mimics = mimics.astype(np.int64)
    chi = None
    if args.qsm_rule_chi is not None:
        chi, _ = _load_on_grid(args.qsm_rule_chi, "QSM map", (args.ref, ref, ref_aff))
    # compute
    df = _rows(evaluate_volumes(pred, ref, args.mode, voxel_sizes(ref_aff), args.tol_cmb,
                                args.tol_iron, args.tol_unit, mimics, table), args, args.experiment, args.run)
    if chi is not None:
        from deepmir.postprocess import qsm_rule

        vs = voxel_sizes(ref_aff)
        ruled = evaluate_volumes(qsm_rule(pred, chi, vs), ref, args.mode, vs, args.tol_cmb,
                                 args.tol_iron, args.tol_unit, mimics, table)
        ruled = ruled[ruled["class"].isin(["cmb", "union"])]
        df = pd.concat([df, _rows(ruled, args, args.experiment + QSM_RULE_SUFFIX,
                                  args.run and args.run + "QsmRule")], ignore_index=True)
    # write
    from deepmir.tables import to_tsv
    _write_text(args.out, to_tsv(df))
    return 0


# --------------------------------------------------------------------------- aggregate
def read_metrics(paths) -> pd.DataFrame:
    """Concatenate metrics TSVs, checking columns, numbers and duplicate rows."""
    from deepmir.stats import REQUIRED_COLUMNS

    frames, seen = [], {}
    key_cols = ["participant", "experiment", "mode", "class"]
    numeric = [c for c in REQUIRED_COLUMNS if c != "participant"]
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "metrics file not found")
        try:
            df = pd.read_csv(path, sep="\t", na_values=["n/a"],
                             dtype={c: str for c in key_cols})
        except Exception as err:
            raise InputError(path, f"cannot read metrics TSV ({err})")
        missing = [c for c in key_cols + numeric if c not in df.columns]
        if missing:
            raise InputError(path, f"missing columns: {', '.join(missing)}")
        if df.empty:
            raise InputError(path, "no rows")
        for c in numeric + [c for c in ("magnitude_accuracy", "dice_matched_mean")
                            if c in df.columns]:
            try:
                df[c] = pd.to_numeric(df[c])
            except (ValueError, TypeError):
                raise InputError(path, f"column {c} must be numeric")
        if df[key_cols].isna().any().any():
            raise InputError(path, "empty participant/experiment/mode/class value")
        for key in df[key_cols].itertuples(index=False):
            if tuple(key) in seen:
                raise InputError(path, f"duplicate row {tuple(key)} (also in {seen[tuple(key)]})")
            seen[tuple(key)] = path
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=[*key_cols, *numeric])
    return pd.concat(frames, ignore_index=True)


FIGURES = (
    ("fig4_joint_single_class.png", [("cmb", "cmb"), ("iron", "iron")]),
    ("fig5_joint_multiclass.png", [("multiclass", "cmb"), ("multiclass", "iron")]),
    ("figS3_joint_union.png", [("union", "union")]),
)
TABLES = (
    ("table3", "TABLE3_SECTIONS", "Table 3: single class and multiclass prediction"),
    ("table_s3_1", "TABLE_S31_SECTIONS", "Table S3.1: single class prediction of CMB ∪ iron"),
)
TABLE_NOTE = ("\\* marks p < 0.05 against SWI alone (two-sided Wilcoxon rank-sum test); "
              "mean ± SEM [95 % t confidence interval]; n = participants behind the "
              "sensitivity / precision / magnitude-accuracy means.")


def aggregate_output_names() -> list[str]:
    """Every file ``deepmir aggregate`` writes into OUT_DIR (the list a workflow declares)."""
    names = ["metrics_participants.tsv", "outliers.tsv", "outliers.md"]
    for suffix in ("", "_without_outliers"):
        names += [f"aggregate{suffix}.tsv", f"wilcoxon{suffix}.tsv"]
        for stem, _, _ in TABLES:
            names += [f"{stem}{suffix}.tsv", f"{stem}_numbers{suffix}.tsv", f"{stem}{suffix}.md"]
    names += ["mimics.tsv", *(f for f, _ in FIGURES), "fig6_magnitude_accuracy.png"]
    return names


def aggregate_outputs(df: pd.DataFrame, baseline: str = "SWI", suffix: str = "",
                      with_figures: bool = True) -> dict[str, bytes | str]:
    """File name -> content of every aggregate output for one set of metrics rows.

    The set of names is fixed (whatever experiments are present), so that a workflow can
    declare them: a table without rows is written with its header and a Markdown note, a
    figure without data shows "no data". ``suffix`` is inserted before each extension.
    """
    from deepmir import figures, tables
    from deepmir.stats import aggregate, mimic_summary, wilcoxon_vs_baseline

    def name(stem, ext):
        return f"{stem}{suffix}.{ext}"

    out: dict[str, bytes | str] = {}
    agg = aggregate(df)
    wil = wilcoxon_vs_baseline(df, baseline=baseline)
    out[name("aggregate", "tsv")] = tables.to_tsv(agg)
    out[name("wilcoxon", "tsv")] = tables.to_tsv(wil)
    for stem, sections, title in TABLES:
        frame = tables.table3_frame(agg, wil, getattr(tables, sections), baseline)
        text = tables.format_table3(frame)
        out[name(stem, "tsv")] = tables.to_tsv(text)
        out[name(stem + "_numbers", "tsv")] = tables.to_tsv(frame)
        md = tables.to_markdown(text, title + (" (outliers excluded)" if suffix else ""))
        if frame.empty:
            md += "\nNo experiment of this kind was run.\n"
        out[name(stem, "md")] = md + "\n" + TABLE_NOTE + "\n"
    out[name("mimics", "tsv")] = tables.to_tsv(mimic_summary(df))
    if not with_figures:
        return out
    present = set(zip(df["mode"], df["class"]))
    for fname, groups in FIGURES:
        stem = fname[:-4]
        groups = [g for g in groups if g in present]
        if groups:
            fig, _ = figures.joint_scatter(df, groups, baseline=baseline)
        else:
            fig = figures.placeholder("no experiment of this kind was run")
        out[name(stem, "png")] = figures.png_bytes(fig)
    if present:
        fig, _ = figures.magnitude_histograms(df, baseline=baseline)
    else:
        fig = figures.placeholder("no data")
    out[name("fig6_magnitude_accuracy", "png")] = figures.png_bytes(fig)
    return out


def outlier_table(df: pd.DataFrame):
    """(table, excluded ids) of the beta rule on reference CMB counts, or (None, [])."""
    from deepmir.stats import beta_outliers

    cmb = df[df["class"] == "cmb"]
    if cmb.empty:
        return None, []
    counts = cmb.groupby("participant")["count_ref"].max()
    if counts.nunique() < 2:
        return None, []
    res = beta_outliers(counts)
    table = pd.DataFrame({"participant": counts.index, "cmb_count_ref": counts.to_numpy(),
                          "excluded": [p in res.excluded for p in counts.index],
                          "threshold": res.threshold, "beta_a": res.a, "beta_b": res.b,
                          "q": res.q})
    return table, res.excluded


OUTLIER_COLUMNS = ["participant", "cmb_count_ref", "excluded", "threshold", "beta_a", "beta_b",
                   "q"]


def outlier_table(df: pd.DataFrame, q: float = 0.99, scale_factor: float = 2.0):
    """(table, excluded ids, note) of the beta rule on reference CMB counts (the largest
    reference CMB count of each participant over the experiments evaluating CMBs; they are
    all the same annotation)."""
    from deepmir.stats import beta_outliers

    cmb = df[df["class"] == "cmb"]
    if cmb.empty:
        return pd.DataFrame(columns=OUTLIER_COLUMNS), [], "no experiment evaluates CMBs"
    counts = cmb.groupby("participant")["count_ref"].max()
    if counts.nunique() < 2:
        return (pd.DataFrame(columns=OUTLIER_COLUMNS), [],
                "fewer than two distinct reference CMB counts: no beta fit")
    res = beta_outliers(counts, q=q, scale_factor=scale_factor)
    table = pd.DataFrame({"participant": counts.index, "cmb_count_ref": counts.to_numpy(),
                          "excluded": [p in res.excluded for p in counts.index],
                          "threshold": res.threshold, "beta_a": res.a, "beta_b": res.b,
                          "q": res.q}, columns=OUTLIER_COLUMNS)
    note = (f"beta fit to the reference CMB counts of {len(counts)} participants "
            f"(a = {res.a:.3g}, b = {res.b:.3g}); {100 * q:g}th percentile = "
            f"{res.threshold:.1f} CMBs; excluded: {', '.join(res.excluded) or 'none'}")
    return table, res.excluded, note


def run_aggregate(args) -> int:
    from deepmir.tables import to_tsv

    df = read_metrics(args.metrics)
    outputs = aggregate_outputs(df, args.baseline)
    outputs["metrics_participants.tsv"] = to_tsv(df)
    table, excluded, note = outlier_table(df, args.outlier_quantile, args.outlier_scale)
    outputs["outliers.tsv"] = to_tsv(table)
    kept = df[~df["participant"].isin(excluded)]
    if kept.empty:
        kept = df
        note += " (that would leave no participant: nothing excluded)"
    repeat = aggregate_outputs(kept, args.baseline, suffix="_without_outliers",
                               with_figures=False)
    header = f"Outlier analysis: {note}.\n\n"
    for k in list(repeat):
        if k.endswith(".md"):
            repeat[k] = header + repeat[k]
    outputs.update({k: v for k, v in repeat.items()
                    if k.startswith(("table3", "table_s3_1", "aggregate", "wilcoxon"))})
    outputs["outliers.md"] = header
    for name, content in outputs.items():
        _write_text(args.out_dir / name, content)
    return 0


# --------------------------------------------------------------------------- QSM accuracy
def _load_on_grid(path: Path, what: str, ref=None):
    data, aff = _load_labels(path, what)
    if ref is not None:
        _check_grid(path, data, aff, ref[0], ref[1], ref[2], what)
    return data, aff


def run_qsm_accuracy(args) -> int:
    from deepmir.evaluate import qsm_accuracy
    from deepmir.tables import to_tsv

    chi, aff = _load_on_grid(args.chi, "QSM map")
    grid = (args.chi, chi, aff)
    truth, _ = _load_on_grid(args.truth, "true susceptibility", grid)
    mask, _ = _load_on_grid(args.mask, "brain mask", grid)
    lesion_map = classes = None
    if (args.lesion_map is None) != (args.lesions is None):
        given = args.lesion_map if args.lesion_map is not None else args.lesions
        raise InputError(given, "--lesion-map and --lesions go together")
    if args.lesion_map is not None:
        lesion_map, _ = _load_on_grid(args.lesion_map, "lesion map", grid)
        try:
            t = pd.read_csv(args.lesions, sep="\t")
        except Exception as err:
            raise InputError(args.lesions, f"cannot read lesion table ({err})")
        if not {"lesion_id", "cls"} <= set(t.columns):
            raise InputError(args.lesions, "lesion table needs columns lesion_id and cls")
        classes = dict(zip(t["lesion_id"].astype(int), t["cls"].astype(str)))
        lesion_map = np.rint(lesion_map).astype(np.int64)
    if not np.any(mask > 0):
        raise InputError(args.mask, "brain mask is empty")
    tissue = None if args.tissue is None else _load_on_grid(args.tissue, "tissue dseg", grid)[0]
    vox = float(abs(np.linalg.det(np.asarray(aff, float)[:3, :3])))
    vs = tuple(np.sqrt((np.asarray(aff, float)[:3, :3] ** 2).sum(0)))
    try:
        row = qsm_accuracy(chi, truth, mask, lesion_map, classes, tissue, vox, vs)
    except ValueError as err:
        raise InputError(args.chi, str(err))
    for prefix, path, what in (("tkd", args.chi_tkd, "TKD map"),
                               ("cfl2", args.chi_cfl2, "CFL2 map")):
        if path is not None:
            other_map, _ = _load_on_grid(path, what, grid)
            other = qsm_accuracy(other_map, truth, mask, lesion_map, classes, tissue, vox, vs)
            row.update({f"{prefix}_{k}": v for k, v in other.items() if k != "n_voxels"})
    _write_text(args.out, to_tsv(pd.DataFrame([{"participant": args.participant, **row}])))
    return 0


def run_qsm_table(args) -> int:
    from deepmir.tables import to_markdown, to_tsv

    frames = []
    for path in args.inputs:
        if not path.is_file():
            raise InputError(path, "QSM accuracy file not found")
        try:
            frames.append(pd.read_csv(path, sep="\t", na_values=["n/a"]))
        except Exception as err:
            raise InputError(path, f"cannot read QSM accuracy TSV ({err})")
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["participant"])
    if len(df):
        mean = df.drop(columns="participant").mean(numeric_only=True)
        df = pd.concat([df, pd.DataFrame([{"participant": "mean", **mean}])],
                       ignore_index=True)
    for base in ("tkd", "cfl2"):
        if {"nrmse_percent", f"{base}_nrmse_percent"} <= set(df.columns):
            better = df["nrmse_percent"] < df[f"{base}_nrmse_percent"]
            df[f"beats_{base}"] = better.astype(object)
            if len(df) > 1:
                df.loc[df.index[-1], f"beats_{base}"] = bool(better.iloc[:-1].all())
    _write_text(args.out_tsv, to_tsv(df))
    show = ["participant", "rmse_ppm", "nrmse_percent", "tkd_nrmse_percent", "beats_tkd",
            "cfl2_nrmse_percent", "beats_cfl2",
            "pearson_r", "slope", "deep_gm_abs_error_ppm", "cmb_moment_ratio",
            "juxtacortical_cmb_moment_ratio", "juxtacortical_cmb_n_positive",
            "juxtacortical_cmb_n",
            "cmb_n_positive", "cmb_n", "calcification_n_negative", "calcification_n",
            *[f"{c}_ratio" for c in ("cmb", "iron", "calcification", "vein", "epvs")]]
    short = df[[c for c in show if c in df.columns]].copy()
    for c in short.columns[1:]:
        short[c] = short[c].map(lambda v: v if isinstance(v, (bool, np.bool_)) else
                                (f"{v:.3f}" if pd.notna(v) else "n/a"))
    text = to_markdown(short, "QSM accuracy against the synthetic truth")
    text += ("\nχ and true χ referenced to their mean inside the brain mask. NRMSE = "
             "100·‖χ − χ_true‖/‖χ_true‖ (tkd_, cfl2_: the same for TKD and for the "
             "closed-form L2 inversion of the same local field; beats_tkd, beats_cfl2: the "
             "main map's NRMSE below theirs, in the mean row: on every participant — where "
             "it says False, MEDI does not beat that baseline); "
             "slope = least-squares slope of χ against χ_true; deep_gm_abs_error_ppm = mean "
             "|ROI error| over caudate, putamen, pallidum and thalamus; cmb_moment_ratio = "
             "median over CMBs of the susceptibility moment / its true moment "
             "(juxtacortical_: over the CMBs whose centre lies within 3 mm of the cortex); "
             "<class>_n_positive/negative = lesions whose voxels lie above/below the shell "
             "around them; "
             "<class>_ratio = mean χ over the class's lesion voxels / its true mean "
             "(1 = exact; below 1 = underestimated).\n")
    _write_text(args.out_md, text)
    return 0


# --------------------------------------------------------------------------- overlay
def axial_axis(affine) -> int:
    """The array axis closest to the scanner z axis (world RAS/LPS third coordinate)."""
    a = np.asarray(affine, dtype=float)[:3, :3]
    cols = a / np.linalg.norm(a, axis=0)
    return int(np.argmax(np.abs(cols[2])))


def run_overlay(args) -> int:
    from deepmir import figures
    from deepmir.evaluate import mimic_status

    ref, ref_aff = _load_labels(args.ref, "reference")
    pred, pred_aff = _load_labels(args.pred, "prediction")
    _check_grid(args.pred, pred, pred_aff, args.ref, ref, ref_aff, "prediction")
    ref = _check_labels(args.ref, ref, "reference")
    pred = _check_labels(args.pred, pred, "prediction")
    images = {}
    for item in args.image:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(item, "expected NAME=PATH")
        img, aff = _load_labels(Path(path), name)
        _check_grid(Path(path), img, aff, args.ref, ref, ref_aff, name)
        images[name] = img
    status = None
    if (args.mimics is None) != (args.mimic_table is None):
        given = args.mimics if args.mimics is not None else args.mimic_table
        raise InputError(given, "--mimics and --mimic-table go together")
    if args.mimics is not None:
        table = _read_mimic_table(args.mimic_table)
        mimics, m_aff = _load_labels(args.mimics, "mimic map")
        _check_grid(args.mimics, mimics, m_aff, args.ref, ref, ref_aff, "mimic map")
        status = mimic_status(pred, np.rint(mimics).astype(np.int64), table, args.tolerance)
    fig, _ = figures.overlay_volume(images, pred, ref, status, axial_axis(ref_aff),
                                    max(1, args.n_slices), title=args.title)
    _write_text(args.out, figures.png_bytes(fig))
    return 0


# --------------------------------------------------------------------------- summary
MATCHING_RULE = """\
Lesions are the 26-connected components of each class in the prediction and in the
reference. A predicted and a reference lesion match when their centroids (unweighted mean of
voxel indices) are strictly closer than the class tolerance — a pair exactly at the tolerance
does not match. Matching is one-to-one and greedy: all candidate pairs are taken in order of
increasing centroid distance (ties: predicted, then reference lesion in raster order) and a
pair is kept when neither lesion is matched yet. TP = matched pairs, FP = unmatched predicted
lesions, FN = unmatched reference lesions. Each class is matched on its own labels, so a CMB
predicted as iron is an FN for CMB and an FP for iron. Sensitivity TP/(TP+FN) is undefined for
a participant without reference lesions and precision TP/(TP+FP) for one without predicted
lesions; undefined values are left out of the means and the n column says how many
participants each mean covers. Magnitude accuracy: per participant sqrt(sens² + prec²),
averaged (the column the study reports; √2 is perfect) — the magnitude accuracy of the mean
sensitivity and precision is given beside it.
"""


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _tsv_table(path: Path, columns: dict, title: str, decimals: int = 2) -> str:
    from deepmir.tables import to_markdown

    if not path.is_file():
        return ""
    df = _read_tsv(path, sep="\t", na_values=["n/a"])
    if df.empty:
        return f"**{title}**\n\nNo rows.\n"
    df = df[[c for c in columns if c in df.columns]].rename(columns=columns)
    for c in df.columns:
        if pd.api.types.is_float_dtype(df[c]):
            df[c] = df[c].map(lambda v: f"{v:.{decimals}f}" if pd.notna(v) else "n/a")
    return to_markdown(df, title)


def _read_tsv(path, **kw) -> pd.DataFrame:
    """A TSV as a frame; an empty file (nothing evaluated) as an empty frame."""
    try:
        return pd.read_csv(path, **kw)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def summary_markdown(report_dir: Path, qsm_table: Path | None = None, figures=(),
                     tolerances: str = "") -> str:
    """summary.md: Table 3, Table S3.1, mimic analysis, pooled metrics and count agreement,
    outlier analysis, QSM accuracy and links to every figure."""
    d = Path(report_dir)
    parts = ["# deepmir: results summary", ""]
    metrics = d / "metrics_participants.tsv"
    if metrics.is_file():
        df = _read_tsv(metrics, sep="\t", na_values=["n/a"], dtype=str)
        if len(df):
            runs = df.drop_duplicates(["experiment", "mode"])
            parts.append(f"{df['participant'].nunique()} participants evaluated; "
                         f"{len(runs)} experiments (modalities / label mode): "
                         + ", ".join(f"{e} / {m}" for e, m in
                                     zip(runs["experiment"], runs["mode"])) + ".")
        else:
            parts.append("No experiment was evaluated (no prediction in this run).")
        parts.append("")
    parts += ["## Matching rule", "", MATCHING_RULE.strip()]
    if tolerances:
        parts += ["", f"Tolerances of this run: {tolerances}."]
    parts += ["", "## Table 3", "", _read(d / "table3.md").strip(), "",
              "## Table S3.1", "", _read(d / "table_s3_1.md").strip(), ""]
    parts += ["## Mimic analysis", "",
              "Predicted lesions that fall on a mimic of the synthetic truth (a vein, a "
              "calcification or a perivascular space: shared voxel or centroid within the "
              "class tolerance), of them false positives, and the mimics no prediction fell "
              "on (rejected).", ""]
    mim = d / "mimics.tsv"
    mdf = _read_tsv(mim, sep="\t", na_values=["n/a"]) if mim.is_file() else pd.DataFrame()
    if mdf.empty:
        parts.append("No synthetic truth in this run: no mimic analysis.")
    else:
        cols = {"mode": "label mode", "experiment": "modalities", "class": "class",
                "n_participants": "n"}
        for m in ("vein", "calcification", "epvs"):
            cols[f"{m}_pred"] = f"on {m}"
            cols[f"{m}_fp"] = f"on {m} (FP)"
            cols[f"{m}_rejected"] = f"{m} rejected / present"
        mdf[[f"{m}_rejected" for m in ("vein", "calcification", "epvs")]] = [
            [f"{r[f'{m}_rejected']} / {r[f'{m}_mimics']}" for m in ("vein", "calcification",
                                                                    "epvs")]
            for _, r in mdf.iterrows()]
        from deepmir.tables import to_markdown
        parts.append(to_markdown(mdf[list(cols)].rename(columns=cols)).strip())
    parts.append("")
    parts += ["## Pooled metrics and count agreement", "",
              _tsv_table(d / "aggregate.tsv", {
                  "mode": "label mode", "experiment": "modalities", "class": "class",
                  "n_participants": "n", "pooled_precision": "pooled precision",
                  "pooled_recall": "pooled recall", "pooled_F1": "pooled F1",
                  "dice_matched_mean": "Dice (matched)", "count_icc_2_1": "count ICC(2,1)",
                  "count_ba_bias": "count bias", "count_ba_loa_low": "LoA low",
                  "count_ba_loa_high": "LoA high"}, "Dataset-level metrics").strip(), "",
              "Pooled: from the summed TP, FP, FN of all participants. Count agreement between "
              "predicted and reference lesion counts: ICC(2,1) (two-way random, absolute "
              "agreement) and Bland–Altman bias (predicted − reference) with 95 % limits.", ""]
    parts += ["## Outlier analysis", "", _read(d / "outliers.md").strip(), ""]
    out_tsv = d / "outliers.tsv"
    odf = _read_tsv(out_tsv, sep="\t", dtype=str) if out_tsv.is_file() else pd.DataFrame()
    if len(odf) and (odf["excluded"] == "True").any():
        for stem in ("table3", "table_s3_1"):
            parts += [_read(d / f"{stem}_without_outliers.md").split("\n\n", 1)[-1].strip(), ""]
    else:
        parts += ["No participant is excluded: the repeated analysis equals the main one.", ""]
    if qsm_table is not None:
        parts += ["## QSM accuracy", "", _read(Path(qsm_table)).strip(), ""]
    parts += ["## Figures", ""]
    figs = [("fig4_joint_single_class.png", "Figure 4: sensitivity vs precision, single class"),
            ("fig5_joint_multiclass.png", "Figure 5: sensitivity vs precision, multiclass"),
            ("figS3_joint_union.png", "Figure S3: sensitivity vs precision, CMB ∪ iron"),
            ("fig6_magnitude_accuracy.png", "Figure 6: magnitude accuracy histograms")]
    figs += [(Path(f).name, f"Example: {Path(f).stem}") for f in figures]
    for name, caption in figs:
        parts.append(f"- [{caption}]({name})")
    return "\n".join(parts).rstrip() + "\n"


def run_summary(args) -> int:
    if not args.report_dir.is_dir():
        raise InputError(args.report_dir, "report folder not found")
    if args.qsm_table is not None and not args.qsm_table.is_file():
        raise InputError(args.qsm_table, "QSM table not found")
    text = summary_markdown(args.report_dir, args.qsm_table, args.figures, args.tolerances)
    _write_text(args.out, text)
    return 0
