"""The group outputs of the evaluation (`deepmir aggregate`, `deepmir qsm-table`): metrics files
read and checked, Table 3 / S3.1, Wilcoxon tests and figures, the outlier analysis, the QSM
accuracy table (method.md §6)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from deepmir import niio, settings
from deepmir.errors import InputError

_EVAL = settings.read("evaluate")      # the schema's evaluate defaults

ID_COLUMNS = ["participant", "experiment", "mode"]

QSM_RULE_SUFFIX = " +QSM rule"   # experiment name of the rows after the QSM rule


def read_metrics(paths) -> pd.DataFrame:
    """Concatenate metrics TSVs, checking columns, numbers and duplicate rows."""
    from deepmir.evaluate.stats import REQUIRED_COLUMNS

    frames, seen = [], {}
    key_cols = ["participant", "experiment", "mode", "class"]
    numeric = [c for c in REQUIRED_COLUMNS if c != "participant"]
    for path in paths:
        path = niio.regular_file(path, "metrics file")
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
    from deepmir.evaluate import figures, tables
    from deepmir.evaluate.stats import aggregate, mimic_summary, wilcoxon_vs_baseline

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

OUTLIER_COLUMNS = ["participant", "cmb_count_ref", "excluded", "threshold", "beta_a", "beta_b",
                   "q"]


def outlier_table(df: pd.DataFrame, q: float = _EVAL["outlier_quantile"],
                  scale_factor: float = _EVAL["outlier_scale"]):
    """(table, excluded ids, note) of the beta rule on reference CMB counts (the largest
    reference CMB count of each participant over the experiments evaluating CMBs; they are
    all the same annotation)."""
    from deepmir.evaluate.stats import beta_outliers

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

def aggregate_files(df: pd.DataFrame, baseline: str, quantile: float, scale: float) -> dict:
    """{file name: content} of `deepmir aggregate`: the per-participant metrics, the outputs of
    :func:`aggregate_outputs` on every participant and again without the beta-rule outliers,
    and the outlier analysis."""
    from deepmir.evaluate.tables import to_tsv

    outputs = aggregate_outputs(df, baseline)
    outputs["metrics_participants.tsv"] = to_tsv(df)
    table, excluded, note = outlier_table(df, quantile, scale)
    outputs["outliers.tsv"] = to_tsv(table)
    kept = df[~df["participant"].isin(excluded)]
    if kept.empty:
        kept = df
        note += " (that would leave no participant: nothing excluded)"
    repeat = aggregate_outputs(kept, baseline, suffix="_without_outliers", with_figures=False)
    header = f"Outlier analysis: {note}.\n\n"
    for k in list(repeat):
        if k.endswith(".md"):
            repeat[k] = header + repeat[k]
    outputs.update({k: v for k, v in repeat.items()
                    if k.startswith(("table3", "table_s3_1", "aggregate", "wilcoxon"))})
    outputs["outliers.md"] = header
    return outputs


def read_qsm_accuracy(paths) -> pd.DataFrame:
    """The participants' qsm-accuracy TSVs as one table (checked readable)."""
    frames = []
    for path in paths:
        niio.regular_file(path, "QSM accuracy file")
        try:
            frames.append(pd.read_csv(path, sep="\t", na_values=["n/a"]))
        except Exception as err:
            raise InputError(path, f"cannot read QSM accuracy TSV ({err})")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["participant"])


def qsm_table(df: pd.DataFrame) -> tuple[str, str]:
    """(TSV, Markdown) of the QSM accuracy table: every participant, their mean, and whether
    the main map beats TKD and CFL2 of the same field (on every participant in the mean row)."""
    from deepmir.evaluate.tables import to_markdown, to_tsv

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
    tsv = to_tsv(df)
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
    return tsv, text
