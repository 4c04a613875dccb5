"""The evaluation's inputs, read and checked: label maps (0/1/2) on the reference grid, mimic maps
and their tables, maps on a grid. Each problem is one InputError naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepmir import niio
from deepmir.errors import InputError
from deepmir.evaluate.metrics import validate_labels
from deepmir.lesions import MIMIC_CLASSES

AFFINE_ATOL = 1e-3  # mm


def load_labels(path: Path, what: str):
    """(3D volume as float64, affine) of a label map or image to evaluate."""
    return niio.load_image(path, what, dtype=np.float64)


def check_grid(path: Path, data, affine, ref_path: Path, ref_data, ref_affine, what: str):
    if data.shape != ref_data.shape:
        raise InputError(path, f"{what} shape {data.shape} differs from reference "
                               f"{ref_path} shape {ref_data.shape}")
    if not np.allclose(affine, ref_affine, atol=AFFINE_ATOL):
        raise InputError(path, f"{what} affine differs from reference {ref_path} affine "
                               f"(max difference {np.abs(affine - ref_affine).max():.4g})")


def check_labels(path: Path, data, what: str):
    bad = validate_labels(data)
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5]) + (" ..." if bad.size > 5 else "")
        raise InputError(path, f"{what} has labels other than 0/1/2: {shown}")
    return data.astype(np.uint8)


def read_mimic_table(path: Path) -> pd.DataFrame:
    """Mimic labels of the mimic map: a TSV with ``index`` and ``name`` (BIDS dseg.tsv style)
    or the synthetic truth's ``lesions.tsv`` (``lesion_id``, ``cls``; its cmb/iron rows are
    not mimics and are dropped)."""
    niio.regular_file(path, "mimic table")
    try:
        t = pd.read_csv(path, sep="\t")
    except Exception as err:
        raise InputError(path, f"cannot read mimic table ({err})")
    if {"index", "name"} <= set(t.columns):
        idx_col, name_col = "index", "name"
    elif {"lesion_id", "cls"} <= set(t.columns):
        idx_col, name_col = "lesion_id", "cls"
    else:
        raise InputError(path, "mimic table needs columns 'index' and 'name' "
                               "(or 'lesion_id' and 'cls' as in lesions.tsv)")
    names = t[name_col].astype(str).str.strip().str.lower()
    keep = ~names.isin(["cmb", "iron"])
    unknown = sorted(set(names[keep]) - set(MIMIC_CLASSES))
    if unknown:
        raise InputError(path, f"unknown mimic classes: {', '.join(unknown)}")
    try:
        idx = t.loc[keep, idx_col].astype(int)
    except (ValueError, TypeError):
        raise InputError(path, f"mimic table '{idx_col}' must hold integers")
    return pd.DataFrame({"index": idx.to_numpy(), "name": names[keep].to_numpy()})


def load_on_grid(path: Path, what: str, ref=None):
    """:func:`load_labels`, on the grid of ``ref`` = (path, volume, affine) when given."""
    data, aff = load_labels(path, what)
    if ref is not None:
        check_grid(path, data, aff, ref[0], ref[1], ref[2], what)
    return data, aff


def read_label_pair(pred_path: Path, ref_path: Path):
    """(prediction, reference, reference affine): two label maps (0/1/2, uint8) on one grid."""
    ref, ref_aff = load_labels(ref_path, "reference")
    pred, pred_aff = load_labels(pred_path, "prediction")
    check_grid(pred_path, pred, pred_aff, ref_path, ref, ref_aff, "prediction")
    return check_labels(pred_path, pred, "prediction"), check_labels(ref_path, ref, "reference"), ref_aff


def read_mimics(mimics_path, table_path, grid):
    """(mimic map as int64, its table) on the grid ``grid`` = (path, volume, affine), or
    (None, None) when neither is given; the two go together."""
    if (mimics_path is None) != (table_path is None):
        given = mimics_path if mimics_path is not None else table_path
        raise InputError(given, "--mimics and --mimic-table go together")
    if mimics_path is None:
        return None, None
    table = read_mimic_table(table_path)
    mimics, _ = load_on_grid(mimics_path, "mimic map", grid)
    if np.any(mimics != np.round(mimics)) or np.any(~np.isfinite(mimics)):
        raise InputError(mimics_path, "mimic map must hold integer labels")
    return mimics.astype(np.int64), table


def read_lesion_classes(path: Path) -> dict:
    """{lesion id: class} of a lesions.tsv (columns lesion_id, cls)."""
    try:
        t = pd.read_csv(path, sep="\t")
    except Exception as err:
        raise InputError(path, f"cannot read lesion table ({err})")
    if not {"lesion_id", "cls"} <= set(t.columns):
        raise InputError(path, "lesion table needs columns lesion_id and cls")
    return dict(zip(t["lesion_id"].astype(int), t["cls"].astype(str)))


def read_qsm_truth(chi_path, truth_path, mask_path, lesion_map_path=None, lesions_path=None, tissue_path=None):
    """(χ, true χ, mask, lesion map or None, {lesion id: class} or None, tissue dseg or None,
    affine) on χ's grid: the inputs of ``deepmir qsm-accuracy``."""
    chi, aff = load_on_grid(chi_path, "QSM map")
    grid = (chi_path, chi, aff)
    truth, _ = load_on_grid(truth_path, "true susceptibility", grid)
    mask, _ = load_on_grid(mask_path, "brain mask", grid)
    lesion_map = classes = None
    if (lesion_map_path is None) != (lesions_path is None):
        raise InputError(lesion_map_path or lesions_path, "--lesion-map and --lesions go together")
    if lesion_map_path is not None:
        lesion_map = np.rint(load_on_grid(lesion_map_path, "lesion map", grid)[0]).astype(np.int64)
        classes = read_lesion_classes(lesions_path)
    if not np.any(mask > 0):
        raise InputError(mask_path, "brain mask is empty")
    tissue = None if tissue_path is None else load_on_grid(tissue_path, "tissue dseg", grid)[0]
    return chi, truth, mask, lesion_map, classes, tissue, aff
