"""The report's summary page (`deepmir summary`): the study's tables and figures of a report folder
as one Markdown page, with the matching rule spelled out."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

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
    from deepmir.evaluate.tables import to_markdown

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
        from deepmir.evaluate.tables import to_markdown
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
