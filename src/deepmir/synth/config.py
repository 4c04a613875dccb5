"""Settings of the synthetic cohort: presets ``demo`` and ``paper``, overridden key by key by
the user's ``synth`` config section (documented in config/README.md)."""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path

from deepmir.configkeys import unknown_keys

BASE = {
    "seed": 1,
    "n_participants": 4,
    "size_variation": 0.06,          # ± fraction of head size per axis
    "deformation_mm": 2.5,           # amplitude of the smooth random deformation
    "head_tilt_deg": [8.0, 3.0, 3.0],  # max head rotation in the scanner (x, y, z)
    "motion_mm": 3.0,                # max rigid motion of T1w/T2w relative to the GRE series
    "motion_deg": 3.0,
    # multiplicative bias field of T1w/T2w: spans 1 ± this over the head (a number for both,
    # or {T1w: …, T2w: …}); inside the brain that is ≈ ±18 %, BrainWeb's "40 %" RF
    # non-uniformity, the level N3/N4 were validated at and a plain 3 T multichannel head-coil
    # level. Both contrasts get it: the receive profile is the same coil's (at 0.25 on the T1w
    # the true bias explained less than half the phantom's white-matter CV on some
    # participants, so no correction could reach the "CV falls by half" check)
    "bias_strength": 0.5,
    "shim_ppm": 0.1,                 # std of the 2nd-order shim residual coefficients
    "pad_factor": 1.5,               # zero padding of the dipole convolution
    "sim_extent_mm": 230,            # simulated extent along the slice axis (whole head)
    "gre": {
        "matrix": [128, 160, 72], "voxel_size": [1.5, 1.5, 2.25], "oversample": [2, 2, 2],
        "orientation": "RAS", "oblique_deg": 0.0,
        "echo_times": [0.0075, 0.015, 0.0225, 0.03], "field_strength": 3.0, "snr": 40.0,
        "phase_sign": 1, "phase_encoding": "radians",
    },
    "anat": {"voxel_size": 1.5, "fov_mm": [176, 224, 200], "orientation": "RAS", "noise": 0.015},
    # what real tissue adds to the GRE beyond piecewise-constant scalar χ (docs/qsm.md)
    "tissue": {
        "texture": True,             # χ texture inside every structure (synth/tissue.py)
        "veins": True,               # dural sinuses, deep, pial and medullary veins
        "anisotropy_ppm": 0.012,     # white-matter χ anisotropy χ∥ − χ⊥ (tensor field)
        "microstructure_ppm": 0.005,  # white-matter frequency offset ε (sin²θ − 2/3)
        "coil_contrast": 0.8,        # receive profile of a head array (0: uniform SNR)
    },
    "lesions": {
        # [min, max, weight]: a bin is drawn by weight, then a count uniformly in [min, max]
        "cmb_count_bins": [[0, 0, 4], [1, 2, 13], [3, 8, 6], [120, 120, 1]],
        "cmb_region_weights": {"lobar": 0.7, "deep": 0.2, "infratentorial": 0.1},
        "cmb_median_diameter_mm": 2.6,
        "cmb_diameter_range_mm": [2.0, 10.0],   # a microbleed's definition (Greenberg 2009)
        "iron_count_bins": [[0, 0, 5], [1, 4, 19]],
        "iron_bilateral_prob": 0.6,
        "vein_count_bins": [[3, 6, 1]],
        "calcification_count_bins": [[0, 0, 1], [1, 2, 1]],
        "epvs_count_bins": [[3, 8, 1]],
    },
}

PRESETS = {
    # the demo is small, so each participant carries several lesions of each kind and their
    # mimics: a fold of the demo learns from a few dozen microbleeds, not from three. Its grid
    # is coarse (5.1 mm³ voxels, the study's 1.5 mm³): microbleeds drawn at a median 3.4 mm keep
    # the study's size in voxels (mean 6.3 mm³ ≈ 4 voxels, method.md §1) instead of shrinking
    # to 1–2-voxel specks that a rater would not see on SWI either. The lower bound of the
    # size range scales with the median (2 mm × 3.4 / 2.6): clipped at 2 mm, 6 of seed 1's 43
    # microbleeds were one-voxel specks of 4–8 mm³ on this grid, two with no dark spot on SWI
    "demo": {
        "lesions": {
            "cmb_median_diameter_mm": 3.4,
            "cmb_diameter_range_mm": [2.6, 10.0],
            "cmb_count_bins": [[5, 10, 1]],
            "iron_count_bins": [[2, 4, 1]],
            "calcification_count_bins": [[1, 3, 1]],
        },
    },
    "paper": {
        "n_participants": 24,
        "gre": {"matrix": [192, 256, 112], "voxel_size": [1.0, 1.0, 1.5], "oversample": [1, 1, 2]},
        "anat": {"voxel_size": 1.0},
    },
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _key_tree(d: dict) -> dict:
    """The keys of a settings dict, nested (a leaf → None), for :func:`unknown_keys`."""
    return {k: _key_tree(v) if isinstance(v, dict) else None for k, v in d.items()}


def settings(user: dict | None = None) -> dict:
    """The full settings: BASE, then the preset named by ``scale`` (default demo), then user."""
    user = dict(user or {})
    scale = user.pop("scale", "demo")
    if scale not in PRESETS:
        raise ValueError(f"synth.scale must be one of {sorted(PRESETS)}, got {scale!r}")
    bad = unknown_keys(user, _key_tree(BASE), ("synth",))
    if bad:
        raise ValueError(bad[0])
    out = merge(merge(BASE, PRESETS[scale]), user)
    rng = out["lesions"]["cmb_diameter_range_mm"]
    if not (isinstance(rng, (list, tuple)) and len(rng) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng)
            and 0 < rng[0] <= rng[1]):
        raise ValueError(f"config synth.lesions.cmb_diameter_range_mm: must be [min, max] in mm "
                         f"with 0 < min ≤ max, got {rng!r}")
    return out


# the modules a synthetic participant is a function of (besides the settings and the seed)
CODE_FILES = ("synth/*.py", "atlas/head.py", "atlas/regions.py", "dipole.py", "niio.py", "__init__.py")
# what the MNI atlas / head-model file (`deepmir atlas`) is built by
ATLAS_CODE_FILES = ("atlas/head.py", "atlas/regions.py")


def code_digest(root: Path | None = None, files=CODE_FILES) -> str:
    """A short hash of the source files that determine a synthetic participant (``files``:
    glob patterns under the package; ``ATLAS_CODE_FILES`` for the atlas file). The workflow
    passes it as a parameter of the synth and atlas rules, so that what an older version of
    this code made is made again instead of being silently kept."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    h = hashlib.sha1()
    for pattern in files:
        found = sorted(root.glob(pattern))
        if not found:       # a moved or renamed module must not silently leave the digest
            raise FileNotFoundError(f"code_digest: no source file matches {pattern!r} under {root}")
        for f in found:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]
