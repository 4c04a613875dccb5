"""QSM accuracy against truth, mimic status, summary and the overlay / qsm commands."""
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deepmir import cli
from deepmir.commands.evaluate import axial_axis
from deepmir.evaluate import mimic_status, qsm_accuracy


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
