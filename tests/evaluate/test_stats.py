"""Statistics against scipy and hand-checked values."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from deepmir.evaluate.metrics import participant_metrics
from deepmir.evaluate.stats import aggregate, beta_outliers, bland_altman, icc_2_1, magnitude_accuracy, mean_sem_ci, wilcoxon_vs_baseline


def rows(experiment, sens, prec, mode="cmb", cls="cmb", fp=None):
    n = len(sens)
    fp = fp if fp is not None else [0] * n
    return pd.DataFrame({
        "participant": [f"sub-{i:02d}" for i in range(n)], "experiment": experiment,
        "mode": mode, "class": cls, "TP": 1, "FP": fp, "FN": 0,
        "sensitivity": sens, "precision": prec, "count_pred": 1, "count_ref": 1})


def test_mean_sem_ci_matches_scipy_and_hand_values():
    x = [0.5, 1.0, 0.75, 1.0]
    s = mean_sem_ci(x + [float("nan")])  # NaN skipped
    assert s["n"] == 4 and s["mean"] == pytest.approx(0.8125)
    # sd (ddof 1) = sqrt(((-.3125)^2 + .1875^2 + (-.0625)^2 + .1875^2) / 3) = 0.239357...
    assert s["sem"] == pytest.approx(0.2393567 / 2, rel=1e-6)
    assert s["sem"] == pytest.approx(sps.sem(x))
    lo, hi = sps.t.interval(0.95, 3, loc=np.mean(x), scale=sps.sem(x))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi))
    one = mean_sem_ci([0.3])
    assert one["n"] == 1 and one["mean"] == 0.3 and math.isnan(one["sem"])
    assert mean_sem_ci([])["n"] == 0


def test_wilcoxon_rank_sum_hand_checked_and_scipy():
    # x = 1,2,3 vs baseline 4,5,6: rank sum W = 6, E = 10.5, Var = 3·3·7/12 = 5.25,
    # z = -4.5 / sqrt(5.25) = -1.96396, p = 2 Φ(-1.96396) = 0.04953
    df = pd.concat([rows("SWI", [0.4, 0.5, 0.6], [1, 1, 1]),
                    rows("SWI+QSM", [0.1, 0.2, 0.3], [1, 1, 1])])
    w = wilcoxon_vs_baseline(df, metrics=["sensitivity"])
    assert len(w) == 1
    r = w.iloc[0]
    assert r["experiment"] == "SWI+QSM" and r["baseline"] == "SWI"
    assert r["statistic"] == pytest.approx(-4.5 / math.sqrt(5.25))
    assert r["p_value"] == pytest.approx(0.049535, abs=1e-6)
    assert r["significant"]
    ref = sps.ranksums([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert r["p_value"] == pytest.approx(ref.pvalue) and r["statistic"] == pytest.approx(ref.statistic)
    # without ties ranksums equals the asymptotic Mann-Whitney U test without continuity correction
    mw = sps.mannwhitneyu([0.1, 0.2, 0.3], [0.4, 0.5, 0.6], method="asymptotic",
                          use_continuity=False)
    assert r["p_value"] == pytest.approx(mw.pvalue)


def test_wilcoxon_nan_and_groups():
    df = pd.concat([rows("SWI", [0.4, np.nan, 0.6, 0.2], [0.5, 0.5, 0.4, 0.3]),
                    rows("SWI+T2", [0.9, 0.8, np.nan, 0.7], [0.5, 0.6, 0.7, 0.5]),
                    rows("SWI", [0.1, 0.2], [0.3, 0.4], mode="iron", cls="iron")])
    w = wilcoxon_vs_baseline(df).set_index(["mode", "metric"])
    assert set(w.index.get_level_values("mode")) == {"cmb"}  # iron has no other experiment
    r = w.loc[("cmb", "sensitivity")]
    assert (r["n"], r["n_baseline"]) == (3, 3)
    assert r["p_value"] == pytest.approx(sps.ranksums([0.9, 0.8, 0.7], [0.4, 0.6, 0.2]).pvalue)
    ma = w.loc[("cmb", "magnitude_accuracy")]
    assert ma["n"] == 3  # the NaN sensitivity makes that participant's MA undefined


def test_magnitude_accuracy_of_perfect_prediction_is_sqrt2():
    ref = np.zeros((16, 16, 16), np.uint8)
    ref[3, 3, 3] = 1
    ref[10, 10, 9:12] = 1
    row = participant_metrics(ref, ref, ["cmb"]).iloc[0]
    assert row["magnitude_accuracy"] == pytest.approx(math.sqrt(2))
    df = rows("SWI", [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    a = aggregate(df).iloc[0]
    assert a["magnitude_accuracy"] == pytest.approx(math.sqrt(2))
    assert a["magnitude_accuracy_mean"] == pytest.approx(math.sqrt(2))
    assert a["magnitude_accuracy_sem"] == 0.0
    assert magnitude_accuracy(1.0, 1.0) == pytest.approx(1.41421356)


def test_aggregate_hand_values():
    df = rows("SWI", [1.0, 0.5, np.nan, 0.0], [0.5, np.nan, 0.0, 1.0], fp=[1, 0, 3, 0])
    df["TP"] = [2, 1, 0, 0]
    df["FN"] = [0, 1, 0, 2]
    df["count_pred"] = [3, 1, 3, 0]
    df["count_ref"] = [2, 2, 0, 2]
    a = aggregate(df).iloc[0]
    assert a["n_participants"] == 4
    assert (a["n_sensitivity"], a["n_precision"]) == (3, 3)
    assert a["sensitivity_mean"] == pytest.approx(0.5)
    assert a["precision_mean"] == pytest.approx(0.5)
    assert a["magnitude_accuracy"] == pytest.approx(math.hypot(0.5, 0.5))
    # per-participant MA defined for sub-00 (hypot(1, .5)) and sub-03 (hypot(0, 1))
    assert a["n_magnitude_accuracy"] == 2
    assert a["magnitude_accuracy_mean"] == pytest.approx((math.hypot(1, .5) + 1.0) / 2)
    assert a["fp_per_participant"] == pytest.approx(1.0)
    assert (a["pooled_TP"], a["pooled_FP"], a["pooled_FN"]) == (3, 4, 3)
    assert a["pooled_precision"] == pytest.approx(3 / 7)
    assert a["pooled_recall"] == pytest.approx(0.5)
    assert a["pooled_F1"] == pytest.approx(6 / 13)
    assert a["count_ba_bias"] == pytest.approx(0.25)


def test_icc_shrout_fleiss_example_and_bland_altman():
    # Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges; ICC(2,1) = 0.29
    x = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert icc_2_1(x) == pytest.approx(0.2898, abs=1e-4)
    assert icc_2_1([[1, 1], [2, 2], [5, 5]]) == pytest.approx(1.0)
    assert math.isnan(icc_2_1([[3, 3], [3, 3]]))
    ba = bland_altman([3, 1, 4], [1, 1, 2])
    d = np.array([2, 0, 2])
    assert ba["bias"] == pytest.approx(d.mean())
    assert ba["loa_high"] == pytest.approx(d.mean() + 1.96 * d.std(ddof=1))
    assert ba["loa_low"] == pytest.approx(d.mean() - 1.96 * d.std(ddof=1))


def test_beta_outliers():
    counts = pd.Series([0, 1, 1, 2, 0, 3, 1, 2, 0, 1, 2, 1, 0, 4, 2, 1],
                       index=[f"sub-{i:02d}" for i in range(16)])
    res = beta_outliers(counts)
    assert res.excluded == []  # no outlier in an ordinary cohort
    big = pd.concat([counts, pd.Series({"sub-99": 120})])
    res = beta_outliers(big)
    assert res.excluded == ["sub-99"]
    # the threshold is the q-quantile of the fitted beta, mapped back to counts
    x = (big.to_numpy(float) + 0.5) / res.scale
    a, b, _, _ = sps.beta.fit(x, floc=0, fscale=1)
    assert (res.a, res.b) == pytest.approx((a, b))
    assert res.threshold == pytest.approx(sps.beta.ppf(0.99, a, b) * res.scale - 0.5)
    assert 4 < res.threshold < 120
    with pytest.raises(ValueError):
        beta_outliers([2, 2, 2])
