"""From class probabilities to lesions, and the operating point chosen on validation data
(arrays in, arrays out).

A prediction becomes lesions in three steps (:func:`lesions_from_probs`):

1. **Threshold, per class, with hysteresis.** A voxel can belong to a class when the class's
   probability wins: single class, any voxel; multi-class (background, CMB, iron), CMB where
   ``p_cmb ≥ p_iron`` and iron where ``p_iron > p_cmb``. A lesion is a 26-connected region of
   such voxels with ``p > EXTENT_FRACTION · threshold`` that holds at least one voxel with
   ``p > threshold``: the threshold decides *whether* there is a lesion (its most confident
   voxel), the lower level *how far* it extends. With a single level, an iron deposit the
   model saw with one voxel at 1.0 and its neighbours at 0.5 became a one-voxel component,
   which a minimum size of 2 then removed (demo, seed 1).
   **Where iron can be.** Given the participant's *iron region* (the basal ganglia and a
   margin, :func:`deepmir.atlas.regions.iron_region`), an iron lesion with no voxel in it is a
   microbleed (multi-class) or no lesion (iron only): the study's non-hemorrhage iron deposits
   are basal-ganglia deposits by definition, and CMBs occur anywhere. Outside the basal ganglia
   the model's iron calls were microbleeds it mistook (thalamus, cerebellum) and veins.
2. **Components.** 26-connected components of each class (as the evaluation counts them);
   components smaller than the class's ``min_size`` voxels are dropped, and so are CMB
   components larger than ``max_cmb_diameter_mm`` (equivalent-sphere diameter; the study's
   microbleeds are ≤ 10 mm — a larger dark blob is a haemorrhage or a mimic — and a predicted
   outline runs wider than the rater's label: ``MAX_CMB_DIAMETER_MM``).
3. Optionally the **QSM rule** (:func:`qsm_rule`): a CMB candidate is dropped when QSM shows
   it is a mimic: its susceptibility below its surroundings (diamagnetic: a calcification), or
   the paramagnetic structure it sits on elongated (:func:`elongation` above
   ``VEIN_MAX_ELONGATION``: a vein seen in cross-section). On SWI both a microbleed and a
   vein's cross-section are round dark spots; on QSM the vein continues out of the slice.

The *operating point* — threshold and minimum size per class — is chosen on a fold's
validation participants to maximise lesion-wise F1 under the evaluation's matching rule
(:func:`select_operating_point`); the test participant is never read.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from deepmir import settings
from deepmir.lesions import Components, match_components

STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)
CMB, IRON = 1, 2
#: dseg labels a label mode predicts (single class: the one label its map carries)
MODE_LABELS = {"cmb": (CMB,), "iron": (IRON,), "union": (CMB,), "multiclass": (CMB, IRON)}
#: evaluation class of each predicted label, per mode (union: label 1 stands for CMB ∪ iron)
MODE_CLASS_OF_LABEL = {"cmb": {CMB: "cmb"}, "iron": {IRON: "iron"}, "union": {CMB: "union"},
                       "multiclass": {CMB: "cmb", IRON: "iron"}}
_PATCH = settings.defaults("learn")["patch"]      # the schema's learn.patch defaults
DEFAULT_THRESHOLDS = tuple(_PATCH["thresholds"])
DEFAULT_MIN_SIZES = tuple(_PATCH["min_sizes"])
#: a lesion extends over the connected voxels above this fraction of its class threshold
EXTENT_FRACTION = 0.5
#: the largest CMB outline kept (equivalent-sphere diameter, mm): the study's 10 mm plus the
#: rim by which a predicted outline (hysteresis down to half the threshold) exceeds the label.
#: At 10, the largest microbleeds of demo seeds 10 and 11 (labels 8.7–10.6 mm) were dropped:
#: their outlines measured 10.1–11.5 mm.
MAX_CMB_DIAMETER_MM = _PATCH["max_cmb_diameter_mm"]
#: the QSM rule's vein test (:func:`elongation`): half-width (mm) of the cube looked at around a
#: CMB candidate, and the largest ratio of its bright structure's two longest axes that still
#: counts as a round lesion. Chosen on demo seeds 1, 3 and 4, where 221 of the 223 true
#: microbleeds found reached at most 2.0 (the other two 3.1, 4.5), vein false positives 2.8–10.6.
VEIN_WINDOW_MM = 12.0
VEIN_MAX_ELONGATION = 2.5


def default_operating_point(mode: str, threshold: float = 0.5, min_size: int = 1) -> dict:
    """{label: {"threshold", "min_size"}} with the same values for every class of ``mode``."""
    return {int(lab): {"threshold": float(threshold), "min_size": int(min_size)} for lab in MODE_LABELS[mode]}


def hysteresis(p: np.ndarray, threshold: float, allowed=None) -> np.ndarray:
    """Voxels of the 26-connected regions of ``p > EXTENT_FRACTION · threshold`` (within
    ``allowed``) that hold a voxel with ``p > threshold``."""
    extent = p > EXTENT_FRACTION * threshold
    if allowed is not None:
        extent &= allowed
    lab, n = ndimage.label(extent, structure=STRUCTURE_26)
    keep = np.zeros(n + 1, bool)
    keep[lab[(p > threshold) & extent]] = True
    keep[0] = False
    return keep[lab]


def class_masks(probs: np.ndarray, mode: str, thresholds: dict, iron_region=None) -> dict:
    """{label: bool mask} (step 1 of the module docstring): ``probs`` is ``[K, ...]`` (K = 1
    sigmoid, K = 3 softmax bg/CMB/iron); ``thresholds`` {label: threshold}; ``iron_region``
    (bool, or None: anywhere) where an iron lesion may lie."""
    p = np.asarray(probs)
    if p.shape[0] == 1:
        (lab,) = MODE_LABELS[mode]
        masks = {lab: hysteresis(p[0], thresholds[lab])}
    else:
        cmb_wins = p[CMB] >= p[IRON]
        masks = {CMB: hysteresis(p[CMB], thresholds[CMB], cmb_wins),
                 IRON: hysteresis(p[IRON], thresholds[IRON], ~cmb_wins)}
    if iron_region is None or IRON not in masks:
        return masks
    lab, n = ndimage.label(masks[IRON], structure=STRUCTURE_26)
    inside = np.zeros(n + 1, bool)
    inside[lab[masks[IRON] & np.asarray(iron_region, bool)]] = True
    inside[0] = True
    outside = ~inside[lab]
    masks[IRON] = masks[IRON] & ~outside
    if CMB in masks:
        masks[CMB] = masks[CMB] | outside
    return masks


def components(mask: np.ndarray):
    """(labels 1..n, sizes [n], centroids [n, ndim] in voxel indices) of a boolean mask."""
    lab, n = ndimage.label(mask, structure=STRUCTURE_26)
    if n == 0:
        return lab, np.zeros(0, np.int64), np.zeros((0, mask.ndim))
    idx = np.nonzero(lab)
    flat = lab[idx]
    sizes = np.bincount(flat, minlength=n + 1)[1:]
    cents = np.stack([np.bincount(flat, weights=a.astype(float), minlength=n + 1)[1:] for a in idx], 1)
    return lab, sizes, cents / sizes[:, None]


def diameter_mm(n_voxels, voxel_size) -> np.ndarray:
    """Equivalent-sphere diameter (mm) of components of ``n_voxels`` voxels."""
    vol = np.asarray(n_voxels, float) * float(np.prod(voxel_size))
    return (6 * vol / np.pi) ** (1 / 3)


def _surroundings(component: np.ndarray, labelled: np.ndarray, shell_voxels: int, margin=None):
    """(bounding box of ``component`` grown by the ring and ``margin`` voxels per axis, the
    ring ``shell_voxels`` thick around it without the voxels of ``labelled``, cut to that box)."""
    sl = ndimage.find_objects(component.astype(np.int8))[0]
    grow = np.maximum(shell_voxels + 1, 0 if margin is None else np.asarray(margin))
    grow = np.broadcast_to(grow, (component.ndim,))
    box = tuple(slice(max(s.start - g, 0), s.stop + g) for s, g in zip(sl, grow))
    m = component[box]
    ring = ndimage.binary_dilation(m, STRUCTURE_26, iterations=shell_voxels) & ~m & ~labelled[box]
    return box, ring


def delta_chi(chi, component: np.ndarray, labelled: np.ndarray, shell_voxels: int = 2) -> float:
    """Mean χ over a lesion minus the median χ of the ring ``shell_voxels`` thick around it
    (voxels of other lesions left out): the lesion's susceptibility against its surroundings.
    ``component``/``labelled``: boolean masks on ``chi``'s grid (the census's Δχ)."""
    box, ring = _surroundings(component, labelled, shell_voxels)
    c = np.asarray(chi)[box]
    background = float(np.median(c[ring])) if ring.any() else 0.0
    return float(c[component[box]].mean()) - background


def elongation(chi, component: np.ndarray, labelled: np.ndarray, voxel_size,
               window_mm: float = VEIN_WINDOW_MM, shell_voxels: int = 2) -> float:
    """How elongated the paramagnetic structure under a lesion is: √(λ1/λ2) of the two largest
    principal variances (positions in mm) of the 26-connected region, within ``window_mm`` of
    the lesion's bounding box, where χ is above halfway from its ring's median (as
    :func:`delta_chi`) to the lesion's peak χ and that touches the lesion. 1 for a sphere;
    a straight tube L long and d wide gives about L/d (cut at the window)."""
    margin = np.maximum(np.round(window_mm / np.asarray(voxel_size, float)).astype(int), 1)
    box, ring = _surroundings(component, labelled, shell_voxels, margin)
    c, m = np.asarray(chi, float)[box], component[box]
    background = float(np.median(c[ring])) if ring.any() else 0.0
    bright = c > background + 0.5 * (float(c[m].max()) - background)
    lab, _ = ndimage.label(bright, structure=STRUCTURE_26)
    touching = np.unique(lab[m & bright])
    pts = np.argwhere(np.isin(lab, touching[touching > 0])) * np.asarray(voxel_size, float)
    if len(pts) < 3:
        return 1.0
    var = np.sort(np.linalg.eigvalsh(np.cov(pts.T)))[::-1]
    return float(np.sqrt(var[0] / max(var[1], 1e-12 * var[0], 1e-30)))


def qsm_mimic(delta_chi_ppm: float, chi_elongation: float):
    """What QSM says a CMB candidate is instead, from its :func:`delta_chi` and
    :func:`elongation`: "calcification" (Δχ < 0), "vein" (elongation above
    ``VEIN_MAX_ELONGATION``) or None (a microbleed as far as QSM can tell). The QSM rule and
    the census decide with this one function."""
    if delta_chi_ppm < 0:
        return "calcification"
    if chi_elongation > VEIN_MAX_ELONGATION:
        return "vein"
    return None


def qsm_rule(labels: np.ndarray, chi: np.ndarray, voxel_size, shell_voxels: int = 2) -> np.ndarray:
    """``labels`` with every CMB component that QSM calls a mimic (:func:`qsm_mimic`) removed."""
    out = np.array(labels, copy=True)
    lab, n = ndimage.label(out == CMB, structure=STRUCTURE_26)
    labelled = out > 0
    for i in range(1, n + 1):
        comp = lab == i
        others = labelled & ~comp
        if qsm_mimic(delta_chi(chi, comp, others, shell_voxels),
                     elongation(chi, comp, others, voxel_size, shell_voxels=shell_voxels)) is not None:
            out[comp] = 0
    return out


def lesions_from_probs(probs: np.ndarray, mode: str, op: dict, voxel_size=(1.0, 1.0, 1.0),
                       max_cmb_diameter_mm: float | None = MAX_CMB_DIAMETER_MM, brain=None, iron_region=None) -> np.ndarray:
    """A dseg (uint8: 0, 1 CMB, 2 iron) from ``probs [K, ...]`` at operating point ``op``
    ({label: {threshold, min_size}}; steps 1–2 of the module docstring). ``brain``: voxels
    outside it are never lesions; ``iron_region``: see :func:`class_masks`."""
    masks = class_masks(probs, mode, {lab: v["threshold"] for lab, v in op.items()}, iron_region)
    out = np.zeros(np.asarray(probs).shape[1:], np.uint8)
    for lab, mask in masks.items():
        if brain is not None:
            mask = mask & np.asarray(brain, bool)
        comp, sizes, _ = components(mask)
        keep = sizes >= op[lab]["min_size"]
        if lab == CMB and mode in ("cmb", "multiclass") and max_cmb_diameter_mm is not None:
            keep &= diameter_mm(sizes, voxel_size) <= max_cmb_diameter_mm
        out[np.concatenate([[False], keep])[comp]] = lab
    return out


# ---------------------------------------------------------------- operating point --------------

def _f1(tp, fp, fn) -> float:
    """2TP / (2TP + FP + FN); 1 when there was nothing to find and nothing was found."""
    den = 2 * tp + fp + fn
    return 1.0 if den == 0 else 2.0 * tp / den


def _counts(mask, ref_comp: Components, tolerance, unit, voxel_size, min_sizes, max_diam):
    """(TP, FP, FN) for each minimum size, matching ``mask``'s components to ``ref_comp``."""
    lab, sizes, cents = components(mask)
    vs = np.asarray(voxel_size, float)
    out = []
    for m in min_sizes:
        keep = sizes >= m
        if max_diam is not None:
            keep &= diameter_mm(sizes, vs) <= max_diam
        kept = np.flatnonzero(keep)
        remap = np.zeros(len(sizes) + 1, np.int64)
        remap[kept + 1] = np.arange(1, len(kept) + 1)
        pc = Components(remap[lab], cents[kept], cents[kept] * vs, sizes[kept],
                        sizes[kept] * float(np.prod(vs)), tuple(vs))
        r = match_components(pc, ref_comp, tolerance, unit)
        out.append((r.tp, r.fp, r.fn))
    return out


def select_operating_point(probs_list, refs_list, mode: str, tolerances: dict, unit: str = "vox",
                           voxel_sizes=None, thresholds=DEFAULT_THRESHOLDS, min_sizes=DEFAULT_MIN_SIZES,
                           max_cmb_diameter_mm: float | None = MAX_CMB_DIAMETER_MM, brains=None, size_caps: dict | None = None,
                           max_cmb_threshold: float | None = None, iron_regions=None):
    """The threshold and minimum size per class maximising lesion-wise F1 over the validation
    volumes, TP/FP/FN pooled over them (the matching rule of :mod:`deepmir.evaluate.metrics`).

    probs_list: ``[K, ...]`` per volume; refs_list: dseg (0/1/2) per volume; tolerances:
    {class name: tolerance} in ``unit``; voxel_sizes: per volume (for mm and the CMB size
    bound); size_caps: {label: the largest minimum size tried for it} (the smallest candidate is
    always tried); max_cmb_threshold: the highest threshold tried for the CMB class (the lowest
    candidate is always tried); iron_regions: per volume, where iron may lie (:func:`class_masks`;
    None: anywhere). Ties: :func:`_plateau_centre`. Returns
    ``(op, scores)``: ``op`` {label: {threshold, min_size, f1, tp, fp, fn}} and ``scores``
    rows (label, threshold, min_size, tp, fp, fn, f1) of the whole grid."""
    from deepmir.lesions import components as ref_components

    voxel_sizes = voxel_sizes or [(1.0, 1.0, 1.0)] * len(probs_list)
    brains = brains or [None] * len(probs_list)
    iron_regions = iron_regions or [None] * len(probs_list)
    rows, op = [], {}
    for lab, cls in MODE_CLASS_OF_LABEL[mode].items():
        tol = tolerances[cls]
        max_diam = max_cmb_diameter_mm if cls == "cmb" else None
        refs = [ref_components(r, cls, vs) for r, vs in zip(refs_list, voxel_sizes)]
        cap = (size_caps or {}).get(lab, np.inf)
        sizes = tuple(m for m in min_sizes if m <= cap) or (min(min_sizes),)
        t_cap = max_cmb_threshold if cls == "cmb" and max_cmb_threshold is not None else np.inf
        grid = []
        for t in [t for t in sorted(thresholds) if t <= t_cap] or [min(thresholds)]:
            totals = np.zeros((len(sizes), 3), np.int64)
            for p, rc, vs, brain, region in zip(probs_list, refs, voxel_sizes, brains, iron_regions):
                mask = class_masks(p, mode, {lab2: t for lab2 in MODE_LABELS[mode]}, region)[lab]
                if brain is not None:
                    mask &= brain
                totals += np.asarray(_counts(mask, rc, tol, unit, vs, sizes, max_diam))
            for m, (tp, fp, fn) in zip(sizes, totals):
                grid.append({"label": lab, "class": cls, "threshold": float(t), "min_size": int(m),
                             "tp": int(tp), "fp": int(fp), "fn": int(fn), "f1": float(_f1(tp, fp, fn))})
        rows += grid
        op[lab] = _plateau_centre(grid)
    return op, rows


def _plateau_centre(grid: list[dict]) -> dict:
    """The best-F1 cell of a (threshold, min size) grid. Among tied thresholds the one in the
    middle (a few validation lesions often leave a plateau of equally good thresholds, and
    its centre is the choice least tuned to them); among tied minimum sizes the smallest: a
    size filter is there to remove small false positives, and where validation shows it
    removes none, it would only drop the one-voxel lesions the validation participants
    happened not to have."""
    top = max(r["f1"] for r in grid)
    tied = [r for r in grid if r["f1"] >= top - 1e-12]
    ts = sorted({r["threshold"] for r in tied})
    t = ts[(len(ts) - 1) // 2]
    best = min((r for r in tied if r["threshold"] == t), key=lambda r: r["min_size"])
    return {k: best[k] for k in ("threshold", "min_size", "f1", "tp", "fp", "fn")}


def mean_f1(op: dict) -> float:
    """The mean over classes of an operating point's validation F1 (the checkpoint score)."""
    return float(np.mean([v["f1"] for v in op.values()]))




def lesion_counts(pred: np.ndarray, ref: np.ndarray, label_mode: str) -> list[dict]:
    """Per class of the experiment: lesions (26-connected components) in the reference, in the
    prediction, and reference lesions touched by a predicted voxel of the same class."""
    from deepmir.learn.dataset import label_mode as map_labels

    classes = {"cmb": [("cmb", CMB)], "iron": [("iron", IRON)], "union": [("cmb+iron", CMB)],
               "multiclass": [("cmb", CMB), ("iron", IRON)]}[label_mode]
    r = map_labels(ref, label_mode)
    if label_mode == "iron":
        r = r * IRON
    rows = []
    for name, value in classes:
        ref_c, pred_c = r == value, pred == value
        if label_mode == "union":
            pred_c = pred > 0
        lab_r, n_r = ndimage.label(ref_c, structure=STRUCTURE_26)
        _, n_p = ndimage.label(pred_c, structure=STRUCTURE_26)
        hit = len(set(np.unique(lab_r[pred_c & ref_c])) - {0})
        rows.append({"class": name, "n_true": int(n_r), "n_pred": int(n_p), "n_true_detected": hit})
    return rows
