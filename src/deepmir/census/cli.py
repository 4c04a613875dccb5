"""The census commands (rules in workflow/rules/census.smk): ``deepmir census`` (the lesions of
one participant: position, size, confidence, χ, SWI contrast, region), ``mni-warp`` (the MNI
coordinate map on the MEGRE grid), ``final-split``, ``cohort-table`` (one row per participant
with counts by class × region × size, and a cohort summary) and ``bench-table`` (the report's
timing tables). Settings come from the config's ``census`` section (``--config-json``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmir import niio, settings
from deepmir.errors import InputError


def run_census(args) -> int:
    from deepmir.atlas import head
    from deepmir.census import count, place

    cfg = settings.read("census", args.config_json)
    labels, aff = niio.load_image(args.labels, "label map")
    bad = sorted(set(np.unique(labels)) - {0, 1, 2})
    if bad:
        raise InputError(args.labels, f"labels must be 0, 1 or 2; found {bad[:5]}")
    probs = place.on_grid(args.probs, labels.shape, aff, "probability map") if args.probs else None
    if probs is not None and probs.ndim == 4:
        probs = np.moveaxis(probs, -1, 0)
    chi = place.on_grid(args.chi, labels.shape, aff, "QSM") if args.chi else None
    swi = place.on_grid(args.swi, labels.shape, aff, "SWI") if args.swi else None
    to_mni = place.placement(labels.shape, aff, args.mni_coords, args.mni_xfm, args.mask_json)
    atlas = None if to_mni is None else head.head_model(args.atlas or None)
    table = count.lesion_census(labels.astype(np.uint8), aff, probs=probs, chi=chi, swi=swi,
                                to_mni=to_mni, atlas=atlas,
                                exclude_calcifications=cfg["exclude_calcifications"],
                                exclude_veins=cfg["exclude_veins"])
    niio.write_tsv(args.output, table)
    if args.qc:
        from deepmir import qc
        from deepmir.geometry import axial_axis

        image = swi if swi is not None else (chi if chi is not None else labels)
        fig = qc.census_figure(image, labels, table, axial_axis(aff),
                               f"{Path(args.labels).name.split('_space')[0]}: {len(table)} lesions")
        niio.write_png(args.qc, fig)
    return 0


def run_mni_warp(args) -> int:
    from deepmir.anat import template
    from deepmir.anat.ants import set_threads

    cfg = settings.read("census", args.config_json)
    set_threads(args.threads)
    t1, t1_aff = niio.load_image(args.t1w, "T1w")
    info = niio.read_json(args.mask_json, "brain-mask JSON")
    if "TemplateToT1w" not in info:
        raise InputError(args.mask_json, "no TemplateToT1w (the mask was not made from a T1w)")
    xfm = niio.read_matrix(args.xfm)
    ref, ref_aff = niio.load_image(args.ref, "reference image", ndim=(3, 4))
    syn = {"iterations": cfg["syn_iterations"], "working_mm": cfg["syn_working_mm"]}
    coords, c_aff = template.warp_template_to_t1(t1, t1_aff, info["TemplateToT1w"], seed=args.seed, syn=syn)
    niio.save(args.output, template.coordinates_on_grid(coords, c_aff, xfm, ref.shape[:3], ref_aff), ref_aff)
    return 0


def run_final_split(args) -> int:
    from deepmir.learn import folds

    try:
        split = folds.train_val_split(args.participants, args.seed, args.val_fraction)
    except ValueError as err:  # fewer than 2 participants, a fraction outside (0, 1)
        raise InputError("--participants", str(err)) from None
    niio.write_json(args.out, split)
    return 0


def run_table(args) -> int:
    from deepmir.census import count

    table = count.cohort_table(count.read_census(args.census))
    with niio.together():
        niio.write_tsv(args.output, table)
        niio.write_text(args.summary, count.cohort_summary(table))
    return 0


def run_bench_table(args) -> int:
    from deepmir.evaluate import benchtable

    jobs = benchtable.collect(args.dir)
    with niio.together():
        niio.write_tsv(args.output, jobs)
        niio.write_text(args.markdown, benchtable.markdown(jobs))
    return 0


def register(sub):
    d = settings.read("census")
    p = sub.add_parser("census", help="lesion census of one participant (TSV)")
    p.add_argument("--labels", required=True, help="label map on the MEGRE grid (1 CMB, 2 iron)")
    p.add_argument("--probs", default="", help="class probabilities (4D, classes last) or of the class")
    p.add_argument("--chi", default="", help="QSM (ppm) on the MEGRE grid")
    p.add_argument("--swi", default="", help="SWI on the MEGRE grid")
    p.add_argument("--mni-coords", default="", help="MNI coordinate map on the MEGRE grid (`deepmir mni-warp`)")
    p.add_argument("--mni-xfm", default="", help="4×4 text: x_MNI = M @ x_MEGRE (world mm)")
    p.add_argument("--mask-json", default="", help="brain-mask JSON (its TemplateToMEGRE places the atlas)")
    p.add_argument("--qc", default="", help="PNG with every lesion outlined and numbered")
    p.add_argument("--atlas", default="", help="MNI atlas cache (.npz of `deepmir atlas`)")
    settings.add_option(p, "census")
    p.add_argument("--output", required=True)
    p.set_defaults(func=run_census)

    p = sub.add_parser("mni-warp", help="MNI coordinate map on the MEGRE grid: the template's affine "
                                        "fit to the T1w refined by a SyN warp (antspyx)")
    p.add_argument("--t1w", required=True, help="bias-corrected T1w (native grid)")
    p.add_argument("--mask-json", required=True, help="brain-mask JSON of the anat stage (TemplateToT1w)")
    p.add_argument("--xfm", required=True, help="4×4 text: x_MEGRE = M @ x_T1w")
    p.add_argument("--ref", required=True, help="an image on the MEGRE grid (e.g. the brain mask)")
    settings.add_option(p, "census")
    p.add_argument("--seed", type=int, default=42, help="SyN metric sampling seed")
    p.add_argument("--threads", type=int, default=1, help="ITK threads")
    p.add_argument("--output", required=True, help="4D NIfTI: MNI x, y, z (mm) of every MEGRE voxel")
    p.set_defaults(func=run_mni_warp)

    p = sub.add_parser("final-split", help="training/validation split of the final model")
    p.add_argument("--participants", nargs="+", required=True)
    p.add_argument("--seed", type=int, default=settings.read("learn")["seed"], help="learn.seed")
    p.add_argument("--val-fraction", type=float, default=d["val_fraction"], help="census.val_fraction")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run_final_split)

    p = sub.add_parser("cohort-table", help="cohort table and summary from census TSVs")
    p.add_argument("census", nargs="+", help="census TSVs named <pid>_..._census.tsv")
    p.add_argument("--output", required=True, help="TSV, one row per participant")
    p.add_argument("--summary", required=True, help="Markdown summary")
    p.set_defaults(func=run_table)

    p = sub.add_parser("bench-table", help="the per-job Snakemake benchmarks as report tables")
    p.add_argument("--dir", default="benchmarks")
    p.add_argument("--output", required=True, help="TSV, one row per job")
    p.add_argument("--markdown", required=True)
    p.set_defaults(func=run_bench_table)
