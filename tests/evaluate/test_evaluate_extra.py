"""QSM accuracy against truth, mimic status, summary and the overlay / qsm commands."""
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deepmir import cli
from deepmir.evaluate.metrics import mimic_status, qsm_accuracy
from deepmir.geometry import axial_axis


def test_qsm_accuracy_hand_values():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(8, 8, 8))
    mask = np.ones(truth.shape, bool)
    perfect = qsm_accuracy(truth + 3.0, truth, mask)  # an offset does not count
    assert perfect["rmse_ppm"] == pytest.approx(0, abs=1e-12)
    assert perfect["pearson_r"] == pytest.approx(1) and perfect["slope"] == pytest.approx(1)
    half = qsm_accuracy(0.5 * truth, truth, mask)
    tm = truth - truth.mean()
    assert half["slope"] == pytest.approx(0.5)
    assert half["nrmse_percent"] == pytest.approx(50.0)
    assert half["rmse_ppm"] == pytest.approx(np.sqrt(((0.5 * tm) ** 2).mean()))
    lm = np.zeros(truth.shape, int)
    lm[1, 1, 1] = 7
    lm[5, 5, 5:7] = 9
    row = qsm_accuracy(0.5 * truth, truth, mask, lm, {7: "cmb", 9: "vein"})
    assert row["cmb_n"] == 1 and row["vein_n"] == 1 and row["iron_n"] == 0
    assert row["cmb_ratio"] == pytest.approx(0.5) and math.isnan(row["iron_ratio"])
    assert row["vein_true_ppm"] == pytest.approx(tm[5, 5, 5:7].mean())


def test_qsm_accuracy_moments_signs_and_deep_gm():
    """Lesion moments (the same operator on χ and truth), their signs, and deep-GM ROI
    errors; a blurred, halved copy of the truth gives moment ratio 0.5 and ROI errors."""
    from scipy import ndimage

    shape = (24, 24, 24)
    truth = np.zeros(shape)
    lm = np.zeros(shape, int)
    lm[6:8, 6:8, 6:8] = 1                      # CMB +0.8
    lm[16:18, 16:18, 16:18] = 2                # calcification −0.4
    truth[lm == 1], truth[lm == 2] = 0.8, -0.4
    tissue = np.zeros(shape, int)
    tissue[10:14, 4:8, 10:14] = 6              # pallidum +0.1
    truth[tissue == 6] = 0.1
    mask = np.ones(shape, bool)
    est = 0.5 * ndimage.uniform_filter(truth, 3)     # blurred and halved
    row = qsm_accuracy(est, truth, mask, lm, {1: "cmb", 2: "calcification"}, tissue, 2.0)
    assert row["cmb_moment_ratio"] == pytest.approx(0.5, rel=0.05)
    assert row["calcification_moment_ratio"] == pytest.approx(0.5, rel=0.05)
    assert (row["cmb_n_positive"], row["cmb_n_negative"]) == (1, 0)
    assert (row["calcification_n_positive"], row["calcification_n_negative"]) == (0, 1)
    assert row["pallidum_error_ppm"] < -0.02        # halved: about −0.05
    assert math.isnan(row["caudate_error_ppm"])
    assert row["deep_gm_abs_error_ppm"] == pytest.approx(abs(row["pallidum_error_ppm"]))
    flipped = qsm_accuracy(-est, truth, mask, lm, {1: "cmb", 2: "calcification"})
    assert flipped["cmb_n_negative"] == 1 and flipped["calcification_n_positive"] == 1


def test_qsm_table_reports_tkd_and_cfl2_next_to_medi(tmp_path):
    """qsm-accuracy --chi-tkd / --chi-cfl2 add tkd_* / cfl2_* columns; qsm-table flags per
    participant whether MEDI's NRMSE is below each baseline's and, in the mean row, whether
    it is on every participant."""
    rng = np.random.default_rng(3)
    shape = (10, 10, 10)
    truth = rng.normal(size=shape).astype(np.float32)
    tr = save(tmp_path / "t.nii.gz", truth)
    mask = save(tmp_path / "m.nii.gz", np.ones(shape, np.uint8))
    good = save(tmp_path / "good.nii.gz", truth + 0.1 * rng.normal(size=shape).astype(np.float32))
    bad = save(tmp_path / "bad.nii.gz", truth + 0.5 * rng.normal(size=shape).astype(np.float32))
    rows = []
    for pid, medi, tkd in (("sub-01", good, bad), ("sub-02", bad, good)):
        out = tmp_path / f"{pid}.tsv"
        assert cli.main(["qsm-accuracy", "--chi", medi, "--chi-tkd", tkd, "--chi-cfl2", bad,
                         "--truth", tr, "--mask", mask, "--participant", pid,
                         "--out", str(out)]) == 0
        rows.append(out)
    r1 = pd.read_csv(rows[0], sep="\t").iloc[0]
    assert r1["nrmse_percent"] < r1["tkd_nrmse_percent"]
    assert r1["tkd_nrmse_percent"] == pytest.approx(50, rel=0.2)
    assert cli.main(["qsm-table", "--inputs", *map(str, rows), "--out-tsv",
                     str(tmp_path / "qt.tsv"), "--out-md", str(tmp_path / "qt.md")]) == 0
    t = pd.read_csv(tmp_path / "qt.tsv", sep="\t")
    assert list(t["beats_tkd"].astype(str)) == ["True", "False", "False"]
    assert list(t["beats_cfl2"].astype(str)) == ["True", "False", "False"]   # bad vs bad: no
    assert t["cfl2_nrmse_percent"].iloc[0] == pytest.approx(50, rel=0.2)
    md = (tmp_path / "qt.md").read_text()
    assert "tkd_nrmse_percent" in md and "beats_tkd" in md and "beats_cfl2" in md
    assert cli.main(["qsm-table", "--inputs", str(rows[0]), "--out-tsv",
                     str(tmp_path / "q1.tsv"), "--out-md", str(tmp_path / "q1.md")]) == 0
    assert list(pd.read_csv(tmp_path / "q1.tsv", sep="\t")["beats_tkd"].astype(str)) == \
        ["True", "True"]


def test_mimic_status_hit_and_rejected():
    pred = np.zeros((12, 12, 12), bool)
    pred[2, 2, 2] = True
    mimic = np.zeros(pred.shape, int)
    mimic[2, 2, 4] = 3  # 2 voxels away: hit
    mimic[9, 9, 9] = 4  # far: rejected
    s = mimic_status(pred, mimic, {3: "vein", 4: "vein"})
    assert list(s["hit"]) == [True, False]
    assert list(mimic_status(pred, mimic, {3: "vein"}, tolerance_vox=2)["hit"]) == [False]


def test_axial_axis():
    assert axial_axis(np.diag([1, 1, 2, 1])) == 2
    swap = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]])
    assert axial_axis(swap) == 1


def save(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return str(path)


def test_commands_overlay_qsm_and_summary(tmp_path, capsys):
    shape = (12, 12, 8)
    ref = np.zeros(shape, np.uint8)
    ref[3, 3, 4] = 1
    pred = ref.copy()
    pred[8, 8, 2] = 1
    lesion_map = np.zeros(shape, np.int16)
    lesion_map[3, 3, 4] = 1
    lesion_map[8, 8, 2] = 2
    (tmp_path / "lesions.tsv").write_text("lesion_id\tcls\n1\tcmb\n2\tcalcification\n")
    img = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    p, r = save(tmp_path / "p.nii.gz", pred), save(tmp_path / "r.nii.gz", ref)
    lm, im = save(tmp_path / "lm.nii.gz", lesion_map), save(tmp_path / "i.nii.gz", img)
    png = tmp_path / "rep" / "overlay_sub-01.png"
    assert cli.main(["overlay", "--image", f"SWI={im}", "--image", f"QSM={im}", "--pred", p,
                     "--ref", r, "--mimics", lm, "--mimic-table", str(tmp_path / "lesions.tsv"),
                     "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    # evaluate with lesions.tsv as the mimic table: the FP lies on the calcification
    m = tmp_path / "m.tsv"
    assert cli.main(["evaluate", "--pred", p, "--ref", r, "--mode", "cmb", "--participant",
                     "sub-01", "--experiment", "SWI", "--run", "swiCmb", "--out", str(m),
                     "--mimics", lm, "--mimic-table", str(tmp_path / "lesions.tsv")]) == 0
    row = pd.read_csv(m, sep="\t").iloc[0]
    assert row["run"] == "swiCmb"
    assert (row["mimic_calcification_hits"], row["mimic_calcification_fp_hits"],
            row["mimic_calcification_count"], row["mimic_calcification_detected"]) == (1, 1, 1, 1)
    assert row["mimic_vein_count"] == 0
    # QSM accuracy command and table
    mask = save(tmp_path / "mask.nii.gz", np.ones(shape, np.uint8))
    q = tmp_path / "q.tsv"
    assert cli.main(["qsm-accuracy", "--chi", im, "--truth", im, "--mask", mask,
                     "--lesion-map", lm, "--lesions", str(tmp_path / "lesions.tsv"),
                     "--participant", "sub-01", "--out", str(q)]) == 0
    assert pd.read_csv(q, sep="\t").loc[0, "rmse_ppm"] == pytest.approx(0, abs=1e-6)
    assert cli.main(["qsm-table", "--inputs", str(q), "--out-tsv", str(tmp_path / "qt.tsv"),
                     "--out-md", str(tmp_path / "qt.md")]) == 0
    assert list(pd.read_csv(tmp_path / "qt.tsv", sep="\t")["participant"]) == ["sub-01", "mean"]
    # aggregate + summary
    rep = tmp_path / "rep"
    assert cli.main(["aggregate", "--metrics", str(m), "--out-dir", str(rep)]) == 0
    assert cli.main(["summary", "--report-dir", str(rep), "--qsm-table", str(tmp_path / "qt.md"),
                     "--figures", str(png), "--out", str(rep / "summary.md")]) == 0
    text = (rep / "summary.md").read_text()
    for needle in ("## Table 3", "## Mimic analysis", "| cmb | SWI | cmb | 1 | 0 | 0 |",
                   "QSM accuracy", "(overlay_sub-01.png)", "strictly closer"):
        assert needle in text, needle
    # a bad input: one line naming the file, nothing written
    capsys.readouterr()
    assert cli.main(["summary", "--report-dir", str(tmp_path / "nope"), "--out",
                     str(tmp_path / "s.md")]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "s.md").exists()


def test_qsm_accuracy_juxtacortical_cmbs():
    """A CMB centred within 3 mm of the cortex label is juxtacortical, one deeper is not;
    their moment ratio and sign are reported apart."""
    shape = (40, 20, 20)
    tissue = np.full(shape, 3, np.uint8)              # white matter
    tissue[:4] = 2                                    # cortex: the first 4 planes
    truth = np.zeros(shape, np.float32)
    lm = np.zeros(shape, np.int32)
    for k, x in ((1, 6), (2, 25)):                    # centres 2 mm and 21 mm from cortex
        lm[x - 1:x + 2, 9:12, 9:12] = k
        truth[lm == k] = 0.5
    mask = np.ones(shape, bool)
    row = qsm_accuracy(0.8 * truth, truth, mask, lm, {1: "cmb", 2: "cmb"}, tissue, 1.0,
                       (1.0, 1.0, 1.0))
    assert row["juxtacortical_cmb_n"] == 1 and row["juxtacortical_cmb_n_positive"] == 1
    assert row["juxtacortical_cmb_moment_ratio"] == pytest.approx(0.8, rel=0.05)
    far = qsm_accuracy(truth, truth, mask, lm, {1: "cmb", 2: "cmb"}, tissue, 1.0,
                       (8.0, 1.0, 1.0))               # 8 mm planes: CMB 1 is 16 mm away
    assert far["juxtacortical_cmb_n"] == 0 and np.isnan(far["juxtacortical_cmb_moment_ratio"])
