"""Lesion-wise metrics of a predicted label volume against a reference, mimic hits and QSM
accuracy (preprint §2.5); lesions and their matching are :mod:`deepmir.lesions`.

Undefined values (``participant_metrics``): sensitivity = TP/(TP+FN) is NaN when the
reference has no lesion of the class; precision = TP/(TP+FP) is NaN when the prediction has
none; F1 = 2TP/(2TP+FP+FN) is NaN only when both are empty; per-participant magnitude
accuracy sqrt(sens² + prec²) is NaN when either is; ``dice_matched_mean`` is NaN without a
matched pair. NaNs are *excluded* from the means in ``deepmir.evaluate.stats`` and each mean reports
how many participants it covers.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from deepmir import settings
from deepmir.lesions import (
    MIMIC_CLASSES,
    MODE_CLASSES,
    TIE_RTOL,
    VALID_LABELS,
    MatchResult,
    class_mask,
    class_name,
    mask_components,
    match_lesions,
    overlap_counts,
    resolve_tolerance,
)

_EVAL = settings.read("evaluate")      # the schema's evaluate defaults

METRIC_COLUMNS = [
    "class", "TP", "FP", "FN", "sensitivity", "precision", "F1", "magnitude_accuracy",
    "fp_count", "count_pred", "count_ref", "count_diff", "dice_matched_mean",
    "tolerance", "tolerance_unit",
]


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def metrics_from_match(m: MatchResult) -> dict:
    """One metrics row (without the class) from a :class:`MatchResult`."""
    sens = _ratio(m.tp, m.tp + m.fn)
    prec = _ratio(m.tp, m.tp + m.fp)
    return {
        "TP": m.tp, "FP": m.fp, "FN": m.fn,
        "sensitivity": sens,
        "precision": prec,
        "F1": _ratio(2 * m.tp, 2 * m.tp + m.fp + m.fn),
        "magnitude_accuracy": float(np.hypot(sens, prec)),  # NaN when either is NaN
        "fp_count": m.fp,
        "count_pred": m.pred.n,
        "count_ref": m.ref.n,
        "count_diff": m.pred.n - m.ref.n,
        "dice_matched_mean": float(np.mean(m.dice)) if m.pairs else float("nan"),
        "tolerance": m.tolerance,
        "tolerance_unit": m.unit,
    }


def participant_metrics(pred, ref, classes=("cmb", "iron"), tolerances: Mapping | None = None,
                        voxel_size=(1.0, 1.0, 1.0), unit: str = "vox") -> pd.DataFrame:
    """One row per class: TP, FP, FN, sensitivity, precision, F1, magnitude_accuracy,
    fp_count, count_pred, count_ref, count_diff (pred − ref), dice_matched_mean, tolerance,
    tolerance_unit.

    ``classes``: names (``'cmb'``, ``'iron'``, ``'union'``), labels or label tuples.
    ``tolerances``: class (name or label) -> tolerance in ``unit`` (``'vox'`` or ``'mm'``);
    a class not listed gets its default *in voxels* (3 CMB, 5 iron/union).
    Undefined values are NaN: sensitivity without a reference lesion, precision without a
    predicted lesion, F1 when both are empty, magnitude accuracy when either is undefined,
    dice_matched_mean without a match.
    """
    if unit not in ("vox", "mm"):
        raise ValueError(f"unit must be 'vox' or 'mm', got {unit!r}")
    p = np.asarray(pred)
    r = np.asarray(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    tolerances = dict(tolerances or {})
    rows = []
    for cls in classes:
        name = class_name(cls)
        tol = next((v for k, v in tolerances.items() if class_name(k) == name), None)
        kw = {}
        if tol is not None:
            kw = {"tolerance_mm": tol} if unit == "mm" else {"tolerance_vox": tol}
        m = match_lesions(p, r, cls, voxel_size=voxel_size, **kw)
        rows.append({"class": name, **metrics_from_match(m)})
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _mimic_lookup(mimic_table) -> dict[int, str]:
    """label -> mimic class from a mapping or a DataFrame with ``index`` and ``name``."""
    if isinstance(mimic_table, pd.DataFrame):
        if not {"index", "name"} <= set(mimic_table.columns):
            raise ValueError("mimic table needs columns 'index' and 'name'")
        items = zip(mimic_table["index"], mimic_table["name"])
    else:
        items = dict(mimic_table).items()
    out = {}
    for k, v in items:
        name = str(v).strip().lower()
        if name not in MIMIC_CLASSES:
            raise ValueError(f"unknown mimic class {v!r}; expected one of {MIMIC_CLASSES}")
        out[int(k)] = name
    return out


def mimic_hits(pred_binary, mimic_label_volume, mimic_table, tolerance_vox: float | None = None,
               voxel_size=(1.0, 1.0, 1.0), tolerance_mm: float | None = None) -> pd.DataFrame:
    """How many predicted lesions fall on each mimic class (vein, calcification, epvs).

    ``pred_binary``: predicted lesion mask (any nonzero voxel is a lesion).
    ``mimic_label_volume``: integer volume, 0 = no mimic; ``mimic_table`` maps its labels to a
    mimic class (a mapping ``{label: name}`` or a DataFrame with ``index`` and ``name``, as a
    BIDS ``dseg.tsv``). Mimic components are 26-connected components per label.

    A predicted component *hits* a mimic component when they share a voxel, or when their
    centroids are strictly closer than the tolerance (``tolerance_vox`` in voxel index
    space, default 3, or ``tolerance_mm`` in mm, as in ``match_lesions``). Returns one row per mimic class: ``n_pred_hits`` (predicted
    components hitting at least one mimic of the class; a component can count for several
    classes), ``n_mimics`` (mimic components), ``n_mimics_hit`` (mimic components hit by at
    least one predicted component).
    """
    pm = np.asarray(pred_binary) != 0
    mv = np.asarray(mimic_label_volume)
    if pm.shape != mv.shape:
        raise ValueError(f"prediction shape {pm.shape} differs from mimic shape {mv.shape}")
    lookup = _mimic_lookup(mimic_table)
    if tolerance_vox is None and tolerance_mm is None:
        tolerance_vox = 3.0
    tol, unit = resolve_tolerance("cmb", tolerance_vox, tolerance_mm)
    pc = mask_components(pm, voxel_size)
    limit = tol - TIE_RTOL * max(1.0, tol)
    rows = []
    for mclass in MIMIC_CLASSES:
        labels = [k for k, v in lookup.items() if v == mclass]
        mc = mask_components(np.isin(mv, labels) if labels else np.zeros(mv.shape, bool), voxel_size)
        hit = np.zeros((pc.n, mc.n), dtype=bool)
        if pc.n and mc.n:
            for (i, j) in overlap_counts(pc.labels, mc.labels, mc.n):
                hit[i, j] = True
            a = pc.centroids_mm if unit == "mm" else pc.centroids_vox
            b = mc.centroids_mm if unit == "mm" else mc.centroids_vox
            near = cKDTree(a).sparse_distance_matrix(cKDTree(b), tol, output_type="ndarray")
            near = near[near["v"] < limit]
            hit[near["i"], near["j"]] = True
        rows.append({"mimic": mclass, "n_pred_hits": int(hit.any(axis=1).sum()),
                     "n_mimics": mc.n, "n_mimics_hit": int(hit.any(axis=0).sum())})
    return pd.DataFrame(rows, columns=["mimic", "n_pred_hits", "n_mimics", "n_mimics_hit"])


def validate_labels(volume) -> np.ndarray:
    """Sorted labels present that are not 0/1/2 (non-integer and NaN values included)."""
    v = np.asarray(volume)
    u = np.unique(v)
    if np.issubdtype(u.dtype, np.floating):
        bad = u[~np.isin(u, VALID_LABELS) | ~np.isfinite(u)]
    else:
        bad = u[~np.isin(u, VALID_LABELS)]
    return bad

QSM_LESION_CLASSES = ("cmb", "iron", "calcification", "vein", "epvs")

# deep grey matter labels of the synthetic truth tissue dseg (deepmir.atlas.head)
DEEP_GM_LABELS = {"caudate": 4, "putamen": 5, "pallidum": 6, "thalamus": 7}

CORTEX_LABEL = 2        # cortical grey matter in that dseg

JUXTACORTICAL_MM = 3.0  # a CMB whose centre lies this close to the cortex is juxtacortical


def juxtacortical_ids(lesion_map, ids, tissue, voxel_size, max_mm: float = JUXTACORTICAL_MM):
    """The lesion ids (of ``ids``) whose centre (centroid of their voxels, rounded to a
    voxel) lies within ``max_mm`` of a cortex voxel (:data:`CORTEX_LABEL`)."""
    lm = np.asarray(lesion_map)
    cortex = np.rint(np.asarray(tissue)) == CORTEX_LABEL
    if not cortex.any():
        return []
    dist = ndimage.distance_transform_edt(~cortex, sampling=voxel_size)
    out = []
    for i in ids:
        v = np.argwhere(lm == i)
        if len(v) and dist[tuple(np.rint(v.mean(0)).astype(int))] <= max_mm:
            out.append(int(i))
    return out


def lesion_moments(chi, lesion_map, ids, voxel_volume: float = 1.0, grow: int = 1,
                   shell: int = 2) -> dict:
    """Susceptibility moment (ppm·mm³) of each lesion id: Σ (χ − χ_bg) × voxel volume over
    the lesion grown by ``grow`` voxels (26-neighbourhood; the dipole-inversion blur spreads
    a small source), χ_bg = median χ over a shell ``shell`` voxels thick around that
    region. Returns
    {id: moment} for the ids present in ``lesion_map``."""
    c = np.asarray(chi, dtype=float)
    lm = np.asarray(lesion_map)
    out = {}
    boxes = ndimage.find_objects(np.where(np.isin(lm, list(ids)), lm, 0).astype(np.int64))
    pad = grow + shell + 1
    cube = np.ones((3, 3, 3), bool)
    for i in ids:
        if i < 1 or i > len(boxes) or boxes[i - 1] is None:
            continue
        sl = tuple(slice(max(b.start - pad, 0), b.stop + pad) for b in boxes[i - 1])
        les = lm[sl] == i
        core = ndimage.binary_dilation(les, cube, iterations=grow) if grow > 0 else les
        ring = ndimage.binary_dilation(core, cube, iterations=shell) & ~core
        sub = c[sl]
        bg = float(np.median(sub[ring])) if ring.any() else 0.0
        out[int(i)] = float((sub[core] - bg).sum() * voxel_volume)
    return out


def qsm_accuracy(chi, truth, mask, lesion_map=None, lesion_classes: Mapping | None = None,
                 tissue=None, voxel_volume: float = 1.0, voxel_size=None) -> dict:
    """Accuracy of a susceptibility map against the synthetic truth, inside ``mask``.

    QSM is defined up to a constant, so both maps are first referenced to their own mean
    inside the mask. Returns ``n_voxels``, ``rmse_ppm`` = sqrt(mean (χ − χ_true)²),
    ``nrmse_percent`` = 100 · ‖χ − χ_true‖ / ‖χ_true‖, ``bias_ppm`` = mean(χ − χ_true)
    (0 after referencing; kept for clarity), ``pearson_r``, ``slope`` (least-squares slope
    of χ against χ_true; 1 = no under-/overestimation) and, with a lesion id map and
    ``lesion_classes`` (lesion id -> cmb/iron/calcification/vein/epvs), per class c
    ``<c>_n`` lesions, ``<c>_chi_ppm`` and ``<c>_true_ppm`` (mean over the class's lesion
    voxels inside the mask) and ``<c>_ratio`` (their ratio; NaN without lesions), and the
    lesion susceptibility moments (:func:`lesion_moments`, the same operator on χ and on
    χ_true, ``voxel_volume`` in mm³): ``<c>_moment_ratio`` (median over the class's lesions
    of moment / true moment), ``<c>_n_positive`` and ``<c>_n_negative`` (signs of χ over
    the lesion's voxels against the shell around them, i.e. moments with ``grow=0``). With the
    truth ``tissue`` dseg, per deep grey matter nucleus
    (:data:`DEEP_GM_LABELS`) ``<roi>_error_ppm`` = mean χ − mean χ_true over the nucleus
    inside the mask (both referenced to their mask mean) and ``deep_gm_abs_error_ppm`` (the
    mean of their absolute values); with lesions too, the juxtacortical CMBs
    (:func:`juxtacortical_ids`; ``voxel_size`` in mm, default isotropic from
    ``voxel_volume``): ``juxtacortical_cmb_n``, ``juxtacortical_cmb_moment_ratio`` (median)
    and ``juxtacortical_cmb_n_positive``.
    """
    c = np.asarray(chi, dtype=float)
    t = np.asarray(truth, dtype=float)
    m = np.asarray(mask) > 0
    if c.shape != t.shape or c.shape != m.shape:
        raise ValueError(f"shapes differ: chi {c.shape}, truth {t.shape}, mask {m.shape}")
    m &= np.isfinite(c) & np.isfinite(t)
    if m.sum() < 2:
        raise ValueError("mask holds fewer than two finite voxels")
    cm = c - c[m].mean()
    tm = t - t[m].mean()
    d = cm[m] - tm[m]
    tn = float(np.sqrt((tm[m] ** 2).sum()))
    var_t = float(((tm[m] - tm[m].mean()) ** 2).sum())
    out = {
        "n_voxels": int(m.sum()),
        "rmse_ppm": float(np.sqrt((d ** 2).mean())),
        "nrmse_percent": float(100.0 * np.sqrt((d ** 2).sum()) / tn) if tn > 0 else float("nan"),
        "bias_ppm": float(d.mean()),
        "pearson_r": float(np.corrcoef(cm[m], tm[m])[0, 1]) if var_t > 0 else float("nan"),
        "slope": float((cm[m] * tm[m]).sum() / var_t) if var_t > 0 else float("nan"),
    }
    if lesion_map is not None:
        lm = np.asarray(lesion_map)
        if lm.shape != c.shape:
            raise ValueError(f"lesion map shape {lm.shape} differs from {c.shape}")
        classes = {int(k): str(v).lower() for k, v in dict(lesion_classes or {}).items()}
        for cls in QSM_LESION_CLASSES:
            ids = [k for k, v in classes.items() if v == cls]
            sel = np.isin(lm, ids) & m if ids else np.zeros_like(m)
            n = int(len(np.intersect1d(np.unique(lm[sel]), ids))) if sel.any() else 0
            chi_mean = float(cm[sel].mean()) if sel.any() else float("nan")
            true_mean = float(tm[sel].mean()) if sel.any() else float("nan")
            out[f"{cls}_n"] = n
            out[f"{cls}_chi_ppm"] = chi_mean
            out[f"{cls}_true_ppm"] = true_mean
            out[f"{cls}_ratio"] = (chi_mean / true_mean
                                   if sel.any() and abs(true_mean) > 1e-12 else float("nan"))
            est = lesion_moments(np.where(m, cm, 0.0), lm, ids, voxel_volume) if ids else {}
            ref = lesion_moments(np.where(m, tm, 0.0), lm, ids, voxel_volume) if ids else {}
            ratios = [est[k] / ref[k] for k in est if abs(ref.get(k, 0.0)) > 1e-12]
            out[f"{cls}_moment_ratio"] = float(np.median(ratios)) if ratios else float("nan")
            # signs: the lesion's own voxels against the shell right around them (growing
            # would take in neighbouring tissue, e.g. the pallidum next to a calcification)
            con = lesion_moments(np.where(m, cm, 0.0), lm, ids, voxel_volume, grow=0) \
                if ids else {}
            out[f"{cls}_n_positive"] = int(sum(v > 0 for v in con.values()))
            out[f"{cls}_n_negative"] = int(sum(v < 0 for v in con.values()))
    if tissue is not None:
        ts = np.rint(np.asarray(tissue)).astype(np.int64)
        if ts.shape != c.shape:
            raise ValueError(f"tissue map shape {ts.shape} differs from {c.shape}")
        errs = []
        for name, label in DEEP_GM_LABELS.items():
            sel = (ts == label) & m
            e = float(cm[sel].mean() - tm[sel].mean()) if sel.any() else float("nan")
            out[f"{name}_error_ppm"] = e
            errs.append(abs(e))
        out["deep_gm_abs_error_ppm"] = float(np.nanmean(errs)) if np.isfinite(errs).any() \
            else float("nan")
        if lesion_map is not None:
            vs = voxel_size if voxel_size is not None else (voxel_volume ** (1 / 3),) * 3
            cmb = [k for k, v in classes.items() if v == "cmb"]
            jx = juxtacortical_ids(lm, cmb, ts, vs)
            est = lesion_moments(np.where(m, cm, 0.0), lm, jx, voxel_volume) if jx else {}
            ref = lesion_moments(np.where(m, tm, 0.0), lm, jx, voxel_volume) if jx else {}
            ratios = [est[k] / ref[k] for k in est if abs(ref.get(k, 0.0)) > 1e-12]
            sign = lesion_moments(np.where(m, cm, 0.0), lm, jx, voxel_volume, grow=0) \
                if jx else {}
            out["juxtacortical_cmb_n"] = len(ratios)
            out["juxtacortical_cmb_moment_ratio"] = float(np.median(ratios)) if ratios \
                else float("nan")
            out["juxtacortical_cmb_n_positive"] = int(sum(v > 0 for v in sign.values()))
    return out


def mimic_status(pred_binary, mimic_label_volume, mimic_table, tolerance_vox: float = 3.0,
                 voxel_size=(1.0, 1.0, 1.0)) -> pd.DataFrame:
    """One row per mimic component (26-connected, per mimic class): ``mimic`` class,
    ``centroid_i/j/k`` (voxel indices), ``n_voxels`` and ``hit`` — whether a predicted
    component falls on it by the rule of :func:`mimic_hits` (shared voxel or centroids
    strictly closer than ``tolerance_vox``); ``hit`` False means the model rejected it."""
    pm = np.asarray(pred_binary) != 0
    mv = np.asarray(mimic_label_volume)
    if pm.shape != mv.shape:
        raise ValueError(f"prediction shape {pm.shape} differs from mimic shape {mv.shape}")
    lookup = _mimic_lookup(mimic_table)
    tol, _ = resolve_tolerance("cmb", tolerance_vox, None)
    limit = tol - TIE_RTOL * max(1.0, tol)
    pc = mask_components(pm, voxel_size)
    rows = []
    for mclass in MIMIC_CLASSES:
        labels = [k for k, v in lookup.items() if v == mclass]
        if not labels:
            continue
        mc = mask_components(np.isin(mv, labels), voxel_size)
        hit = np.zeros(mc.n, dtype=bool)
        if pc.n and mc.n:
            for (_, j) in overlap_counts(pc.labels, mc.labels, mc.n):
                hit[j] = True
            near = cKDTree(pc.centroids_vox).sparse_distance_matrix(
                cKDTree(mc.centroids_vox), tol, output_type="ndarray")
            hit[near["j"][near["v"] < limit]] = True
        for j in range(mc.n):
            ci, cj, ck = mc.centroids_vox[j]
            rows.append({"mimic": mclass, "centroid_i": ci, "centroid_j": cj, "centroid_k": ck,
                         "n_voxels": int(mc.sizes[j]), "hit": bool(hit[j])})
    return pd.DataFrame(rows, columns=["mimic", "centroid_i", "centroid_j", "centroid_k",
                                       "n_voxels", "hit"])

MIMIC_COLUMNS = [f"mimic_{m}_{what}" for m in MIMIC_CLASSES
                 for what in ("hits", "fp_hits", "count", "detected")]


def evaluate_volumes(pred, ref, mode: str, voxel_size, tol_cmb=_EVAL["tolerance"]["cmb"],
                     tol_iron=_EVAL["tolerance"]["iron"], unit=_EVAL["tolerance_unit"], mimics=None,
                     mimic_table=None) -> pd.DataFrame:
    """Metrics rows of one participant (no ids), one per class of ``mode``.

    With a mimic map (``mimics``, ``mimic_table``) each row also gets, per mimic class
    ``m`` (vein, calcification, epvs) and with the class's tolerance:
    ``mimic_<m>_hits`` predicted components of the class on a mimic of class m (shared voxel
    or centroid strictly closer than the tolerance, see ``deepmir.evaluate.metrics.mimic_hits``),
    ``mimic_<m>_fp_hits`` those among them that are false positives (matched to no
    reference lesion), ``mimic_<m>_count`` mimic components in the map and
    ``mimic_<m>_detected`` mimic components hit by a predicted component (the rest were
    rejected).
    """
    tolerances = {"cmb": tol_cmb, "iron": tol_iron, "union": max(tol_cmb, tol_iron)}
    classes = MODE_CLASSES[mode]
    df = participant_metrics(pred, ref, classes, tolerances, voxel_size, unit)
    if mimics is not None:
        unit_key = "tolerance_mm" if unit == "mm" else "tolerance_vox"
        cols = {c: [] for c in MIMIC_COLUMNS}
        for cls in classes:
            kw = {unit_key: tolerances[cls]}
            m = match_lesions(pred, ref, cls, voxel_size=voxel_size, **kw)
            fp_mask = np.isin(m.pred.labels, [i + 1 for i in m.unmatched_pred])
            h_all = mimic_hits(class_mask(pred, cls), mimics, mimic_table,
                               voxel_size=voxel_size, **kw).set_index("mimic")
            h_fp = mimic_hits(fp_mask, mimics, mimic_table, voxel_size=voxel_size,
                              **kw).set_index("mimic")
            for mc in MIMIC_CLASSES:
                cols[f"mimic_{mc}_hits"].append(int(h_all.loc[mc, "n_pred_hits"]))
                cols[f"mimic_{mc}_fp_hits"].append(int(h_fp.loc[mc, "n_pred_hits"]))
                cols[f"mimic_{mc}_count"].append(int(h_all.loc[mc, "n_mimics"]))
                cols[f"mimic_{mc}_detected"].append(int(h_all.loc[mc, "n_mimics_hit"]))
        for c, v in cols.items():
            df[c] = v
    return df
