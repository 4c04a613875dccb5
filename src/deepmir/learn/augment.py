"""Slice-selective augmentation (preprint supplement S3.2): random over-sampling of the slices
that contain a label of interest, random under-sampling of the others.

Every labelled slice is kept and augmented with
- ``n_translations`` shifts (tx, ty), integers drawn uniformly in [−max_shift, max_shift]
  (6 single-class, 10 multi-class in the study),
- ``n_rotations`` angles d, integers drawn in [min_angle, max_angle] degrees, each applied as
  +d and −d (6 single-class, 16 multi-class), about the slice centre,
- one left-right flip.
Then unlabelled slices are drawn at random without replacement (among ``eligible`` ones, e.g.
slices that contain brain) and augmented in the same manner until there are about as many
unlabelled as labelled slices (``unlabelled_ratio``). Draws are per slice, from one seeded
numpy Generator.

The result is a *plan*: a table of (source slice, tx, ty, angle, flip) rows, one per
augmented slice. :func:`render` turns a batch of plan rows into images and labels on the
device of the source tensors, with one batched ``affine_grid`` / ``grid_sample``: bilinear
with edge (border) padding for the images, nearest with zero padding for the labels; the same
transform for every channel and the label. Conventions on a slice ``[H, W]``: tx moves the
content along W (columns, +tx to higher indices), ty along H (rows); a positive angle turns
the content from the +W axis towards the +H axis; the flip reverses ``flip_dim`` (−2: rows, −1:
columns), the slice axis that is left-right (``meta['flip_dim']`` of the stack).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    n_translations: int = 6
    n_rotations: int = 6
    max_shift: int = 45
    min_angle: int = 1
    max_angle: int = 60
    flip: bool = True
    include_original: bool = True
    unlabelled_ratio: float = 1.0

    @classmethod
    def single_class(cls, **kw) -> "AugmentConfig":
        return cls(**kw)

    @classmethod
    def multi_class(cls, **kw) -> "AugmentConfig":
        return cls(**{"n_translations": 10, "n_rotations": 16, **kw})

    @property
    def per_slice(self) -> int:
        """Augmented slices produced from one source slice."""
        return int(self.include_original) + self.n_translations + 2 * self.n_rotations + int(self.flip)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    """One row per augmented slice: source index, tx, ty (pixels), angle (degrees), flip."""
    index: np.ndarray   # int64 [N]
    params: np.ndarray  # float32 [N, 4]: tx, ty, angle, flip (0/1)

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def identity(cls, indices) -> "Plan":
        idx = np.asarray(indices, dtype=np.int64)
        return cls(idx, np.zeros((len(idx), 4), dtype=np.float32))


def _slice_transforms(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    rows = []
    if cfg.include_original:
        rows.append([0, 0, 0, 0])
    shifts = rng.integers(-cfg.max_shift, cfg.max_shift + 1, size=(cfg.n_translations, 2))
    rows += [[tx, ty, 0, 0] for tx, ty in shifts]
    for d in rng.integers(cfg.min_angle, cfg.max_angle + 1, size=cfg.n_rotations):
        rows += [[0, 0, d, 0], [0, 0, -d, 0]]
    if cfg.flip:
        rows.append([0, 0, 0, 1])
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


def make_plan(has_label, cfg: AugmentConfig, seed, eligible=None) -> Plan:
    """The augmentation plan of a stack. has_label: bool [S] (slices containing a label of
    interest); eligible: bool [S] (unlabelled slices that may be drawn; default all).
    Labelled slices come first in slice order, then the drawn unlabelled ones."""
    has_label = np.asarray(has_label, dtype=bool)
    eligible = np.ones_like(has_label) if eligible is None else np.asarray(eligible, dtype=bool)
    rng = np.random.default_rng(seed)
    labelled = np.flatnonzero(has_label)
    pool = np.flatnonzero(eligible & ~has_label)
    n_unlab = min(len(pool), int(round(cfg.unlabelled_ratio * len(labelled))))
    drawn = np.sort(rng.choice(pool, size=n_unlab, replace=False)) if n_unlab else np.zeros(0, np.int64)
    index, params = [], []
    for s in np.concatenate([labelled, drawn]).astype(np.int64):
        p = _slice_transforms(rng, cfg)
        index.append(np.full(len(p), s, dtype=np.int64))
        params.append(p)
    if not index:
        return Plan(np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
    return Plan(np.concatenate(index), np.concatenate(params))


def _thetas(params: torch.Tensor, height: int, width: int, flip_dim: int) -> torch.Tensor:
    """affine_grid matrices [B, 2, 3] (output → input, normalised, align_corners=False)."""
    p = params.to(torch.float64)
    tx, ty, ang, flip = p[:, 0], p[:, 1], torch.deg2rad(p[:, 2]), p[:, 3] > 0.5
    b = p.shape[0]
    cx, cy = (width - 1) / 2, (height - 1) / 2
    eye = torch.eye(3, dtype=torch.float64).expand(b, 3, 3)
    # flip (its own inverse) in pixel coordinates (x = column, y = row)
    fl = eye.clone()
    k = 0 if flip_dim in (-1, 1) else 1  # -1: columns (x), -2: rows (y)
    c = cx if k == 0 else cy
    fl[flip, k, k] = -1.0
    fl[flip, k, 2] = 2 * c
    # inverse rotation about the centre, inverse translation
    cos, sin = torch.cos(ang), torch.sin(ang)
    rot = eye.clone()
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, sin, -sin, cos
    rot[:, 0, 2] = cx - cos * cx - sin * cy
    rot[:, 1, 2] = cy + sin * cx - cos * cy
    tr = eye.clone()
    tr[:, 0, 2], tr[:, 1, 2] = -tx, -ty
    m_inv = fl @ rot @ tr  # forward map is T·R·F
    n = torch.tensor([[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]],
                     dtype=torch.float64)
    theta = n @ m_inv @ torch.linalg.inv(n)
    return theta[:, :2, :]


def render(x: torch.Tensor, y: torch.Tensor | None, index, params, flip_dim: int = -2):
    """Images ``[B, C, H, W]`` and labels ``[B, H, W]`` (int64) of plan rows ``index`` /
    ``params`` (from :class:`Plan`) sampled from the source stack ``x [S, C, H, W]``,
    ``y [S, H, W]``, on ``x``'s device. Rows without a transform are copied exactly."""
    dev = x.device
    index = torch.as_tensor(index, dtype=torch.long)
    params = torch.as_tensor(params, dtype=torch.float32)
    xb = x[index.to(dev)].float()
    yb = None if y is None else y[index.to(y.device)].to(dev).long()
    moved = (params != 0).any(dim=1)
    if not bool(moved.any()):
        return xb, yb
    h, w = xb.shape[-2:]
    sel = torch.nonzero(moved).squeeze(1)
    theta = _thetas(params[sel], h, w, flip_dim).to(device=dev, dtype=torch.float32)
    grid = F.affine_grid(theta, [len(sel), 1, h, w], align_corners=False)
    sel_d = sel.to(dev)
    xb[sel_d] = F.grid_sample(xb[sel_d], grid, mode="bilinear", padding_mode="border", align_corners=False)
    if yb is not None:
        ys = F.grid_sample(yb[sel_d, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        yb[sel_d] = ys[:, 0].round().long()
    return xb, yb


#: the keys of the config's learn.augment section that override the study's preset
CONFIG_KEYS = ("n_translations", "n_rotations", "max_shift", "min_angle", "max_angle", "unlabelled_ratio")


def from_config(section: dict, n_classes: int):
    """The paper learner's augmentation from the config's ``learn.augment`` section: the study's
    preset for the number of classes, with every key the section sets (null: the preset's);
    False when the section disables it. ValueError when the angles are out of order."""
    if not section["enabled"]:
        return False
    base = AugmentConfig.multi_class() if n_classes > 1 else AugmentConfig.single_class()
    over = {k: section[k] for k in CONFIG_KEYS if section.get(k) is not None}
    if not section["flip"]:
        over["flip"] = False
    cfg = AugmentConfig(**{**base.as_dict(), **over})
    if not 1 <= cfg.min_angle <= cfg.max_angle:
        raise ValueError(f"augmentation angles need 1 ≤ min_angle ≤ max_angle, got "
                         f"{cfg.min_angle} and {cfg.max_angle}")
    return cfg
