"""Lesion-wise evaluation of a predicted label volume against a reference (preprint §2.5).

Labels follow the project's dseg convention in *both* volumes, whatever the experiment:
``0`` background, ``1`` cerebral microbleed (CMB), ``2`` non-hemorrhage iron deposit.
A "class" is a set of labels: ``cmb`` = {1}, ``iron`` = {2}, ``union`` = {1, 2}
(CMB ∪ iron evaluated as one class, Table S3.1).

Rules (they are what the tests check):

* **Components.** 3D connected components with 26-connectivity
  (``scipy.ndimage.label`` with a 3×3×3 structure of ones) of the voxels whose label is in
  the class. Components are numbered in scipy's raster order (first voxel in C order);
  the 0-based position in that order is the component's index everywhere below.
* **Centroids** are unweighted means of voxel indices. Millimetre centroids are those
  indices times the voxel size (an offset from voxel (0, 0, 0), not world coordinates;
  distances are unaffected).
* **Distance.** With a tolerance in voxels (the default, as in the study) the distance is
  Euclidean in *index space*: with anisotropic voxels, one slice step counts as one voxel
  whatever its thickness (1 × 1 × 1.5 mm voxels: two slices apart = 2 voxels = 3 mm).
  With a tolerance in mm the distance is Euclidean in mm (indices × voxel size).
* **Match.** A predicted and a reference component may match only when their centroid
  distance is *strictly* below the tolerance: a pair exactly at the tolerance does NOT match
  (distances within 1e-9 × max(1, tolerance) of it count as "exactly at"). Default
  tolerance: 3 voxels for CMB, 5 voxels for iron (preprint §2.5); for ``union`` the larger
  of the two (5 voxels) — the preprint gives no union tolerance, this is our choice.
* **One-to-one, greedy by ascending distance.** All candidate pairs are sorted by
  (distance, predicted index, reference index); walking that list, a pair is accepted when
  neither of its components has been used. This is greedy, not an optimal assignment
  (it can leave a pair unmatched that a Hungarian assignment would match).
* TP = matched pairs; FP = predicted components left unmatched; FN = reference
  components left unmatched. Dice of a matched pair = 2|P∩R| / (|P| + |R|) over the two
  components' voxels (0 when the centroids are close but the voxels do not overlap).
* **Multi-class.** Each class is matched on its own labels only, so a CMB predicted as iron
  is an FN for ``cmb`` and an FP for ``iron`` (and a TP for ``union``).

Undefined values (``participant_metrics``): sensitivity = TP/(TP+FN) is NaN when the
reference has no lesion of the class; precision = TP/(TP+FP) is NaN when the prediction has
none; F1 = 2TP/(2TP+FP+FN) is NaN only when both are empty; per-participant magnitude
accuracy sqrt(sens² + prec²) is NaN when either is; ``dice_matched_mean`` is NaN without a
matched pair. NaNs are *excluded* from the means in ``deepmir.stats`` and each mean reports
how many participants it covers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

CMB = 1
IRON = 2
VALID_LABELS = (0, CMB, IRON)

#: class name -> labels it covers
CLASS_LABELS: dict[str, tuple[int, ...]] = {"cmb": (CMB,), "iron": (IRON,), "union": (CMB, IRON)}
#: label mode of an experiment -> classes evaluated
MODE_CLASSES: dict[str, tuple[str, ...]] = {
    "cmb": ("cmb",),
    "iron": ("iron",),
    "union": ("union",),
    "multiclass": ("cmb", "iron"),
}
#: default matching tolerance in voxels (preprint §2.5; union: our choice, the larger one)
DEFAULT_TOLERANCE_VOX: dict[str, float] = {"cmb": 3.0, "iron": 5.0, "union": 5.0}
#: mimic classes reported by ``mimic_hits``
MIMIC_CLASSES = ("vein", "calcification", "epvs")

STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)
_TIE_RTOL = 1e-9

METRIC_COLUMNS = [
    "class", "TP", "FP", "FN", "sensitivity", "precision", "F1", "magnitude_accuracy",
    "fp_count", "count_pred", "count_ref", "count_diff", "dice_matched_mean",
    "tolerance", "tolerance_unit",
]


# --------------------------------------------------------------------------- classes
def class_name(cls) -> str:
    """Canonical name (``cmb``, ``iron``, ``union``) of a class given as name, label or labels."""
    if isinstance(cls, str):
        if cls not in CLASS_LABELS:
            raise ValueError(f"unknown class {cls!r}; expected one of {sorted(CLASS_LABELS)}")
        return cls
    labels = class_labels(cls)
    for name, lab in CLASS_LABELS.items():
        if lab == labels:
            return name
    return "+".join(str(v) for v in labels)


def class_labels(cls) -> tuple[int, ...]:
    """Labels of a class given as name (``'cmb'``), one label (``1``) or labels (``(1, 2)``)."""
    if isinstance(cls, str):
        return CLASS_LABELS[class_name(cls)]
    if np.ndim(cls) == 0:
        return (int(cls),)
    return tuple(sorted(int(v) for v in cls))


def class_mask(label_volume, cls) -> np.ndarray:
    """Boolean mask of the voxels whose label belongs to ``cls``."""
    vol = np.asarray(label_volume)
    if vol.dtype == bool:
        vol = vol.astype(np.uint8)
    return np.isin(vol, class_labels(cls))


# --------------------------------------------------------------------------- components
@dataclass(frozen=True)
class Components:
    """Connected components of one class. ``labels`` holds 1..n (0 = not in the class)."""

    labels: np.ndarray
    centroids_vox: np.ndarray  # (n, ndim) voxel indices
    centroids_mm: np.ndarray  # (n, ndim) indices × voxel size
    sizes: np.ndarray  # (n,) voxels
    volumes_mm3: np.ndarray  # (n,) sizes × voxel volume
    voxel_size: tuple[float, ...]

    @property
    def n(self) -> int:
        return int(self.sizes.size)


def _voxel_size(voxel_size, ndim: int) -> np.ndarray:
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=float), (ndim,)).copy()
    if not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise ValueError(f"voxel size must be positive and finite, got {voxel_size!r}")
    return vs


def _label_mask(mask: np.ndarray, voxel_size) -> Components:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {mask.shape}")
    vs = _voxel_size(voxel_size, mask.ndim)
    labels, n = ndimage.label(mask, structure=STRUCTURE_26)
    if n == 0:
        empty = np.zeros((0, mask.ndim))
        return Components(labels, empty, empty.copy(), np.zeros(0, dtype=np.int64),
                          np.zeros(0), tuple(vs))
    idx = np.nonzero(labels)
    lab = labels[idx]
    sizes = np.bincount(lab, minlength=n + 1)[1:]
    cents = np.stack(
        [np.bincount(lab, weights=ax.astype(float), minlength=n + 1)[1:] for ax in idx], axis=1
    ) / sizes[:, None]
    return Components(labels, cents, cents * vs, sizes.astype(np.int64),
                      sizes * float(np.prod(vs)), tuple(float(v) for v in vs))


def components(label_volume, cls, voxel_size=(1.0, 1.0, 1.0)) -> Components:
    """26-connected components of class ``cls`` (name, label or labels) in a 3D label volume.

    Returns a :class:`Components` with centroids in voxel indices and in mm (indices ×
    ``voxel_size``), sizes in voxels and volumes in mm³. A boolean volume with ``cls=1``
    (or ``True``) gives the components of the mask.
    """
    return _label_mask(class_mask(label_volume, cls), voxel_size)


# --------------------------------------------------------------------------- matching
class MatchedPair(NamedTuple):
    pred_index: int  # 0-based index into the predicted Components
    ref_index: int  # 0-based index into the reference Components
    distance: float  # in the tolerance's unit
    dice: float


@dataclass(frozen=True)
class MatchResult:
    tp: int
    fp: int
    fn: int
    pairs: tuple[MatchedPair, ...]
    pred: Components
    ref: Components
    unmatched_pred: tuple[int, ...]
    unmatched_ref: tuple[int, ...]
    tolerance: float
    unit: str  # "vox" or "mm"

    @property
    def dice(self) -> np.ndarray:
        return np.array([p.dice for p in self.pairs], dtype=float)


def resolve_tolerance(cls, tolerance_vox=None, tolerance_mm=None) -> tuple[float, str]:
    """(tolerance, unit) from the arguments, falling back to the class default in voxels."""
    if tolerance_vox is not None and tolerance_mm is not None:
        raise ValueError("give tolerance_vox or tolerance_mm, not both")
    if tolerance_mm is not None:
        tol, unit = float(tolerance_mm), "mm"
    elif tolerance_vox is not None:
        tol, unit = float(tolerance_vox), "vox"
    else:
        name = class_name(cls)
        if name not in DEFAULT_TOLERANCE_VOX:
            raise ValueError(f"no default tolerance for class {name!r}; pass one")
        tol, unit = DEFAULT_TOLERANCE_VOX[name], "vox"
    if not np.isfinite(tol) or tol <= 0:
        raise ValueError(f"tolerance must be positive, got {tol}")
    return tol, unit


def _overlaps(pl: np.ndarray, rl: np.ndarray, n_ref: int) -> dict[tuple[int, int], int]:
    both = (pl > 0) & (rl > 0)
    if not both.any():
        return {}
    key = pl[both].astype(np.int64) * (n_ref + 1) + rl[both]
    keys, counts = np.unique(key, return_counts=True)
    return {(int(k // (n_ref + 1)) - 1, int(k % (n_ref + 1)) - 1): int(c)
            for k, c in zip(keys, counts)}


def match_components(pc: Components, rc: Components, tolerance: float, unit: str = "vox"
                     ) -> MatchResult:
    """Greedy one-to-one matching of two component sets (rules in the module docstring)."""
    if unit not in ("vox", "mm"):
        raise ValueError(f"unit must be 'vox' or 'mm', got {unit!r}")
    if pc.labels.shape != rc.labels.shape:
        raise ValueError(f"shape mismatch {pc.labels.shape} vs {rc.labels.shape}")
    pairs: list[MatchedPair] = []
    if pc.n and rc.n:
        a = pc.centroids_mm if unit == "mm" else pc.centroids_vox
        b = rc.centroids_mm if unit == "mm" else rc.centroids_vox
        cand = cKDTree(a).sparse_distance_matrix(cKDTree(b), tolerance, output_type="ndarray")
        limit = tolerance - _TIE_RTOL * max(1.0, tolerance)
        cand = cand[cand["v"] < limit]
        order = np.lexsort((cand["j"], cand["i"], cand["v"]))
        used_p, used_r = set(), set()
        ov = _overlaps(pc.labels, rc.labels, rc.n)
        for i, j, d in cand[order][["i", "j", "v"]].tolist():
            if i in used_p or j in used_r:
                continue
            used_p.add(i)
            used_r.add(j)
            dice = 2.0 * ov.get((i, j), 0) / float(pc.sizes[i] + rc.sizes[j])
            pairs.append(MatchedPair(int(i), int(j), float(d), dice))
    mp = {p.pred_index for p in pairs}
    mr = {p.ref_index for p in pairs}
    up = tuple(i for i in range(pc.n) if i not in mp)
    ur = tuple(j for j in range(rc.n) if j not in mr)
    return MatchResult(len(pairs), len(up), len(ur), tuple(pairs), pc, rc, up, ur,
                       float(tolerance), unit)


def match_lesions(pred, ref, cls, tolerance_vox=None, tolerance_mm=None,
                  voxel_size=(1.0, 1.0, 1.0)) -> MatchResult:
    """Match the class-``cls`` lesions of ``pred`` to those of ``ref`` (3D label volumes).

    A predicted and a reference component match when their centroids are *strictly* closer
    than the tolerance (a lesion exactly at the tolerance does not match). Matching is
    one-to-one, greedy by ascending centroid distance, ties broken by predicted then
    reference component index (raster order). ``tolerance_vox`` measures the distance in
    voxel index space (anisotropic voxels: one index step = one voxel in every direction);
    ``tolerance_mm`` in mm using ``voxel_size``. Neither given: 3 voxels for CMB, 5 for iron
    and union. Returns TP, FP, FN and the matched pairs with their distance and Dice.
    """
    p = np.asarray(pred)
    r = np.asarray(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    tol, unit = resolve_tolerance(cls, tolerance_vox, tolerance_mm)
    return match_components(components(p, cls, voxel_size), components(r, cls, voxel_size),
                            tol, unit)


# --------------------------------------------------------------------------- metrics
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


# --------------------------------------------------------------------------- mimics
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
    pc = _label_mask(pm, voxel_size)
    limit = tol - _TIE_RTOL * max(1.0, tol)
    rows = []
    for mclass in MIMIC_CLASSES:
        labels = [k for k, v in lookup.items() if v == mclass]
        mc = _label_mask(np.isin(mv, labels) if labels else np.zeros(mv.shape, bool), voxel_size)
        hit = np.zeros((pc.n, mc.n), dtype=bool)
        if pc.n and mc.n:
            for (i, j) in _overlaps(pc.labels, mc.labels, mc.n):
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


# --------------------------------------------------------------------------- QSM vs truth
QSM_LESION_CLASSES = ("cmb", "iron", "calcification", "vein", "epvs")


# deep grey matter labels of the synthetic truth tissue dseg (deepmir.synth.anatomy)
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
    the lesion's voxels against the shell around them, i.e. moments with ``grow=0``). With the truth ``tissue`` dseg, per deep grey matter nucleus
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
    limit = tol - _TIE_RTOL * max(1.0, tol)
    pc = _label_mask(pm, voxel_size)
    rows = []
    for mclass in MIMIC_CLASSES:
        labels = [k for k, v in lookup.items() if v == mclass]
        if not labels:
            continue
        mc = _label_mask(np.isin(mv, labels), voxel_size)
        hit = np.zeros(mc.n, dtype=bool)
        if pc.n and mc.n:
            for (_, j) in _overlaps(pc.labels, mc.labels, mc.n):
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
