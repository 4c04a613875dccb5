"""deepmir export-nnunet and splits_final.json, read back with nnU-Net's own code (nnunetv2, the
test extra): verify_dataset_integrity, its image reader and its split loading. No training."""
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepmir.cli import main

ROOT = Path(__file__).resolve().parents[2]
CASES = ("sub-001", "sub-002", "sub-003", "sub-004")
AFFINE = np.array([[0.8, 0, 0, -10], [0, 0.8, 0, -12], [0, 0, 1.5, 4], [0, 0, 0, 1]])


def _save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def _cohort(tmp_path, shape=(10, 12, 6)):
    """Per case: SWI and QSM images and a dseg with CMB (1), iron (2) and a mimic label (5)."""
    rng = np.random.default_rng(0)
    cases = {}
    for k, case in enumerate(CASES):
        dseg = np.zeros(shape, np.int16)
        dseg[2:4, 2:4, 2] = 1
        dseg[6:8, 7:9, 3 + k % 2] = 2
        dseg[1, 10, 1] = 5
        files = [_save(tmp_path / f"{case}_swi.nii.gz", rng.normal(size=shape).astype(np.float32)),
                 _save(tmp_path / f"{case}_qsm.nii.gz", rng.normal(0, 0.05, size=shape).astype(np.float32)),
                 _save(tmp_path / f"{case}_dseg.nii.gz", dseg)]
        cases[case] = files
    return cases


def _case_args(cases):
    return [a for case, files in cases.items() for a in ("--case", case, *map(str, files))]


def _splits(tmp_path):
    path = tmp_path / "splits_final.json"
    assert main(["folds", "--participants", *CASES, "--seed", "0", "--val-fraction", "0.25",
                 "--splits-final", str(path)]) == 0
    return path


def test_export_reads_in_nnunet(tmp_path):
    verify = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity")
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    cases = _cohort(tmp_path)
    out = tmp_path / "nnUNet_raw" / "Dataset501_swiqsmMulti"
    assert main(["export-nnunet", "--out", str(out), "--channels", "SWI", "QSM", "--label-mode", "multiclass",
                 *_case_args(cases), "--splits", str(_splits(tmp_path))]) == 0
    verify.verify_dataset_integrity(str(out), num_processes=1)     # raises on any problem

    dataset = get_filenames_of_train_images_and_targets(str(out))
    assert sorted(dataset) == sorted(CASES)
    desc = load_json(str(out / "dataset.json"))
    assert desc["channel_names"] == {"0": "SWI", "1": "QSM"}
    assert desc["labels"] == {"background": 0, "CMB": 1, "iron": 2}
    for case, (swi, qsm, dseg) in cases.items():
        images, props = SimpleITKIO().read_images(dataset[case]["images"])
        seg, _ = SimpleITKIO().read_seg(dataset[case]["label"])
        # SimpleITK's array order is (channel, z, y, x); the spacing is the NIfTI's voxel size
        assert np.array_equal(images[0], nib.load(swi).get_fdata().T)
        assert np.array_equal(images[1], nib.load(qsm).get_fdata().T)
        ref = nib.load(dseg).get_fdata().T
        assert np.array_equal(seg[0], np.where(ref == 5, 0, ref))          # the mimic label is background
        assert tuple(props["spacing"]) == pytest.approx((1.5, 0.8, 0.8))

    # nnU-Net's trainer loads splits_final.json with load_json and takes each fold's train/val keys:
    # val is the fold's held-out participant, train all the others, every key a case of the dataset
    splits = load_json(str(out / "splits_final.json"))
    assert len(splits) == len(CASES)
    for split, case in zip(splits, sorted(CASES)):
        assert split["val"] == [case]
        assert sorted(split["train"] + split["val"]) == sorted(dataset)


@pytest.mark.parametrize("mode, labels, values", [
    ("cmb", {"background": 0, "CMB": 1}, {0, 1}),
    ("iron", {"background": 0, "iron": 1}, {0, 1}),
    ("union", {"background": 0, "CMB_or_iron": 1}, {0, 1}),
])
def test_single_class_labels(tmp_path, mode, labels, values):
    cases = _cohort(tmp_path)
    out = tmp_path / "Dataset007_x"
    assert main(["export-nnunet", "--out", str(out), "--channels", "SWI", "--label-mode", mode,
                 *[a for c, f in cases.items() for a in ("--case", c, str(f[0]), str(f[2]))]]) == 0
    assert json.loads((out / "dataset.json").read_text())["labels"] == labels
    lab = nib.load(out / "labelsTr" / "sub-001.nii.gz")
    ref = nib.load(cases["sub-001"][2]).get_fdata()
    want = {"cmb": ref == 1, "iron": ref == 2, "union": (ref == 1) | (ref == 2)}[mode]
    assert np.array_equal(np.asarray(lab.dataobj), want.astype(np.uint8)) and set(np.unique(lab.dataobj)) == values
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in CASES]
    assert not (out / "splits_final.json").exists()


def _refused(tmp_path, capsys, argv, needle):
    before = {p for p in tmp_path.rglob("*")}
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert {p for p in tmp_path.rglob("*")} == before            # nothing written


def test_refusals(tmp_path, capsys):
    cases = _cohort(tmp_path)
    good = _case_args(cases)
    base = ["export-nnunet", "--channels", "SWI", "QSM", "--label-mode", "multiclass"]
    out = ["--out", str(tmp_path / "Dataset501_a")]
    _refused(tmp_path, capsys, base + ["--out", str(tmp_path / "myexport")] + good, "DatasetNNN_Name")
    _refused(tmp_path, capsys, base + ["--out", str(tmp_path / "Dataset000_a")] + good, "1-999")
    _refused(tmp_path, capsys, base + out + good[:-1], "needs 2 image(s)")               # dseg missing
    _refused(tmp_path, capsys, base + out + good + good[:5], "given twice")
    _refused(tmp_path, capsys, base + out + ["--case", "sub-001_0001", *good[2:5]], "four digits")
    other = _save(tmp_path / "other.nii.gz", np.zeros((10, 12, 7), np.float32))
    _refused(tmp_path, capsys, base + out + ["--case", "sub-001", str(other), *good[3:5]], "not on the grid")
    moved = AFFINE.copy()
    moved[0, 3] += 2.0                                                                # 2 mm off
    shifted = _save(tmp_path / "shifted.nii.gz", np.zeros((10, 12, 6), np.float32), moved)
    _refused(tmp_path, capsys, base + out + ["--case", "sub-001", str(shifted), *good[3:5]], "not on the grid")
    _refused(tmp_path, capsys, base + out + ["--case", "sub-001", str(tmp_path / "none.nii.gz"), *good[3:5]],
             "not found")
    four_d = _save(tmp_path / "fourd.nii.gz", np.zeros((10, 12, 6, 2), np.float32))
    _refused(tmp_path, capsys, base + out + ["--case", "sub-001", str(four_d), *good[3:5]], "3D")
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps([{"train": ["sub-001"], "val": ["sub-999"]}]))
    _refused(tmp_path, capsys, base + out + good + ["--splits", str(splits)], "sub-999")
    splits.write_text(json.dumps({"train": []}))
    _refused(tmp_path, capsys, base + out + good + ["--splits", str(splits)], "splits_final.json")
    (tmp_path / "Dataset501_a").mkdir()
    (tmp_path / "Dataset501_a" / "old.txt").write_text("x")
    _refused(tmp_path, capsys, base + out + good, "not empty")


def test_workflow_target(tmp_path):
    """Target nnunet: one export per experiment, IDs from learn.nnunet_dataset_id in the
    experiments' order, after that experiment's splits_final.json."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_learn_workflow import BASE, dry_run, job_counts

    rc, text = dry_run(tmp_path, {**BASE, "learn": {"nnunet_dataset_id": 41}}, "nnunet")
    assert rc == 0, text
    n = job_counts(text)
    assert n["learn_export_nnunet"] == 2 and n["learn_splits_final"] == 2 and "learn_train" not in n
    (tmp_path / "b").mkdir()
    res = subprocess.run([sys.executable, "-m", "snakemake", "nnunet", "-n", "-s", "Snakefile",
                          "--configfile", "config.yaml", "-c1", "-p"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    names = set(re.findall(r"results/nnunet/(Dataset\d{3}_\w+)", res.stdout))
    assert names == {"Dataset041_swiMulti", "Dataset042_swiqsmMulti"}
    rc, text = dry_run(tmp_path / "b", {**BASE, "learn": {"nnunet_dataset_id": 999}}, "nnunet")
    assert rc != 0 and "nnunet_dataset_id" in text
