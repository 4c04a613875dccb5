"""``deepmir montage``: a PNG through a lesion of one participant's inputs (QC)."""
from __future__ import annotations

import numpy as np

from deepmir import niio


def register(sub):
    p = sub.add_parser("montage", help="QC montage of one participant's raw data")
    p.add_argument("--mag", required=True, help="4D magnitude (inputs stage)")
    p.add_argument("--phase", required=True, help="4D phase in radians (inputs stage)")
    p.add_argument("--info", required=True, help="MEGRE.json of the inputs stage")
    p.add_argument("--t2w", default="", help="T2w on its own grid (optional)")
    p.add_argument("--labels", default="", help="annotation dseg on the MEGRE grid (optional)")
    p.add_argument("--xfm", default="", help="T2w→MEGRE world transform, 4×4 text (optional)")
    p.add_argument("--output", required=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from deepmir import montage
    from deepmir.anat import resample_to
    mag, aff = niio.load(args.mag)
    phase, _ = niio.load(args.phase)
    info = niio.read_json(args.info)
    labels = niio.load(args.labels)[0].astype(np.uint8) if args.labels else None
    axis = int(np.argmax(np.abs(info["B0_dir"])))
    index = montage.lesion_slice(labels if labels is not None else mag[..., 0], axis)
    te = info["EchoTime"]
    panels = [(f"magnitude TE {1000 * te[0]:g} ms", mag[..., 0], None, "gray"),
              (f"magnitude TE {1000 * te[-1]:g} ms", mag[..., -1], None, "gray"),
              (f"phase TE {1000 * te[0]:g} ms (rad)", phase[..., 0], (-np.pi, np.pi), "twilight")]
    if args.t2w:
        t2, t2_aff = niio.load(args.t2w)
        xfm = np.loadtxt(args.xfm) if args.xfm else None
        panels.append(("T2w on the MEGRE grid", resample_to(t2, t2_aff, xfm, mag.shape[:3], aff),
                       None, "gray"))
    fig = montage.montage_figure(panels, labels, axis, index,
                                 f"{info.get('participant', '')} — slice {index} of axis {axis}")
    niio.write_png(args.output, fig)
    return 0
