"""``deepmir qsm`` (dipole inversion of an external local field), ``deepmir qsm-run`` (the
whole multi-echo chain of the ``qsm`` rule) and ``deepmir swi`` (the ``swi`` rule)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from deepmir import niio
from deepmir.errors import InputError

FIELD_UNITS = ("ppm", "hz", "rad")


# ------------------------------------------------------------------------- input helpers
def _load(path, what):
    p = niio.regular_file(path, what)
    try:
        data, aff = niio.load(p)
    except Exception as err:  # nibabel raises many kinds
        raise InputError(path, f"cannot read {what} as NIfTI ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})")
    if not np.all(np.isfinite(aff)):
        raise InputError(path, f"{what} has a non-finite affine")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-9:
        raise InputError(path, f"{what} has a singular affine (zero voxel size or no orientation)")
    return data, aff


def _check_options(outputs=(), positive=(), nonnegative=()):
    """Refuse, before any work, an output that is not NIfTI and numbers out of range (each
    given as (option, value); None: not given)."""
    for option, path in outputs:
        if path and not str(path).endswith(niio.NIFTI_EXTENSIONS):
            raise InputError(path, f"{option} must end in .nii or .nii.gz")
    for options, need, ok in ((positive, "positive", lambda v: v > 0),
                              (nonnegative, "0 or more", lambda v: v >= 0)):
        for option, v in options:
            if v is not None and not (np.isfinite(v) and ok(v)):
                raise InputError(option, f"must be finite and {need}, got {v}")


def _given(args, *names):
    """(--option, value) of argparse destinations."""
    return tuple((f"--{k.replace('_', '-')}", getattr(args, k)) for k in names)


def _need_ndim(arr, path, what, ndims):
    if arr.ndim not in ndims:
        raise InputError(path, f"{what} must be {' or '.join(f'{n}D' for n in ndims)}, "
                               f"got shape {tuple(arr.shape)}")


def _same_grid(a_shape, a_aff, b_shape, b_aff, path, what):
    if tuple(a_shape[:3]) != tuple(b_shape[:3]):
        raise InputError(path, f"{what} shape {tuple(b_shape[:3])} differs from "
                               f"{tuple(a_shape[:3])}")
    if not np.allclose(a_aff, b_aff, atol=1e-3):
        raise InputError(path, f"{what} is not on the same grid (affines differ)")


def _load_mask(path, ref_shape, ref_aff):
    m, aff = _load(path, "mask")
    _need_ndim(m, path, "the mask", (3,))
    _same_grid(ref_shape, ref_aff, m.shape, aff, path, "mask")
    m = np.nan_to_num(m) > 0.5
    if not m.any():
        raise InputError(path, "the mask is empty")
    return m


RUN_TIMES = ("medi_seconds", "medi_cpu_seconds")   # in the log, not in the sidecar


def _write_all(outputs, sidecars=()):
    """Write every (path, array, affine) and (path, dict) JSON sidecar only after all were
    computed (nothing is written when any step fails). Sidecars leave out the run's wall and
    CPU times: the same inputs and settings give byte-identical outputs (a rerun, a resume
    after a kill); the times are printed to the log."""
    with niio.together():
        for path, arr, aff in outputs:
            if path:
                niio.save(path, arr, aff)
        for path, obj in sidecars:
            if path:
                niio.write_json(path, {k: v for k, v in obj.items() if k not in RUN_TIMES})


def _lambda_arg(text):
    """--lambda: "auto" (the L-curve rule) or a positive number (MEDI units)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return float(text)      # its range is checked with the other options (one line, exit 2)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a positive number, got {text!r}")


def _lambda_option(value, option="--lambda"):
    """(option, value) for :func:`_check_options` when --lambda is a number."""
    return () if value is None or value == "auto" else ((option, value),)


def _print_lambda(info, prefix):
    if "lambda" in info:
        how = ("L-curve rule: CFL2 corner α {cfl2_alpha_mm2:.3g} mm², gradient scale "
               "{cfl2_gradient_ppm_per_mm:.3g} ppm/mm, factor {lambda_factor:g}".format(**info)
               if info.get("lambda_rule") == "lcurve" else "fixed")
        print(f"{prefix}: MEDI λ = {info['lambda']:.4g} (toolbox units; {info['lambda_ppm']:.4g}"
              f" per ppm·mm, independent of TE and B0), {how}", file=sys.stderr)


# ------------------------------------------------------------------------- qsm (external)
def run_qsm(args) -> int:
    import torch

    from deepmir.device import pick_device
    from deepmir.dipole import b0_direction, voxel_sizes
    from deepmir.qsm.pipeline import hz_per_ppm, invert
    from deepmir.qsm.weights import noise_from_magnitude

    torch.set_num_threads(max(int(args.threads), 1))
    _check_options(outputs=_given(args, "output"), nonnegative=_given(args, "smv_radius"),
                   positive=_given(args, "b0", "te", "tkd_threshold") + _lambda_option(args.lam))
    if args.te > 1:
        raise InputError("--te", f"echo time is in seconds, got {args.te} (ms?)")
    for opt, v in (("--edge-mm", args.edge_mm), ("--missing-weight", args.missing_weight),
                   ("--missing-min-mm3", args.missing_min_mm3)):
        if not (np.isfinite(v) and v >= 0):
            raise InputError(opt, f"must be a non-negative number, got {v}")
    if not args.lambda_factor > 0:
        raise InputError("--lambda-factor", f"must be positive, got {args.lambda_factor}")
    field, aff = _load(args.field, "field")
    if field.ndim == 4 and field.shape[3] == 1:
        field = field[..., 0]
    _need_ndim(field, args.field, "the field", (3,))
    mask = _load_mask(args.mask, field.shape, aff)
    bad = ~np.isfinite(field) & mask
    if bad.any():
        raise InputError(args.field, f"{int(bad.sum())} non-finite values inside the mask")
    if args.field_unit == "ppm":
        f_ppm = field
    elif args.field_unit == "hz":
        f_ppm = field / hz_per_ppm(args.b0)
    else:
        f_ppm = field / (2 * np.pi * hz_per_ppm(args.b0) * args.te)
    f_ppm = np.where(mask, np.nan_to_num(f_ppm) * args.field_sign, 0).astype(np.float32)
    mag = noise = csf = None
    weights = "uniform"
    if args.magnitude:
        mag, maff = _load(args.magnitude, "magnitude")
        _need_ndim(mag, args.magnitude, "the magnitude", (3, 4))
        _same_grid(field.shape, aff, mag.shape, maff, args.magnitude, "magnitude")
        mag = np.nan_to_num(np.sqrt((mag ** 2).sum(-1)) if mag.ndim == 4 else np.abs(mag))
        noise, weights = noise_from_magnitude(mag, mask), "magnitude"
    if args.noise_std:
        noise, naff = _load(args.noise_std, "noise map")
        _need_ndim(noise, args.noise_std, "the noise map", (3,))
        _same_grid(field.shape, aff, noise.shape, naff, args.noise_std, "noise map")
        bad = mask & ~(np.isfinite(noise) & (noise > 0))
        if bad.any():
            raise InputError(args.noise_std, f"{int(bad.sum())} voxels of the mask have no "
                                             "positive finite noise")
        weights = "noise map"
    if args.csf_mask:
        csf = _load_mask(args.csf_mask, field.shape, aff) & mask
    params = {"inversion": args.method, "lambda": args.lam, "lambda_factor": args.lambda_factor,
              "merit": args.merit, "smv": args.smv_radius > 0,
              "smv_radius_mm": args.smv_radius if args.smv_radius > 0 else 5.0,
              "tkd_threshold": args.tkd_threshold, "edge_mm": args.edge_mm,
              "missing_weight": args.missing_weight, "missing_min_mm3": args.missing_min_mm3}
    dev = pick_device(args.device)
    try:
        res = invert(f_ppm, mask, voxel_sizes(aff), b0_direction(aff), magnitude=mag,
                     noise_std=noise, csf_mask=csf, b0_tesla=args.b0, delta_te=args.te,
                     params=params, device=dev)
    except ValueError as err:
        raise InputError(args.field, str(err))
    info = dict(res["info"], weights=weights, field_unit=args.field_unit, echo_time=args.te,
                field_strength=args.b0, edge_mm=args.edge_mm,
                missing_weight=args.missing_weight, missing_min_mm3=args.missing_min_mm3,
                csf_reference=csf is not None,
                unit="ppm")
    side = niio.sidecar_path(args.output)
    _write_all([(args.output, res["chi"], aff)], [(side, info)])
    _print_lambda(info, "deepmir qsm")
    msg = args.method
    if args.method == "medi":
        msg = (f"medi: {info['medi_iterations']} Gauss-Newton steps, CG {info['medi_cg']}, "
               f"{info['medi_seconds']:.1f} s")
    print(f"deepmir qsm: {msg} on {dev}; wrote {args.output} and {side.name}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------- qsm-run
def _read_meta(path):
    meta = niio.read_json(path, "sidecar JSON")
    for key in ("EchoTime", "MagneticFieldStrength"):
        if key not in meta:
            raise InputError(path, f"missing {key}")
    te = np.asarray(meta["EchoTime"], float).reshape(-1)
    if te.size < 1 or not np.all(np.isfinite(te)) or np.any(te <= 0):
        raise InputError(path, f"EchoTime must be positive seconds, got {meta['EchoTime']}")
    if np.any(te > 1):
        raise InputError(path, f"EchoTime must be in seconds, got {meta['EchoTime']}")
    b0 = float(meta["MagneticFieldStrength"])
    if not b0 > 0:
        raise InputError(path, f"MagneticFieldStrength must be positive, got {b0}")
    sign = int(meta.get("PhaseSign", 1))
    if sign not in (1, -1):
        raise InputError(path, f"PhaseSign must be 1 or -1, got {meta.get('PhaseSign')}")
    return te, b0, sign, meta.get("B0_dir")


def _load_echoes(args, n_te):
    mag, aff = _load(args.mag, "magnitude")
    phase, paff = _load(args.phase, "phase")
    for arr, path, what in ((mag, args.mag, "magnitude"), (phase, args.phase, "phase")):
        if arr.ndim == 3:
            continue
        _need_ndim(arr, path, f"the {what}", (3, 4))
    if mag.ndim == 3:
        mag, phase = mag[..., None], phase[..., None]
    if mag.shape != phase.shape:
        raise InputError(args.phase, f"phase shape {phase.shape} differs from magnitude "
                                     f"{mag.shape}")
    _same_grid(mag.shape, aff, phase.shape, paff, args.phase, "phase")
    if mag.shape[3] != n_te:
        raise InputError(args.json, f"{n_te} echo times for {mag.shape[3]} echoes")
    return mag, phase, aff


def _b0dir(meta_dir, aff):
    from deepmir.dipole import b0_direction

    if meta_dir is not None:
        b = np.asarray(meta_dir, float).reshape(-1)
        if b.size == 3 and np.all(np.isfinite(b)) and np.linalg.norm(b) > 0:
            return b / np.linalg.norm(b)
    return b0_direction(aff)


def _qc_png(path, panels, title):
    """A row of central slices (axial, coronal, sagittal) for each named panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 3, figsize=(9, 3 * len(panels)), squeeze=False)
    for row, (name, arr, vmin, vmax, cmap) in enumerate(panels):
        c = [s // 2 for s in arr.shape]
        views = [arr[:, :, c[2]], arr[:, c[1], :], arr[c[0], :, :]]
        for col, v in enumerate(views):
            ax = axes[row, col]
            im = ax.imshow(np.rot90(v), vmin=vmin, vmax=vmax, cmap=cmap)
            ax.axis("off")
        axes[row, 0].set_title(name, loc="left", fontsize=9)
        fig.colorbar(im, ax=axes[row, 2], fraction=0.046)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        niio.write_png(path, fig, dpi=80)
    finally:
        plt.close(fig)


def run_qsm_run(args) -> int:
    import torch

    from deepmir.dipole import voxel_sizes
    from deepmir.qsm.pipeline import DEFAULTS, reconstruct

    torch.set_num_threads(max(int(args.threads), 1))
    _check_options(outputs=_given(args, "chi", "r2s", "field", "chi_tkd", "chi_cfl2", "total_field"),
                   positive=_given(args, "tkd_threshold", "pdf_tol", "vsharp_max_radius_mm", "smv_radius_mm")
                   + _lambda_option(getattr(args, "lambda")),
                   nonnegative=_given(args, "lambda_csf", "csf_r2s_threshold", "mask_erode_mm"))
    te, b0, sign, meta_dir = _read_meta(args.json)
    mag, phase, aff = _load_echoes(args, te.size)
    if te.size < 2:
        raise InputError(args.json, "QSM needs at least two echoes")
    if not np.all(np.diff(te) > 0):
        raise InputError(args.json, f"EchoTime must increase, got {te.tolist()}")
    mask = _load_mask(args.mask, mag.shape, aff)
    params = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None}
    try:
        res = reconstruct(mag, phase, te, mask, voxel_sizes(aff), _b0dir(meta_dir, aff), b0,
                          sign, params=params, device=args.device,
                          log=lambda s: print(s, file=sys.stderr))
    except ValueError as err:
        raise InputError(args.mag, str(err))
    outs = [(args.chi, res["chi"], aff), (args.r2s, res["r2s"], aff),
            (args.field, res["local_field"], aff), (args.chi_tkd, res["chi_tkd"], aff),
            (args.chi_cfl2, res["chi_cfl2"], aff)]
    if args.total_field:
        outs.append((args.total_field, res["total_field"], aff))
    info = dict(res["info"], echo_spacing=res["delta_te"], field_strength=b0, unit="ppm",
                settings={k: params.get(k, DEFAULTS[k]) for k in DEFAULTS})
    with niio.together():
        _write_all(outs, [(niio.sidecar_path(args.chi), info)])
        if args.qc:
            chi = res["chi"]
            r = np.percentile(np.abs(chi[res["mask"]]), 99) if res["mask"].any() else 0.2
            f = res["local_field"]
            fr = np.percentile(np.abs(f[res["mask"]]), 99) if res["mask"].any() else 0.05
            _qc_png(args.qc, [("χ (ppm)", chi, -r, r, "gray"),
                              ("local field (ppm)", f, -fr, fr, "gray"),
                              ("R2* (1/s)", res["r2s"], 0, 80, "magma")],
                    f"QSM {Path(args.chi).name}")
    _print_lambda(info, "deepmir qsm-run")
    return 0


# ------------------------------------------------------------------------- swi
def run_swi(args) -> int:
    import torch

    from deepmir.swi import minip, swi

    torch.set_num_threads(max(int(args.threads), 1))
    _check_options(outputs=_given(args, "output", "minip"))
    te, b0, sign, meta_dir = _read_meta(args.json)
    mag, phase, aff = _load_echoes(args, te.size)
    k = int(np.argmin(te))
    b0dir = _b0dir(meta_dir, aff)
    if args.window < 2:
        raise InputError("--window", f"window must be ≥ 2 k-space lines, got {args.window}")
    res = swi(mag[..., k], phase[..., k], b0dir, sign, (args.window, args.window), args.power,
              device=args.device)
    out = res["swi"]
    if args.mask:
        m = _load_mask(args.mask, mag.shape, aff)
        out = out * m
    mip = minip(out, b0dir, args.minip_slices)
    with niio.together():
        _write_all([(args.output, out, aff), (args.minip, mip, aff)])
        if args.qc:
            hi = np.percentile(out, 99.5)
            _qc_png(args.qc, [("magnitude (echo 1)", mag[..., k], 0, hi, "gray"),
                              ("SWI", out, 0, hi, "gray"), ("minIP", mip, 0, hi, "gray")],
                    f"SWI {Path(args.output).name}")
    return 0


# ------------------------------------------------------------------------- registration
def _common(p):
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")


def _inversion_opts(p, workflow: bool):
    """The dipole-inversion options shared by ``qsm`` and ``qsm-run`` (defaults: ``qsm``
    shows the pipeline's; ``qsm-run`` leaves them unset so the workflow's config decides)."""
    from deepmir.qsm.defaults import DEFAULTS as D

    d = (lambda k: None) if workflow else (lambda k: D[k])
    p.add_argument("--lambda", dest="lam" if not workflow else "lambda", type=_lambda_arg,
                   default=d("lambda"),
                   help="MEDI data-term weight (toolbox units) or auto: chosen per dataset at "
                        "the L-curve corner of the closed-form L2 inversion (docs/qsm.md; "
                        f"default {D['lambda']})")
    p.add_argument("--lambda-factor", dest="lambda_factor", type=float,
                   default=d("lambda_factor"),
                   help=f"factor κ of the auto rule (default {D['lambda_factor']})")
    p.add_argument("--smv-radius" if not workflow else "--smv-radius-mm",
                   dest="smv_radius" if not workflow else "smv_radius_mm", type=float,
                   default=0.0 if not workflow else None,
                   help="MEDI 'smv' option: SMV radius in mm (0: off; default off)")
    p.add_argument("--merit", action=argparse.BooleanOptionalAction,
                   default=None if workflow else D["merit"],
                   help="MEDI 'merit' option: down-weight voxels with a large residual "
                        f"(default {'on' if D['merit'] else 'off'})")
    p.add_argument("--tkd-threshold", dest="tkd_threshold", type=float,
                   default=d("tkd_threshold"), help="TKD truncation of |D| (default 0.19)")
    p.add_argument("--edge-mm", dest="edge_mm", type=float, default=d("edge_mm"),
                   help="data weights fall as (distance to the mask edge / this)² inside this "
                        f"distance (mm; 0: off; default {D['edge_mm']})")
    p.add_argument("--missing-weight", dest="missing_weight", type=float,
                   default=d("missing_weight"),
                   help="regions whose normalised data weight is below this (touching the "
                        "mask edge, or --missing-min-mm3 large) are missing data (MEDI fills "
                        f"them in; default {D['missing_weight']})")
    p.add_argument("--missing-min-mm3", dest="missing_min_mm3", type=float,
                   default=d("missing_min_mm3"),
                   help=f"see --missing-weight (default {D['missing_min_mm3']:g})")


def register(sub):
    p = sub.add_parser("qsm", help="dipole inversion of an external local field (MEDI-L1/TKD)",
                       description="Dipole inversion of a local field computed by another tool. "
                       "Voxel size and B0 direction (scanner z) come from the field's header.")
    p.add_argument("--field", required=True,
                   help="local field NIfTI (3D), background already removed; physical sign: "
                        "a paramagnetic source raises the field along B0 (else --field-sign -1)")
    p.add_argument("--field-unit", required=True, choices=FIELD_UNITS,
                   help="ppm, hz, or rad (phase accumulated over --te)")
    p.add_argument("--mask", required=True, help="brain mask NIfTI on the same grid")
    p.add_argument("--magnitude",
                   help="magnitude NIfTI (3D or 4D echoes): MEDI's edge mask, and the data "
                        "weights (noise ∝ 1/magnitude) when there is no --noise-std")
    p.add_argument("--noise-std", dest="noise_std",
                   help="noise map of the field NIfTI (any unit; e.g. the multi-echo fit's): "
                        "the data weights are 1/noise")
    p.add_argument("--csf-mask", dest="csf_mask",
                   help="CSF mask NIfTI: MEDI+0 (χ regularised to be uniform there and "
                        "referenced to its mean)")
    p.add_argument("--b0", type=float, default=3.0, help="field strength in T (default 3)")
    p.add_argument("--te", type=float, default=0.025,
                   help="echo time / spacing in s: the rad unit, and MEDI's ΔTE (default 0.025)")
    p.add_argument("--field-sign", type=int, choices=(1, -1), default=1,
                   help="multiply the field by this first (-1 for tools with the opposite sign)")
    p.add_argument("--method", choices=("medi", "tkd", "cfl2"), default="medi",
                   help="medi (default), tkd, or cfl2 (closed-form L2 at its L-curve corner)")
    _inversion_opts(p, workflow=False)
    p.add_argument("--output", required=True,
                   help="χ map to write (ppm, paramagnetic > 0); its JSON sidecar (same name, "
                        ".json) records λ and how it was chosen")
    _common(p)
    p.set_defaults(func=run_qsm)

    r = sub.add_parser("qsm-run", help="multi-echo GRE → χ, R2*, local field (rule qsm)")
    r.add_argument("--mag", required=True)
    r.add_argument("--phase", required=True, help="wrapped phase in radians (4D)")
    r.add_argument("--json", required=True, help="MEGRE.json of the inputs stage")
    r.add_argument("--mask", required=True)
    r.add_argument("--chi", required=True,
                   help="χ output; its JSON sidecar records λ, iterations and the settings")
    r.add_argument("--r2s", required=True)
    r.add_argument("--field", required=True, help="local field output (ppm)")
    r.add_argument("--total-field", help="optional: unwrapped total field output (ppm)")
    r.add_argument("--chi-tkd", dest="chi_tkd",
                   help="optional: TKD susceptibility map of the same local field (ppm)")
    r.add_argument("--chi-cfl2", dest="chi_cfl2",
                   help="optional: closed-form L2 map of the same local field (ppm)")
    r.add_argument("--qc", help="optional QC PNG")
    r.add_argument("--unwrap", choices=("laplacian", "laplacian_weighted", "region_growing"))
    r.add_argument("--background", choices=("pdf", "vsharp"))
    r.add_argument("--inversion", choices=("medi", "tkd", "cfl2"))
    _inversion_opts(r, workflow=True)
    r.add_argument("--smv", action=argparse.BooleanOptionalAction, default=None)
    r.add_argument("--csf", action=argparse.BooleanOptionalAction, default=None,
                   help="MEDI+0 (CSF regularisation and referencing)")
    r.add_argument("--lambda-csf", dest="lambda_csf", type=float)
    r.add_argument("--residual-weighting", dest="residual_weighting",
                   action=argparse.BooleanOptionalAction, default=None,
                   help="inflate the noise map by the echo-fit residual (default on)")
    r.add_argument("--csf-r2s-threshold", dest="csf_r2s_threshold", type=float)
    r.add_argument("--mask-erode-mm", dest="mask_erode_mm", type=float,
                   help="erode the brain mask by this radius (mm) for background removal and "
                        "dipole inversion (default 0)")
    r.add_argument("--pdf-tol", dest="pdf_tol", type=float)
    r.add_argument("--pdf-max-iter", dest="pdf_max_iter", type=int)
    r.add_argument("--vsharp-max-radius-mm", dest="vsharp_max_radius_mm", type=float)
    r.add_argument("--medi-max-iter", dest="medi_max_iter", type=int)
    r.add_argument("--medi-cg-max-iter", dest="medi_cg_max_iter", type=int)
    r.add_argument("--medi-precondition", dest="medi_precondition",
                   action=argparse.BooleanOptionalAction, default=None,
                   help="k-space preconditioned CG in MEDI (default on)")
    _common(r)
    r.set_defaults(func=run_qsm_run)

    s = sub.add_parser("swi", help="SWI and its minIP from the shortest echo (rule swi)")
    s.add_argument("--mag", required=True)
    s.add_argument("--phase", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--mask", help="optional brain mask applied to the SWI")
    s.add_argument("--output", required=True)
    s.add_argument("--minip", required=True)
    s.add_argument("--qc")
    s.add_argument("--window", type=int, default=64, help="homodyne k-space window (default 64)")
    s.add_argument("--power", type=int, default=4, help="phase-mask power (default 4)")
    s.add_argument("--minip-slices", dest="minip_slices", type=int, default=4)
    _common(s)
    s.set_defaults(func=run_swi)
