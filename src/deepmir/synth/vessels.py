"""The venous tree of a phantom (docs/qsm.md, "The phantom"): dural sinuses, deep veins,
pial veins on the cortex and medullary veins in the white matter, as tubes in head
coordinates (mm), rendered with partial volume on the simulation grid.

Venous blood is paramagnetic, Δχ ≈ Hct (1 − Y) Δχ_do ≈ 0.45 ppm for Y ≈ 0.6 (method.md §7;
Spees et al. 2001), R2* ≈ 45 s⁻¹ at 3 T. Veins are anatomy, not lesions: they are drawn from
their own random stream (the lesions of a participant do not change), never enter a lesion,
and carry no label. The vein *mimics* of the lesion table are drawn as before.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepmir.atlas import head as A

CHI_BLOOD = 0.45
R2S_BLOOD = 45.0
M0_BLOOD = 0.8


@dataclass
class Vessel:
    path: np.ndarray     # K×3 head mm
    radius: np.ndarray   # K radii (mm) at the path points
    chi: float


def _lookup(hm, vol, mni, order=0):
    inv = np.linalg.inv(hm.affine)
    ijk = np.atleast_2d(mni) @ inv[:3, :3].T + inv[:3, 3]
    ijk = np.clip(np.round(ijk).astype(int), 0, np.asarray(vol.shape) - 1)
    return vol[tuple(ijk.T)]


def _grad(hm, vol, x):
    """Central-difference gradient of a head-model volume at MNI points (per mm)."""
    g = np.zeros((len(x), 3))
    for ax in range(3):
        e = np.zeros(3)
        e[ax] = 1.0
        g[:, ax] = (_lookup(hm, vol, x + e).astype(float)
                    - _lookup(hm, vol, x - e).astype(float)) / 2.0
    return g


def _unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _surface_walk(rng, hm, start, steps, target_depth, step_mm=2.0):
    """A pial vein: a persistent random walk on the brain surface at ``target_depth`` mm."""
    pts = [start]
    d = _unit(rng.normal(size=3))
    for _ in range(steps):
        x = pts[-1]
        n = _unit(_grad(hm, hm.depth, x[None])[0])
        d = _unit(d - (d @ n) * n + rng.normal(0, 0.3, 3))
        y = x + step_mm * d
        depth = float(_lookup(hm, hm.depth, y[None])[0])
        if depth <= 0:
            break
        n2 = _unit(_grad(hm, hm.depth, y[None])[0])
        y = y + (target_depth - depth) * n2
        pts.append(y)
    return np.array(pts)


def _medullary_walk(rng, hm, start, max_steps=20, step_mm=1.5):
    """A medullary vein: from deep white matter straight out to the cortex (down the
    gradient of the distance to cortex)."""
    pts = [start]
    for _ in range(max_steps):
        x = pts[-1]
        g = _grad(hm, hm.cortex_dist, x[None])[0]
        if np.linalg.norm(g) < 1e-6:
            break
        y = x + step_mm * _unit(-_unit(g) + rng.normal(0, 0.15, 3))
        pts.append(y)
        if float(_lookup(hm, hm.cortex_dist, y[None])[0]) < 1.0:
            break
    return np.array(pts)


def draw_vessels(rng: np.random.Generator, hm, to_head, n_pial=(16, 24),
                 n_medullary=(30, 50)) -> list[Vessel]:
    """The venous tree of one participant; ``to_head`` maps MNI mm (N×3) to head mm."""
    out = []

    def add(mni_path, radius, chi=CHI_BLOOD):
        path = to_head(np.asarray(mni_path, float))
        r = np.broadcast_to(np.asarray(radius, float), (len(path),)).copy()
        out.append(Vessel(path=path, radius=r, chi=float(chi)))

    # superior sagittal sinus: along the top of the brain in the midline, just outside the
    # brain (half in the CSF layer, half in the skull/dura), widening towards the back
    inv = np.linalg.inv(hm.affine)
    ix = int(round(inv[0, 3]))
    sss = []
    for y in np.arange(50.0, -96.0, -5.0):
        j = int(round(inv[1, 1] * y + inv[1, 3]))
        ks = np.flatnonzero(hm.depth[ix, j, :] > 0)
        if len(ks):
            sss.append((0.0, y, hm.affine[2, 2] * ks.max() + hm.affine[2, 3] + 3.0))
    if len(sss) > 2:
        add(sss, np.linspace(2.0, 4.0, len(sss)) * rng.uniform(0.9, 1.1))
    # deep veins: internal cerebral veins → vein of Galen → straight sinus
    jit = rng.normal(0, 1.0, 3)
    for side in (-1, 1):
        add([(side * 2.5, 0, 14) + jit, (side * 2.5, -20, 16) + jit,
             (side * 2.0, -35, 14) + jit, (0, -44, 11) + jit], rng.uniform(1.0, 1.4))
    add([(0, -44, 11) + jit, (0, -60, 5) + jit, (0, -78, 0) + jit, (0, -95, -4) + jit],
        np.linspace(2.0, 3.0, 4))
    # pial veins on the cerebral cortex
    cortex = np.argwhere((hm.depth > 0.5) & (hm.depth <= 2.0) & (hm.lobes > 0))
    for _ in range(int(rng.integers(*n_pial))):
        ijk = cortex[rng.integers(len(cortex))]
        start = hm.affine[:3, :3] @ ijk + hm.affine[:3, 3]
        path = _surface_walk(rng, hm, start, int(rng.integers(8, 25)), rng.uniform(0.5, 1.5))
        if len(path) > 2:
            add(path, rng.uniform(0.4, 1.0))
    # medullary veins in the deep white matter
    deep = np.argwhere((hm.labels == A.WM) & (hm.cortex_dist > 8) & (hm.depth > 15))
    for _ in range(int(rng.integers(*n_medullary))):
        ijk = deep[rng.integers(len(deep))]
        start = hm.affine[:3, :3] @ ijk + hm.affine[:3, 3] + rng.uniform(-0.5, 0.5, 3)
        path = _medullary_walk(rng, hm, start)
        if len(path) > 2:
            add(path, rng.uniform(0.2, 0.35))
    return out


def vessel_fraction(vessels, shape, to_head_affine, voxel_size_mm, exclude=None):
    """Partial-volume fraction (0…1, float32, flat C order) of blood per voxel of a grid
    (``to_head_affine``: voxel → head mm) and the susceptibility of the vessel that gives it
    (the largest fraction wins where they overlap). A voxel at distance d from a tube's axis
    of radius r holds clip(0.5 + (ρ − d)/h, 0, 1) (h the voxel's mean size, ρ ≈ r such that
    a cross-section holds π r²); a tube thinner than h/√3 has a Gaussian profile holding
    π r². ``exclude``: flat bool, voxels kept free (lesions)."""
    shape = tuple(int(n) for n in shape)
    frac = np.zeros(int(np.prod(shape)), np.float32)
    chi = np.zeros_like(frac)
    h = float(np.prod(voxel_size_mm) ** (1 / 3))
    head_to_vox = np.linalg.inv(to_head_affine)
    for v in vessels:
        for a, b, ra, rb in zip(v.path[:-1], v.path[1:], v.radius[:-1], v.radius[1:]):
            r = max(ra, rb, h)
            lo = np.minimum(a, b) - r - h
            hi = np.maximum(a, b) + r + h
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                                for z in (lo[2], hi[2])])
            cv = corners @ head_to_vox[:3, :3].T + head_to_vox[:3, 3]
            i0 = np.clip(np.floor(cv.min(0)).astype(int), 0, np.asarray(shape))
            i1 = np.clip(np.ceil(cv.max(0)).astype(int) + 1, 0, np.asarray(shape))
            if np.any(i1 <= i0):
                continue
            ijk = np.indices(i1 - i0).reshape(3, -1) + i0[:, None]
            x = ijk.T @ to_head_affine[:3, :3].T + to_head_affine[:3, 3]
            ab = b - a
            t = np.clip(((x - a) @ ab) / max(ab @ ab, 1e-9), 0, 1)
            d = np.linalg.norm(x - (a + t[:, None] * ab), axis=1)
            rr = ra + t * (rb - ra)
            # the ramp clip(1/2 + (ρ − d)/h) has the cross-section π(ρ² + h²/12): ρ is set so
            # that it holds π r²; a tube thinner than h/√3 (no such ρ ≥ h/2) gets a Gaussian
            # cross-section of σ = h/2 holding π r² (sampled finely enough: ≈ 2 %)
            thin = (rr * rr / (2 * (h / 2) ** 2)) * np.exp(-d * d / (2 * (h / 2) ** 2))
            rho = np.sqrt(np.maximum(rr * rr - h * h / 12, 0))
            f = np.where(rr < h / np.sqrt(3), thin, np.clip(0.5 + (rho - d) / h, 0, 1))
            f = np.minimum(f, 1.0).astype(np.float32)
            flat = np.ravel_multi_index(ijk, shape)
            sel = f > frac[flat]
            if exclude is not None:
                sel &= ~exclude[flat]
            frac[flat[sel]] = f[sel]
            chi[flat[sel]] = v.chi
    return frac, chi
