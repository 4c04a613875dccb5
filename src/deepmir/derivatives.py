"""The output folder as a BIDS derivative dataset: its ``dataset_description.json``
(DatasetType derivative, GeneratedBy, SourceDatasets), the resolved configuration beside it,
and each participant's maps under ``sub-X/[ses-Y/]anat/`` with their sidecars. Plain functions
on names and dicts; the workflow's ``provenance`` and ``derivatives_*`` rules write the files."""
from __future__ import annotations

import os

from deepmir import __version__

BIDS_VERSION = "1.10.0"
RAW = "raw"     # the input dataset's name in BIDS URIs (bids:raw:sub-01/anat/…) and DatasetLinks


def dataset_description(source: dict, source_path: str, out_dir: str) -> dict:
    """The derivative's description. ``source``: the input dataset's own description (its Name,
    DOI and version are carried over where it has them); ``source_path``: the input dataset's
    folder, given in SourceDatasets relative to ``out_dir`` (the folder this description is
    for), so the pair can be moved together."""
    src = {"URL": "file:" + os.path.relpath(os.path.abspath(source_path), os.path.abspath(out_dir))}
    for key, name in (("DatasetDOI", "DOI"), ("DatasetVersion", "Version")):
        if source.get(key):
            src[name] = str(source[key])
    if source.get("Name"):
        src["Name"] = str(source["Name"])     # not a BIDS field of SourceDatasets; helps a reader
    return {
        "Name": f"deepmir derivatives of {source.get('Name') or os.path.basename(os.path.abspath(source_path))}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "deepmir", "Version": __version__,
                         "Description": "cerebral microbleed and iron deposit detection from SWI, "
                                        "QSM and T2w (DEEPMIR); the configuration it ran with is "
                                        "deepmir_config.yaml beside this file"}],
        "SourceDatasets": [src],
        "DatasetLinks": {RAW: os.path.relpath(os.path.abspath(source_path), os.path.abspath(out_dir))},
    }


# --------------------------------------------------------------- the participants' derivatives
# what each participant's folder holds: name (as the working file's, after the participant
# label) → (stage folder of the working file, Units of the map or None)
PARTICIPANT_MAPS = {
    "space-MEGRE_Chimap.nii.gz": ("qsm", "ppm"),
    "space-MEGRE_R2starmap.nii.gz": ("qsm", "Hz"),
    "space-MEGRE_desc-local_fieldmap.nii.gz": ("qsm", "ppm"),
    "space-MEGRE_swi.nii.gz": ("swi", None),
    "space-MEGRE_desc-minip_swi.nii.gz": ("swi", None),
    "space-MEGRE_desc-brain_mask.nii.gz": ("anat", None),
}
DSEG_LABELS = "index\tname\tabbreviation\n0\tbackground\tBG\n1\tcerebral microbleed\tCMB\n2\tiron deposit\tFe\n"


def participant_folder(pid: str) -> str:
    """``sub-X/anat`` or ``sub-X/ses-Y/anat`` for a participant label ``sub-X[_ses-Y]``."""
    sub, _, ses = pid.partition("_")
    return f"{sub}/{ses}/anat" if ses else f"{sub}/anat"


def bids_path(pid: str, name: str) -> str:
    """A derivative's path inside the output folder: ``<participant folder>/<pid>_<name>``."""
    return f"{participant_folder(pid)}/{pid}_{name}"


def bids_uri(path: str, dataset_root: str) -> str:
    """``bids:raw:<path inside the input dataset>``."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(dataset_root))
    return f"bids:{RAW}:{rel}"


def image_metadata(working: dict | None, sources: list[str], reference: str, units: str | None) -> dict:
    """A published map's sidecar: what the working sidecar held (settings, λ, method …), the
    input files it came from (``Sources``), the image whose grid ``space-MEGRE`` is
    (``SpatialReference``), and its ``Units``."""
    meta = dict(working or {})
    if units:
        meta["Units"] = units
    meta["Sources"] = list(sources)
    meta["SpatialReference"] = reference
    return meta


# the BIDS validator's view: the participants' folders and the top-level files; deepmir's
# working folders, reports, logs and benchmarks are not BIDS
BIDSIGNORE = "/*/\n!/sub-*/\n/deepmir_config.yaml\n"
