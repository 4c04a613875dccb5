"""nnU-Net's raw dataset format for an experiment's channels (nnU-Net v2, "dataset format"
documentation): ``DatasetNNN_Name/imagesTr/<case>_<XXXX>.nii.gz`` (one file per channel,
XXXX = channel index), ``labelsTr/<case>.nii.gz`` (consecutive integer labels) and
``dataset.json``. Plain functions on names and dicts; ``deepmir export-nnunet`` writes the files.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from deepmir import niio
from deepmir.errors import InputError
from deepmir.inputs import bids
from deepmir.learn.dataset import label_mode as map_labels

FILE_ENDING = ".nii.gz"
# the label names of each label mode (deepmir.learn.dataset.label_mode gives the values 0, 1[, 2])
LABELS = {
    "cmb": {"background": 0, "CMB": 1},
    "iron": {"background": 0, "iron": 1},
    "union": {"background": 0, "CMB_or_iron": 1},
    "multiclass": {"background": 0, "CMB": 1, "iron": 2},
}
_DATASET = re.compile(r"Dataset(\d{3})_([A-Za-z0-9_\-]+)")
_CASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")


def dataset_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name ``DatasetNNN_name`` (NNN: a three-digit ID, 1–999)."""
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"an nnU-Net dataset ID is 1-999, got {dataset_id}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def dataset_problem(folder_name: str) -> str | None:
    """Why ``folder_name`` is not an nnU-Net dataset folder name, or None."""
    m = _DATASET.fullmatch(folder_name)
    if not m:
        return "an nnU-Net dataset folder is named DatasetNNN_Name (NNN three digits)"
    if int(m.group(1)) == 0:
        return "the nnU-Net dataset ID must be 1-999"
    return None


def case_problem(case: str) -> str | None:
    """Why ``case`` cannot be an nnU-Net case identifier, or None (nnU-Net finds a case's
    channels by the ``_XXXX`` suffix, so an identifier ending in ``_`` + 4 digits is ambiguous)."""
    if not _CASE.fullmatch(case):
        return "a case identifier is letters, digits, '-' and '_'"
    if re.search(r"_\d{4}$", case):
        return "a case identifier must not end in _ and four digits (nnU-Net's channel suffix)"
    return None


def image_name(case: str, channel_index: int) -> str:
    return f"{case}_{channel_index:04d}{FILE_ENDING}"


def label_name(case: str) -> str:
    return f"{case}{FILE_ENDING}"


def dataset_json(channels: list[str], label_mode: str, n_training: int, description: str) -> dict:
    """``dataset.json``: channel names in network order (nnU-Net z-scores every channel whose
    name is not CT), the label mode's labels, the number of training cases."""
    return {
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": dict(LABELS[label_mode]),
        "numTraining": int(n_training),
        "file_ending": FILE_ENDING,
        "description": description,
    }


def check_cases(cases, n_channels):
    """[(case, [image paths], dseg path, 3D shape)] of ``cases`` (each: id, one image per channel,
    the dseg) after checking names, counts and grids."""
    out, seen = [], set()
    for items in cases:
        case, files = items[0], [Path(f) for f in items[1:]]
        problem = case_problem(case)
        if problem:
            raise InputError(case, problem)
        if case in seen:
            raise InputError(case, "the case is given twice")
        seen.add(case)
        if len(files) != n_channels + 1:
            raise InputError(case, f"--case {case} needs {n_channels} image(s) (one per channel) and a dseg, "
                                   f"got {len(files)} file(s)")
        ref_img, ref_shape = bids.image_header(files[-1])
        for f in files[:-1]:
            img, shape = bids.image_header(f)
            if shape != ref_shape or not np.allclose(img.affine, ref_img.affine, atol=bids.AFFINE_TOL_MM):
                raise InputError(f, f"not on the grid of {files[-1]} (shape or affine differs)")
        out.append((case, files[:-1], files[-1], ref_shape))
    return out


def check_splits(path: Path, cases: set[str]):
    """nnU-Net's splits_final.json at ``path``, naming only exported ``cases``."""
    splits = niio.read_json(path, "splits_final.json")
    if not isinstance(splits, list) or not all(
            isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list)
            for s in splits):
        raise InputError(path, "not nnU-Net's splits_final.json (a list of {train: [...], val: [...]})")
    unknown = sorted({c for s in splits for c in s["train"] + s["val"]} - cases)
    if unknown:
        raise InputError(path, f"names cases that are not exported: {', '.join(map(str, unknown[:5]))}")
    return splits


def write_dataset(out: Path, cases, channels, mode: str, splits=None) -> None:
    """The raw dataset (imagesTr, labelsTr, dataset.json, splits_final.json) of checked
    ``cases`` (:func:`check_cases`), the labels mapped by label ``mode``; whole or not at all."""
    description = (f"deepmir {mode} labels from {', '.join(channels)} on the MEGRE grid; "
                   f"{len(cases)} cases")
    with niio.together():
        for case, images, dseg, shape in cases:          # (X, Y, Z, 1) headers pass as 3D
            for i, path in enumerate(images):
                data, affine = niio.load(path)
                niio.save(out / "imagesTr" / image_name(case, i), data.reshape(shape), affine,
                          dtype=np.float32)
            labels, affine = niio.load(dseg, dtype=np.int32)
            niio.save(out / "labelsTr" / label_name(case),
                      map_labels(labels.reshape(shape), mode), affine, dtype=np.uint8)
        niio.write_json(out / "dataset.json",
                        dataset_json(channels, mode, len(cases), description))
        if splits is not None:
            niio.write_json(out / "splits_final.json", splits)
