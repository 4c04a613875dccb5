"""``deepmir export-nnunet``: an experiment's channels and labels as a raw nnU-Net v2 dataset
(imagesTr, labelsTr, dataset.json) with deepmir's folds as splits_final.json, so nnU-Net can be
trained on the same leave-one-out folds and compared.

The channels are copied as they are on the MEGRE grid (nnU-Net crops and normalises them
itself); the labels are the annotation mapped by the experiment's label mode. Every input is
checked (readable, 3D, one grid per case) before anything is written, and the dataset appears
whole or not at all.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmir import bids, niio, nnunet
from deepmir.dataset import LABEL_MODES, label_mode
from deepmir.errors import InputError

def register(sub):
    p = sub.add_parser("export-nnunet", help="an experiment's channels and labels as a raw nnU-Net dataset",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path,
                   help="the dataset folder to write, named DatasetNNN_Name (nnU-Net's nnUNet_raw layout)")
    p.add_argument("--channels", required=True, nargs="+", metavar="NAME",
                   help="channel names in network order (e.g. SWI QSM), dataset.json's channel_names")
    p.add_argument("--label-mode", required=True, choices=LABEL_MODES)
    p.add_argument("--case", required=True, nargs="+", action="append", metavar="ITEM",
                   help="one case: its identifier, one image per channel (in --channels order) and "
                        "its annotation dseg; repeat for every case")
    p.add_argument("--splits", type=Path, help="deepmir's splits_final.json of these cases, copied into the dataset")
    p.set_defaults(func=run)


def _check_cases(cases, n_channels):
    """[(case, [image paths], dseg path, 3D shape)] after checking names, counts and grids."""
    out, seen = [], set()
    for items in cases:
        case, files = items[0], [Path(f) for f in items[1:]]
        problem = nnunet.case_problem(case)
        if problem:
            raise InputError(case, problem)
        if case in seen:
            raise InputError(case, "the case is given twice")
        seen.add(case)
        if len(files) != n_channels + 1:
            raise InputError(case, f"--case {case} needs {n_channels} image(s) (one per channel) and a dseg, "
                                   f"got {len(files)} file(s)")
        ref_img, ref_shape = bids.image_header(files[-1])
        for f in files[:-1]:
            img, shape = bids.image_header(f)
            if shape != ref_shape or not np.allclose(img.affine, ref_img.affine, atol=bids.AFFINE_TOL_MM):
                raise InputError(f, f"not on the grid of {files[-1]} (shape or affine differs)")
        out.append((case, files[:-1], files[-1], ref_shape))
    return out


def _check_splits(path: Path, cases: set[str]):
    splits = niio.read_json(path, "splits_final.json")
    if not isinstance(splits, list) or not all(
            isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list)
            for s in splits):
        raise InputError(path, "not nnU-Net's splits_final.json (a list of {train: [...], val: [...]})")
    unknown = sorted({c for s in splits for c in s["train"] + s["val"]} - cases)
    if unknown:
        raise InputError(path, f"names cases that are not exported: {', '.join(map(str, unknown[:5]))}")
    return splits


def run(args) -> int:
    problem = nnunet.dataset_problem(args.out.name)
    if problem:
        raise InputError(args.out, problem)
    cases = _check_cases(args.case, len(args.channels))
    splits = _check_splits(args.splits, {c[0] for c in cases}) if args.splits else None
    if args.out.exists() and any(args.out.iterdir()):
        raise InputError(args.out, "the dataset folder exists and is not empty")
    description = (f"deepmir {args.label_mode} labels from {', '.join(args.channels)} on the MEGRE grid; "
                   f"{len(cases)} cases")
    with niio.together():
        for case, images, dseg, shape in cases:          # (X, Y, Z, 1) headers pass as 3D
            for i, path in enumerate(images):
                data, affine = niio.load(path)
                niio.save(args.out / "imagesTr" / nnunet.image_name(case, i), data.reshape(shape), affine,
                          dtype=np.float32)
            labels, affine = niio.load(dseg, dtype=np.int32)
            niio.save(args.out / "labelsTr" / nnunet.label_name(case),
                      label_mode(labels.reshape(shape), args.label_mode), affine, dtype=np.uint8)
        niio.write_json(args.out / "dataset.json",
                        nnunet.dataset_json(args.channels, args.label_mode, len(cases), description))
        if splits is not None:
            niio.write_json(args.out / "splits_final.json", splits)
    print(f"deepmir export-nnunet: {len(cases)} cases, channels {' '.join(args.channels)}, "
          f"labels {args.label_mode} -> {args.out}")
    return 0
