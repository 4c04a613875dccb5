"""Table 3 / S3.1: numbers equal a recomputation from hand-made per-participant TSVs."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from deepmir import cli
from deepmir.evaluate.summary import aggregate_output_names
from deepmir.evaluate.tables import format_measure, to_markdown, to_tsv

# participant -> (TP, FP, FN) per (experiment, mode, class); hand-made
DATA = {
    ("SWI", "cmb", "cmb"): [(1, 2, 1), (2, 2, 0), (0, 1, 1), (3, 3, 1), (1, 0, 0)],
    ("SWI+QSM", "cmb", "cmb"): [(2, 0, 0), (2, 1, 0), (1, 0, 0), (4, 1, 0), (1, 0, 0)],
    ("SWI", "multiclass", "cmb"): [(1, 1, 1), (1, 0, 1), (0, 0, 1), (2, 2, 2), (0, 3, 1)],
    ("SWI", "multiclass", "iron"): [(3, 1, 0), (0, 0, 0), (2, 2, 1), (1, 1, 1), (0, 0, 2)],
    ("SWI+QSM", "multiclass", "cmb"): [(2, 1, 0), (1, 1, 1), (1, 0, 0), (3, 0, 1), (1, 1, 0)],
    ("SWI+QSM", "multiclass", "iron"): [(3, 0, 0), (0, 1, 0), (3, 0, 0), (2, 0, 0), (1, 1, 1)],
    ("SWI", "union", "union"): [(2, 1, 1), (2, 0, 0), (2, 2, 1), (3, 1, 1), (0, 0, 1)],
}


def ratio(a, b):
    return a / b if b else float("nan")


def write_tsvs(folder):
    """One metrics TSV per participant × experiment × mode, as ``deepmir evaluate`` writes."""
    paths = []
    by_file = {}
    for (exp, mode, cls), values in DATA.items():
        for i, (tp, fp, fn) in enumerate(values):
            by_file.setdefault((exp, mode, i), []).append({
                "participant": f"sub-{i + 1:02d}", "experiment": exp, "mode": mode,
                "class": cls, "TP": tp, "FP": fp, "FN": fn,
                "sensitivity": ratio(tp, tp + fn), "precision": ratio(tp, tp + fp),
                "count_pred": tp + fp, "count_ref": tp + fn})
    for (exp, mode, i), rows in by_file.items():
        p = folder / f"sub-{i + 1:02d}_{exp}_{mode}.tsv"
        p.write_text(to_tsv(pd.DataFrame(rows)))
        paths.append(str(p))
    return paths


def recompute(values):
    """mean, SEM, t CI of the defined values, by hand."""
    x = np.array([v for v in values if not math.isnan(v)])
    n = len(x)
    mean = x.sum() / n
    sem = math.sqrt(((x - mean) ** 2).sum() / (n - 1)) / math.sqrt(n)
    half = sps.t.ppf(0.975, n - 1) * sem
    return n, mean, sem, mean - half, mean + half


def per_participant(exp, mode, cls):
    sens = [ratio(tp, tp + fn) for tp, fp, fn in DATA[(exp, mode, cls)]]
    prec = [ratio(tp, tp + fp) for tp, fp, fn in DATA[(exp, mode, cls)]]
    ma = [math.hypot(s, p) for s, p in zip(sens, prec)]
    return {"sensitivity": sens, "precision": prec, "magnitude_accuracy": ma}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("metrics")
    out = folder / "report"
    assert cli.main(["aggregate", "--metrics", *write_tsvs(folder), "--out-dir", str(out)]) == 0
    return out


def test_aggregate_writes_the_declared_files(report):
    assert sorted(p.name for p in report.iterdir()) == sorted(aggregate_output_names())


def test_table3_numbers_equal_recomputation(report):
    t = pd.read_csv(report / "table3_numbers.tsv", sep="\t", na_values=["n/a"])
    sections = [("Single Class CMB Only", "cmb", "cmb"), ("Multiclass CMB", "multiclass", "cmb"),
                ("Multiclass Iron Deposits", "multiclass", "iron")]
    # study order: sections, SWI baseline first; no iron-only experiment -> no such rows
    assert list(zip(t["section"], t["experiment"])) == [
        (s, e) for s, _, _ in sections for e in ("SWI", "SWI+QSM")]
    for section, mode, cls in sections:
        for exp in ("SWI", "SWI+QSM"):
            row = t[(t["section"] == section) & (t["experiment"] == exp)].iloc[0]
            vals = per_participant(exp, mode, cls)
            for m, v in vals.items():
                n, mean, sem, lo, hi = recompute(v)
                assert row[f"n_{m}"] == n
                assert row[f"{m}_mean"] == pytest.approx(mean)
                assert row[f"{m}_sem"] == pytest.approx(sem)
                assert row[f"{m}_ci_low"] == pytest.approx(lo)
                assert row[f"{m}_ci_high"] == pytest.approx(hi)
                if exp == "SWI":
                    assert math.isnan(row[f"{m}_p"])
                else:
                    base = [x for x in per_participant("SWI", mode, cls)[m] if not math.isnan(x)]
                    mine = [x for x in v if not math.isnan(x)]
                    p = sps.ranksums(mine, base).pvalue
                    assert row[f"{m}_p"] == pytest.approx(p)
                    assert bool(row[f"{m}_significant"]) == (p < 0.05)
            fps = [fp for _, fp, _ in DATA[(exp, mode, cls)]]
            assert row["fp_per_participant"] == pytest.approx(sum(fps) / len(fps))
            s_mean = recompute(vals["sensitivity"])[1]
            p_mean = recompute(vals["precision"])[1]
            assert row["magnitude_accuracy_of_means"] == pytest.approx(math.hypot(s_mean, p_mean))


def test_table3_text_cells(report):
    text = pd.read_csv(report / "table3.tsv", sep="\t", dtype=str)
    num = pd.read_csv(report / "table3_numbers.tsv", sep="\t", na_values=["n/a"])
    assert list(text["Modalities Used"][:2]) == ["SWI (baseline)", "SWI and QSM"]
    for i in range(len(num)):
        r = num.iloc[i]
        cell = text.iloc[i]["Avg Precision ± SEM [CI: lower, upper]"]
        assert cell == format_measure(r["precision_mean"], r["precision_sem"],
                                      r["precision_ci_low"], r["precision_ci_high"],
                                      bool(r["precision_significant"]))
        assert text.iloc[i]["False Positives per Participant"] == f"{r['fp_per_participant']:.2f}"
    # hand-checked: CMB-only SWI+QSM precision = 1, 2/3, 1, 4/5, 1 -> mean 0.8933
    cell = text.iloc[1]["Avg Precision ± SEM [CI: lower, upper]"]
    assert cell.startswith("0.89")
    md = (report / "table3.md").read_text()
    assert md.count("\n| Single Class CMB Only |") == 2 and "SWI and QSM" in md


def test_table_s3_1_and_empty_tables(report):
    t = pd.read_csv(report / "table_s3_1_numbers.tsv", sep="\t", na_values=["n/a"])
    assert list(t["experiment"]) == ["SWI"]
    n, mean, *_ = recompute(per_participant("SWI", "union", "union")["sensitivity"])
    assert t.loc[0, "sensitivity_mean"] == pytest.approx(mean)
    # a group with no rows still gives a (header-only) table
    assert "No experiment" not in (report / "table3.md").read_text()


def test_format_helpers():
    assert format_measure(0.8812, 0.061, 0.77, 0.99, True) == "0.88* ± 0.06 [0.77, 0.99]"
    assert format_measure(float("nan"), float("nan"), float("nan"), float("nan")) == \
        "n/a ± n/a [n/a, n/a]"
    df = pd.DataFrame({"a": ["x|y", None], "b": [1.5, float("nan")]})
    assert to_markdown(df).splitlines() == ["| a | b |", "| --- | --- |", "| x\\|y | 1.5 |",
                                            "| n/a | n/a |"]
    assert to_tsv(df) == "a\tb\nx|y\t1.5\nn/a\tn/a\n"
