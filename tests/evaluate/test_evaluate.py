"""Lesion matching and per-participant metrics on hand-built volumes, and the evaluate command."""
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from deepmir import cli
from deepmir.evaluate.metrics import mimic_hits, participant_metrics
from deepmir.lesions import components, match_lesions, resolve_tolerance

SHAPE = (24, 24, 24)


def vol(*lesions, shape=SHAPE):
    """Label volume from (label, [voxel, ...]) pairs."""
    v = np.zeros(shape, dtype=np.uint8)
    for label, voxels in lesions:
        for ijk in voxels:
            v[tuple(ijk)] = label
    return v


def line(i, j, k0, k1):
    return [(i, j, k) for k in range(k0, k1 + 1)]


# --------------------------------------------------------------------------- components
def test_components_26_connectivity_centroids_sizes():
    # a diagonal pair (corner-touching) is ONE component under 26-connectivity
    v = vol((1, [(5, 5, 5), (6, 6, 6)]), (1, line(15, 15, 2, 5)), (2, [(20, 20, 20)]))
    c = components(v, 1, voxel_size=(1.0, 1.0, 1.5))
    assert c.n == 2
    assert ndimage.label(v == 1)[1] == 3  # scipy's default 6-connectivity splits the pair
    np.testing.assert_allclose(c.centroids_vox, [[5.5, 5.5, 5.5], [15, 15, 3.5]])
    np.testing.assert_allclose(c.centroids_mm, [[5.5, 5.5, 8.25], [15, 15, 5.25]])
    np.testing.assert_array_equal(c.sizes, [2, 4])
    np.testing.assert_allclose(c.volumes_mm3, [3.0, 6.0])
    # agreement with scipy's center_of_mass on the same labelling
    com = ndimage.center_of_mass(c.labels > 0, c.labels, [1, 2])
    np.testing.assert_allclose(c.centroids_vox, com)
    assert components(v, "iron").n == 1
    assert components(v, (1, 2)).n == 3
    assert components(np.zeros(SHAPE), 1).n == 0


# --------------------------------------------------------------------------- matching
def test_two_reference_lesions_closer_than_tolerance_one_prediction():
    # reference lesions 2 voxels apart (separate components), one prediction on the first
    ref = vol((1, [(10, 10, 10), (10, 10, 12)]))
    pred = vol((1, [(10, 10, 10)]))
    m = match_lesions(pred, ref, 1)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)
    assert m.pairs[0].pred_index == 0 and m.pairs[0].ref_index == 0
    assert m.pairs[0].distance == 0.0 and m.pairs[0].dice == 1.0
    # two predictions, each nearest to a different reference lesion: both match
    pred2 = vol((1, [(10, 11, 10), (10, 12, 12)]))  # d = 1 to R1, d = 2 to R2
    m2 = match_lesions(pred2, ref, 1)
    assert (m2.tp, m2.fp, m2.fn) == (2, 0, 0)
    assert sorted((p.pred_index, p.ref_index, p.distance) for p in m2.pairs) == [
        (0, 0, 1.0), (1, 1, 2.0)]


def test_matching_is_greedy_not_optimal():
    # R1 z=10, R2 z=13; P1 z=11 (d 1 to R1, 2 to R2), P2 z=8 (d 2 to R1, 5 to R2).
    # Optimal assignment would give 2 TP (P2-R1, P1-R2); greedy takes P1-R1 first.
    ref = vol((1, [(10, 10, 10), (10, 10, 13)]))
    pred = vol((1, [(10, 10, 8), (10, 10, 11)]))
    m = match_lesions(pred, ref, 1)
    assert (m.tp, m.fp, m.fn) == (1, 1, 1)
    assert [(p.pred_index, p.ref_index) for p in m.pairs] == [(1, 0)]
    assert m.unmatched_pred == (0,) and m.unmatched_ref == (1,)


def test_one_lesion_split_into_two_components():
    ref = vol((1, line(10, 10, 8, 12)))  # 5 voxels, centroid z = 10
    pred = vol((1, line(10, 10, 8, 9) + line(10, 10, 11, 12)))  # centroids z = 8.5, 11.5
    m = match_lesions(pred, ref, 1)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    # tie at d = 1.5: the lower predicted index (raster order) wins
    assert m.pairs[0].pred_index == 0 and m.pairs[0].distance == 1.5
    assert m.pairs[0].dice == pytest.approx(2 * 2 / (2 + 5))
    row = participant_metrics(pred, ref, ["cmb"]).iloc[0]
    assert row["sensitivity"] == 1.0 and row["precision"] == 0.5
    assert row["count_pred"] == 2 and row["count_ref"] == 1 and row["count_diff"] == 1
    assert row["F1"] == pytest.approx(2 / 3)


def test_lesion_exactly_at_tolerance_does_not_match():
    ref = vol((1, [(10, 10, 10)]))
    at = vol((1, [(10, 10, 13)]))  # d = 3 = CMB tolerance
    inside = vol((1, [(10, 10, 12)]))  # d = 2
    m = match_lesions(at, ref, 1)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)
    assert (match_lesions(inside, ref, 1).tp) == 1
    # iron: tolerance 5, a 3-4-5 offset is exactly at it
    ref2 = vol((2, [(10, 10, 10)]))
    assert match_lesions(vol((2, [(10, 13, 14)])), ref2, 2).tp == 0
    assert match_lesions(vol((2, [(10, 13, 13)])), ref2, 2).tp == 1  # d = sqrt(18) < 5
    assert match_lesions(vol((2, [(10, 13, 14)])), ref2, 2, tolerance_vox=5.01).tp == 1


def test_anisotropic_voxels_index_space_vs_mm():
    ref = vol((1, [(10, 10, 10)]))
    pred = vol((1, [(10, 10, 12)]))  # 2 slices = 2 voxels = 3.0 mm at 1.5 mm slices
    vs = (1.0, 1.0, 1.5)
    m_vox = match_lesions(pred, ref, 1, voxel_size=vs)  # default 3 voxels, index space
    assert m_vox.tp == 1 and m_vox.pairs[0].distance == 2.0 and m_vox.unit == "vox"
    m_mm = match_lesions(pred, ref, 1, tolerance_mm=3.0, voxel_size=vs)
    assert (m_mm.tp, m_mm.fp, m_mm.fn) == (0, 1, 1)  # exactly at 3 mm: no match
    m_mm2 = match_lesions(pred, ref, 1, tolerance_mm=3.1, voxel_size=vs)
    assert m_mm2.tp == 1 and m_mm2.pairs[0].distance == pytest.approx(3.0)
    with pytest.raises(ValueError):
        match_lesions(pred, ref, 1, tolerance_vox=3, tolerance_mm=3)
    assert resolve_tolerance("cmb") == (3.0, "vox")
    assert resolve_tolerance("iron") == (5.0, "vox")
    assert resolve_tolerance((1, 2)) == (5.0, "vox")


def test_empty_prediction():
    ref = vol((1, [(5, 5, 5), (15, 15, 15)]))
    row = participant_metrics(np.zeros(SHAPE, np.uint8), ref, ["cmb"]).iloc[0]
    assert (row["TP"], row["FP"], row["FN"]) == (0, 0, 2)
    assert row["sensitivity"] == 0.0
    assert math.isnan(row["precision"])  # no prediction: precision undefined
    assert row["F1"] == 0.0
    assert math.isnan(row["magnitude_accuracy"]) and math.isnan(row["dice_matched_mean"])
    assert (row["count_pred"], row["count_ref"], row["count_diff"]) == (0, 2, -2)


def test_empty_reference():
    pred = vol((1, [(5, 5, 5), (15, 15, 15), (2, 20, 2)]))
    row = participant_metrics(pred, np.zeros(SHAPE, np.uint8), ["cmb"]).iloc[0]
    assert (row["TP"], row["FP"], row["FN"]) == (0, 3, 0)
    assert math.isnan(row["sensitivity"])  # no reference lesion: sensitivity undefined
    assert row["precision"] == 0.0 and row["F1"] == 0.0 and row["fp_count"] == 3
    both = participant_metrics(np.zeros(SHAPE), np.zeros(SHAPE), ["cmb", "iron"])
    assert both[["TP", "FP", "FN"]].to_numpy().sum() == 0
    assert both[["sensitivity", "precision", "F1"]].isna().all().all()


def test_huge_false_positive_blob():
    # a correct small prediction plus a 10x10x10 blob far from any lesion
    ref = vol((1, [(20, 20, 20)]))
    pred = vol((1, [(20, 20, 20)]))
    pred[0:10, 0:10, 0:10] = 1
    row = participant_metrics(pred, ref, ["cmb"]).iloc[0]
    assert (row["TP"], row["FP"], row["FN"]) == (1, 1, 0)
    assert row["precision"] == 0.5 and row["sensitivity"] == 1.0
    # a blob covering a small reference lesion in its corner: centroid 6.06 voxels away,
    # so overlap does not make a match -> 1 FP and 1 FN
    ref2 = vol((1, [(2, 2, 2)]))
    pred2 = np.zeros(SHAPE, np.uint8)
    pred2[0:12, 0:12, 0:12] = 1
    m = match_lesions(pred2, ref2, 1)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)
    assert m.pred.centroids_vox[0] == pytest.approx([5.5, 5.5, 5.5])
    assert m.pred.sizes[0] == 1728


def test_multiclass_confusion_cmb_predicted_as_iron():
    ref = vol((1, [(5, 5, 5), (5, 5, 6)]), (2, line(15, 15, 10, 14)))
    pred = vol((2, [(5, 5, 5), (5, 5, 6)]), (2, line(15, 15, 10, 14)))
    df = participant_metrics(pred, ref, ["cmb", "iron", "union"]).set_index("class")
    assert tuple(df.loc["cmb", ["TP", "FP", "FN"]]) == (0, 0, 1)
    assert tuple(df.loc["iron", ["TP", "FP", "FN"]]) == (1, 1, 0)
    assert tuple(df.loc["union", ["TP", "FP", "FN"]]) == (2, 0, 0)
    assert df.loc["iron", "precision"] == 0.5 and df.loc["iron", "sensitivity"] == 1.0
    assert df.loc["cmb", "sensitivity"] == 0.0 and math.isnan(df.loc["cmb", "precision"])
    assert df.loc["union", "dice_matched_mean"] == 1.0
    assert list(df.loc[:, "tolerance"]) == [3.0, 5.0, 5.0]


def test_tolerances_mapping_and_magnitude():
    ref = vol((1, [(10, 10, 10)]))
    pred = vol((1, [(10, 10, 13)]))
    assert participant_metrics(pred, ref, ["cmb"]).iloc[0]["TP"] == 0
    row = participant_metrics(pred, ref, ["cmb"], tolerances={1: 4}).iloc[0]
    assert row["TP"] == 1 and row["tolerance"] == 4.0
    assert row["magnitude_accuracy"] == pytest.approx(math.sqrt(2))


def test_mimic_hits():
    mimic = np.zeros(SHAPE, np.int16)
    mimic[3, 3, 2:12] = 1  # vein, elongated
    mimic[15, 15, 15] = 2  # calcification
    mimic[20, 5, 5] = 3  # EPVS
    table = pd.DataFrame({"index": [1, 2, 3], "name": ["vein", "calcification", "epvs"]})
    pred = np.zeros(SHAPE, bool)
    pred[3, 3, 11] = True  # overlaps the vein (its centroid is 4.5 voxels away)
    pred[15, 15, 17] = True  # 2 voxels from the calcification, no overlap
    pred[10, 20, 20] = True  # nowhere near a mimic
    hits = mimic_hits(pred, mimic, table).set_index("mimic")
    assert hits.loc["vein", "n_pred_hits"] == 1
    assert hits.loc["calcification", "n_pred_hits"] == 1
    assert hits.loc["epvs", "n_pred_hits"] == 0
    assert list(hits["n_mimics"]) == [1, 1, 1]
    # tolerance 2 is strict: the calcification 2 voxels away is no longer hit
    hits2 = mimic_hits(pred, mimic, {1: "vein", 2: "calcification", 3: "epvs"},
                       tolerance_vox=2).set_index("mimic")
    assert hits2.loc["calcification", "n_pred_hits"] == 0
    assert hits2.loc["vein", "n_mimics_hit"] == 1


# --------------------------------------------------------------------------- command
AFFINE = np.diag([1.0, 1.0, 1.5, 1.0])


def save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def run(argv, capsys):
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


def test_evaluate_command_writes_metrics(tmp_path, capsys):
    ref = vol((1, [(10, 10, 10)]), (2, line(15, 15, 10, 14)))
    pred = vol((1, [(10, 10, 12), (2, 2, 2)]), (2, line(15, 15, 10, 14)))
    p = save(tmp_path / "pred.nii.gz", pred)
    r = save(tmp_path / "ref.nii.gz", ref)
    out = tmp_path / "m" / "metrics.tsv"
    rc, err = run(["evaluate", "--pred", str(p), "--ref", str(r), "--mode", "multiclass",
                   "--participant", "sub-01", "--experiment", "SWI+QSM", "--out", str(out)],
                  capsys)
    assert rc == 0, err
    df = pd.read_csv(out, sep="\t", na_values=["n/a"]).set_index("class")
    assert list(df.columns[:3]) == ["participant", "experiment", "mode"]
    assert tuple(df.loc["cmb", ["TP", "FP", "FN"]]) == (1, 1, 0)
    assert tuple(df.loc["iron", ["TP", "FP", "FN"]]) == (1, 0, 0)
    assert df.loc["cmb", "precision"] == 0.5
    # in mm, the CMB offset of 2 slices is 3 mm: exactly at a 3 mm tolerance -> no match
    rc, err = run(["evaluate", "--pred", str(p), "--ref", str(r), "--mode", "cmb",
                   "--participant", "sub-01", "--experiment", "SWI", "--out", str(out),
                   "--tol-unit", "mm"], capsys)
    df = pd.read_csv(out, sep="\t", na_values=["n/a"])
    assert rc == 0 and len(df) == 1 and tuple(df.loc[0, ["TP", "FP", "FN"]]) == (0, 2, 1)


def test_evaluate_command_with_mimics(tmp_path, capsys):
    ref = vol((1, [(10, 10, 10)]))
    pred = vol((1, [(10, 10, 10), (3, 3, 5)]))
    mimic = np.zeros(SHAPE, np.int16)
    mimic[3, 3, 2:12] = 1
    table = tmp_path / "mimics.tsv"
    table.write_text("index\tname\n1\tvein\n")
    args = ["evaluate", "--pred", str(save(tmp_path / "p.nii.gz", pred)),
            "--ref", str(save(tmp_path / "r.nii.gz", ref)), "--mode", "cmb",
            "--participant", "sub-02", "--experiment", "SWI", "--out", str(tmp_path / "o.tsv"),
            "--mimics", str(save(tmp_path / "mim.nii.gz", mimic)), "--mimic-table", str(table)]
    rc, err = run(args, capsys)
    assert rc == 0, err
    df = pd.read_csv(tmp_path / "o.tsv", sep="\t")
    assert df.loc[0, "mimic_vein_hits"] == 1 and df.loc[0, "mimic_epvs_hits"] == 0


def test_evaluate_command_qsm_rule_rows(tmp_path, capsys):
    """The QSM rule's rows: a predicted CMB that is diamagnetic (a calcification) is dropped,
    the true paramagnetic one kept; the iron row is not repeated."""
    ref = vol((1, [(10, 10, 10)]))
    pred = vol((1, [(10, 10, 10), (4, 4, 4)]), (2, [(15, 15, 15)]))
    chi = np.zeros(SHAPE)
    chi[9:12, 9:12, 9:12] = 0.6
    chi[3:6, 3:6, 3:6] = -0.4
    out = tmp_path / "o.tsv"
    rc, err = run(["evaluate", "--pred", str(save(tmp_path / "p.nii.gz", pred)),
                   "--ref", str(save(tmp_path / "r.nii.gz", ref)), "--mode", "multiclass",
                   "--participant", "sub-03", "--experiment", "SWI", "--run", "swiMulti", "--out", str(out),
                   "--qsm-rule-chi", str(save(tmp_path / "chi.nii.gz", chi))], capsys)
    assert rc == 0, err
    df = pd.read_csv(out, sep="\t", na_values=["n/a"])
    assert list(zip(df.experiment, df["class"])) == [("SWI", "cmb"), ("SWI", "iron"), ("SWI +QSM rule", "cmb")]
    assert tuple(df.loc[0, ["TP", "FP", "FN"]]) == (1, 1, 0) and tuple(df.loc[2, ["TP", "FP", "FN"]]) == (1, 0, 0)
    assert list(df.run) == ["swiMulti", "swiMulti", "swiMultiQsmRule"]


@pytest.mark.parametrize("case", ["shape", "affine", "labels", "missing", "ref_labels"])
def test_evaluate_command_bad_input(tmp_path, capsys, case):
    ref = vol((1, [(10, 10, 10)]))
    pred = vol((1, [(10, 10, 10)]))
    r = save(tmp_path / "ref.nii.gz", ref)
    p = tmp_path / "pred.nii.gz"
    bad = p
    if case == "shape":
        save(p, pred[:, :, :20])
    elif case == "affine":
        save(p, pred, np.diag([1.0, 1.0, 1.0, 1.0]))
    elif case == "labels":
        pred[1, 1, 1] = 3
        save(p, pred)
    elif case == "ref_labels":
        save(p, pred)
        ref_bad = ref.astype(np.float32)
        ref_bad[2, 2, 2] = 0.5
        r = save(tmp_path / "ref.nii.gz", ref_bad)
        bad = r
    # "missing": pred never written
    out = tmp_path / "out" / "metrics.tsv"
    rc, err = run(["evaluate", "--pred", str(p), "--ref", str(r), "--mode", "cmb",
                   "--participant", "sub-01", "--experiment", "SWI", "--out", str(out)], capsys)
    assert rc == 2
    assert str(bad) in err and err.count("\n") == 1
    assert not out.exists() and not out.parent.exists()
