"""Lesions as the project counts them: classes of labels, 26-connected components and the
one-to-one matching of a predicted to a reference volume (preprint §2.5). A base module:
learning (validation selection, post-processing) and evaluation both use it.

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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
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

TIE_RTOL = 1e-9


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


def mask_components(mask: np.ndarray, voxel_size) -> Components:
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
    return mask_components(class_mask(label_volume, cls), voxel_size)


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


def overlap_counts(pl: np.ndarray, rl: np.ndarray, n_ref: int) -> dict[tuple[int, int], int]:
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
        limit = tolerance - TIE_RTOL * max(1.0, tolerance)
        cand = cand[cand["v"] < limit]
        order = np.lexsort((cand["j"], cand["i"], cand["v"]))
        used_p, used_r = set(), set()
        ov = overlap_counts(pc.labels, rc.labels, rc.n)
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
