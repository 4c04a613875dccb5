"""``deepmir n4``, ``deepmir register`` and ``deepmir brainmask``: the anatomical stage
(method.md §2) — N4 bias correction of a T1w/T2w, its rigid registration onto the MEGRE grid
(transform as a 4×4 RAS-mm text matrix, x_MEGRE = M @ x_anat, plus the image resampled on the
MEGRE grid and a QC figure), and the brain mask on the MEGRE grid (MNI152 template through
the T1w when there is one, the GRE magnitude alone otherwise; method in a JSON sidecar).

Every input is read and checked before anything is computed; a bad input raises
:class:`deepmir.errors.InputError` and nothing is written.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from deepmir import niio, settings
from deepmir.errors import InputError


def _positive_int(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1: {text!r}")
    return v


def run_n4(args) -> int:
    from deepmir.anat.ants import set_threads

    set_threads(args.threads)
    p = settings.read("anat", args.config_json)["n4"]
    from deepmir import anat
    from deepmir.anat.ants import load_for_ants
    image, affine = load_for_ants(args.input, 3, "anatomical image")
    t0 = time.time()
    corrected, bias = anat.n4(
        image, affine, mask=None if p["mask"] == "none" else p["mask"],
        shrink_factor=p["shrink_factor"], convergence={"iters": list(p["iterations"]), "tol": p["tol"]},
        spline_distance_mm=None if p["spline_distance_mm"] == 0 else p["spline_distance_mm"],
        crop_mm=None if p["crop_mm"] < 0 else p["crop_mm"])
    print(f"n4 {args.input}: {p}; bias "
          f"range {np.percentile(bias[image > 0], [1, 99]).round(3).tolist()} "
          f"({time.time() - t0:.1f} s)")
    with niio.together():
        niio.save(args.output, corrected, affine, dtype=np.float32)
        if args.bias:
            niio.save(args.bias, bias, affine, dtype=np.float32)
    return 0


def run_register(args) -> int:
    from deepmir.anat.ants import set_threads

    set_threads(args.threads)
    p = settings.read("anat", args.config_json)["registration"]
    from deepmir import anat, qc
    from deepmir.anat.ants import load_for_ants, load_gre
    moving, m_aff = load_for_ants(args.moving, 3, "anatomical image")
    mag, g_aff = load_gre(args.mag, args.info)
    fixed = anat.gre_reference(mag, p["fixed"])
    t0 = time.time()
    M = anat.rigid_register(moving, m_aff, fixed, g_aff, metric=p["metric"], init=p["init"],
                            bins=p["bins"], sampling_rate=p["sampling_rate"], seed=p["seed"],
                            iterations=p["iterations"], finest_mm=p["finest_mm"])
    order = {"linear": 1, "bspline": 3}[p["interpolation"]]
    moved = anat.resample_to(moving, m_aff, M, fixed.shape, g_aff, order=order)
    moved = np.clip(moved, 0, None).astype(np.float32)
    rot = np.degrees(np.arccos(np.clip((np.trace(M[:3, :3]) - 1) / 2, -1, 1)))
    print(f"register {args.moving} -> {args.mag} (fixed: {p['fixed']} echo reference, metric "
          f"{p['metric']}): rotation {rot:.2f} deg, translation "
          f"{np.round(M[:3, 3], 2).tolist()} mm ({time.time() - t0:.1f} s)")
    with niio.together():
        niio.write_matrix(args.xfm, M)
        niio.save(args.output, moved, g_aff, dtype=np.float32)
        if args.qc:
            qc.qc_registration_png(fixed, moved, args.qc, affine=g_aff,
                                     title=args.title or f"{Path(args.moving).name} on MEGRE")
    return 0


def run_brainmask(args) -> int:
    from deepmir.anat.ants import set_threads

    set_threads(args.threads)
    cfg = settings.read("anat", args.config_json)
    b, seed = cfg["brain_mask"], cfg["registration"]["seed"]
    from deepmir import anat, qc
    from deepmir.anat.ants import load_for_ants, load_gre
    if (args.t1w is None) != (args.xfm is None):
        raise InputError(args.t1w or args.xfm, "--t1w and --xfm go together")
    mag, g_aff = load_gre(args.mag, args.info)
    ref = anat.gre_reference(mag, "first")
    t1 = None
    if args.t1w is not None:
        t1, t1_aff = load_for_ants(args.t1w, 3, "T1w")
        M = niio.read_matrix(args.xfm)
    t0 = time.time()
    mask, method, desc = anat.brain_mask(ref, g_aff, b, seed, *((t1, t1_aff, M) if t1 is not None else ()))
    sources = [str(args.t1w), str(args.xfm), str(args.mag)] if t1 is not None else [str(args.mag)]
    info = {"MaskOf": "brain (intracranial: brain and CSF)", "GridOf": str(args.mag), "method": method,
            "Sources": sources, **desc}
    if not mask.any():
        raise InputError(args.mag, "the brain mask came out empty (no signal?)")
    vol = float(mask.sum() * abs(np.linalg.det(g_aff[:3, :3])) / 1000.0)
    info.update(n_voxels=int(mask.sum()), volume_ml=round(vol, 2))
    print(f"brainmask {args.mag}: method {method}, {int(mask.sum())} voxels, {vol:.0f} ml "
          f"({time.time() - t0:.1f} s)")
    with niio.together():
        niio.save(args.output, mask, g_aff, dtype=np.uint8)
        niio.write_json(args.json, info)
        if args.qc:
            qc.qc_mask_png(ref, mask, args.qc, affine=g_aff, title=args.title or method)
    return 0


def register(sub) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("n4", formatter_class=fmt,
                       help="N4 bias-field correction of a T1w/T2w (antspyx; rule anat_n4)")
    p.add_argument("--input", required=True, type=Path, help="raw T1w or T2w NIfTI")
    p.add_argument("--output", required=True, type=Path, help="bias-corrected NIfTI to write")
    p.add_argument("--bias", type=Path, help="also write the estimated bias field here")
    p.add_argument("--threads", type=_positive_int, default=1, help="ITK threads")
    settings.add_option(p, "anat")
    p.set_defaults(func=run_n4)

    r = sub.add_parser("register", formatter_class=fmt,
                       help="rigid MI registration of a T1w/T2w onto the MEGRE grid "
                            "(rule anat_register)")
    r.add_argument("--moving", required=True, type=Path, help="(bias-corrected) T1w or T2w")
    r.add_argument("--mag", required=True, type=Path, help="4D MEGRE magnitude (inputs stage)")
    r.add_argument("--info", type=Path, help="MEGRE.json (EchoTime orders the echoes)")
    r.add_argument("--xfm", required=True, type=Path,
                   help="4×4 RAS-mm text matrix to write, x_MEGRE = M @ x_anat")
    r.add_argument("--output", required=True, type=Path,
                   help="the moving image resampled on the MEGRE grid")
    r.add_argument("--qc", type=Path, help="QC PNG: moved-image edges over the GRE magnitude")
    r.add_argument("--title", help="QC figure title")
    r.add_argument("--threads", type=_positive_int, default=1, help="ITK threads")
    settings.add_option(r, "anat")
    r.set_defaults(func=run_register)

    b = sub.add_parser("brainmask", formatter_class=fmt,
                       help="brain mask on the MEGRE grid (rule anat_brainmask)")
    b.add_argument("--mag", required=True, type=Path, help="4D MEGRE magnitude (inputs stage)")
    b.add_argument("--info", type=Path, help="MEGRE.json (EchoTime orders the echoes)")
    b.add_argument("--t1w", type=Path, help="bias-corrected T1w (omit: magnitude-only mask)")
    b.add_argument("--xfm", type=Path, help="from-T1w_to-MEGRE 4×4 matrix (with --t1w)")
    b.add_argument("--output", required=True, type=Path, help="mask NIfTI (uint8) to write")
    b.add_argument("--json", required=True, type=Path, help="sidecar recording the method")
    b.add_argument("--qc", type=Path, help="QC PNG: mask contour over the GRE magnitude")
    b.add_argument("--title", help="QC figure title")
    b.add_argument("--threads", type=_positive_int, default=1, help="ITK threads")
    settings.add_option(b, "anat")
    b.set_defaults(func=run_brainmask)
