"""One participant's phantom: a smooth deformation of the MNI head model, a head pose in the
scanner, and lesions and mimics drawn as analytic shapes in head coordinates (mm), so that
the same participant can be rendered on any grid (fine GRE grid, T1w grid, T2w grid).

Coordinates: MNI (template mm) ← head (participant mm) ← scanner (world RAS mm).
x_mni = S x_head + u(x_head) (global scaling and a smooth displacement), and for each series
x_scanner = R (x_head − c) + t, a rigid pose."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage as ndi

from deepmir.atlas import head as A
from deepmir.atlas import regions

LESION_CLASSES = ["cmb", "iron", "vein", "calcification", "epvs"]
LABEL_OF_CLASS = {"cmb": 1, "iron": 2, "vein": 0, "calcification": 0, "epvs": 0}
#: χ an iron deposit adds to its nucleus (ppm). A rater labels a deposit where it stands out of
#: the nucleus's own texture (pallidum σ 0.025 ppm, synth/tissue.py), whose brightest
#: unlabelled spots reach 0.08–0.125 ppm against their ring. Partial volume leaves a deposit
#: 0.5–0.9 of its χ against its ring: from 0.10 ppm, a deposit of demo seed 3 kept 0.05, fainter
#: than the texture spots the model then found; from 0.20 the faintest keeps 0.10 (4 σ).
IRON_CHI_PPM = (0.20, 0.35)
#: χ a calcification takes away (ppm; it adds −χ), by the same rule: from 0.10, the faintest of
#: report seed 1 (docs/qsm.md §6) kept −0.02 ppm against their ring in the pallidum, within the
#: texture's σ, so there was no sign to recover; from 0.20 they keep −0.07 or below.
CALC_CHI_PPM = (0.20, 0.50)


def rotation(angles_deg) -> np.ndarray:
    """Rotation matrix from angles (deg) about x, y, z, applied in that order."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rigid(angles_deg, translation_mm, centre_mm=(0, 0, 0)) -> np.ndarray:
    """4×4 world transform rotating about ``centre`` then translating."""
    m = np.eye(4)
    r = rotation(angles_deg)
    c = np.asarray(centre_mm, float)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(translation_mm, float)
    return m


@dataclass
class Lesion:
    id: int
    cls: str
    centre: np.ndarray                 # head mm
    chi: float                         # ppm added to (cmb, iron) or replacing (others) tissue χ
    r2s: float                         # s⁻¹
    m0: float                          # relative proton density (GRE magnitude)
    t1w: float
    t2w: float
    radii: np.ndarray | None = None    # ellipsoid semi-axes (mm)
    axes: np.ndarray | None = None     # 3×3 rotation of the ellipsoid
    path: np.ndarray | None = None     # K×3 polyline for tubes (veins)
    radius: float = 0.0                # tube radius
    blobs: list = field(default_factory=list)  # extra (centre, radii) for irregular shapes

    def inside(self, x):
        """Boolean membership of head-mm points x (N×3)."""
        if self.cls == "vein":
            return _tube_distance(x, self.path) <= self.radius
        hit = _ellipsoid(x, self.centre, self.radii, self.axes)
        for c, r in self.blobs:
            hit |= _ellipsoid(x, c, r, self.axes)
        return hit

    def bounds(self):
        if self.cls == "vein":
            return self.path.min(0) - self.radius - 1, self.path.max(0) + self.radius + 1
        pts = [self.centre] + [c for c, _ in self.blobs]
        r = max([self.radii.max()] + [rr.max() for _, rr in self.blobs]) + 1
        return np.min(pts, 0) - r, np.max(pts, 0) + r


def _ellipsoid(x, c, radii, axes):
    d = (x - c) @ axes
    return ((d / radii) ** 2).sum(1) <= 1.0


def _tube_distance(x, path):
    best = np.full(len(x), np.inf)
    for a, b in zip(path[:-1], path[1:]):
        ab = b - a
        t = np.clip(((x - a) @ ab) / max(ab @ ab, 1e-9), 0, 1)
        best = np.minimum(best, np.linalg.norm(x - (a + t[:, None] * ab), axis=1))
    return best


@dataclass
class Participant:
    scale: np.ndarray           # per-axis scaling head → MNI
    waves: np.ndarray           # K×3 wave vectors (cycles/mm)
    amps: np.ndarray            # K×3 displacement amplitudes (mm)
    phases: np.ndarray          # K phases (rad)
    texture: tuple              # (wave vectors, phases, amplitude) of tissue texture
    centre: np.ndarray          # head point placed at the scanner origin
    lesions: list

    def to_mni(self, x):
        """Head mm (N×3) → MNI mm (N×3), in the precision of x."""
        dt = x.dtype
        arg = (2 * np.pi * x) @ self.waves.T.astype(dt) + self.phases.astype(dt)
        return x * self.scale.astype(dt) + np.sin(arg) @ self.amps.astype(dt)

    def from_mni(self, y, iterations=30):
        """Inverse of ``to_mni`` by fixed-point iteration (the displacement is small and smooth)."""
        y = np.atleast_2d(np.asarray(y, float))
        x = y / self.scale
        for _ in range(iterations):
            arg = 2 * np.pi * (x @ self.waves.T) + self.phases
            x = (y - np.sin(arg) @ self.amps) / self.scale
        return x

    def texture_at(self, x):
        k, ph, amp = self.texture
        dt = x.dtype
        return 1 + amp * np.sin((2 * np.pi * x) @ k.T.astype(dt) + ph.astype(dt)).mean(1)


def draw_participant(rng: np.random.Generator, cfg: dict) -> Participant:
    """Random anatomy variation and lesions for one participant (a pure function of rng, cfg)."""
    hm = A.head_model()
    scale = 1.0 / rng.uniform(1 - cfg["size_variation"], 1 + cfg["size_variation"], 3)
    k = 4
    dirs = rng.normal(size=(k, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves = dirs / rng.uniform(60, 150, (k, 1))
    amps = rng.normal(size=(k, 3)) * cfg["deformation_mm"] / np.sqrt(k)
    phases = rng.uniform(0, 2 * np.pi, k)
    tdirs = rng.normal(size=(8, 3))
    tdirs /= np.linalg.norm(tdirs, axis=1, keepdims=True)
    texture = (tdirs / rng.uniform(8, 25, (8, 1)), rng.uniform(0, 2 * np.pi, 8), 0.12)
    p = Participant(scale=scale, waves=waves, amps=amps, phases=phases, texture=texture,
                    centre=np.array([0.0, -18.0, 8.0]), lesions=[])
    p.lesions = _draw_lesions(rng, cfg, hm, p)
    return p


# region selectors in MNI space -------------------------------------------------------------

def region_margin_mm(cfg) -> float:
    """How far (mm) the centre of a labelled lesion's sampling voxel stays from every census
    region boundary (:func:`deepmir.atlas.regions.region_volume`): half the diagonal of a GRE voxel
    (closer than that, the lesion's centre lies in a voxel that straddles two regions, so its
    region is not defined at the resolution the census reads) plus √3/2 mm, the most the
    ±0.5 mm jitter of :func:`_pick` moves a centre off its voxel."""
    return float(np.linalg.norm(cfg["gre"]["voxel_size"]) / 2 + np.sqrt(3) / 2)


def _region_masks(hm, margin):
    lab, depth, cd = hm.labels, hm.depth, hm.cortex_dist
    deep_gm = np.isin(lab, (A.CAUDATE, A.PUTAMEN, A.PALLIDUM, A.THALAMUS))
    inner = regions.region_volume(hm)[1] >= margin
    return {
        "lobar": ((lab == A.GM) & (cd == 0) | (lab == A.WM) & (cd <= 3)) & (hm.lobes > 0)
        & (depth > 4) & inner,
        "deep": (deep_gm & (depth > 4) | (lab == A.WM) & (cd > 10) & (depth > 10)) & inner,
        "infratentorial": np.isin(lab, (A.BRAINSTEM, A.CEREBELLUM_GM, A.CEREBELLUM_WM))
        & (depth > 4) & inner,
        "pallidum": (lab == A.PALLIDUM) & (depth > 4) & inner,
        "putamen": (lab == A.PUTAMEN) & (depth > 4) & inner,
        "basal_ganglia": np.isin(lab, (A.CAUDATE, A.PUTAMEN, A.PALLIDUM)) & (depth > 4) & inner,
        "white_matter": (lab == A.WM) & (depth > 8),    # veins and EPVS: no region in the table
    }


_MASK_CACHE: dict = {}


def _voxels(hm, name, margin):
    if margin not in _MASK_CACHE:
        _MASK_CACHE[margin] = {k: np.argwhere(v) for k, v in _region_masks(hm, margin).items()}
    return _MASK_CACHE[margin][name]


def _clear(mni, extent, taken, min_dist, gap):
    """Whether a lesion of bounding radius ``extent`` at ``mni`` is at least ``min_dist`` from
    every taken centre and ``gap`` from every taken lesion's bounding sphere."""
    return all(np.linalg.norm(mni - t) >= max(min_dist, extent + e + gap) for t, e in taken)


class LesionPlacementError(ValueError):
    """The configured lesions do not fit apart on the configured grid."""


def _pick(rng, hm, region, taken, min_dist, margin, extent=0.0, gap=0.0):
    """A random MNI point of ``region`` (voxels ``margin`` from a region boundary, ±0.5 mm
    jitter) at least ``min_dist`` from every taken centre and with ``gap`` between its
    ``extent`` (bounding radius, mm) and each taken lesion's: ``taken`` holds (centre, extent).
    ``region`` may be a tuple of regions tried in turn (a crowded one gives way to the next)."""
    for name in (region,) if isinstance(region, str) else region:
        vox = _voxels(hm, name, margin)
        for _ in range(200):
            ijk = vox[rng.integers(len(vox))]
            mni = hm.affine[:3, :3] @ ijk + hm.affine[:3, 3] + rng.uniform(-0.5, 0.5, 3)
            if _clear(mni, extent, taken, min_dist, gap):
                return mni
    raise LesionPlacementError(
        f"no room for one more lesion in region {region} (lesions are kept a GRE voxel diagonal "
        "apart): lower synth.lesions.*_count_bins or use a finer synth.gre.voxel_size")


def _count(rng, bins):
    w = np.array([b[2] for b in bins], float)
    lo, hi, _ = bins[rng.choice(len(bins), p=w / w.sum())]
    return int(rng.integers(lo, hi + 1))


def _random_axes(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q


def _iron_shape(rng):
    """Axes, semi-axes and extra blobs (offset from the centre, semi-axes) of an iron deposit,
    and its bounding radius (mm)."""
    axes = _random_axes(rng)
    radii = rng.uniform(1.4, 2.4, 3)
    blobs = [(axes @ rng.normal(0, 1.2, 3), rng.uniform(1.0, 1.8, 3))
             for _ in range(int(rng.integers(1, 3)))]
    extent = max([radii.max()] + [np.linalg.norm(o) + r.max() for o, r in blobs])
    return axes, radii, blobs, float(extent)


def _draw_lesions(rng, cfg, hm, p: Participant):
    """Lesions of one participant. Every lesion is drawn with its size first and then placed
    so that a GRE voxel diagonal separates it from every lesion placed before (two lesions
    that touch would be one connected component in a label map), and a labelled lesion's
    centre stays :func:`region_margin_mm` from any census-region boundary."""
    lc = cfg["lesions"]
    margin = region_margin_mm(cfg)
    gap = float(np.linalg.norm(cfg["gre"]["voxel_size"]))
    taken: list = []      # (MNI centre, bounding radius)
    out: list[Lesion] = []

    def add(cls, mni, extent, **kw):
        taken.append((mni, extent))
        out.append(Lesion(id=len(out) + 1, cls=cls, centre=p.from_mni(mni)[0], **kw))

    n_cmb = _count(rng, lc["cmb_count_bins"])
    groups = list(lc["cmb_region_weights"])
    w = np.array([lc["cmb_region_weights"][g] for g in groups], float)
    for _ in range(n_cmb):
        region = groups[rng.choice(len(groups), p=w / w.sum())]
        lo, hi = lc["cmb_diameter_range_mm"]
        d = float(np.clip(np.exp(rng.normal(np.log(lc["cmb_median_diameter_mm"]), 0.35)), lo, hi))
        if rng.random() < 0.1:
            d = float(rng.uniform(max(lo, 4.0), hi))
        radii = d / 2 * rng.uniform(0.85, 1.15, 3)
        mni = _pick(rng, hm, region, taken, 6.0, margin, radii.max(), gap)
        add("cmb", mni, radii.max(), chi=float(rng.uniform(0.4, 1.0)),
            r2s=float(rng.uniform(100, 200)), m0=0.55, t1w=0.9, t2w=0.25, radii=radii,
            axes=_random_axes(rng))

    n_iron = _count(rng, lc["iron_count_bins"])
    placed = 0
    while placed < n_iron:
        region = ("pallidum", "putamen") if rng.random() < 0.7 else ("putamen", "pallidum")
        shape = _iron_shape(rng)
        mni = _pick(rng, hm, region, taken, 6.0, margin, shape[3], gap)
        sides = [(mni, shape)]
        if rng.random() < lc["iron_bilateral_prob"] and placed + 1 < n_iron:
            mirror, shape2 = mni * np.array([-1, 1, 1]), _iron_shape(rng)
            if _clear(mirror, shape2[3], taken + [(mni, shape[3])], 6.0, gap):
                sides.append((mirror, shape2))
        for c, (axes, radii, blobs, extent) in sides:
            centre = p.from_mni(c)[0]
            add("iron", c, extent, chi=float(rng.uniform(*IRON_CHI_PPM)),
                r2s=float(rng.uniform(20, 40)), m0=0.95, t1w=0.95, t2w=0.7, radii=radii,
                axes=axes, blobs=[(centre + o, r) for o, r in blobs])
            placed += 1

    for _ in range(_count(rng, lc["vein_count_bins"])):
        mni = _pick(rng, hm, "white_matter", taken, 6.0, margin)
        start = p.from_mni(mni)[0]
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        pts = [start]
        for _ in range(int(rng.integers(6, 12))):
            direction = direction + rng.normal(0, 0.25, 3)
            direction /= np.linalg.norm(direction)
            pts.append(pts[-1] + 4.0 * direction)
        taken.append((mni, 0.0))
        out.append(Lesion(id=len(out) + 1, cls="vein", centre=np.mean(pts, 0), chi=0.45,
                          r2s=45.0, m0=0.8, t1w=0.9, t2w=0.5, path=np.array(pts),
                          radius=float(rng.uniform(0.7, 1.3))))

    for _ in range(_count(rng, lc["calcification_count_bins"])):
        region = ("pallidum", "basal_ganglia") if rng.random() < 0.5 else "basal_ganglia"
        radii = float(rng.uniform(2.5, 5)) / 2 * rng.uniform(0.85, 1.15, 3)
        mni = _pick(rng, hm, region, taken, 6.0, margin, radii.max(), gap)
        add("calcification", mni, radii.max(), chi=-float(rng.uniform(*CALC_CHI_PPM)),
            r2s=float(rng.uniform(120, 200)), m0=0.35, t1w=0.7, t2w=0.2, radii=radii,
            axes=_random_axes(rng))

    for _ in range(_count(rng, lc["epvs_count_bins"])):
        region = ("basal_ganglia", "white_matter") if rng.random() < 0.6 else "white_matter"
        radii = np.array([rng.uniform(0.6, 1.2), rng.uniform(0.6, 1.2), rng.uniform(2, 5)])
        mni = _pick(rng, hm, region, taken, 5.0, margin, radii.max(), gap)
        add("epvs", mni, radii.max(), chi=0.019, r2s=4.0, m0=1.0, t1w=0.25, t2w=1.1,
            radii=radii, axes=_random_axes(rng))
    return out


# rendering ---------------------------------------------------------------------------------

@dataclass
class Rendered:
    tissue: np.ndarray      # uint8 tissue label per voxel (flat, C order)
    lesion: np.ndarray      # uint16 lesion id per voxel (0 none)
    texture: np.ndarray     # float32 multiplicative texture (1 outside the brain)


def _coarse_axis(n, step):
    m = max(2, int(np.ceil((n - 1) / step)) + 1)
    return np.linspace(0, n - 1, m, dtype=np.float32)


def template_coordinates(p: Participant, shape, to_head: np.ndarray, step: int = 4) -> np.ndarray:
    """Head-model voxel coordinates (3, *shape) of every grid voxel. The map is affine plus a
    smooth displacement (wavelengths ≥ 60 mm), so it is computed on a grid ``step`` times
    coarser and interpolated trilinearly (corner-aligned) — sub-0.01 mm error."""
    hm = A.head_model()
    axes = [_coarse_axis(n, step) for n in shape]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    x = ijk @ to_head[:3, :3].T.astype(np.float32) + to_head[:3, 3].astype(np.float32)
    mni_to_vox = np.linalg.inv(hm.affine)
    vox = p.to_mni(x.astype(np.float64)) @ mni_to_vox[:3, :3].T + mni_to_vox[:3, 3]
    coarse = torch.from_numpy(vox.T.reshape(1, 3, *[len(a) for a in axes]).astype(np.float32))
    return torch.nn.functional.interpolate(coarse, size=tuple(int(n) for n in shape),
                                           mode="trilinear", align_corners=True)[0].numpy()


def render(p: Participant, shape, affine: np.ndarray, pose: np.ndarray) -> Rendered:
    """Tissue label, lesion id and texture on the grid (shape, affine: voxel → scanner mm)
    for a head at ``pose`` (4×4, head mm → scanner mm). Arrays are flat (C order)."""
    hm = A.head_model()
    shape = tuple(int(n) for n in shape)
    to_head = np.linalg.inv(pose) @ affine
    vox = template_coordinates(p, shape, to_head).reshape(3, -1)
    tissue = ndi.map_coordinates(hm.labels, vox, order=0, mode="constant", cval=A.AIR)
    del vox
    brain = np.isin(tissue, A.BRAIN_TISSUES)
    lesion = np.zeros(tissue.size, np.uint16)
    head_to_vox = np.linalg.inv(to_head)

    def head_mm(flat_index):
        ijk = np.array(np.unravel_index(flat_index, shape), dtype=np.float64).T
        return ijk @ to_head[:3, :3].T + to_head[:3, 3]

    for les in p.lesions:
        lo, hi = les.bounds()
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])])
        cv = corners @ head_to_vox[:3, :3].T + head_to_vox[:3, 3]
        i0 = np.clip(np.floor(cv.min(0)).astype(int), 0, np.asarray(shape) - 1)
        i1 = np.clip(np.ceil(cv.max(0)).astype(int) + 1, 0, np.asarray(shape))
        if np.any(i1 <= i0):
            continue
        box = np.ravel_multi_index(np.indices(i1 - i0).reshape(3, -1) + i0[:, None], shape)
        box = box[brain[box]]
        lesion[box[les.inside(head_mm(box))]] = les.id
    texture = np.ones(tissue.size, np.float32)
    where = np.flatnonzero(brain)
    for chunk in np.array_split(where, max(1, len(where) // 2_000_000)):
        texture[chunk] = p.texture_at(head_mm(chunk).astype(np.float32))
    return Rendered(tissue=tissue.astype(np.uint8), lesion=lesion, texture=texture)
