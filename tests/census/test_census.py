"""The census against the synthetic truth, using truth labels as the prediction."""
import numpy as np
import pytest

from deepmir.atlas import head as anatomy
from deepmir.census.count import lesion_census, participant_counts, shell


def _true_to_mni(sim):
    inv = np.linalg.inv(sim["pose_gre"])
    p = sim["participant"]
    return lambda mm: p.to_mni(np.asarray(mm) @ inv[:3, :3].T + inv[:3, 3])


def test_census_reproduces_the_truth_table(tiny_sim):
    t = tiny_sim["truth"]
    table = t["table"]
    pred = t["dseg"].copy()
    calc_ids = table.lesion_id[table.cls == "calcification"].to_numpy()
    pred[np.isin(t["lesions"], calc_ids)] = 1          # a model that took calcifications for CMBs
    census = lesion_census(pred, tiny_sim["gre_affine"], chi=t["chi"], swi=tiny_sim["mag"][0],
                           to_mni=_true_to_mni(tiny_sim), atlas=anatomy.head_model())
    expected = table[(table.label > 0) | (table.cls == "calcification")]
    expected = expected[expected.n_voxels > 0]
    assert len(census) == len(expected)
    hits = 0
    for row in expected.itertuples():
        d = np.hypot(np.hypot(census.centroid_i - row.centroid_i, census.centroid_j - row.centroid_j),
                     census.centroid_k - row.centroid_k)
        got = census.iloc[int(np.argmin(d))]
        assert d.min() < 0.5
        assert got.volume_mm3 == pytest.approx(row.volume_mm3, rel=0.10)
        hits += (got.region_group, got.region, got.hemisphere) == (row.region_group, row.region, row.hemisphere)
        assert got.probable_calcification == (row.cls == "calcification")
        if row.cls == "cmb":
            assert got.delta_chi_ppm > 0 and got.swi_contrast > 0
            assert not got.probable_vein, f"true CMB {row.lesion_id}: χ elongation {got.chi_elongation:.2f}"
    # the truth region is the one at the table's centroid: through the true deformation the
    # census finds every one
    assert hits == len(expected)
    counts = participant_counts(census)
    assert counts["cmb_total"] == int((expected.cls == "cmb").sum())
    assert counts["probable_calcifications"] == len(calc_ids[np.isin(calc_ids, expected.lesion_id)])


def test_hand_built_census():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:4, 2:4, 2:4] = 1          # 8 voxels of 1 mm³: diameter 2.48 mm
    labels[10:16, 10:16, 10:16] = 1    # 216 voxels: diameter 7.4 mm
    labels[5, 15, 5] = 2
    labels[6, 16, 6] = 2               # diagonal neighbour: same component (26-connectivity)
    chi = np.zeros(labels.shape)
    chi[labels == 1] = 0.5
    chi[10:16, 10:16, 10:16] = -0.2    # diamagnetic "CMB": a probable calcification
    chi[17:19, 2:18, 17:19] = 0.4      # a vein along j...
    labels[17:19, 9:11, 17:19] = 1     # ...taken for a CMB where it crosses a slice
    c = lesion_census(labels, np.eye(4), chi=chi)
    assert list(c.cls) == ["cmb", "cmb", "cmb", "iron"]
    assert list(c.n_voxels) == [8, 216, 8, 2]
    assert list(c.size_group) == ["<5mm", ">=5mm", "<5mm", "<5mm"]
    assert list(c.probable_calcification) == [False, True, False, False]
    assert list(c.probable_vein) == [False, False, True, False]
    assert list(c.counted_as) == ["cmb", "calcification", "vein", "iron"]
    assert c.chi_elongation[0] == pytest.approx(1.0) and c.chi_elongation[2] > 5
    assert c.moment_ppm_mm3[0] == pytest.approx(0.5 * 8)
    counts = participant_counts(c)
    assert counts["cmb_total"] == 1 and counts["probable_calcifications"] == 1 and counts["probable_veins"] == 1
    kept = lesion_census(labels, np.eye(4), chi=chi, exclude_veins=False)
    assert list(kept.counted_as) == ["cmb", "calcification", "cmb", "iron"]
    assert shell(labels == 2, 1).sum() > 0


def test_final_split_is_seeded_and_refuses_too_few_participants(tmp_path, capsys):
    import json

    from deepmir.cli import main

    pids = [f"sub-{i:02d}" for i in range(1, 9)]
    outs = []
    for n in range(2):
        out = tmp_path / f"split{n}.json"
        assert main(["final-split", "--participants", *pids, "--seed", "3", "--val-fraction", "0.25",
                     "--out", str(out)]) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0] == outs[1] and len(outs[0]["val"]) == 2
    assert sorted(outs[0]["train"] + outs[0]["val"]) == pids
    bad = tmp_path / "bad.json"
    assert main(["final-split", "--participants", "sub-01", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 2 participants" in err[0] and not bad.exists()


def test_census_and_mni_warp_refuse_missing_or_bad_files_in_one_line(tmp_path, capsys):
    from deepmir import niio
    from deepmir.cli import main

    out = tmp_path / "out.nii.gz"
    assert main(["mni-warp", "--t1w", str(tmp_path / "t1.nii.gz"), "--mask-json", str(tmp_path / "m.json"),
                 "--xfm", str(tmp_path / "x.txt"), "--ref", str(tmp_path / "r.nii.gz"), "--output", str(out)]) == 2
    labels = niio.save(tmp_path / "labels.nii.gz", np.zeros((8, 8, 8), np.uint8), np.eye(4))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.txt").write_text("1 2 3\n")
    tsv = tmp_path / "census.tsv"
    assert main(["census", "--labels", str(tmp_path / "nope.nii.gz"), "--output", str(tsv)]) == 2
    assert main(["census", "--labels", str(labels), "--mask-json", str(tmp_path / "bad.json"),
                 "--output", str(tsv)]) == 2
    assert main(["census", "--labels", str(labels), "--mni-xfm", str(tmp_path / "bad.txt"),
                 "--output", str(tsv)]) == 2
    assert main(["census", "--labels", str(labels), "--chi", str(tmp_path / "chi.nii.gz"),
                 "--output", str(tsv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5, err
    assert "t1.nii.gz: T1w not found" in err[0] and "nope.nii.gz: label map not found" in err[1]
    assert "bad.json: brain-mask JSON is not valid JSON" in err[2]
    assert "bad.txt: transform: expected a finite 4×4 matrix" in err[3] and "chi.nii.gz: QSM not found" in err[4]
    assert not out.exists() and not tsv.exists()


def test_iron_region_command_places_the_basal_ganglia_and_refuses_a_mask_without_mni(tmp_path, capsys):
    """`deepmir iron-region` on a 2 mm grid laid out in MNI space (TemplateToMEGRE the
    identity): the putamen is in, the thalamus and cortex out, outside the brain mask nothing;
    a T1w-less mask JSON (no MNI placement) is refused in one line with no output."""
    import json

    from deepmir import niio
    from deepmir.atlas import regions
    from deepmir.cli import main

    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = (-60, -70, -30)
    shape = (61, 61, 41)
    mask = np.zeros(shape, np.uint8)
    mask[:, :, 5:] = 1
    mpath = niio.save(tmp_path / "mask.nii.gz", mask, aff, dtype=np.uint8)
    (tmp_path / "mask.json").write_text(json.dumps({"TemplateToMEGRE": np.eye(4).tolist()}))
    out = tmp_path / "region.nii.gz"
    assert main(["iron-region", "--mask", str(mpath), "--mask-json", str(tmp_path / "mask.json"),
                 "--margin-mm", "3", "--output", str(out)]) == 0
    region, _ = niio.load(out)
    at = lambda mni: region[tuple(np.round((np.asarray(mni, float) - aff[:3, 3]) / 2).astype(int))]
    assert at((-25, 0, 0)) == 1 and at((12, 12, 10)) == 1
    assert at((10, -18, 8)) == 0 and at((40, 20, 40)) == 0
    assert not region[:, :, :5].any()
    hm = anatomy.head_model()
    ijk = np.argwhere(mask > 0)
    want = regions.iron_region(hm, ijk @ aff[:3, :3].T + aff[:3, 3], 3.0)
    assert (region[tuple(ijk.T)] == want).all() and want.sum() > 1000
    (tmp_path / "nomni.json").write_text(json.dumps({"method": "magnitude"}))
    out2 = tmp_path / "region2.nii.gz"
    assert main(["iron-region", "--mask", str(mpath), "--mask-json", str(tmp_path / "nomni.json"),
                 "--output", str(out2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nomni.json" in err[0] and "TemplateToMEGRE" in err[0]
    assert not out2.exists()
