"""The input layer: discovery, phase conversion, and refusal of malformed datasets — each with
one line naming the file, and nothing written."""
import gzip
import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import make_minimal_bids
from deepmir.cli import main
from deepmir.inputs import bids

ANAT = "sub-01/anat/sub-01"


def _nii(path, data, aff=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag([1.0, 1.0, 1.5, 1.0]) if aff is None else aff), path)


def _edit_json(path, **kw):
    d = json.loads(path.read_text())
    for k, v in kw.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    path.write_text(json.dumps(d))


def _shape(root):
    return nib.load(root / f"{ANAT}_echo-1_part-mag_MEGRE.nii.gz").shape


def truncate(path):
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))


# (name, mutation(root), the file the message must name)
MALFORMED = [
    ("missing phase echo", lambda r: (r / f"{ANAT}_echo-2_part-phase_MEGRE.nii.gz").unlink(),
     "sub-01_echo-2_part-phase_MEGRE.nii.gz"),
    ("echo numbering gap", lambda r: [(r / f"{ANAT}_echo-2_part-{p}_MEGRE{e}").unlink()
                                      for p in ("mag", "phase") for e in (".nii.gz", ".json")],
     "sub-01_echo-2_part-mag_MEGRE.nii.gz"),
    ("missing JSON sidecar", lambda r: (r / f"{ANAT}_echo-3_part-mag_MEGRE.json").unlink(),
     "sub-01_echo-3_part-mag_MEGRE.json"),
    ("JSON without EchoTime", lambda r: _edit_json(r / f"{ANAT}_echo-1_part-phase_MEGRE.json", EchoTime=None),
     "sub-01_echo-1_part-phase_MEGRE.json"),
    ("JSON without field strength", lambda r: _edit_json(r / f"{ANAT}_echo-2_part-mag_MEGRE.json",
                                                         MagneticFieldStrength=None),
     "sub-01_echo-2_part-mag_MEGRE.json"),
    ("EchoTime in ms", lambda r: [_edit_json(r / f"{ANAT}_echo-1_part-{p}_MEGRE.json", EchoTime=7.5)
                                  for p in ("mag", "phase")],
     "sub-01_echo-1_part-mag_MEGRE.json"),
    ("echoes out of order", lambda r: [_edit_json(r / f"{ANAT}_echo-3_part-{p}_MEGRE.json", EchoTime=0.001)
                                       for p in ("mag", "phase")],
     "sub-01_echo-3_part-mag_MEGRE.json"),
    ("invalid JSON", lambda r: (r / f"{ANAT}_echo-1_part-mag_MEGRE.json").write_text("{EchoTime: 0.1"),
     "sub-01_echo-1_part-mag_MEGRE.json"),
    ("mag/phase shapes differ", lambda r: _nii(r / f"{ANAT}_echo-2_part-phase_MEGRE.nii.gz",
                                               np.zeros((12, 14, 11), np.float32)),
     "sub-01_echo-2_part-phase_MEGRE.nii.gz"),
    ("mag/phase affines differ", lambda r: _nii(r / f"{ANAT}_echo-1_part-phase_MEGRE.nii.gz",
                                                np.random.default_rng(1).uniform(-3, 3, _shape(r)).astype(np.float32),
                                                np.diag([1.0, 1.0, 2.0, 1.0])),
     "sub-01_echo-1_part-phase_MEGRE.nii.gz"),
    ("4D where 3D expected", lambda r: _nii(r / f"{ANAT}_T2w.nii.gz", np.ones((5, 5, 5, 3), np.float32)),
     "sub-01_T2w.nii.gz"),
    ("truncated NIfTI", lambda r: truncate(r / f"{ANAT}_echo-2_part-mag_MEGRE.nii.gz"),
     "sub-01_echo-2_part-mag_MEGRE.nii.gz"),
    ("unreadable NIfTI", lambda r: (r / f"{ANAT}_echo-1_part-mag_MEGRE.nii.gz").write_bytes(b"not a nifti"),
     "sub-01_echo-1_part-mag_MEGRE.nii.gz"),
    ("NaN-only volume", lambda r: _nii(r / f"{ANAT}_echo-3_part-mag_MEGRE.nii.gz",
                                       np.full(_shape(r), np.nan, np.float32)),
     "sub-01_echo-3_part-mag_MEGRE.nii.gz"),
    ("all-zero magnitude", lambda r: _nii(r / f"{ANAT}_echo-1_part-mag_MEGRE.nii.gz",
                                          np.zeros(_shape(r), np.float32)),
     "sub-01_echo-1_part-mag_MEGRE.nii.gz"),
    ("annotation with the wrong shape", lambda r: _nii(
        r / "derivatives/annotations/sub-01/anat/sub-01_space-MEGRE_dseg.nii.gz", np.zeros((12, 14, 9), np.uint8)),
     "sub-01_space-MEGRE_dseg.nii.gz"),
    ("annotation labels other than 0/1/2", lambda r: _nii(
        r / "derivatives/annotations/sub-01/anat/sub-01_space-MEGRE_dseg.nii.gz",
        np.full(_shape(r), 3, np.uint8)),
     "sub-01_space-MEGRE_dseg.nii.gz"),
    ("empty annotation file", lambda r: (r / "derivatives/annotations/sub-01/anat/"
                                         "sub-01_space-MEGRE_dseg.nii.gz").write_bytes(b""),
     "sub-01_space-MEGRE_dseg.nii.gz"),
    ("duplicate subject in participants.tsv", lambda r: (r / "participants.tsv").write_text(
        "participant_id\nsub-01\nsub-01\n"), "participants.tsv"),
    ("duplicate subject folders", lambda r: shutil.copytree(r / "sub-01", r / "sub-A") and
     (r / "sub-01").rename(r / "sub-a"), "sub-a"),
    ("no dataset_description.json", lambda r: (r / "dataset_description.json").unlink(),
     "dataset_description.json"),
    ("constant phase", lambda r: _nii(r / f"{ANAT}_echo-2_part-phase_MEGRE.nii.gz",
                                      np.ones(_shape(r), np.float32)),
     "sub-01_echo-2_part-phase_MEGRE.nii.gz"),
    ("both .nii and .nii.gz", lambda r: shutil.copy(r / f"{ANAT}_T2w.nii.gz", r / f"{ANAT}_T2w.nii"),
     "sub-01_T2w.nii"),
]


def test_valid_dataset_passes(minimal_bids, capsys):
    assert main(["validate", str(minimal_bids)]) == 0
    assert "1 participant(s), 1 annotated, 0 with errors" in capsys.readouterr().out


@pytest.mark.parametrize("name,mutate,named", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_is_refused(tmp_path, capsys, name, mutate, named):
    root = make_minimal_bids(tmp_path / "bids")
    mutate(root)
    out = tmp_path / "out"
    pid = "sub-a" if "folders" in name else "sub-01"
    code = main(["inputs", "--bids-dir", str(root), "--pid", pid, "--mag", str(out / "m.nii.gz"),
                 "--phase", str(out / "p.nii.gz"), "--json", str(out / "i.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert named in err, err
    assert not out.exists() or not any(out.iterdir())          # nothing left behind
    # `deepmir validate` refuses it too (per participant, or the whole dataset)
    code = main(["validate", str(root)])
    captured = capsys.readouterr()
    assert code != 0
    assert named in captured.out + captured.err


def test_workflow_refuses_bad_dataset_at_parse_time(tmp_path):
    root = make_minimal_bids(tmp_path / "bids")
    _edit_json(root / f"{ANAT}_echo-1_part-mag_MEGRE.json", EchoTime=None)
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--config", f"bids_dir={root}",
                          f"output_dir={tmp_path / 'out'}"], capture_output=True, text=True)
    assert res.returncode != 0
    assert "sub-01_echo-1_part-mag_MEGRE.json: missing field EchoTime" in res.stderr + res.stdout
    assert not (tmp_path / "out").exists()


def test_sessions_and_uneven_echoes(tmp_path):
    root = make_minimal_bids(tmp_path / "bids")
    ses = root / "sub-01" / "ses-2" / "anat"
    ses.mkdir(parents=True)
    for f in (root / "sub-01" / "anat").iterdir():
        shutil.move(str(f), ses / f.name.replace("sub-01_", "sub-01_ses-2_"))
    (root / "sub-01" / "anat").rmdir()
    shutil.rmtree(root / "derivatives")
    for n, te in ((1, 0.004), (2, 0.011), (3, 0.025)):
        for p in ("mag", "phase"):
            _edit_json(ses / f"sub-01_ses-2_echo-{n}_part-{p}_MEGRE.json", EchoTime=te)
    (rec,) = bids.discover(root)
    assert rec.pid == "sub-01_ses-2" and rec.annotation is None
    info = bids.check_headers(rec)
    assert info["EchoTime"] == [0.004, 0.011, 0.025]


@pytest.mark.parametrize("stored", ["unsigned", "signed"])
def test_siemens_integer_phase_is_converted(tmp_path, stored):
    root = make_minimal_bids(tmp_path / "bids", n_echoes=2)
    rng = np.random.default_rng(5)
    truth = rng.uniform(-np.pi, np.pi * 0.999, _shape(root) + (2,))
    ints = np.round(truth * 2048 / np.pi + 2048) if stored == "unsigned" else np.round(truth * 4096 / np.pi)
    for n in (1, 2):                     # every echo in one unit (a mixture is refused)
        _nii(root / f"{ANAT}_echo-{n}_part-phase_MEGRE.nii.gz", ints[..., n - 1].astype(np.int16))
    (rec,) = bids.discover(root)
    mag, rad, aff, info = bids.load_checked(rec)
    assert all("Siemens" in how for how in info["PhaseConversion"])
    err = np.angle(np.exp(1j * (rad - truth)))
    assert np.abs(err).max() <= np.pi / 2048 + 1e-5


def test_b0_dir_in_json_wins(minimal_bids):
    for n in (1, 2, 3):
        for p in ("mag", "phase"):
            _edit_json(minimal_bids / f"{ANAT}_echo-{n}_part-{p}_MEGRE.json", B0_dir=[0, 0.6, 0.8])
    (rec,) = bids.discover(minimal_bids)
    info = bids.check_headers(rec)
    assert info["B0_dir"] == pytest.approx([0, 0.6, 0.8]) and info["B0_dir_source"] == "JSON B0_dir"
