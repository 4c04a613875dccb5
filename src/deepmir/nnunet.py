"""nnU-Net's raw dataset format for an experiment's channels (nnU-Net v2, "dataset format"
documentation): ``DatasetNNN_Name/imagesTr/<case>_<XXXX>.nii.gz`` (one file per channel,
XXXX = channel index), ``labelsTr/<case>.nii.gz`` (consecutive integer labels) and
``dataset.json``. Plain functions on names and dicts; ``deepmir export-nnunet`` writes the files.
"""
from __future__ import annotations

import re

FILE_ENDING = ".nii.gz"
# the label names of each label mode (deepmir.dataset.label_mode gives the values 0, 1[, 2])
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
