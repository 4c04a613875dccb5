"""``deepmir n4 | register | brainmask`` end to end on small phantom files: outputs, the
transform convention of the written matrix, the mask sidecar, and one-line errors that leave
nothing behind."""
import json
import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

import anat_phantom as P
import numpy as np
import pytest

from deepmir import anat as A
from deepmir import niio
from deepmir.cli import main
from deepmir.niio import read_matrix as read_xfm
from deepmir.niio import write_matrix as write_xfm

M_TRUE = A.rigid_matrix((3, -2, 4), (2, -3, 4), center=(0, -18, 8))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("anat_cli")
    # MEGRE: 3.5 mm, LPS-ordered and oblique; two echoes stored longest TE first
    shape_g, aff_g = P.phantom_grid(3.5, rotation_deg=(12, 0, 0), flip=(True, True, False),
                                    margin_mm=6)
    g = P.mni_head_phantom(shape_g, aff_g, None, contrasts=("GRE",), noise=0.02)
    mag = np.stack([g["GRE"] * 0.6, g["GRE"]], -1)
    niio.save(d / "mag.nii.gz", mag, aff_g)
    niio.write_json(d / "MEGRE.json", {"EchoTime": [0.015, 0.0075]})
    shape_a, aff_a = P.phantom_grid(3.0)
    t1 = P.mni_head_phantom(shape_a, aff_a, np.linalg.inv(M_TRUE), contrasts=("T1w",),
                            noise=0.01)
    bias = np.exp(A.world_coords(shape_a, aff_a)[..., 0] / 300.0).astype(np.float32)
    niio.save(d / "T1w.nii.gz", t1["T1w"] * bias, aff_a)
    return d, g, aff_g


def test_n4_register_brainmask_chain(files):
    d, g, aff_g = files
    assert main(["n4", "--input", str(d / "T1w.nii.gz"), "--output", str(d / "n4.nii.gz"),
                 "--bias", str(d / "bias.nii.gz"), "--config-json", '{"n4": {"iterations": [50, 50, 50]}}']) == 0
    corrected, _ = niio.load(d / "n4.nii.gz")
    bias, _ = niio.load(d / "bias.nii.gz")
    raw, _ = niio.load(d / "T1w.nii.gz")
    np.testing.assert_allclose(corrected * bias, raw, rtol=1e-3, atol=1e-5)

    assert main(["register", "--moving", str(d / "n4.nii.gz"), "--mag", str(d / "mag.nii.gz"),
                 "--info", str(d / "MEGRE.json"), "--xfm", str(d / "xfm.txt"),
                 "--output", str(d / "moved.nii.gz"), "--qc", str(d / "reg.png")]) == 0
    M = read_xfm(d / "xfm.txt")
    pts = A.world_coords(g["brain_mask"].shape, aff_g)[g["brain_mask"]]
    err = A.mean_displacement(M, M_TRUE, A.apply_transform(np.linalg.inv(M_TRUE), pts))
    assert err < 0.5, err
    moved, aff = niio.load(d / "moved.nii.gz")
    assert moved.shape == g["GRE"].shape
    np.testing.assert_allclose(aff, aff_g, atol=1e-5)
    assert (d / "reg.png").read_bytes()[:4] == b"\x89PNG"

    for args, method in (([], "magnitude-otsu"),
                         (["--t1w", str(d / "n4.nii.gz"), "--xfm", str(d / "xfm.txt"),
                           "--config-json", '{"brain_mask": {"working_mm": 3}}'], "mni152-affine+gre-refined")):
        assert main(["brainmask", "--mag", str(d / "mag.nii.gz"), "--info",
                     str(d / "MEGRE.json"), "--output", str(d / "mask.nii.gz"),
                     "--json", str(d / "mask.json"), "--qc", str(d / "mask.png")] + args) == 0
        mask, aff = niio.load(d / "mask.nii.gz")
        info = json.loads((d / "mask.json").read_text())
        assert info["method"] == method
        assert info["n_voxels"] == int((mask > 0).sum())
        assert A.dice(mask > 0, g["intracranial_mask"]) >= 0.9


def test_xfm_text_roundtrip(tmp_path):
    write_xfm(tmp_path / "m.txt", M_TRUE)
    np.testing.assert_allclose(read_xfm(tmp_path / "m.txt"), M_TRUE, atol=1e-8)


def test_bad_inputs_are_one_line_errors_and_write_nothing(files, tmp_path, capsys):
    d, _, _ = files
    out = tmp_path / "o.nii.gz"
    # a 3D image where the 4D magnitude belongs
    assert main(["register", "--moving", str(d / "T1w.nii.gz"), "--mag", str(d / "T1w.nii.gz"),
                 "--xfm", str(tmp_path / "x.txt"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "4D" in err
    # missing file
    assert main(["n4", "--input", str(tmp_path / "none.nii.gz"), "--output", str(out)]) == 2
    # settings the anat schema refuses: an unknown key, a value out of range (one line each)
    for bad in ('{"n4": {"shrink": 2}}', '{"registration": {"bins": 0}}'):
        assert main(["n4", "--input", str(d / "T1w.nii.gz"), "--output", str(out), "--config-json", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "anat.n4.shrink: unknown key (did you mean shrink_factor?)" in err[1]
    assert "anat.registration.bins" in err[2]
    # EchoTime that does not match the echoes
    (tmp_path / "bad.json").write_text(json.dumps({"EchoTime": [0.01]}))
    assert main(["brainmask", "--mag", str(d / "mag.nii.gz"), "--info",
                 str(tmp_path / "bad.json"), "--output", str(out),
                 "--json", str(tmp_path / "o.json")]) == 2
    # --t1w without --xfm; a malformed transform
    assert main(["brainmask", "--mag", str(d / "mag.nii.gz"), "--t1w", str(d / "T1w.nii.gz"),
                 "--output", str(out), "--json", str(tmp_path / "o.json")]) == 2
    (tmp_path / "bad.txt").write_text("1 0 0\n0 1 0\n")
    assert main(["brainmask", "--mag", str(d / "mag.nii.gz"), "--t1w", str(d / "T1w.nii.gz"),
                 "--xfm", str(tmp_path / "bad.txt"), "--output", str(out),
                 "--json", str(tmp_path / "o.json")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "bad.txt"]
