"""``deepmir qsm`` (dipole inversion of an external local field, run by hand) and ``deepmir
qsm-run`` (the whole multi-echo chain of the ``qsm`` rule, settings from the config's ``qsm``
section)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from deepmir import niio, settings
from deepmir.errors import InputError
from deepmir.qsm import megre

FIELD_UNITS = ("ppm", "hz", "rad")


def _check_options(outputs=(), positive=(), nonnegative=()):
    """Refuse, before any work, an output that is not NIfTI and numbers out of range (each
    given as (option, value); None: not given)."""
    for option, path in outputs:
        niio.check_nifti_name(path, option)
    for options, need, ok in ((positive, "positive", lambda v: v > 0),
                              (nonnegative, "0 or more", lambda v: v >= 0)):
        for option, v in options:
            if v is not None and not (np.isfinite(v) and ok(v)):
                raise InputError(option, f"must be finite and {need}, got {v}")


def _given(args, *names):
    """(--option, value) of argparse destinations."""
    return tuple((f"--{k.replace('_', '-')}", getattr(args, k)) for k in names)


RUN_TIMES = ("medi_seconds", "medi_cpu_seconds")   # in the log, not in the sidecar: reruns write the same bytes
_no_times = lambda info: {k: v for k, v in info.items() if k not in RUN_TIMES}  # noqa: E731


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


def run_qsm(args) -> int:
    import torch

    from deepmir.device import pick_device
    from deepmir.dipole import b0_direction, voxel_sizes
    from deepmir.qsm import field
    from deepmir.qsm.defaults import DEFAULTS
    from deepmir.qsm.pipeline import invert

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
    f = field.read_field(args.field, args.field_unit, args.field_sign, args.mask, args.b0, args.te,
                         args.magnitude, args.noise_std, args.csf_mask)
    params = {"inversion": args.method, "lambda": args.lam, "lambda_factor": args.lambda_factor,
              "merit": args.merit, "smv": args.smv_radius > 0,
              "smv_radius_mm": args.smv_radius if args.smv_radius > 0 else DEFAULTS["smv_radius_mm"],
              "tkd_threshold": args.tkd_threshold, "edge_mm": args.edge_mm,
              "missing_weight": args.missing_weight, "missing_min_mm3": args.missing_min_mm3}
    dev = pick_device(args.device)
    try:
        res = invert(f["field"], f["mask"], voxel_sizes(f["affine"]), b0_direction(f["affine"]),
                     magnitude=f["magnitude"], noise_std=f["noise"], csf_mask=f["csf"], b0_tesla=args.b0,
                     delta_te=args.te, params=params, device=dev)
    except ValueError as err:
        raise InputError(args.field, str(err))
    info = dict(res["info"], weights=f["weights"], field_unit=args.field_unit, echo_time=args.te,
                field_strength=args.b0, edge_mm=args.edge_mm,
                missing_weight=args.missing_weight, missing_min_mm3=args.missing_min_mm3,
                csf_reference=f["csf"] is not None,
                unit="ppm")
    side = niio.sidecar_path(args.output)
    niio.save_all([(args.output, res["chi"], f["affine"])], [(side, _no_times(info))])
    from deepmir.qsm.lambda_rule import describe

    sys.stderr.write(describe(info, "deepmir qsm"))
    msg = args.method
    if args.method == "medi":
        msg = (f"medi: {info['medi_iterations']} Gauss-Newton steps, CG {info['medi_cg']}, "
               f"{info['medi_seconds']:.1f} s")
    print(f"deepmir qsm: {msg} on {dev}; wrote {args.output} and {side.name}", file=sys.stderr)
    return 0


def run_qsm_run(args) -> int:
    import torch

    from deepmir import qc
    from deepmir.dipole import voxel_sizes
    from deepmir.qsm.defaults import DEFAULTS
    from deepmir.qsm.pipeline import reconstruct

    cfg = settings.read("qsm", args.config_json)
    _check_options(outputs=_given(args, "chi", "r2s", "field", "chi_tkd", "chi_cfl2", "total_field"))
    torch.set_num_threads(max(int(cfg["threads"]), 1))
    te, b0, sign, meta_dir = megre.read_meta(args.json)
    mag, phase, aff = megre.load_echoes(args.mag, args.phase, args.json, te.size)
    if te.size < 2:
        raise InputError(args.json, "QSM needs at least two echoes")
    if not np.all(np.diff(te) > 0):
        raise InputError(args.json, f"EchoTime must increase, got {te.tolist()}")
    mask = megre.load_mask(args.mask, mag.shape, aff)
    params = {k: cfg[k] for k in DEFAULTS}
    try:
        res = reconstruct(mag, phase, te, mask, voxel_sizes(aff), megre.b0_dir(meta_dir, aff), b0,
                          sign, params=params, device=cfg["device"],
                          log=lambda s: print(s, file=sys.stderr))
    except ValueError as err:
        raise InputError(args.mag, str(err))
    outs = [(args.chi, res["chi"], aff), (args.r2s, res["r2s"], aff),
            (args.field, res["local_field"], aff), (args.chi_tkd, res["chi_tkd"], aff),
            (args.chi_cfl2, res["chi_cfl2"], aff)]
    if args.total_field:
        outs.append((args.total_field, res["total_field"], aff))
    info = dict(res["info"], echo_spacing=res["delta_te"], field_strength=b0, unit="ppm",
                settings=params)
    with niio.together():
        niio.save_all(outs, [(niio.sidecar_path(args.chi), _no_times(info))])
        if args.qc:
            chi = res["chi"]
            r = np.percentile(np.abs(chi[res["mask"]]), 99) if res["mask"].any() else 0.2
            f = res["local_field"]
            fr = np.percentile(np.abs(f[res["mask"]]), 99) if res["mask"].any() else 0.05
            qc.central_slices_png(args.qc, [("χ (ppm)", chi, -r, r, "gray"),
                                            ("local field (ppm)", f, -fr, fr, "gray"),
                                            ("R2* (1/s)", res["r2s"], 0, 80, "magma")],
                                  f"QSM {Path(args.chi).name}")
    from deepmir.qsm.lambda_rule import describe

    sys.stderr.write(describe(info, "deepmir qsm-run"))
    return 0


def _common(p):
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")


def _inversion_opts(p):
    """The dipole-inversion options of ``qsm``, with the qsm schema's defaults."""
    from deepmir.qsm.defaults import DEFAULTS as D

    d = D.__getitem__
    p.add_argument("--lambda", dest="lam", type=_lambda_arg,
                   default=d("lambda"),
                   help="MEDI data-term weight (toolbox units) or auto: chosen per dataset at "
                        "the L-curve corner of the closed-form L2 inversion (docs/qsm.md; "
                        f"default {D['lambda']})")
    p.add_argument("--lambda-factor", dest="lambda_factor", type=float,
                   default=d("lambda_factor"),
                   help=f"factor κ of the auto rule (default {D['lambda_factor']})")
    p.add_argument("--smv-radius", dest="smv_radius", type=float, default=0.0,
                   help="MEDI 'smv' option: SMV radius in mm (0: off; default off)")
    p.add_argument("--merit", action=argparse.BooleanOptionalAction,
                   default=D["merit"],
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
    _inversion_opts(p)
    p.add_argument("--output", required=True,
                   help="χ map to write (ppm, paramagnetic > 0); its JSON sidecar (same name, "
                        ".json) records λ and how it was chosen")
    _common(p)
    p.set_defaults(func=run_qsm)

    r = sub.add_parser("qsm-run", help="multi-echo GRE → χ, R2*, local field (rule qsm)",
                       description="The whole QSM chain of the qsm rule; its settings are the "
                                   "workflow config's qsm section (--config-json).")
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
    settings.add_option(r, "qsm")
    r.set_defaults(func=run_qsm_run)
