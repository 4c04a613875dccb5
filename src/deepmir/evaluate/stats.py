"""Statistics over per-participant metrics (preprint §2.6, Table 3, supplement S4.1).

Input: the rows written by ``deepmir evaluate`` — one per participant × experiment × label
mode × class, with at least ``participant``, ``TP``, ``FP``, ``FN``, ``sensitivity``,
``precision``, ``count_pred`` and ``count_ref``; ``experiment`` names the modality set
(``SWI``, ``SWI+QSM``, ...) and ``mode`` the label mode (``cmb``, ``iron``, ``union``,
``multiclass``).

Rules:

* Means skip undefined (NaN) values — a participant without reference lesions has no
  sensitivity, one without predicted lesions no precision — and every mean comes with the
  number of participants behind it (``n_sensitivity``, ...).
* Spread: SEM = sample SD (ddof = 1) / √n; 95 % CI = mean ± t(0.975, n − 1) · SEM. With
  n < 2 both are NaN.
* ``magnitude_accuracy`` = sqrt(mean sensitivity² + mean precision²) — the preprint's
  formula (§2.5); a perfect prediction gives √2. ``magnitude_accuracy_mean`` is the mean of
  the per-participant sqrt(sens² + prec²) with its SEM/CI: the published Table 3 values
  are of this kind (they carry an SEM and exceed the formula applied to the published
  means in every row, e.g. CMB SWI+QSM: sqrt(0.88² + 0.40²) = 0.97, table 1.09).
* FP per participant: mean FP count over all participants of the group (always defined).
* Pooled precision / recall / F1 from the summed TP, FP, FN of the group.
* Count agreement between predicted and reference lesion counts: ICC(2,1) of Shrout &
  Fleiss (1979) — two-way random effects, absolute agreement, single measures (McGraw &
  Wong's ICC(A,1)) — and Bland–Altman bias (mean of pred − ref) with 95 % limits of
  agreement bias ± 1.96 · SD (ddof = 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

GROUP_KEYS = ("mode", "experiment", "class")
REQUIRED_COLUMNS = ("participant", "TP", "FP", "FN", "sensitivity", "precision",
                    "count_pred", "count_ref")
WILCOXON_METRICS = ("sensitivity", "precision", "magnitude_accuracy")


# --------------------------------------------------------------------------- basics
def mean_sem_ci(values, confidence: float = 0.95) -> dict:
    """n, mean, SEM and t-based CI of the finite values (NaN skipped)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    mean = float(x.mean()) if n else float("nan")
    if n >= 2:
        sem = float(x.std(ddof=1) / np.sqrt(n))
        half = float(sps.t.ppf(0.5 + confidence / 2.0, n - 1)) * sem
        lo, hi = mean - half, mean + half
    else:
        sem = lo = hi = float("nan")
    return {"n": n, "mean": mean, "sem": sem, "ci_low": lo, "ci_high": hi}


def magnitude_accuracy(sensitivity, precision):
    """sqrt(sensitivity² + precision²); NaN where either is NaN. Maximum √2."""
    return np.hypot(np.asarray(sensitivity, dtype=float), np.asarray(precision, dtype=float))


def icc_2_1(ratings) -> float:
    """ICC(2,1) (Shrout & Fleiss 1979): two-way random effects, absolute agreement, single
    measures, for an n targets × k raters matrix (rows with NaN are dropped).

    ICC = (BMS − EMS) / (BMS + (k − 1)·EMS + k·(JMS − EMS)/n). NaN with fewer than two
    targets or when the denominator is 0 (e.g. all ratings equal).
    """
    x = np.asarray(ratings, dtype=float)
    if x.ndim != 2:
        raise ValueError("ratings must be a 2D array (targets × raters)")
    x = x[np.all(np.isfinite(x), axis=1)]
    n, k = x.shape
    if n < 2 or k < 2:
        return float("nan")
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    bms = ss_rows / (n - 1)
    jms = ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    den = bms + (k - 1) * ems + k * (jms - ems) / n
    if not np.isfinite(den) or abs(den) < 1e-12:
        return float("nan")
    return float((bms - ems) / den)


def bland_altman(pred, ref) -> dict:
    """Bias = mean(pred − ref), SD (ddof = 1), limits of agreement bias ± 1.96·SD."""
    p = np.asarray(pred, dtype=float)
    r = np.asarray(ref, dtype=float)
    ok = np.isfinite(p) & np.isfinite(r)
    d = p[ok] - r[ok]
    n = int(d.size)
    bias = float(d.mean()) if n else float("nan")
    sd = float(d.std(ddof=1)) if n >= 2 else float("nan")
    return {"n": n, "bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd,
            "loa_high": bias + 1.96 * sd}


def _ratio(a, b) -> float:
    return float(a) / float(b) if b > 0 else float("nan")


# --------------------------------------------------------------------------- aggregate
def check_columns(df: pd.DataFrame, required=REQUIRED_COLUMNS) -> list[str]:
    """Required columns missing from ``df``."""
    return [c for c in required if c not in df.columns]


def _with_magnitude(df: pd.DataFrame) -> pd.DataFrame:
    if "magnitude_accuracy" not in df.columns:
        df = df.assign(magnitude_accuracy=magnitude_accuracy(df["sensitivity"], df["precision"]))
    return df


def group_keys(df: pd.DataFrame) -> list[str]:
    return [k for k in GROUP_KEYS if k in df.columns]


def aggregate(df_participants: pd.DataFrame) -> pd.DataFrame:
    """One row per (mode, experiment, class) present; see the module docstring for rules.

    Columns: the group keys, ``n_participants``; for sensitivity, precision and the
    per-participant magnitude accuracy ``n_<m>``, ``<m>_mean``, ``<m>_sem``,
    ``<m>_ci_low``, ``<m>_ci_high`` (``<m>`` = sensitivity, precision, magnitude_accuracy);
    ``magnitude_accuracy`` (of the means); ``fp_per_participant`` (+ ``_sem``);
    ``pooled_TP/FP/FN``, ``pooled_precision``, ``pooled_recall``, ``pooled_F1``;
    ``dice_matched_mean`` (mean over participants with a match, if the column exists);
    ``count_icc_2_1``, ``count_ba_bias``, ``count_ba_loa_low``, ``count_ba_loa_high``.
    """
    missing = check_columns(df_participants)
    if missing:
        raise ValueError(f"missing columns: {', '.join(missing)}")
    df = _with_magnitude(df_participants)
    keys = group_keys(df)
    grouped = df.groupby(keys, sort=False, dropna=False) if keys else [((), df)]
    rows = []
    for key, g in grouped:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key))
        row["n_participants"] = int(g["participant"].nunique())
        for m in ("sensitivity", "precision", "magnitude_accuracy"):
            s = mean_sem_ci(g[m])
            row[f"n_{m}"] = s["n"]
            for part in ("mean", "sem", "ci_low", "ci_high"):
                row[f"{m}_{part}"] = s[part]
        row["magnitude_accuracy"] = float(np.hypot(row["sensitivity_mean"],
                                                   row["precision_mean"]))
        fp = mean_sem_ci(g["FP"])
        row["fp_per_participant"] = fp["mean"]
        row["fp_per_participant_sem"] = fp["sem"]
        tp, fpn, fn = (int(g[c].sum()) for c in ("TP", "FP", "FN"))
        row.update(pooled_TP=tp, pooled_FP=fpn, pooled_FN=fn,
                   pooled_precision=_ratio(tp, tp + fpn), pooled_recall=_ratio(tp, tp + fn),
                   pooled_F1=_ratio(2 * tp, 2 * tp + fpn + fn))
        if "dice_matched_mean" in g.columns:
            d = mean_sem_ci(g["dice_matched_mean"])
            row["n_dice"] = d["n"]
            row["dice_matched_mean"] = d["mean"]
        row["count_icc_2_1"] = icc_2_1(g[["count_pred", "count_ref"]].to_numpy(float))
        ba = bland_altman(g["count_pred"], g["count_ref"])
        row.update(count_ba_bias=ba["bias"], count_ba_loa_low=ba["loa_low"],
                   count_ba_loa_high=ba["loa_high"])
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- tests
def wilcoxon_vs_baseline(df: pd.DataFrame, baseline: str = "SWI", metrics=WILCOXON_METRICS,
                         alpha: float = 0.05) -> pd.DataFrame:
    """Two-sided Wilcoxon rank-sum test (``scipy.stats.ranksums``: normal approximation,
    no tie or continuity correction) of each experiment's per-participant values against
    the ``baseline`` experiment of the same mode and class, per metric. NaN values are
    dropped first. ``significant`` is p < ``alpha``; p is NaN (not significant) when either
    sample is empty.

    Columns: mode, class, experiment, baseline, metric, n, n_baseline, mean, mean_baseline,
    statistic, p_value, significant.
    """
    if "experiment" not in df.columns:
        raise ValueError("missing column: experiment")
    df = _with_magnitude(df)
    keys = [k for k in ("mode", "class") if k in df.columns]
    grouped = df.groupby(keys, sort=False, dropna=False) if keys else [((), df)]
    rows = []
    for key, g in grouped:
        key = key if isinstance(key, tuple) else (key,)
        base = g[g["experiment"] == baseline]
        if base.empty:
            continue
        for exp in pd.unique(g["experiment"]):
            if exp == baseline:
                continue
            e = g[g["experiment"] == exp]
            for m in metrics:
                x = e[m].to_numpy(float)
                y = base[m].to_numpy(float)
                x, y = x[np.isfinite(x)], y[np.isfinite(y)]
                if x.size and y.size:
                    res = sps.ranksums(x, y)
                    stat, p = float(res.statistic), float(res.pvalue)
                else:
                    stat = p = float("nan")
                rows.append({**dict(zip(keys, key)), "experiment": exp, "baseline": baseline,
                             "metric": m, "n": int(x.size), "n_baseline": int(y.size),
                             "mean": float(x.mean()) if x.size else float("nan"),
                             "mean_baseline": float(y.mean()) if y.size else float("nan"),
                             "statistic": stat, "p_value": p,
                             "significant": bool(np.isfinite(p) and p < alpha)})
    cols = [*keys, "experiment", "baseline", "metric", "n", "n_baseline", "mean",
            "mean_baseline", "statistic", "p_value", "significant"]
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- outliers
@dataclass(frozen=True)
class BetaOutliers:
    threshold: float  # in counts; participants with count > threshold are excluded
    excluded: list  # participant ids (index labels of ``counts``)
    a: float
    b: float
    scale: float  # scale_factor · (max count + 1)
    offset: float  # 0.5
    q: float


def beta_outliers(counts, q: float = 0.99, scale_factor: float = 2.0) -> BetaOutliers:
    """Beta-distribution outlier rule on per-participant CMB counts (supplement S4.1).

    ``counts``: a Series indexed by participant (or a mapping / sequence; then the ids are
    the keys / positions). Counts are mapped into the open interval (0, 1) by
    x = (count + 0.5) / S with S = ``scale_factor`` · (max count + 1), so zero counts and the
    maximum stay inside; a beta distribution is fitted by maximum likelihood with loc = 0 and
    scale = 1 fixed (``scipy.stats.beta.fit(x, floc=0, fscale=1)``); the threshold is its
    q-quantile mapped back, ppf(q) · S − 0.5. Participants with a count strictly above it are
    excluded. Needs at least two distinct counts.

    Why ``scale_factor`` = 2: with S = max + 1 the largest count always sits at the very end
    of the support and the fit tends to put the 99th percentile just below it. In 100
    simulated cohorts of 20 participants (negative-binomial counts, mean 3), each analysed
    as is and with an extra participant with 100 CMBs, 73 ordinary participants in all were
    excluded with factor 1 and 22 with factor 2 (about what a 99th percentile implies); the
    extra participant was excluded every time with both (with a 40-CMB extra participant:
    factor 2 → 29, factors 3–10 → 21–24). The preprint does not say how it scaled.
    """
    s = counts if isinstance(counts, pd.Series) else pd.Series(
        dict(counts) if isinstance(counts, dict) else list(counts))
    s = s.astype(float).dropna()
    if (s < 0).any():
        raise ValueError("counts must be non-negative")
    if s.nunique() < 2:
        raise ValueError("need at least two distinct counts to fit a beta distribution")
    if not np.isfinite(scale_factor) or scale_factor < 1:
        raise ValueError("scale_factor must be >= 1")
    scale = float(scale_factor) * (float(s.max()) + 1.0)
    offset = 0.5
    x = (s.to_numpy() + offset) / scale
    a, b, _, _ = sps.beta.fit(x, floc=0, fscale=1)
    thr = float(sps.beta.ppf(q, a, b)) * scale - offset
    excluded = [i for i, v in s.items() if v > thr]
    return BetaOutliers(thr, excluded, float(a), float(b), scale, offset, q)


# --------------------------------------------------------------------------- mimics
MIMICS = ("vein", "calcification", "epvs")


def mimic_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mimic analysis per (mode, experiment, class): sums over participants of the
    ``mimic_<m>_*`` columns written by ``deepmir evaluate --mimics`` (m = vein,
    calcification, epvs).

    Columns: the group keys, ``n_participants`` (with a mimic map), and per mimic class m:
    ``<m>_pred`` predicted lesions on a mimic of class m, ``<m>_fp`` those that are false
    positives, ``<m>_mimics`` mimics in the truth, ``<m>_rejected`` mimics no predicted
    lesion fell on. Participants without mimic columns (NaN) are left out; no mimic column
    at all gives an empty table with these columns.
    """
    keys = group_keys(df)
    cols = [*keys, "n_participants"] + [f"{m}_{w}" for m in MIMICS
                                        for w in ("pred", "fp", "mimics", "rejected")]
    need = [f"mimic_{m}_{w}" for m in MIMICS for w in ("hits", "fp_hits", "count", "detected")]
    if not set(need) <= set(df.columns):
        return pd.DataFrame(columns=cols)
    d = df.dropna(subset=need)
    rows = []
    for key, g in (d.groupby(keys, sort=False, dropna=False) if keys else [((), d)]):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key))
        row["n_participants"] = int(g["participant"].nunique())
        for m in MIMICS:
            row[f"{m}_pred"] = int(g[f"mimic_{m}_hits"].sum())
            row[f"{m}_fp"] = int(g[f"mimic_{m}_fp_hits"].sum())
            row[f"{m}_mimics"] = int(g[f"mimic_{m}_count"].sum())
            row[f"{m}_rejected"] = int((g[f"mimic_{m}_count"] - g[f"mimic_{m}_detected"]).sum())
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)
