"""Table 3 and Table S3.1 of the study from ``deepmir.evaluate.stats`` results, as DataFrames and as
TSV / Markdown text (Markdown written here, no tabulate).

Layout (preprint Table 3): sections *label mode × class* (Single Class CMB Only, Single
Class Iron Deposits Only, Multiclass CMB, Multiclass Iron Deposits; Table S3.1: Single
Class CMB ∪ Iron Deposits), rows = modality sets (SWI baseline first), columns = average
sensitivity, average precision, average magnitude accuracy — each "mean ± SEM [CI: lower,
upper]", with ``*`` after the mean when the Wilcoxon rank-sum test against SWI gives
p < 0.05 — and false positives per participant. Two columns the study lacks are added:
the participants behind each mean (``n``: sensitivity/precision/magnitude accuracy) and
the magnitude accuracy of the means, sqrt(mean sens² + mean prec²) (see ``deepmir.evaluate.stats``
on why the published column is the mean of the per-participant values).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: (section title, label mode, class)
TABLE3_SECTIONS = (
    ("Single Class CMB Only", "cmb", "cmb"),
    ("Single Class Iron Deposits Only", "iron", "iron"),
    ("Multiclass CMB", "multiclass", "cmb"),
    ("Multiclass Iron Deposits", "multiclass", "iron"),
)
TABLE_S31_SECTIONS = (("Single Class CMB ∪ Iron Deposits", "union", "union"),)

MODALITY_ORDER = ("SWI", "SWI+QSM", "SWI+T2", "SWI+QSM+T2")
MODALITY_NAMES = {
    "SWI": "SWI (baseline)",
    "SWI+QSM": "SWI and QSM",
    "SWI+T2": "SWI and T2",
    "SWI+QSM+T2": "SWI, QSM and T2",
}
MEASURES = (
    ("sensitivity", "Avg Sensitivity ± SEM [CI: lower, upper]"),
    ("precision", "Avg Precision ± SEM [CI: lower, upper]"),
    ("magnitude_accuracy", "Avg Magnitude Accuracy ± SEM [CI: lower, upper]"),
)


def modality_name(experiment: str, baseline: str = "SWI") -> str:
    if experiment == baseline and experiment not in MODALITY_NAMES:
        return f"{experiment} (baseline)"
    return MODALITY_NAMES.get(experiment, experiment)


def _order(experiments, baseline: str) -> list[str]:
    exps = list(dict.fromkeys(experiments))
    known = [e for e in MODALITY_ORDER if e in exps]
    rest = sorted(e for e in exps if e not in MODALITY_ORDER)
    out = known + rest
    if baseline in out:
        out.remove(baseline)
        out.insert(0, baseline)
    return out


def table3_frame(agg: pd.DataFrame, wilcoxon: pd.DataFrame | None = None,
                 sections=TABLE3_SECTIONS, baseline: str = "SWI") -> pd.DataFrame:
    """Numeric Table 3: one row per section × experiment present in ``agg``
    (``deepmir.evaluate.stats.aggregate`` output), in the study's order.

    Columns: section, mode, class, experiment, modalities, n_participants, and for
    sensitivity, precision and magnitude_accuracy (mean of per-participant values)
    ``n_<m>``, ``<m>_mean``, ``<m>_sem``, ``<m>_ci_low``, ``<m>_ci_high``, ``<m>_p``,
    ``<m>_significant``; magnitude_accuracy_of_means, fp_per_participant.
    """
    rows = []
    if agg.empty or "mode" not in agg.columns:
        return pd.DataFrame(rows)
    for title, mode, cls in sections:
        sub = agg[(agg["mode"] == mode) & (agg["class"] == cls)]
        for exp in _order(sub["experiment"], baseline):
            a = sub[sub["experiment"] == exp].iloc[0]
            row = {"section": title, "mode": mode, "class": cls, "experiment": exp,
                   "modalities": modality_name(exp, baseline),
                   "n_participants": int(a["n_participants"])}
            for m, _ in MEASURES:
                row[f"n_{m}"] = int(a[f"n_{m}"])
                for part in ("mean", "sem", "ci_low", "ci_high"):
                    row[f"{m}_{part}"] = float(a[f"{m}_{part}"])
                p = float("nan")
                if wilcoxon is not None and len(wilcoxon) and exp != baseline:
                    w = wilcoxon[(wilcoxon["mode"] == mode) & (wilcoxon["class"] == cls)
                                 & (wilcoxon["experiment"] == exp) & (wilcoxon["metric"] == m)]
                    if len(w):
                        p = float(w["p_value"].iloc[0])
                row[f"{m}_p"] = p
                row[f"{m}_significant"] = bool(np.isfinite(p) and p < 0.05)
            row["magnitude_accuracy_of_means"] = float(a["magnitude_accuracy"])
            row["fp_per_participant"] = float(a["fp_per_participant"])
            rows.append(row)
    return pd.DataFrame(rows)


def _num(x: float, decimals: int) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{decimals}f}"


def format_measure(mean, sem, lo, hi, significant=False, decimals: int = 2) -> str:
    """'0.88* ± 0.06 [0.77, 0.99]' as in the study (the star marks p < 0.05 vs SWI)."""
    star = "*" if significant else ""
    return (f"{_num(mean, decimals)}{star} ± {_num(sem, decimals)} "
            f"[{_num(lo, decimals)}, {_num(hi, decimals)}]")


def format_table3(frame: pd.DataFrame, decimals: int = 2) -> pd.DataFrame:
    """Text Table 3 in the study's layout from :func:`table3_frame`."""
    rows = []
    for _, r in frame.iterrows():
        row = {"Labels": r["section"], "Modalities Used": r["modalities"]}
        for m, title in MEASURES:
            row[title] = format_measure(r[f"{m}_mean"], r[f"{m}_sem"], r[f"{m}_ci_low"],
                                        r[f"{m}_ci_high"], r[f"{m}_significant"], decimals)
        row["False Positives per Participant"] = _num(r["fp_per_participant"], decimals)
        row["Magnitude Accuracy of Means"] = _num(r["magnitude_accuracy_of_means"], decimals)
        row["n (sens/prec/MA)"] = (f"{r['n_sensitivity']}/{r['n_precision']}/"
                                   f"{r['n_magnitude_accuracy']}")
        rows.append(row)
    cols = ["Labels", "Modalities Used", *(t for _, t in MEASURES),
            "False Positives per Participant", "Magnitude Accuracy of Means", "n (sens/prec/MA)"]
    return pd.DataFrame(rows, columns=cols)


def table3(agg, wilcoxon=None, baseline: str = "SWI", decimals: int = 2) -> pd.DataFrame:
    """Text Table 3 (CMB only, iron only, multiclass CMB, multiclass iron)."""
    return format_table3(table3_frame(agg, wilcoxon, TABLE3_SECTIONS, baseline), decimals)


def table_s3_1(agg, wilcoxon=None, baseline: str = "SWI", decimals: int = 2) -> pd.DataFrame:
    """Text Table S3.1 (single class CMB ∪ iron deposits)."""
    return format_table3(table3_frame(agg, wilcoxon, TABLE_S31_SECTIONS, baseline), decimals)


# --------------------------------------------------------------------------- text output
def _cell(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (float, np.floating)) and not math.isfinite(x):
        return "n/a"
    return str(x)


def to_tsv(df: pd.DataFrame) -> str:
    """Tab-separated text, header first, missing values as ``n/a``; tabs and newlines inside
    cells become spaces."""
    def clean(x):
        return _cell(x).replace("\t", " ").replace("\r", " ").replace("\n", " ")
    lines = ["\t".join(clean(c) for c in df.columns)]
    lines += ["\t".join(clean(v) for v in row) for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_markdown(df: pd.DataFrame, title: str | None = None) -> str:
    """GitHub-flavoured Markdown table (``|`` in cells escaped as ``\\|``), optional title."""
    def clean(x):
        return _cell(x).replace("|", "\\|").replace("\n", " ")
    lines = []
    if title:
        lines += [f"**{title}**", ""]
    lines.append("| " + " | ".join(clean(c) for c in df.columns) + " |")
    lines.append("| " + " | ".join("---" for _ in df.columns) + " |")
    lines += ["| " + " | ".join(clean(v) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
