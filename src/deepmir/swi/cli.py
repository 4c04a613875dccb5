"""``deepmir swi``: SWI and its minIP from the shortest echo (the ``swi`` rule); settings from
the config's ``swi`` section (--config-json), each overridable by its flag."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmir import niio, settings
from deepmir.qsm import megre

KEYS = ("window", "power", "minip_slices")


def run_swi(args) -> int:
    import torch

    from deepmir import qc
    from deepmir.swi.weighting import minip, swi

    cfg = settings.with_flags("swi", args, KEYS)
    for option in ("output", "minip"):
        niio.check_nifti_name(getattr(args, option), f"--{option}")
    torch.set_num_threads(max(int(args.threads), 1))
    te, b0, sign, meta_dir = megre.read_meta(args.json)
    mag, phase, aff = megre.load_echoes(args.mag, args.phase, args.json, te.size)
    k = int(np.argmin(te))
    b0dir = megre.b0_dir(meta_dir, aff)
    res = swi(mag[..., k], phase[..., k], b0dir, sign, (cfg["window"], cfg["window"]), cfg["power"],
              device=args.device)
    out = res["swi"]
    if args.mask:
        out = out * megre.load_mask(args.mask, mag.shape, aff)
    mip = minip(out, b0dir, cfg["minip_slices"])
    with niio.together():
        niio.save(args.output, out, aff)
        niio.save(args.minip, mip, aff)
        if args.qc:
            hi = np.percentile(out, 99.5)
            qc.central_slices_png(args.qc, [("magnitude (echo 1)", mag[..., k], 0, hi, "gray"),
                                            ("SWI", out, 0, hi, "gray"), ("minIP", mip, 0, hi, "gray")],
                                  f"SWI {Path(args.output).name}")
    return 0


def register(sub):
    d = settings.read("swi")
    s = sub.add_parser("swi", help="SWI and its minIP from the shortest echo (rule swi)")
    s.add_argument("--mag", required=True)
    s.add_argument("--phase", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--mask", help="optional brain mask applied to the SWI")
    s.add_argument("--output", required=True)
    s.add_argument("--minip", required=True)
    s.add_argument("--qc")
    settings.add_option(s, "swi")
    s.add_argument("--window", type=int, help=f"homodyne k-space window (default {d['window']})")
    s.add_argument("--power", type=int, help=f"phase-mask power (default {d['power']})")
    s.add_argument("--minip-slices", dest="minip_slices", type=int,
                   help=f"slices of the sliding minIP (default {d['minip_slices']})")
    s.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    s.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    s.set_defaults(func=run_swi)
