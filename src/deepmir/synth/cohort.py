"""Forward models (multi-echo GRE, T1w, T2w) and the BIDS writer of the synthetic cohort.

A participant is a pure function of (synth config, seed, participant index)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi

from deepmir import GAMMA_BAR_HZ_PER_T
from deepmir.atlas import head as A
from deepmir.atlas import regions
from deepmir.dipole import b0_direction, dipole_field, voxel_sizes
from deepmir.synth import tissue as T
from deepmir.synth import vessels as V
from deepmir.synth.phantom import LABEL_OF_CLASS, draw_participant, render, rigid

# per tissue (index = label): χ in ppm (method.md §7, air +9.2 relative to tissue), GRE proton
# density, R2* (s⁻¹) at 3 T, T1w and T2w intensities
TISSUE_TABLE = pd.DataFrame({
    "name": A.TISSUE_NAMES,
    "chi": [9.2, 0.019, 0.020, -0.030, 0.044, 0.038, 0.131, 0.020, 0.019, -0.010, 0.020,
            -0.030, -2.1, 0.0, 9.2],
    "m0": [0, 1.0, 0.85, 0.70, 0.82, 0.80, 0.72, 0.78, 1.0, 0.72, 0.85, 0.70, 0.05, 0.9, 0],
    "r2s": [0, 3, 18, 22, 25, 30, 50, 24, 3, 25, 18, 22, 300, 40, 0],
    "t1w": [0, 0.15, 0.50, 0.80, 0.55, 0.60, 0.68, 0.65, 0.15, 0.70, 0.50, 0.78, 0.08, 0.85, 0],
    "t2w": [0, 1.0, 0.55, 0.40, 0.50, 0.45, 0.35, 0.45, 1.0, 0.45, 0.55, 0.40, 0.05, 0.5, 0],
})
CHI_AIR = 9.2


def participant_ids(n: int) -> list[str]:
    return [f"sub-{i + 1:03d}" for i in range(n)]


def participant_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random stream of a participant: 0 anatomy, lesions, pose, noise (the original
    stream), 2 tissue realism (texture, fibres, veins), 3 receive coil."""
    key = [int(seed), int(index)] + ([int(stream)] if stream else [])
    return np.random.default_rng(key)


def _tissue_realism(cfg, rng, p, r, props, sim_shape, fine, pose, o, vs, b0dir, brain_f):
    """Texture and veins (into ``props``, on the fine grid, in place) and the field of white
    matter beyond scalar χ (returned on the block grid, ppm; None when both terms are 0)."""
    tc = cfg["tissue"]
    lesion = r.lesion > 0
    if tc["texture"]:
        tissue_big = r.tissue.reshape(sim_shape)[tuple(slice(k // 2, None, k) for k in o)]
        tex = T.upsample(T.chi_texture(rng, tissue_big, vs), o).reshape(-1)
        keep = brain_f.reshape(-1) & ~lesion
        props["chi"][keep] += tex[keep]
        del tex, keep
    if tc["veins"]:
        veins = V.draw_vessels(rng, A.head_model(), p.from_mni)
        frac, vchi = V.vessel_fraction(veins, sim_shape, np.linalg.inv(pose) @ fine,
                                       voxel_sizes(fine), exclude=lesion | (r.tissue == A.AIR))
        sel = np.flatnonzero(frac)
        f = frac[sel]
        for k, blood in (("chi", vchi[sel]), ("r2s", V.R2S_BLOOD), ("m0", V.M0_BLOOD)):
            props[k][sel] += f * (blood - props[k][sel])
    if not (tc["anisotropy_ppm"] or tc["microstructure_ppm"]):
        return None
    wm = block_mean(np.isin(r.tissue, T.WHITE_MATTER).reshape(sim_shape), o)
    n = T.fibre_directions(rng, wm, vs)
    out = T.anisotropy_field(tc["anisotropy_ppm"] * wm, n, vs, b0dir)
    out += T.microstructure_offset(tc["microstructure_ppm"], wm, n, b0dir)
    return out


# grids -------------------------------------------------------------------------------------

def grid_affine(shape, voxel_size, orientation="RAS", oblique_deg=0.0):
    """Affine of a grid centred on the scanner origin. ``orientation`` 'RAS' or 'LPS' sets
    the direction of the first two array axes; ``oblique_deg`` tilts the grid about x."""
    vs = np.asarray(voxel_size, float)
    flip = np.array([1, 1, 1.0]) if orientation == "RAS" else np.array([-1, -1, 1.0])
    rot = rigid((oblique_deg, 0, 0), (0, 0, 0))[:3, :3]
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag(flip * vs)
    m[:3, 3] = -m[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return m


def block_mean(a, factors):
    """Mean over non-overlapping blocks of ``factors`` voxels (real arrays)."""
    f = tuple(int(x) for x in factors)
    if f == (1, 1, 1):
        return np.asarray(a, np.float32)
    t = torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return torch.nn.functional.avg_pool3d(t, f).numpy()[0, 0]


def block_mean_c(a, factors):
    return block_mean(a.real, factors) + 1j * block_mean(a.imag, factors)


def gre_signal(m0, r2s, field_ppm, te, rad_per_s_per_ppm):
    """Complex GRE signal at echo time te: M0·exp(−R2*·TE)·exp(i·ω·ΔB·TE), as complex64."""
    m = torch.as_tensor(m0) * torch.exp(-torch.as_tensor(r2s) * te)
    return torch.polar(m, torch.as_tensor(field_ppm) * float(rad_per_s_per_ppm * te)).numpy()


def shim_field(coef, shape, affine):
    """Linear and second-order shim residual (ppm) on a grid; ``coef`` has 8 terms, with
    coordinates in units of 100 mm."""
    x, y, z = (torch.as_tensor(np.asarray(c, np.float32) / np.float32(100.0))
               for c in _world_axes(shape, affine))
    c = [float(v) for v in coef]
    # Σ c_i term_i, grouped: x(c0 + c3 y + c5 z + (c6 − c7) x) + y(c1 + c4 z − (c6 + c7) y)
    # + z(c2 + 2 c7 z), in place (the terms x, y, z, xy, yz, xz, x²−y², 2z²−x²−y²)
    out = (c[3] * y + c[5] * z).add_(x, alpha=c[6] - c[7]).add_(c[0]).mul_(x)
    out.add_((c[4] * z).add_(y, alpha=-(c[6] + c[7])).add_(c[1]).mul_(y))
    out.add_((2 * c[7] * z).add_(c[2]).mul_(z))
    return np.ascontiguousarray(np.broadcast_to(out.numpy(), tuple(shape)), np.float32)


def _world_axes(shape, affine):
    i, j, k = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return [affine[r, 0] * i + affine[r, 1] * j + affine[r, 2] * k + affine[r, 3] for r in range(3)]


# property maps -----------------------------------------------------------------------------

def property_maps(p, r, properties=("chi", "m0", "r2s")):
    """Per-point tissue properties with lesions applied. Returns dict of float32 arrays."""
    out = {k: TISSUE_TABLE[k].to_numpy(np.float32)[r.tissue] for k in properties}
    for name in ("m0", "t1w", "t2w"):
        if name in out:
            brain = np.isin(r.tissue, A.BRAIN_TISSUES)
            out[name][brain] *= 1 + (r.texture[brain] - 1) * (1.0 if name == "m0" else 0.4)
    if "r2s" in out:
        out["r2s"] *= 1 + (r.texture - 1) * 0.5
    by_id = {les.id: les for les in p.lesions}
    for lid in np.unique(r.lesion[r.lesion > 0]):
        les = by_id[int(lid)]
        sel = r.lesion == lid
        for k in out:
            v = getattr(les, "r2s" if k == "r2s" else k)
            if k == "chi":
                out[k][sel] = out[k][sel] + v if les.cls in ("cmb", "iron", "calcification") else v
            elif les.cls == "iron":
                out[k][sel] = out[k][sel] + v if k == "r2s" else out[k][sel] * v
            elif k == "r2s":
                out[k][sel] = np.maximum(out[k][sel], v)
            else:
                out[k][sel] = v
    return out


def smooth_bias(rng, shape, affine, strength, support=None):
    """Smooth multiplicative field exp(poly2 + a long-wave sinusoid) on a grid, spanning
    ≈ 1 ± strength over ``support`` (a boolean mask; None = the whole grid).

    The span is set over the head, not over the grid's field of view: the field is only
    seen where there is signal, and 3 T head-coil receive/transmit inhomogeneity over the
    head is typically ±10–30 %. Normalised over the whole box, the extremes of the poly2 sat
    in the box corners (air) and the field varied only ≈ ±8 % (p1–p99) inside the brain, so
    weak that on the phantom even the true bias explained only half (T1w) or a quarter (T2w)
    of the white-matter intensity spread. Outside the support the field keeps growing
    smoothly (it only multiplies air there)."""
    x, y, z = (np.asarray(c, np.float32) / 100.0 for c in _world_axes(shape, affine))
    terms = [x, y, z, x * x, y * y, z * z, x * y, y * z, x * z]
    c = rng.normal(size=len(terms))
    k = rng.normal(size=3)
    g = sum(np.float32(ci) * t for ci, t in zip(c, terms)) + np.sin(
        np.float32(np.pi) * (x * k[0] + y * k[1] + z * k[2]) + np.float32(rng.uniform(0, 6)))
    g = np.broadcast_to(g, shape)
    s = g if support is None else g[np.asarray(support, bool)]
    g = (g - s.mean()) / (np.abs(s - s.mean()).max() + 1e-9)
    return np.exp(np.float32(np.log1p(strength)) * g).astype(np.float32)


# one participant ---------------------------------------------------------------------------

def simulate(cfg: dict, seed: int, index: int) -> dict:
    """All images and truth of one participant, as arrays (no file I/O)."""
    rng = participant_rng(seed, index)
    p = draw_participant(rng, cfg)
    g = cfg["gre"]
    shape = tuple(int(n) for n in g["matrix"])
    vs = np.asarray(g["voxel_size"], float)
    aff = grid_affine(shape, vs, g["orientation"], g["oblique_deg"])
    tilt = rng.uniform(-1, 1, 3) * np.array(cfg["head_tilt_deg"])
    pose_gre = rigid(tilt, rng.uniform(-2, 2, 3)) @ rigid((0, 0, 0), -p.centre)

    # simulation grid: the GRE grid oversampled, extended along the slice axis to hold the head
    o = np.asarray(g["oversample"], int)
    slice_ax = int(np.argmax(np.abs(b0_direction(aff))))
    ext = np.zeros(3, int)
    ext[slice_ax] = max(0, int(np.ceil((cfg["sim_extent_mm"] / vs[slice_ax] - shape[slice_ax]) / 2)))
    sim_shape = tuple((np.asarray(shape) + 2 * ext) * o)
    fine = aff.copy()
    fine[:3, :3] = aff[:3, :3] / o
    fine[:3, 3] = aff[:3, :3] @ ((1.0 / o - 1) / 2 - ext) + aff[:3, 3]
    r = render(p, sim_shape, fine, pose_gre)
    props = property_maps(p, r)
    b0dir = b0_direction(fine)
    fvs = voxel_sizes(fine)
    brain_f = np.isin(r.tissue, A.BRAIN_TISSUES).reshape(sim_shape)
    # what real tissue adds (synth/tissue.py, synth/vessels.py), from a random stream of its
    # own: the lesions and every draw of the main stream stay as they were
    extra = _tissue_realism(cfg, participant_rng(seed, index, stream=2), p, r, props, sim_shape,
                            fine, pose_gre, o, vs, b0dir, brain_f)
    chi = props["chi"].reshape(sim_shape)
    field = dipole_field(chi - CHI_AIR, fvs, b0dir, pad_factor=cfg["pad_factor"])
    local = dipole_field(np.where(brain_f, chi, 0), fvs, b0dir, pad_factor=cfg["pad_factor"])
    total = field + shim_field(rng.normal(size=8) * cfg["shim_ppm"], sim_shape, fine)
    if extra is not None:       # the non-scalar field of white matter (block grid → fine)
        up = T.upsample(extra, o)
        total += up
        local += up
        del up

    crop = tuple(slice(e, e + n) for e, n in zip(ext, shape))
    te = np.asarray(g["echo_times"], float)
    omega = 2 * np.pi * GAMMA_BAR_HZ_PER_T * g["field_strength"] * 1e-6  # rad/s per ppm
    m0 = props["m0"].reshape(sim_shape)
    r2s = props["r2s"].reshape(sim_shape)
    gx, gy, gz = (c / 100.0 for c in _world_axes(shape, aff))
    slope = rng.normal(0, 0.3, 3)
    phi0 = np.broadcast_to(rng.uniform(-np.pi, np.pi) + slope[0] * gx + slope[1] * gy
                           + slope[2] * gz, shape).astype(np.float32)
    occupancy = block_mean(brain_f.astype(np.float32), o)[crop]
    brain = occupancy >= 0.5
    coil = np.exp(1j * phi0).astype(np.complex64)
    if cfg["tissue"]["coil_contrast"] > 0:
        coil = coil * T.receive_profile(participant_rng(seed, index, stream=3), shape, aff,
                                        brain, cfg["tissue"]["coil_contrast"])
    signal = [block_mean_c(gre_signal(m0, r2s, total, t, g["phase_sign"] * omega), o)[crop]
              * coil for t in te]
    sigma = np.abs(signal[0])[brain].mean() / g["snr"]
    noisy = [s + sigma * (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / np.sqrt(2)
             for s in signal]

    truth = {
        # χ of the brain tissue in each voxel (skull/air partial volume left out), 0 outside
        "chi": np.where(brain, block_mean(np.where(brain_f, chi, 0), o)[crop]
                        / np.maximum(occupancy, 1e-6), 0).astype(np.float32),
        "local_field": block_mean(local, o)[crop],
        "total_field": block_mean(total, o)[crop],
        "r2s": block_mean(r2s, o)[crop],
        "brain": brain,
        "tissue": r.tissue.reshape(sim_shape)[tuple(slice(k // 2, None, k) for k in o)][crop],
    }
    lesion_map, dseg, table = _lesion_truth(p, r, sim_shape, o, ext, shape, aff, np.prod(fvs),
                                            pose_gre)
    truth.update(lesions=lesion_map, dseg=dseg, table=table)

    anat = {}
    for k, name in enumerate(("T1w", "T2w")):
        anat[name] = _anat_image(p, rng, cfg, name.lower(), pose_gre)
    return {"participant": p, "pose_gre": pose_gre, "gre_affine": aff, "mag": [np.abs(s).astype(np.float32) for s in noisy],
            "phase": [np.angle(s).astype(np.float32) for s in noisy], "echo_times": te,
            "noise_sigma": float(sigma), "truth": truth, "anat": anat, "phi0": phi0}


def _lesion_truth(p, r, sim_shape, o, ext, shape, aff, fine_voxel_volume, pose_gre):
    """Lesion id map and dseg on the GRE grid (a voxel belongs to a lesion when at least half
    of its sub-voxels do; a labelled lesion keeps at least its most-covered voxel), and the
    per-lesion table.

    A lesion's region is the atlas region at its centroid, the point the table gives (the
    centroid of its labelled voxels, mapped through the participant's true deformation to
    MNI): what a census of the label map can see. Lesions without a labelled voxel
    (unlabelled mimics) use their shape centre."""
    big = tuple(np.asarray(sim_shape) // o)
    ids = r.lesion.reshape(sim_shape)
    idx = np.flatnonzero(ids)
    coords = np.array(np.unravel_index(idx, sim_shape)) // o[:, None]
    coarse = np.ravel_multi_index(coords, big)
    lid = ids.ravel()[idx].astype(np.int64)
    key, counts = np.unique(coarse * 65536 + lid, return_counts=True)
    vox, lids = key // 65536, key % 65536
    occ = counts / float(np.prod(o))
    lesion_big = np.zeros(int(np.prod(big)), np.uint16)
    best = np.zeros(int(np.prod(big)))
    order = np.argsort(occ)
    for v, l, c in zip(vox[order], lids[order], occ[order]):
        if c >= 0.5 and c > best[v]:
            lesion_big[v], best[v] = l, c
    by_id = {les.id: les for les in p.lesions}
    for les in p.lesions:                   # a labelled lesion never vanishes
        if LABEL_OF_CLASS[les.cls] and not np.any(lesion_big == les.id):
            sel = lids == les.id
            if sel.any():
                lesion_big[vox[sel][np.argmax(occ[sel])]] = les.id
    crop = tuple(slice(e, e + n) for e, n in zip(ext, shape))
    lesion_map = lesion_big.reshape(big)[crop]
    label_of = np.zeros(max(by_id, default=0) + 1, np.uint8)
    for les in p.lesions:
        label_of[les.id] = LABEL_OF_CLASS[les.cls]
    dseg = label_of[lesion_map]
    fine_count = np.bincount(lid, minlength=len(label_of))
    hm = A.head_model()
    voxel_volume = float(abs(np.linalg.det(aff[:3, :3])))
    rows = []
    for les in p.lesions:
        vox_ijk = np.argwhere(lesion_map == les.id)
        cen = vox_ijk.mean(0) if len(vox_ijk) else np.full(3, np.nan)
        mm = aff[:3, :3] @ cen + aff[:3, 3]
        shape_volume = fine_count[les.id] * fine_voxel_volume
        mni = p.to_mni(np.atleast_2d(les.centre))
        tissue_chi = _surrounding_chi(hm, mni)
        if len(vox_ijk):  # scanner (GRE world) mm → head mm → MNI
            mni = p.to_mni(np.atleast_2d(np.linalg.solve(pose_gre, np.append(mm, 1.0))[:3]))
        group, region, hemi = regions.region_of(hm, mni)[0]
        dchi = les.chi if les.cls in ("cmb", "iron", "calcification") else les.chi - tissue_chi
        rows.append(dict(lesion_id=les.id, cls=les.cls, label=LABEL_OF_CLASS[les.cls],
                         centroid_i=cen[0], centroid_j=cen[1], centroid_k=cen[2],
                         centroid_x_mm=mm[0], centroid_y_mm=mm[1], centroid_z_mm=mm[2],
                         n_voxels=len(vox_ijk), volume_mm3=len(vox_ijk) * voxel_volume,
                         shape_volume_mm3=shape_volume, delta_chi_ppm=dchi,
                         moment_ppm_mm3=dchi * shape_volume, region_group=group, region=region,
                         hemisphere=hemi))
    table = pd.DataFrame(rows, columns=["lesion_id", "cls", "label", "centroid_i", "centroid_j",
                                        "centroid_k", "centroid_x_mm", "centroid_y_mm",
                                        "centroid_z_mm", "n_voxels", "volume_mm3", "shape_volume_mm3",
                                        "delta_chi_ppm", "moment_ppm_mm3", "region_group",
                                        "region", "hemisphere"])
    return lesion_map, dseg, table


def _surrounding_chi(hm, mni):
    return float(TISSUE_TABLE["chi"][int(regions.lookup(hm, mni, hm.labels)[0])])


def _anat_image(p, rng, cfg, which, pose_gre):
    """T1w or T2w on its own grid, the head moved rigidly relative to the GRE series."""
    a = cfg["anat"]
    vs = np.full(3, float(a["voxel_size"]))
    shape = tuple(int(np.ceil(f / v)) for f, v in zip(a["fov_mm"], vs))
    aff = grid_affine(shape, vs, a["orientation"], 0.0)
    motion = rigid(rng.uniform(-1, 1, 3) * cfg["motion_deg"], rng.uniform(-1, 1, 3) * cfg["motion_mm"])
    pose = motion @ pose_gre
    r = render(p, shape, aff, pose)
    img = property_maps(p, r, properties=(which,))[which].reshape(shape)
    img = ndi.gaussian_filter(img, 0.5)
    strength = cfg["bias_strength"]
    if isinstance(strength, dict):  # per contrast (T2w fields are usually the stronger)
        strength = strength["T1w" if which == "t1w" else "T2w"]
    bias = smooth_bias(rng, shape, aff, float(strength), support=r.tissue.reshape(shape) > 0)
    sigma = a["noise"]
    noisy = np.abs(img * bias + sigma * (rng.normal(size=shape) + 1j * rng.normal(size=shape)))
    brain = np.isin(r.tissue, A.BRAIN_TISSUES).reshape(shape)
    return {"image": noisy.astype(np.float32), "affine": aff, "bias": bias, "brain": brain,
            "tissue": r.tissue.reshape(shape),
            # x_GRE_world = xfm @ x_anat_world for the same anatomical point
            "xfm_to_gre": pose_gre @ np.linalg.inv(pose)}
