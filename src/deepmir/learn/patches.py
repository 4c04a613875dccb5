"""Patch sampling for the default learner (nnU-Net's ideas on 2.5D slices; arrays in, arrays
out, no file I/O).

A *volume* is one participant's stack: ``x`` float32 ``[S, C, H, W]`` (axial slices, one
z-scored channel per modality), ``y`` uint8 ``[S, H, W]`` (the dseg: 0 background, 1 CMB,
2 iron deposit) and ``brain`` bool ``[S, H, W]``.

**2.5D.** The network sees a slice together with its ``context`` neighbours on each side,
stacked as channels (``C · (2·context + 1)``, neighbours outside the volume are zeros). A
microbleed is a small sphere, 1–3 slices thick; a vein, its commonest mimic, is a tube that
runs on through many slices (the study's raters called a dark spot a vein when it continued
over more than ~5 slices). One neighbour on each side lets a 2D network see whether a dark
spot ends or continues, at the cost of a wider first convolution only; full 3D patches would
cost several times more per sample on a CPU.

**Sampling** (:class:`PatchSampler`), every draw from ``(seed, iteration)`` so that training
resumed after a kill sees exactly the same patches:

- a share ``fg_fraction`` of each batch is centred on a lesion: a lesion *class* is drawn
  uniformly among the classes present (CMB and iron deposit balanced, whatever their counts
  and sizes), then a lesion (26-connected component) of that class uniformly, then one of
  its voxels; the patch centre is that voxel moved by up to a quarter patch, so a lesion is
  not always in the middle;
- a share ``hard_fraction`` is centred on *hard negatives*: places where the model fired
  without a label, mined during training (:func:`false_positive_centres`) — veins,
  calcifications, sulcal vessels on real data;
- the rest anywhere in the brain.
Each patch is flipped along either in-plane axis and transposed at random (the dihedral
group of the square; B0 is along the slice axis, so in-plane, the dipole pattern has no
preferred direction), and each modality may be blurred (:func:`intensity_augment`, nnU-Net's
blur and brightness transforms). Each patch comes with lesion weights
(:func:`lesion_weights`): a lesion's voxels share one weight whatever its size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CLASSES = (1, 2)            # dseg labels: CMB, iron deposit
STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def context_slices(x: np.ndarray, index, context: int) -> np.ndarray:
    """``[N, C·(2k+1), H, W]`` for slices ``index`` of ``x [S, C, H, W]``: each slice with its
    ``k = context`` neighbours on both sides (ordered s−k … s+k, channels within each),
    zeros beyond the volume's ends."""
    x = np.asarray(x)
    index = np.atleast_1d(np.asarray(index, dtype=np.int64))
    s, c, h, w = x.shape
    out = np.zeros((len(index), c * (2 * context + 1), h, w), dtype=x.dtype)
    for j, d in enumerate(range(-context, context + 1)):
        src = index + d
        ok = (src >= 0) & (src < s)
        out[ok, j * c:(j + 1) * c] = x[src[ok]]
    return out


def crop(a: np.ndarray, centre_hw, size: int) -> np.ndarray:
    """A ``size × size`` window of the last two axes of ``a`` centred at ``centre_hw``
    (top-left = centre − size//2), zero outside the array."""
    h, w = a.shape[-2:]
    y0, x0 = int(centre_hw[0]) - size // 2, int(centre_hw[1]) - size // 2
    out = np.zeros(a.shape[:-2] + (size, size), dtype=a.dtype)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + size), min(w, x0 + size)
    if ye > ys and xe > xs:
        out[..., ys - y0:ye - y0, xs - x0:xe - x0] = a[..., ys:ye, xs:xe]
    return out


@dataclass(frozen=True)
class Lesion:
    volume: int
    cls: int                  # dseg label
    voxels: np.ndarray        # [n, 3] (slice, row, column)


def find_lesions(volumes_y, classes=CLASSES) -> list[Lesion]:
    """Every 26-connected component of each class in each label volume ``[S, H, W]``."""
    out = []
    for v, y in enumerate(volumes_y):
        y = np.asarray(y)
        for cls in classes:
            lab, n = ndimage.label(y == cls, structure=STRUCTURE_26)
            if not n:
                continue
            idx = np.argwhere(lab > 0)
            order = np.argsort(lab[tuple(idx.T)], kind="stable")
            idx = idx[order]
            bounds = np.cumsum(np.bincount(lab[tuple(idx.T)], minlength=n + 1)[1:])
            for comp in np.split(idx, bounds[:-1]):
                out.append(Lesion(v, int(cls), comp.astype(np.int32)))
    return out


def false_positive_centres(fg_prob: np.ndarray, y: np.ndarray, threshold: float = 0.5,
                           margin: int = 2) -> np.ndarray:
    """Centres ``[n, 3]`` (slice, row, column; rounded) of the 26-connected components of
    ``fg_prob > threshold`` that touch no labelled voxel dilated by ``margin`` voxels in-plane
    (``fg_prob``, ``y``: ``[S, H, W]``)."""
    fired = np.asarray(fg_prob) > threshold
    if not fired.any():
        return np.zeros((0, 3), dtype=np.int32)
    near = np.asarray(y) > 0
    if margin and near.any():
        near = ndimage.binary_dilation(near, np.ones((1, 3, 3), bool), iterations=margin)
    lab, n = ndimage.label(fired, structure=STRUCTURE_26)
    bad = np.unique(lab[near & (lab > 0)])
    keep = np.setdiff1d(np.arange(1, n + 1), bad)
    if not len(keep):
        return np.zeros((0, 3), dtype=np.int32)
    cents = ndimage.center_of_mass(fired, lab, keep)
    return np.rint(np.asarray(cents)).astype(np.int32).reshape(-1, 3)


def lesion_weights(volumes, lesions, max_factor: float = 10.0) -> list[np.ndarray]:
    """Per volume ``[S, H, W]`` float32: 1 on background, and on a lesion's voxels the median
    lesion size divided by the lesion's size (at most ``max_factor``), so that every lesion
    weighs about the same in the loss whatever its size — as it counts once in the
    lesion-wise F1, where a one-voxel microbleed matters as much as a 17-voxel iron deposit."""
    out = [np.ones(v["y"].shape, np.float32) for v in volumes]
    if lesions:
        median = float(np.median([len(les.voxels) for les in lesions]))
        for les in lesions:
            s, r, c = les.voxels.T
            out[les.volume][s, r, c] = min(max_factor, median / len(les.voxels))
    return out


BLUR_SIGMA = (0.5, 1.0)      # voxels, in-plane (nnU-Net's Gaussian blur range)
BRIGHTNESS = (0.75, 1.25)    # multiplicative (nnU-Net's brightness range)


def intensity_augment(xb: np.ndarray, n_modalities: int, rng, blur_prob: float, scale_prob: float) -> np.ndarray:
    """Vary each modality of a patch ``[(2k+1)·C, P, P]`` (context slices × modalities, as
    :func:`context_slices` stacks them), the same way on all its context slices: with
    probability ``blur_prob`` an in-plane Gaussian blur of σ drawn from ``BLUR_SIGMA`` voxels,
    with probability ``scale_prob`` a multiplication by a factor drawn from ``BRIGHTNESS``
    (channels are z-scored, so about the brain's mean).

    Why: a small microbleed is faint on QSM, by partial volume and because a regularised
    inversion keeps less of its susceptibility (on the demo a one-voxel microbleed's Δχ has a
    median of 0.27 ppm against 0.50 for one of 8 voxels or more), while SWI's blooming still
    shows it dark. A network that saw only sharp maps learns to trust the QSM's brightness
    and drops the microbleeds whose QSM is faint; one that sometimes sees the QSM blurred
    learns to take the SWI's word for them."""
    c = n_modalities
    out = xb.reshape(-1, c, *xb.shape[-2:])
    copied = False
    for m in range(c):
        blur, scale = rng.random() < blur_prob, rng.random() < scale_prob
        if not (blur or scale):
            continue
        if not copied:
            out, copied = out.copy(), True
        if blur:
            sigma = rng.uniform(*BLUR_SIGMA)
            out[:, m] = ndimage.gaussian_filter(out[:, m], (0, sigma, sigma), mode="nearest")
        if scale:
            out[:, m] *= rng.uniform(*BRIGHTNESS)
    return out.reshape(xb.shape)


@dataclass(frozen=True)
class SamplerConfig:
    """The sampler's part of the learner's settings (defaults: ``LearnerConfig``, the schema)."""
    patch_size: int
    context: int
    fg_fraction: float
    hard_fraction: float
    blur_prob: float = 0.0
    scale_prob: float = 0.0
    flips: bool = True


class PatchSampler:
    """Draws training batches from volumes (see the module docstring). ``classes``: the dseg
    labels whose lesions are oversampled (those the experiment learns)."""

    def __init__(self, volumes: list[dict], cfg: SamplerConfig, classes=CLASSES):
        self.vols = volumes
        self.cfg = cfg
        self.lesions = find_lesions([v["y"] for v in volumes], classes)
        self.by_class = {c: [i for i, les in enumerate(self.lesions) if les.cls == c]
                         for c in classes}
        self.by_class = {c: ids for c, ids in self.by_class.items() if ids}
        # brain voxels per volume as flat indices (int32 halves the memory at paper scale)
        self.brain = [np.flatnonzero(v["brain"]).astype(np.int64 if v["brain"].size > 2**31 else np.int32)
                      for v in volumes]
        if not any(len(b) for b in self.brain):
            raise ValueError("no brain voxel in the training volumes")
        self.hard: list[tuple[int, int, int, int]] = []   # (volume, slice, row, column)
        self.weights = lesion_weights(volumes, self.lesions)

    def add_hard(self, volume: int, centres: np.ndarray, capacity: int) -> None:
        """Add hard-negative centres of one volume; the pool keeps the newest ``capacity``."""
        self.hard.extend((int(volume), int(s), int(r), int(c)) for s, r, c in centres)
        del self.hard[:-capacity or None]

    def _random_brain(self, rng):
        while True:
            v = int(rng.integers(len(self.vols)))
            if len(self.brain[v]):
                break
        flat = int(self.brain[v][rng.integers(len(self.brain[v]))])
        return (v, *np.unravel_index(flat, self.vols[v]["brain"].shape))

    def _lesion_centre(self, rng):
        cls = list(self.by_class)[int(rng.integers(len(self.by_class)))]
        les = self.lesions[self.by_class[cls][int(rng.integers(len(self.by_class[cls])))]]
        s, r, c = les.voxels[int(rng.integers(len(les.voxels)))]
        q = self.cfg.patch_size // 4
        return les.volume, int(s), int(r) + int(rng.integers(-q, q + 1)), int(c) + int(rng.integers(-q, q + 1))

    def centres(self, rng, batch_size: int, hard_on: bool) -> list[tuple[int, int, int, int]]:
        """The batch's patch centres (volume, slice, row, column)."""
        n_fg = int(np.ceil(self.cfg.fg_fraction * batch_size)) if self.by_class else 0
        n_hard = int(round(self.cfg.hard_fraction * batch_size)) if hard_on and self.hard else 0
        n_hard = min(n_hard, batch_size - n_fg)
        out = [self._lesion_centre(rng) for _ in range(n_fg)]
        out += [self.hard[int(rng.integers(len(self.hard)))] for _ in range(n_hard)]
        out += [self._random_brain(rng) for _ in range(batch_size - len(out))]
        return out

    def batch(self, rng, batch_size: int, hard_on: bool = False):
        """(x ``[B, C·(2k+1), P, P]`` float32, y ``[B, P, P]`` uint8 dseg labels, w ``[B, P, P]``
        float32 lesion weights: :func:`lesion_weights`)."""
        p, k = self.cfg.patch_size, self.cfg.context
        xs, ys, ws = [], [], []
        for v, s, r, c in self.centres(rng, batch_size, hard_on):
            vol = self.vols[v]
            xb = crop(context_slices(vol["x"], [s], k)[0], (r, c), p)
            yb = crop(vol["y"][s], (r, c), p)
            wb = crop(self.weights[v][s], (r, c), p)
            if self.cfg.flips:
                if rng.random() < 0.5:
                    xb, yb, wb = xb[..., ::-1, :], yb[::-1, :], wb[::-1, :]
                if rng.random() < 0.5:
                    xb, yb, wb = xb[..., ::-1], yb[:, ::-1], wb[:, ::-1]
                if rng.random() < 0.5:
                    xb, yb, wb = np.swapaxes(xb, -1, -2), yb.T, wb.T
            if self.cfg.blur_prob or self.cfg.scale_prob:
                xb = intensity_augment(np.ascontiguousarray(xb), vol["x"].shape[1], rng,
                                       self.cfg.blur_prob, self.cfg.scale_prob)
            xs.append(xb)
            ys.append(yb)
            ws.append(wb)
        return tuple(np.ascontiguousarray(np.stack(a)) for a in (xs, ys, ws))
