"""The output folder as a BIDS derivative dataset: its ``dataset_description.json``
(DatasetType derivative, GeneratedBy, SourceDatasets) and the resolved configuration beside it.
Plain functions on dicts; the workflow's ``provenance`` rule writes them."""
from __future__ import annotations

import os

from deepmir import __version__

BIDS_VERSION = "1.10.0"


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
    }
