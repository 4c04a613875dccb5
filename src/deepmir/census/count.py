"""Lesion census of one participant (method.md §8): every lesion of a label map with its
position, size, model confidence, susceptibility, SWI contrast and anatomical region."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from deepmir import settings
from deepmir.atlas import regions
from deepmir.errors import InputError
from deepmir.geometry import voxel_sizes
from deepmir.learn.postprocess import elongation, qsm_mimic

_CENSUS = settings.defaults("census")      # the schema's census defaults

CLASSES = {1: "cmb", 2: "iron"}
SIZE_CUTOFF_MM = 5.0
STRUCTURE = np.ones((3, 3, 3), bool)   # 26-connectivity
COLUMNS = ["lesion_id", "cls", "label", "centroid_i", "centroid_j", "centroid_k", "centroid_x_mm",
           "centroid_y_mm", "centroid_z_mm", "n_voxels", "volume_mm3", "diameter_mm", "size_group",
           "confidence", "mean_chi_ppm", "delta_chi_ppm", "moment_ppm_mm3", "swi_contrast",
           "chi_elongation", "region_group", "region", "hemisphere", "probable_calcification",
           "probable_vein", "counted_as"]


def shell(mask, voxels: int = 2):
    """The ring of ``voxels`` around a mask (its local background)."""
    return ndi.binary_dilation(mask, STRUCTURE, iterations=voxels) & ~mask


def lesion_census(labels, affine, *, probs=None, chi=None, swi=None, to_mni=None, atlas=None,
                  shell_voxels: int = 2,
                  exclude_calcifications: bool = _CENSUS["exclude_calcifications"],
                  exclude_veins: bool = _CENSUS["exclude_veins"]) -> pd.DataFrame:
    """One row per connected component (26-connectivity) of each class of ``labels``.

    probs: class probabilities (C, ...) or (...) of the predicted class — confidence is the
    mean over the lesion; chi: QSM (ppm) — mean χ, Δχ against the surrounding shell and the
    moment Δχ·volume; swi: contrast (shell − lesion)/shell; to_mni: callable mapping world mm
    (N×3) to MNI mm, with ``atlas`` the MNI atlas of :mod:`deepmir.atlas.regions`. A lesion labelled
    CMB with Δχ < 0 is flagged ``probable_calcification`` and, when
    ``exclude_calcifications``, counted as a calcification instead of a CMB; one on an elongated
    paramagnetic structure (``chi_elongation``, :func:`deepmir.learn.postprocess.elongation`, above
    ``VEIN_MAX_ELONGATION``) is flagged ``probable_vein`` and, when ``exclude_veins``, counted
    as a vein (the evaluation's QSM rule drops both)."""
    labels = np.asarray(labels)
    voxel_volume = float(abs(np.linalg.det(np.asarray(affine)[:3, :3])))
    rows = []
    for label, cls in CLASSES.items():
        comp, n = ndi.label(labels == label, STRUCTURE)
        if n == 0:
            continue
        for sl_index, sl in enumerate(ndi.find_objects(comp), start=1):
            pad = tuple(slice(max(s.start - shell_voxels - 1, 0), s.stop + shell_voxels + 1) for s in sl)
            mask = comp[pad] == sl_index
            ring = shell(mask, shell_voxels) & (labels[pad] == 0)
            idx = np.argwhere(mask) + [p.start for p in pad]
            cen = idx.mean(0)
            mm = affine[:3, :3] @ cen + affine[:3, 3]
            volume = len(idx) * voxel_volume
            diameter = (6 * volume / np.pi) ** (1 / 3)
            row = dict(cls=cls, label=label, centroid_i=cen[0], centroid_j=cen[1], centroid_k=cen[2],
                       centroid_x_mm=mm[0], centroid_y_mm=mm[1], centroid_z_mm=mm[2],
                       n_voxels=len(idx), volume_mm3=volume, diameter_mm=diameter,
                       size_group="<5mm" if diameter < SIZE_CUTOFF_MM else ">=5mm")
            if probs is not None:
                p = np.asarray(probs)
                p = p[label] if p.ndim == labels.ndim + 1 else p
                row["confidence"] = float(p[pad][mask].mean())
            if chi is not None:
                c = np.asarray(chi)[pad]
                background = float(np.median(c[ring])) if ring.any() else 0.0
                row["mean_chi_ppm"] = float(c[mask].mean())
                row["delta_chi_ppm"] = row["mean_chi_ppm"] - background
                row["moment_ppm_mm3"] = row["delta_chi_ppm"] * volume
                if cls == "cmb":
                    row["chi_elongation"] = elongation(chi, comp == sl_index, (labels > 0) & (comp != sl_index),
                                                       voxel_sizes(affine), shell_voxels=shell_voxels)
            if swi is not None:
                s = np.asarray(swi, float)[pad]
                ref = float(s[ring].mean()) if ring.any() else np.nan
                row["swi_contrast"] = (ref - float(s[mask].mean())) / ref if ref else np.nan
            if to_mni is not None and atlas is not None:
                g, r, h = regions.region_of(atlas, to_mni(mm[None]))[0]
                row.update(region_group=g, region=r, hemisphere=h)
            kind = (qsm_mimic(row.get("delta_chi_ppm", 0.0), row.get("chi_elongation", 1.0))
                    if cls == "cmb" else None)
            calc, vein = kind == "calcification", kind == "vein"
            row["probable_calcification"], row["probable_vein"] = calc, vein
            row["counted_as"] = ("calcification" if calc and exclude_calcifications else
                                 "vein" if vein and exclude_veins else cls)
            rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS[1:])
    df = df.sort_values(["label", "centroid_k", "centroid_j", "centroid_i"], kind="stable").reset_index(drop=True)
    df.insert(0, "lesion_id", np.arange(1, len(df) + 1))
    return df


def participant_counts(census: pd.DataFrame) -> dict:
    """Counts by class × region group × size group (what a cohort table row holds)."""
    out = {}
    counted = census[census.counted_as.isin(list(CLASSES.values()))]
    for cls in CLASSES.values():
        sub = counted[counted.counted_as == cls]
        out[f"{cls}_total"] = len(sub)
        for g in regions.GROUPS:
            out[f"{cls}_{g}"] = int((sub.region_group == g).sum()) if "region_group" in sub else 0
        for size in ("<5mm", ">=5mm"):
            out[f"{cls}_{size}"] = int((sub.size_group == size).sum())
    out["probable_calcifications"] = int(census.probable_calcification.sum())
    out["probable_veins"] = int(census.probable_vein.sum()) if "probable_vein" in census else 0
    return out


def cohort_table(census_tables) -> pd.DataFrame:
    """One row per participant (``census_tables``: (participant id, census table) pairs): the
    counts of :func:`participant_counts`."""
    return pd.DataFrame([dict(participant_id=pid, **participant_counts(df)) for pid, df in census_tables])


def cohort_summary(table: pd.DataFrame) -> str:
    """The cohort summary (Markdown): prevalence, median, IQR, maximum and regions per class."""
    n = len(table)
    lines = [f"# Lesion census: {n} participants", "",
             "| class | prevalence (≥1) | median | IQR | max | lobar | deep | infratentorial |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for cls in ("cmb", "iron"):
        c = table[f"{cls}_total"]
        q1, q3 = np.percentile(c, [25, 75]) if n else (0, 0)
        lines.append(f"| {cls} | {(c > 0).sum()}/{n} ({100 * (c > 0).mean():.0f} %) | {c.median():g} | "
                     f"{q1:g}–{q3:g} | {c.max()} | {table[f'{cls}_lobar'].sum()} | "
                     f"{table[f'{cls}_deep'].sum()} | {table[f'{cls}_infratentorial'].sum()} |")
    lines += ["", f"Probable calcifications (diamagnetic lesions labelled CMB): "
                  f"{table.probable_calcifications.sum()}",
              f"Probable veins (lesions labelled CMB on an elongated paramagnetic structure): "
              f"{table.probable_veins.sum()}", ""]
    return "\n".join(lines)


def read_census(paths) -> list:
    """(participant id, census table) of census TSVs named <pid>_..._census.tsv, checked."""
    tables = []
    for path in paths:
        pid = Path(path).name.split("_census")[0].replace("_desc-", "|").split("|")[0]
        try:
            df = pd.read_csv(path, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise InputError(path, f"unreadable TSV ({err})")
        missing = {"counted_as", "region_group", "size_group", "probable_calcification"} - set(df.columns)
        if missing:
            raise InputError(path, f"missing columns {sorted(missing)}")
        tables.append((pid, df))
    return tables
