"""``deepmir atlas``: the MNI atlas (templates and atlases of the wheels) built once as .npz."""
from __future__ import annotations


def run_atlas(args) -> int:
    from deepmir.atlas import head, regions

    hm = head.head_model()
    regions.region_volume(hm)       # kept in the file: the census and the synthetic truth use it
    head.save(hm, args.out)
    return 0


def register(sub):
    p = sub.add_parser("atlas", help="build the MNI atlas (templates and atlases of the wheels) as .npz")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run_atlas)
