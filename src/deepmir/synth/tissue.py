"""What real brain tissue adds to the field beyond piecewise-constant scalar susceptibility
(docs/qsm.md, "The phantom"): susceptibility texture inside every structure, white-matter
susceptibility anisotropy (a tensor, Liu 2010; Li et al. 2012) with a fibre-orientation
field, and the microstructure frequency offset of myelinated fibres that no susceptibility
map explains (the hollow-cylinder model, Wharton & Bowtell 2012). Also the receive-coil
sensitivity of a head array, which makes the noise of the GRE vary across the brain.

Everything here works on the *block grid* of the simulation (the GRE grid extended along
the slice axis, one value per GRE voxel) and is brought to the fine simulation grid by
:func:`upsample` where needed: these terms are smooth at the scale of a GRE voxel, and the
fine grid holds 8× the voxels. Units: ppm (susceptibility and relative field), mm.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from deepmir.atlas import head as A
from deepmir.dipole import fast_len, kspace_grid

# within-structure susceptibility variation (ppm, standard deviation of the texture): in
# vivo COSMOS / multi-orientation maps vary by ≈ 0.01 ppm inside white and cortical grey
# matter and by ≈ 20 % of their mean (plus gradients) inside the iron-rich nuclei
TEXTURE_PPM = {A.CSF: 0.002, A.VENTRICLE: 0.002, A.GM: 0.008, A.WM: 0.008,
               A.CEREBELLUM_GM: 0.008, A.CEREBELLUM_WM: 0.008, A.BRAINSTEM: 0.008,
               A.CAUDATE: 0.010, A.PUTAMEN: 0.010, A.PALLIDUM: 0.025, A.THALAMUS: 0.008}
WHITE_MATTER = (A.WM, A.CEREBELLUM_WM, A.BRAINSTEM)


def smooth_noise(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    """Gaussian random field with unit standard deviation and Gaussian correlation of
    ``sigma_vox`` voxels (per axis), float32. A smooth field is drawn on a grid up to
    σ/1.5 times coarser and interpolated (trilinear): the same statistics at a fraction of
    the cost."""
    sig = np.broadcast_to(np.asarray(sigma_vox, float), (len(shape),))
    f = np.maximum(np.floor(sig / 1.5), 1).astype(int)
    coarse = tuple(int(np.ceil(n / k)) + 1 for n, k in zip(shape, f))
    x = ndi.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sig / f,
                            mode="wrap")
    if np.any(f > 1):
        t = torch.as_tensor(x)[None, None]
        grid_end = [(n - 1) / k for n, k in zip(shape, f)]   # fine voxel i at coarse i / f
        size = tuple(int(round(e * k)) + 1 for e, k in zip(grid_end, f))
        full = torch.nn.functional.interpolate(
            t[..., : int(np.ceil(grid_end[0])) + 1, : int(np.ceil(grid_end[1])) + 1,
              : int(np.ceil(grid_end[2])) + 1], size=size, mode="trilinear",
            align_corners=True)[0, 0]
        x = full.numpy()
    x = np.ascontiguousarray(x[: shape[0], : shape[1], : shape[2]])
    return (x / max(float(x.std()), 1e-12)).astype(np.float32)


def chi_texture(rng, tissue, voxel_size, fine_mm: float = 1.5, coarse_mm: float = 6.0):
    """Texture (ppm) of the tissue susceptibility on a grid of ``tissue`` labels: the sum of
    a fine (correlation ``fine_mm``) and a coarse (``coarse_mm``) Gaussian random field,
    weighted 1:1 in variance and scaled per tissue by :data:`TEXTURE_PPM` (0 elsewhere)."""
    vs = np.asarray(voxel_size, float)
    tex = (smooth_noise(rng, tissue.shape, fine_mm / vs)
           + smooth_noise(rng, tissue.shape, coarse_mm / vs)) / np.float32(np.sqrt(2))
    amp = np.zeros(256, np.float32)
    for label, a in TEXTURE_PPM.items():
        amp[label] = a
    return tex * amp[tissue]


def fibre_directions(rng, wm_fraction, voxel_size, smooth_mm: float = 3.0,
                     random_mm: float = 10.0) -> np.ndarray:
    """A smooth unit fibre-direction field (3, *shape): normal to the white-matter surface
    where it is near (fibres enter the cortex at right angles), turning into a smooth random
    field deep inside. Not a tractogram: what it gives is a realistic spread of angles to
    B0 varying over a few mm."""
    vs = np.asarray(voxel_size, float)
    s = ndi.gaussian_filter(wm_fraction.astype(np.float32), smooth_mm / vs)
    g = np.stack(np.gradient(s, *vs)).astype(np.float32)
    mag = np.sqrt((g ** 2).sum(0))
    ref = np.percentile(mag[wm_fraction > 0.5], 75) if (wm_fraction > 0.5).any() else 1.0
    v = np.stack([smooth_noise(rng, wm_fraction.shape, random_mm / vs) for _ in range(3)])
    n = g / np.float32(max(ref, 1e-12)) + np.float32(0.7) * v
    return n / np.maximum(np.sqrt((n ** 2).sum(0)), 1e-6)


def anisotropy_field(chi_a, n, voxel_size, b0_dir, pad_factor: float = 1.25) -> np.ndarray:
    """Field (ppm) of the traceless part of a cylindrically symmetric susceptibility tensor
    χ_a (n nᵀ − I/3) (susceptibility tensor imaging, Liu 2010): in k-space
    (1/3) F[Δχ_bb] − (k·b)/|k|² Σ_i k_i F[Δχ_ib], Δχ_ij = χ_a (n_i n_j − δ_ij/3). Its mean
    susceptibility is 0: the scalar part stays in the χ map. ``chi_a`` (ppm) and ``n``
    (3, *shape) on a grid with ``voxel_size`` mm; ``b0_dir`` along the array axes."""
    shape = tuple(chi_a.shape)
    grid = tuple(fast_len(int(np.ceil(s * pad_factor))) for s in shape)
    b = np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)
    a = torch.as_tensor(np.ascontiguousarray(chi_a, np.float32))
    nt = torch.as_tensor(np.ascontiguousarray(n, np.float32))
    nb = sum(float(b[i]) * nt[i] for i in range(3))
    ks = kspace_grid(grid, voxel_size, rfft=True)
    k2 = ks[0] ** 2 + ks[1] ** 2 + ks[2] ** 2
    kb = sum(float(b[i]) * ks[i] for i in range(3))
    k2 = torch.where(k2 == 0, torch.ones_like(k2), k2)
    acc = torch.fft.rfftn(a * (nb * nb - 1.0 / 3.0), s=grid) / 3.0
    for i in range(3):
        spec = torch.fft.rfftn(a * (nt[i] * nb - float(b[i]) / 3.0), s=grid)
        acc -= spec * (ks[i] * kb / k2)
    acc.reshape(-1)[0] = 0.0
    out = torch.fft.irfftn(acc, s=grid)[tuple(slice(0, s) for s in shape)]
    return out.numpy().astype(np.float32)


def microstructure_offset(eps_ppm, wm_fraction, n, b0_dir) -> np.ndarray:
    """Frequency offset (ppm, relative field) of myelinated white matter that is not the
    field of any susceptibility distribution: the hollow-cylinder model's compartment
    term, ∝ sin²θ to B0 (Wharton & Bowtell 2012), here ε (sin²θ − 2/3) per unit white
    matter (mean-free over orientations), in the voxel itself."""
    b = np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)
    cos = sum(np.float32(b[i]) * n[i] for i in range(3))
    return (np.float32(eps_ppm) * wm_fraction * (1.0 - cos * cos - 2.0 / 3.0)).astype(np.float32)


def receive_profile(rng, shape, affine, brain, contrast: float = 0.8) -> np.ndarray:
    """Receive sensitivity of a multichannel head array (mean 1 over ``brain``): brighter at
    the periphery than in the centre (a 32-channel array at 3 T gives ≈ 2× more signal at
    the cortex than in the centre of the brain), with a random smooth tilt. The noise of
    the coil-combined image is uniform, so SNR follows this profile."""
    idx = np.argwhere(brain)
    c = idx.mean(0)
    half = (idx.max(0) - idx.min(0) + 1) / 2.0
    vs = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    rho2 = sum(((g - ci) / hi) ** 2 for g, ci, hi in zip(grids, c, half))
    tilt = sum(np.float32(rng.normal(0, 0.1)) * (g - ci) * v / 100.0
               for g, ci, v in zip(grids, c, vs))
    prof = np.exp(np.float32(contrast) * np.minimum(rho2, 1.5) + tilt).astype(np.float32)
    prof = np.broadcast_to(prof, shape)
    return (prof / prof[brain].mean()).astype(np.float32)


def upsample(a: np.ndarray, factors) -> np.ndarray:
    """Block grid → fine grid (each block's sub-voxels), trilinear between block centres."""
    f = tuple(int(x) for x in factors)
    if f == (1, 1, 1):
        return np.asarray(a, np.float32)
    t = torch.as_tensor(np.ascontiguousarray(a, np.float32))[None, None]
    return torch.nn.functional.interpolate(t, scale_factor=f, mode="trilinear",
                                           align_corners=False)[0, 0].numpy()
