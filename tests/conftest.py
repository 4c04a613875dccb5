"""Shared fixtures: a tiny synthetic participant (simulated once per test session) and a
hand-built minimal BIDS dataset for input-validation tests."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepmir.synth.config import settings

TINY = {
    "seed": 3, "n_participants": 2,
    "gre": {"matrix": [64, 80, 40], "voxel_size": [3.0, 3.0, 4.0], "oversample": [2, 2, 2]},
    "anat": {"voxel_size": 3.0},
    # at least one CMB, iron deposit and calcification each, so every test has something
    "lesions": {"cmb_count_bins": [[2, 4, 1]], "iron_count_bins": [[1, 2, 1]],
                "calcification_count_bins": [[1, 1, 1]], "cmb_median_diameter_mm": 6.0},
}


@pytest.fixture(scope="session")
def tiny_cfg():
    return settings(TINY)


@pytest.fixture(scope="session")
def tiny_sim(tiny_cfg):
    from deepmir.synth.cohort import simulate
    return simulate(tiny_cfg, tiny_cfg["seed"], 0)


@pytest.fixture(scope="session")
def tiny_bids(tmp_path_factory, tiny_cfg):
    """The tiny synthetic cohort written as BIDS (one participant)."""
    from deepmir.synth import write
    root = tmp_path_factory.mktemp("synth_bids")
    cfg = dict(tiny_cfg, n_participants=1)
    write.write_dataset(root, cfg)
    write.write_participant(root, cfg, 0)
    return root


def make_minimal_bids(root: Path, n_echoes: int = 3, shape=(12, 14, 10), subjects=("sub-01",),
                      t2w: bool = True, annotation: bool = True, seed: int = 0) -> Path:
    """A small valid dataset of random data (no simulation): fast to build and to break."""
    rng = np.random.default_rng(seed)
    aff = np.diag([1.0, 1.0, 1.5, 1.0])
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"{s}\n" for s in subjects))
    for sub in subjects:
        anat = root / sub / "anat"
        anat.mkdir(parents=True)
        for n in range(1, n_echoes + 1):
            for part in ("mag", "phase"):
                data = rng.uniform(10, 100, shape) if part == "mag" else rng.uniform(-np.pi, np.pi, shape)
                nib.save(nib.Nifti1Image(data.astype(np.float32), aff),
                         anat / f"{sub}_echo-{n}_part-{part}_MEGRE.nii.gz")
                (anat / f"{sub}_echo-{n}_part-{part}_MEGRE.json").write_text(
                    json.dumps({"EchoTime": 0.005 * n, "MagneticFieldStrength": 3}))
        if t2w:
            nib.save(nib.Nifti1Image(rng.uniform(0, 1, (10, 11, 9)).astype(np.float32), np.eye(4)),
                     anat / f"{sub}_T2w.nii.gz")
        if annotation:
            ann = root / "derivatives" / "annotations" / sub / "anat"
            ann.mkdir(parents=True)
            lab = np.zeros(shape, np.uint8)
            lab[3, 3, 3] = 1
            lab[6, 6, 6] = 2
            nib.save(nib.Nifti1Image(lab, aff), ann / f"{sub}_space-MEGRE_dseg.nii.gz")
    return root


def into_session(root: Path, sub: str, gre: str = "", t2w: str = "", ses: str = "ses-1"):
    """Move a participant of :func:`make_minimal_bids` into a session folder, inserting BIDS
    entities into its names (``gre`` before ``echo-``, ``t2w`` before ``T2w``, e.g. "run-1_"),
    its annotation too."""
    src, dst = root / sub / "anat", root / sub / ses / "anat"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        shutil.move(str(f), dst / f.name.replace(f"{sub}_echo-", f"{sub}_{ses}_{gre}echo-")
                    .replace(f"{sub}_T2w", f"{sub}_{ses}_{t2w}T2w"))
    src.rmdir()
    ann = root / "derivatives" / "annotations" / sub
    (ann / ses / "anat").mkdir(parents=True)
    for f in (ann / "anat").iterdir():
        shutil.move(str(f), ann / ses / "anat" / f.name.replace(f"{sub}_", f"{sub}_{ses}_"))


@pytest.fixture
def minimal_bids(tmp_path):
    return make_minimal_bids(tmp_path / "bids")


@pytest.fixture
def one_thread():
    """torch on one thread for the test (deterministic timing-free runs on a shared CPU)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
