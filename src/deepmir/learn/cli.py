"""The learning commands, file in → file out (rules in workflow/rules/learn.smk):

stack          a participant's 2D slice stack (.npz) from NIfTI channels, brain mask and dseg
iron-region    where an iron deposit may lie on the MEGRE grid (the atlas's basal ganglia)
folds          leave-one-out splits: fold-<participant>.json per fold and splits_final.json
train          one fold's U-Net from training and validation stacks (resumes after a kill)
predict        label and probability NIfTI of a participant's stack with a trained model
lesion-counts  predicted vs reference lesion counts per participant (a quick check)
export-nnunet  an experiment's channels and labels as a raw nnU-Net dataset

Settings come from the config's ``learn`` section (``--config-json``, defaults in its schema).
All inputs are checked before anything is computed; a bad one stops the command with
``<file>: <problem>`` and nothing is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from deepmir import niio, settings
from deepmir.errors import InputError


# ------------------------------------------------------------------------------- stack
def cmd_stack(args) -> int:
    from deepmir.learn.dataset import make_stack
    from deepmir.learn.stack import axes_from_affine, cut_brain_voxels, pad_size, parse_channel, read_channels, save_stack

    specs = [parse_channel(s) for s in args.channel]
    channels, mask, m_aff, labels, region = read_channels(specs, args.mask, args.dseg, args.iron_region)
    axial, lr = axes_from_affine(m_aff)
    pad_to = pad_size(args.pad_to, args.pad_multiple, [n for a, n in enumerate(mask.shape) if a != axial], args.out)
    x, y, meta = make_stack(channels, mask, labels, axial, pad_to=pad_to,
                            qsm_clip_sigma=args.qsm_clip_sigma, lr_axis=lr)
    cut = cut_brain_voxels(mask, axial, meta)   # slices larger than --pad-to are centre-cropped
    if cut:
        side = [n for a, n in enumerate(mask.shape) if a != axial]
        raise InputError(args.mask, f"slices of {side[0]}×{side[1]} voxels do not fit --pad-to {pad_to} "
                                    f"(learn.slice_size) without cutting {cut} brain voxels: raise it to at "
                                    f"least {max(side)}, a multiple of 2^(depth−1), or set it to null (fitted)")
    save_stack(args.out, x, y, meta, m_aff, mask, region)
    return 0


def cmd_iron_region(args) -> int:
    from deepmir.atlas import head, regions

    if not args.margin_mm >= 0:
        raise InputError("--margin-mm", f"must be ≥ 0, got {args.margin_mm}")
    mask, aff = niio.load_image(args.mask, "brain mask")
    m = regions.megre_to_mni(niio.read_json(args.mask_json, "brain-mask JSON"))
    if m is None:
        raise InputError(args.mask_json, "no TemplateToMEGRE (the mask was not placed in MNI space: "
                                         "it needs a T1w-based brain mask)")
    region = regions.iron_region_mask(mask, aff, m, head.head_model(args.atlas or None), args.margin_mm)
    niio.save(args.output, region, aff, dtype=np.uint8)
    return 0


# ------------------------------------------------------------------------------- folds
def cmd_folds(args) -> int:
    from deepmir.learn.folds import check_participants, loo_folds, nnunet_splits, read_participants

    cfg = settings.with_flags("learn", args, ("seed", "val_fraction"))
    seed, val_fraction = cfg["seed"], cfg["val_fraction"]
    source = args.participants_tsv or "--participants"
    pids = list(args.participants or []) + (read_participants(args.participants_tsv) if args.participants_tsv else [])
    check_participants(pids, val_fraction, source)
    if not (args.out_dir or args.fold_out or args.splits_final):
        raise InputError(source, "nothing to write: give --out-dir, --fold/--fold-out or --splits-final")
    if bool(args.fold) != bool(args.fold_out):
        raise InputError(source, "--fold and --fold-out go together")
    if args.fold and args.fold not in pids:
        raise InputError(source, f"--fold {args.fold} is not among the participants")
    folds = loo_folds(pids, seed=seed, val_fraction=val_fraction)
    record = lambda f: {**f, "seed": seed, "val_fraction": val_fraction}  # noqa: E731
    if args.out_dir:
        for f in folds:
            niio.write_json(Path(args.out_dir) / f"fold-{f['test'][0]}.json", record(f))
        niio.write_json(Path(args.out_dir) / "splits_final.json", nnunet_splits(folds))
    if args.fold:
        niio.write_json(args.fold_out, record(next(f for f in folds if f["test"] == [args.fold])))
    if args.splits_final:
        niio.write_json(args.splits_final, nnunet_splits(folds))
    return 0


# ------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from deepmir.learn.fold import train_fold

    tol = {"cmb": args.tol_cmb, "iron": args.tol_iron, "union": max(args.tol_cmb, args.tol_iron)}
    train_fold(args.train_stacks, args.val_stacks, args.label_mode, args.channels,
               settings.read("learn", args.config_json), Path(args.out_dir), tol, args.tol_unit,
               threads=args.threads, amp=False if args.no_amp else None, progress=not args.quiet,
               stop_after=args.stop_after, stop_after_epoch=args.stop_after_epoch,
               keep_mismatched=args.keep_mismatched)
    return 0


# ------------------------------------------------------------------------------- predict
def cmd_predict(args) -> int:
    from deepmir.device import set_threads
    from deepmir.learn.predict import predict_stack_file

    cfg = settings.with_flags("learn", args, ("threshold", "device"))
    set_threads(args.threads)
    labels, probs, affine = predict_stack_file(args.model, args.stack, cfg["threshold"], cfg["device"],
                                               args.batch_size, False if args.no_amp else None, not args.no_mask)
    niio.save(args.out_labels, labels, affine, dtype=np.uint8)
    if args.out_probs:
        niio.save(args.out_probs, probs[..., 0] if probs.shape[-1] == 1 else probs, affine,
                  dtype=np.float32)   # single class: one 3D probability map
    return 0


# ------------------------------------------------------------------------------- checks
def cmd_lesion_counts(args) -> int:
    from deepmir.learn.dataset import LABEL_MODES
    from deepmir.learn.postprocess import lesion_counts

    if not (len(args.pred) == len(args.ref) == len(args.participants)):
        raise InputError(args.out, "--pred, --ref and --participants need the same number of entries")
    if args.label_mode not in LABEL_MODES:
        raise InputError(args.out, f"--label-mode must be one of {LABEL_MODES}")
    pairs = []
    for pid, pp, rp in zip(args.participants, args.pred, args.ref):
        pred, p_aff = niio.load_image(pp, "prediction", dtype=np.float64)
        ref, r_aff = niio.load_image(rp, "reference", dtype=np.float64)
        if pred.shape != ref.shape or not np.allclose(p_aff, r_aff, atol=1e-3):
            raise InputError(pp, f"prediction is not on the grid of {rp}")
        pairs.append((pid, np.rint(pred).astype(np.int16), np.rint(ref).astype(np.int16)))
    lines = ["participant\tclass\tn_true\tn_pred\tn_true_detected"]
    for pid, pred, ref in pairs:
        for row in lesion_counts(pred, ref, args.label_mode):
            lines.append(f"{pid}\t{row['class']}\t{row['n_true']}\t{row['n_pred']}\t{row['n_true_detected']}")
    text = "\n".join(lines) + "\n"
    niio.write_text(args.out, text)
    print(text, end="")
    return 0


def cmd_export_nnunet(args) -> int:
    from deepmir.learn import nnunet

    problem = nnunet.dataset_problem(args.out.name)
    if problem:
        raise InputError(args.out, problem)
    cases = nnunet.check_cases(args.case, len(args.channels))
    splits = nnunet.check_splits(args.splits, {c[0] for c in cases}) if args.splits else None
    if args.out.exists() and any(args.out.iterdir()):
        raise InputError(args.out, "the dataset folder exists and is not empty")
    nnunet.write_dataset(args.out, cases, args.channels, args.label_mode, splits)
    print(f"deepmir export-nnunet: {len(cases)} cases, channels {' '.join(args.channels)}, "
          f"labels {args.label_mode} -> {args.out}")
    return 0


def register(sub) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    d = settings.read("learn")
    ev = settings.read("evaluate")

    p = sub.add_parser("stack", formatter_class=fmt, help="a participant's 2D slice stack (.npz)",
                       description="Z-score each channel inside the brain mask (QSM first clipped to ±k·σ), "
                                   "cut axial slices (the array axis closest to the scanner z axis), zero-pad or "
                                   "centre-crop them to PAD_TO × PAD_TO and write an uncompressed .npz: x [S, C, "
                                   "H, W], y [S, H, W] (the raw dseg), the mask, the affine and the metadata that "
                                   "maps slices back.")
    p.add_argument("--channel", action="append", required=True, metavar="NAME=PATH",
                   help="an input NIfTI on the mask's grid; repeat, in network channel order; QSM is clipped")
    p.add_argument("--mask", required=True, metavar="PATH", help="brain mask NIfTI (0/1)")
    p.add_argument("--dseg", metavar="PATH", help="reference labels (0, 1 CMB, 2 iron); omit to predict only")
    p.add_argument("--iron-region", metavar="PATH", help="mask (0/1) of where an iron deposit may lie")
    p.add_argument("--out", required=True, metavar="PATH", help="output stack (.npz)")
    p.add_argument("--pad-to", default="auto", help="slice size, or auto: the in-plane matrix rounded up")
    p.add_argument("--pad-multiple", type=int, default=32, help="auto slice sizes are multiples of this")
    p.add_argument("--qsm-clip-sigma", type=float, default=d["qsm_clip_sigma"],
                   help="clip QSM to ± this many σ before z-scoring (learn.qsm_clip_sigma)")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("iron-region", formatter_class=fmt, help="where an iron deposit may lie, on the MEGRE "
                                                                "grid: the brain near the atlas's basal ganglia")
    p.add_argument("--mask", required=True, help="brain mask on the MEGRE grid (the anat stage's)")
    p.add_argument("--mask-json", required=True, help="its JSON; TemplateToMEGRE places the atlas")
    p.add_argument("--atlas", default="", help="MNI atlas cache (.npz of `deepmir atlas`)")
    p.add_argument("--margin-mm", type=float, default=d["iron_region_margin_mm"],
                   help="margin around the basal ganglia in mm (learn.iron_region_margin_mm)")
    p.add_argument("--output", required=True, help="uint8 mask NIfTI (1: an iron deposit may lie here)")
    p.set_defaults(func=cmd_iron_region)

    p = sub.add_parser("folds", formatter_class=fmt, help="leave-one-out folds, random train/validation split",
                       description="One fold per participant (its test set); the others are split at random "
                                   "into training and validation (seeded per fold, independent of list order).")
    p.add_argument("--participants", nargs="+", metavar="ID", help="participant ids (those with labels)")
    p.add_argument("--participants-tsv", metavar="PATH", help="TSV with a participant_id column, or one id per line")
    settings.add_option(p, "learn")
    p.add_argument("--seed", type=int, help=f"seed of the splits (learn.seed: {d['seed']})")
    p.add_argument("--val-fraction", type=float,
                   help=f"validation share of the non-test participants (learn.val_fraction: {d['val_fraction']})")
    p.add_argument("--out-dir", metavar="DIR", help="write every fold-<participant>.json and splits_final.json here")
    p.add_argument("--fold", metavar="ID", help="write only the fold whose test participant is ID (to --fold-out)")
    p.add_argument("--fold-out", metavar="PATH", help="output JSON of --fold")
    p.add_argument("--splits-final", metavar="PATH", help="write the nnU-Net splits_final.json here")
    p.set_defaults(func=cmd_folds)

    p = sub.add_parser("train", formatter_class=fmt, help="train one fold's U-Net (checkpointed; resumes)",
                       description="The learner of learn.learner: patch (sampled 2.5D patches, the iteration "
                                   "and operating point with the best validation lesion-wise F1 kept) or paper "
                                   "(the study's full-slice protocol, best validation IoU epoch). Writes "
                                   "OUT_DIR/best.pt, last.pt (resume state), log.tsv and learning_curve.png; "
                                   "run again with the same arguments to resume.")
    p.add_argument("--train-stacks", nargs="+", required=True, metavar="NPZ", help="training stacks (with labels)")
    p.add_argument("--val-stacks", nargs="+", required=True, metavar="NPZ", help="validation stacks (with labels)")
    p.add_argument("--label-mode", required=True, choices=("cmb", "iron", "union", "multiclass"))
    p.add_argument("--channels", nargs="+", metavar="NAME", help="the stacks' channels to use, in order (default: all)")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="folder for checkpoints, log and curve")
    settings.add_option(p, "learn")
    p.add_argument("--tol-cmb", type=float, default=ev["tolerance"]["cmb"], help="CMB matching tolerance (patch F1)")
    p.add_argument("--tol-iron", type=float, default=ev["tolerance"]["iron"], help="iron matching tolerance")
    p.add_argument("--tol-unit", choices=("vox", "mm"), default=ev["tolerance_unit"], help="unit of the tolerances")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--stop-after", type=int, help="patch: stop after this iteration (run again to resume)")
    p.add_argument("--stop-after-epoch", type=int, help="paper: stop after this epoch (run again to resume)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--keep-mismatched", action="store_true",
                   help="paper: stop with an error when OUT_DIR/last.pt was made with other data or settings")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", formatter_class=fmt, help="a participant's labels with a trained model",
                       description="The model of 'deepmir train' (best.pt) on a stack: the label map (1 CMB, "
                                   "2 iron; single class: the experiment's label) and the class probabilities "
                                   "(3D single class, 4D class last) as NIfTI with the input's affine.")
    p.add_argument("--model", required=True, metavar="PT", help="best.pt written by 'deepmir train'")
    p.add_argument("--stack", required=True, metavar="NPZ", help="the participant's stack ('deepmir stack')")
    p.add_argument("--out-labels", required=True, metavar="PATH", help="label map NIfTI (uint8)")
    p.add_argument("--out-probs", metavar="PATH", help="probability NIfTI (float32)")
    settings.add_option(p, "learn")
    p.add_argument("--threshold", type=float, help=f"paper learner: probability threshold (learn.threshold: "
                                                   f"{d['threshold']}; the patch learner uses its own)")
    p.add_argument("--device", help=f"auto, cpu, cuda or cuda:N (learn.device: {d['device']})")
    p.add_argument("--no-mask", action="store_true", help="keep labels outside the brain mask")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("lesion-counts", formatter_class=fmt, help="lesions per participant: predicted vs reference")
    p.add_argument("--participants", nargs="+", required=True, metavar="ID", help="participant ids, in order")
    p.add_argument("--pred", nargs="+", required=True, metavar="PATH", help="predicted dseg NIfTIs, in order")
    p.add_argument("--ref", nargs="+", required=True, metavar="PATH", help="reference dseg NIfTIs, in order")
    p.add_argument("--label-mode", required=True, choices=("cmb", "iron", "union", "multiclass"))
    p.add_argument("--out", required=True, metavar="PATH", help="output TSV")
    p.set_defaults(func=cmd_lesion_counts)

    p = sub.add_parser("export-nnunet", help="an experiment's channels and labels as a raw nnU-Net dataset",
                       description="imagesTr, labelsTr, dataset.json and splits_final.json (deepmir's folds), "
                                   "written whole or not at all, every input checked first.")
    p.add_argument("--out", required=True, type=Path, help="the dataset folder, named DatasetNNN_Name")
    p.add_argument("--channels", required=True, nargs="+", metavar="NAME", help="channel names in network order")
    p.add_argument("--label-mode", required=True, choices=("cmb", "iron", "union", "multiclass"))
    p.add_argument("--case", required=True, nargs="+", action="append", metavar="ITEM",
                   help="one case: its id, one image per channel and its dseg; repeat for every case")
    p.add_argument("--splits", type=Path, help="deepmir's splits_final.json of these cases")
    p.set_defaults(func=cmd_export_nnunet)
