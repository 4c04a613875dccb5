"""The inputs commands (rules in workflow/rules/inputs.smk): ``deepmir validate`` (check a BIDS
dataset against the data contract), ``deepmir inputs`` (one participant's checked MEGRE series
as 4D magnitude, 4D phase in radians and a JSON description: the first stage of the workflow)
and ``deepmir montage`` (a QC PNG through a lesion of one participant's inputs)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from deepmir import niio, settings
from deepmir.errors import InputError
from deepmir.inputs import bids


def register(sub):
    d = settings.top_level_defaults()
    p = sub.add_parser("validate", help="check a BIDS dataset against the data contract",
                       description=__doc__)
    p.add_argument("bids_dir")
    p.add_argument("--annotations", default="annotations",
                   help="derivatives folder with the dseg annotations (default: annotations)")
    p.add_argument("--headers-only", action="store_true",
                   help="skip the voxel-level checks (fast)")
    p.add_argument("--min-echoes", type=int, default=d["min_echoes"])
    _filters_option(p)
    p.set_defaults(func=run_validate)

    p = sub.add_parser("inputs", help="one participant's checked MEGRE series (workflow stage)")
    p.add_argument("--bids-dir", required=True)
    p.add_argument("--pid", required=True, help="sub-X or sub-X_ses-Y")
    p.add_argument("--annotations", default="annotations")
    p.add_argument("--phase-sign", type=int, choices=(1, -1), default=d["phase_sign"],
                   help="used when the phase JSON has no PhaseSign")
    p.add_argument("--phase-unit", default=d["phase_unit"], choices=("auto", "radians", "siemens", "rescale"))
    p.add_argument("--min-echoes", type=int, default=d["min_echoes"])
    _filters_option(p)
    p.add_argument("--mag", required=True, help="output 4D magnitude")
    p.add_argument("--phase", required=True, help="output 4D phase (radians)")
    p.add_argument("--json", required=True, help="output series description")
    p.set_defaults(func=run_inputs)

    p = sub.add_parser("montage", help="QC montage of one participant's raw data")
    p.add_argument("--mag", required=True, help="4D magnitude (inputs stage)")
    p.add_argument("--phase", required=True, help="4D phase in radians (inputs stage)")
    p.add_argument("--info", required=True, help="MEGRE.json of the inputs stage")
    p.add_argument("--t2w", default="", help="T2w on its own grid (optional)")
    p.add_argument("--labels", default="", help="annotation dseg on the MEGRE grid (optional)")
    p.add_argument("--xfm", default="", help="T2w→MEGRE world transform, 4×4 text (optional)")
    p.add_argument("--output", required=True)
    p.set_defaults(func=run_montage)


def _filters(text):
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}")
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError('expected {"gre"|"T1w"|"T2w": {entity: value}}')
    return value


def _filters_option(p):
    p.add_argument("--bids-filters", type=_filters, default={}, metavar="JSON",
                   help='choose among several series of a contrast by BIDS entity, e.g. '
                        '\'{"gre": {"acq": "wb"}, "T1w": {"run": "2"}}\' (config bids_filters)')


def run_validate(args) -> int:
    records = bids.discover(args.bids_dir, args.annotations, filters=args.bids_filters)
    errors = 0
    print(f"{'participant':<20} {'echoes':>6} {'matrix':>15} {'voxel (mm)':>16} {'TE (ms)':<24} "
          f"{'T1w':>3} {'T2w':>3} {'annot':>5}  status")
    for rec in records:
        try:
            info = bids.check_headers(rec, args.min_echoes)
            if not args.headers_only:
                info = bids.load_checked(rec, info=info)[3]
            status = "ok"
        except InputError as err:
            errors += 1
            print(f"{rec.pid:<20} error: {err}")
            continue
        te = "/".join(f"{1000 * t:g}" for t in info["EchoTime"])
        vs = "x".join(f"{v:.3g}" for v in info["VoxelSize"])
        print(f"{rec.pid:<20} {len(rec.mag):>6} {'x'.join(map(str, info['Shape'])):>15} {vs:>16} "
              f"{te:<24} {'y' if rec.t1w else '-':>3} {'y' if rec.t2w else '-':>3} "
              f"{'y' if rec.annotation else '-':>5}  {status}")
    n_ann = sum(r.annotation is not None for r in records)
    print(f"{len(records)} participant(s), {n_ann} annotated, {errors} with errors")
    return 1 if errors else 0


def run_inputs(args) -> int:
    rec = bids.find(args.bids_dir, args.pid, args.annotations, args.bids_filters)
    mag, rad, affine, info = bids.load_checked(rec, args.min_echoes, args.phase_unit)
    if info["PhaseSign"] is None:
        info["PhaseSign"] = args.phase_sign
        info["PhaseSign_source"] = "config"
    else:
        info["PhaseSign_source"] = "JSON"
    info.update(participant=rec.pid, T1w=_str(rec.t1w), T2w=_str(rec.t2w),
                Annotation=_str(rec.annotation), Magnitude=[str(p) for p in rec.mag],
                Phase=[str(p) for p in rec.phase])
    with niio.together():
        niio.save(args.mag, mag, affine)
        niio.save(args.phase, rad, affine)
        niio.write_json(args.json, info)
    return 0


def _str(p):
    return None if p is None else str(Path(p))


def run_montage(args) -> int:
    from deepmir.inputs.montage import montage

    niio.write_png(args.output, montage(args.mag, args.phase, args.info, args.t2w, args.labels, args.xfm))
    return 0
