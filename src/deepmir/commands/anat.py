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
import os
import time
from pathlib import Path

import numpy as np

from deepmir import niio
from deepmir.errors import InputError


# ------------------------------------------------------------------------------------------
# helpers: reading and checking inputs, the transform text format
# ------------------------------------------------------------------------------------------

def _threads(n) -> None:
    """ITK/ANTs thread count: set before antspyx is first used (it reads the environment)."""
    if n:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(n))
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")


def _load(path, ndim, what):
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what}: file not found")
    try:
        data, affine = niio.load(path)
    except Exception as err:  # nibabel raises many types for unreadable files
        raise InputError(path, f"{what}: not a readable NIfTI ({err.__class__.__name__}: {err})")
    if data.ndim == 4 and ndim == 3 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != ndim:
        raise InputError(path, f"{what}: expected a {ndim}D image, got shape {data.shape}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(path, f"{what}: the affine is singular or not finite")
    if not np.all(np.isfinite(data)):
        raise InputError(path, f"{what}: contains NaN or infinite values")
    if not np.any(data > 0):
        raise InputError(path, f"{what}: no positive intensity")
    vs = np.linalg.norm(affine[:3, :3], axis=0)
    d = affine[:3, :3] / vs
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise InputError(path, f"{what}: the affine has shear, which ANTs cannot represent")
    return data, affine


def _load_gre(mag_path, info_path):
    """(4D magnitude, affine, index of the shortest echo) from the inputs-stage files."""
    mag, affine = _load(mag_path, 4, "4D MEGRE magnitude")
    order = list(range(mag.shape[3]))
    if info_path:
        try:
            info = niio.read_json(info_path)
        except (OSError, ValueError) as err:
            raise InputError(info_path, f"MEGRE.json: unreadable ({err})")
        te = info.get("EchoTime")
        if not isinstance(te, list) or len(te) != mag.shape[3]:
            raise InputError(info_path, f"EchoTime must list {mag.shape[3]} echo times (one per "
                                        f"volume of {mag_path})")
        order = list(np.argsort(np.asarray(te, dtype=float), kind="stable"))
    return mag[..., order], affine


def read_xfm(path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "transform: file not found")
    try:
        m = np.loadtxt(path, ndmin=2)
    except ValueError as err:
        raise InputError(path, f"transform: not a numeric 4×4 text matrix ({err})")
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise InputError(path, f"transform: expected a finite 4×4 matrix, got shape {m.shape}")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
        raise InputError(path, "transform: the last row must be 0 0 0 1")
    return m


def write_xfm(path, m) -> Path:
    """A 4×4 RAS-mm matrix as text (the synthetic truth's format), atomically."""
    return niio.write_text(path, "\n".join(" ".join(f"{v:.9g}" for v in row) for row in np.asarray(m)) + "\n")


def _positive_int(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1: {text!r}")
    return v


def _positive(text):
    v = float(text)
    if not np.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def _nonneg(text):
    v = float(text)
    if not np.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0: {text!r}")
    return v


# ------------------------------------------------------------------------------------------
# the commands
# ------------------------------------------------------------------------------------------

def run_n4(args) -> int:
    _threads(args.threads)
    from deepmir import anat
    image, affine = _load(args.input, 3, "anatomical image")
    t0 = time.time()
    corrected, bias = anat.n4(
        image, affine, mask=None if args.mask == "none" else args.mask,
        shrink_factor=args.shrink_factor,
        convergence={"iters": list(args.iterations), "tol": args.tol},
        spline_distance_mm=None if args.spline_distance == 0 else args.spline_distance,
        crop_mm=None if args.crop_mm < 0 else args.crop_mm)
    print(f"n4 {args.input}: shrink {args.shrink_factor}, iterations {args.iterations}, tol "
          f"{args.tol}, spline distance {args.spline_distance} mm, mask {args.mask}, crop "
          f"{args.crop_mm} mm; bias "
          f"range {np.percentile(bias[image > 0], [1, 99]).round(3).tolist()} "
          f"({time.time() - t0:.1f} s)")
    with niio.together():
        niio.save(args.output, corrected, affine, dtype=np.float32)
        if args.bias:
            niio.save(args.bias, bias, affine, dtype=np.float32)
    return 0


def run_register(args) -> int:
    _threads(args.threads)
    from deepmir import anat
    moving, m_aff = _load(args.moving, 3, "anatomical image")
    mag, g_aff = _load_gre(args.mag, args.info)
    fixed = anat.gre_reference(mag, args.fixed)
    t0 = time.time()
    M = anat.rigid_register(moving, m_aff, fixed, g_aff, metric=args.metric, init=args.init,
                            bins=args.bins, sampling_rate=args.sampling_rate, seed=args.seed,
                            iterations=args.iterations, finest_mm=args.finest_mm)
    order = {"linear": 1, "bspline": 3}[args.interpolation]
    moved = anat.resample_to(moving, m_aff, M, fixed.shape, g_aff, order=order)
    moved = np.clip(moved, 0, None).astype(np.float32)
    rot = np.degrees(np.arccos(np.clip((np.trace(M[:3, :3]) - 1) / 2, -1, 1)))
    print(f"register {args.moving} -> {args.mag} (fixed: {args.fixed} echo reference, metric "
          f"{args.metric}): rotation {rot:.2f} deg, translation "
          f"{np.round(M[:3, 3], 2).tolist()} mm ({time.time() - t0:.1f} s)")
    with niio.together():
        write_xfm(args.xfm, M)
        niio.save(args.output, moved, g_aff, dtype=np.float32)
        if args.qc:
            anat.qc_registration_png(fixed, moved, args.qc, affine=g_aff,
                                     title=args.title or f"{Path(args.moving).name} on MEGRE")
    return 0


def run_brainmask(args) -> int:
    _threads(args.threads)
    from deepmir import anat
    if (args.t1w is None) != (args.xfm is None):
        raise InputError(args.t1w or args.xfm, "--t1w and --xfm go together")
    mag, g_aff = _load_gre(args.mag, args.info)
    ref = anat.gre_reference(mag, "first")
    t1 = None
    if args.t1w is not None:
        t1, t1_aff = _load(args.t1w, 3, "T1w")
        M = read_xfm(args.xfm)
    t0 = time.time()
    info = {"MaskOf": "brain (intracranial: brain and CSF)", "GridOf": str(args.mag)}
    if t1 is not None:
        mask, method, det = anat.brain_mask_from_t1(
            t1, t1_aff, M, ref, g_aff, seed=args.seed, margin_mm=args.margin_mm,
            min_rel_signal=args.min_rel_signal, close_mm=args.close_mm,
            working_mm=args.working_mm, return_details=True)
        info.update(method=method, Sources=[str(args.t1w), str(args.xfm), str(args.mag)],
                    Template="MNI152 ICBM 2009a nonlinear symmetric (nilearn)",
                    TemplateToT1w=det["M_tpl_to_t1"].round(6).tolist(),
                    # x_MEGRE = M @ x_MNI (world mm): the census maps lesions to the atlas with it
                    TemplateToMEGRE=det["M_tpl_to_gre"].round(6).tolist(),
                    margin_mm=args.margin_mm, min_rel_signal=args.min_rel_signal,
                    close_mm=args.close_mm, working_mm=args.working_mm)
    else:
        mask, method = anat.brain_mask_from_magnitude(
            ref, g_aff, smooth_mm=args.smooth_mm, open_mm=args.open_mm,
            close_mm=args.mag_close_mm, threshold_scale=args.threshold_scale)
        info.update(method=method, Sources=[str(args.mag)], smooth_mm=args.smooth_mm,
                    open_mm=args.open_mm, close_mm=args.mag_close_mm,
                    threshold_scale=args.threshold_scale)
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
            anat.qc_mask_png(ref, mask, args.qc, affine=g_aff, title=args.title or method)
    return 0


def register(sub) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("n4", formatter_class=fmt,
                       help="N4 bias-field correction of a T1w/T2w (antspyx; rule anat_n4)")
    p.add_argument("--input", required=True, type=Path, help="raw T1w or T2w NIfTI")
    p.add_argument("--output", required=True, type=Path, help="bias-corrected NIfTI to write")
    p.add_argument("--bias", type=Path, help="also write the estimated bias field here")
    p.add_argument("--shrink-factor", type=_positive_int, default=4,
                   help="N4 shrink factor (ANTs default 4)")
    p.add_argument("--iterations", type=_positive_int, nargs="+", default=[50, 50, 50, 50],
                   help="iterations per fitting level; their number is the number of levels")
    p.add_argument("--tol", type=_nonneg, default=1e-7, help="convergence threshold")
    p.add_argument("--spline-distance", type=_nonneg, default=200.0,
                   help="initial B-spline knot spacing in mm; 0 = one mesh element per axis")
    p.add_argument("--mask", choices=("head", "brain", "none"), default="brain",
                   help="fit the field on the head (Otsu foreground), on the brain (Otsu, "
                        "opening, largest component of the input) or on every voxel")
    p.add_argument("--crop-mm", type=float, default=10.0,
                   help="fit on the mask's bounding box widened by this much (mm; < 0: on "
                        "the whole grid)")
    p.add_argument("--threads", type=_positive_int, default=1, help="ITK threads")
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
    r.add_argument("--fixed", choices=("first", "rss"), default="first",
                   help="fixed image: shortest-echo magnitude or root-sum-of-squares")
    r.add_argument("--metric", choices=("mattes", "mi"), default="mattes",
                   help="mutual information flavour (ANTs Mattes MI or joint-histogram MI)")
    r.add_argument("--bins", type=_positive_int, default=32, help="MI histogram bins")
    r.add_argument("--sampling-rate", type=_positive, default=0.1,
                   help="fraction of voxels sampled by the metric")
    r.add_argument("--iterations", type=_positive_int, nargs=3, default=[1000, 500, 100],
                   help="iterations of the 3 pyramid levels")
    r.add_argument("--finest-mm", type=_positive, default=2.0,
                   help="voxel size (mm) the finest pyramid level works at (shrink factors "
                        "4f, 2f, f with f = floor(finest-mm / GRE voxel), at least 1)")
    r.add_argument("--init", choices=("auto", "identity", "com"), default="auto",
                   help="start: scanner world alignment, centres of mass, or auto")
    r.add_argument("--interpolation", choices=("linear", "bspline"), default="linear",
                   help="resampling onto the MEGRE grid")
    r.add_argument("--seed", type=int, default=42, help="metric sampling seed")
    r.add_argument("--threads", type=_positive_int, default=1, help="ITK threads")
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
    b.add_argument("--margin-mm", type=_nonneg, default=5.0,
                   help="T1w path: widen the template brain mask by this much before refining")
    b.add_argument("--min-rel-signal", type=_nonneg, default=0.3,
                   help="T1w path: drop voxels below this × the median magnitude in the mask")
    b.add_argument("--close-mm", type=_nonneg, default=2.0,
                   help="T1w path: closing radius of the refinement")
    b.add_argument("--working-mm", type=_positive, default=3.0,
                   help="T1w path: voxel size of the template-to-T1w registration")
    b.add_argument("--smooth-mm", type=_nonneg, default=1.0,
                   help="magnitude path: Gaussian FWHM before the Otsu threshold")
    b.add_argument("--open-mm", type=_nonneg, default=3.0,
                   help="magnitude path: opening radius (cuts bridges to the scalp)")
    b.add_argument("--mag-close-mm", type=_nonneg, default=4.0,
                   help="magnitude path: closing radius")
    b.add_argument("--threshold-scale", type=_positive, default=1.0,
                   help="magnitude path: factor on the Otsu threshold")
    b.add_argument("--seed", type=int, default=42, help="registration sampling seed")
    b.add_argument("--threads", type=_positive_int, default=1, help="ITK threads")
    b.set_defaults(func=run_brainmask)
