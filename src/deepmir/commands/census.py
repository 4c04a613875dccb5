"""``deepmir census`` (lesion census of one participant) and ``deepmir cohort-table`` (one row
per participant with counts by class × region × size, and a cohort summary)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepmir import niio
from deepmir.commands.qsm import _load as _load_image  # missing/unreadable → one-line InputError
from deepmir.errors import InputError


def register(sub):
    _bench_register(sub)
    p = sub.add_parser("census", help="lesion census of one participant (TSV)")
    p.add_argument("--labels", required=True, help="label map on the MEGRE grid (1 CMB, 2 iron)")
    p.add_argument("--probs", default="", help="class probabilities (4D, classes last) or of the class")
    p.add_argument("--chi", default="", help="QSM (ppm) on the MEGRE grid")
    p.add_argument("--swi", default="", help="SWI on the MEGRE grid")
    p.add_argument("--mni-coords", default="",
                   help="MNI coordinate map on the MEGRE grid (`deepmir mni-warp`): places lesions "
                        "in the atlas through the nonlinear template registration")
    p.add_argument("--mni-xfm", default="", help="4×4 text: x_MNI = M @ x_MEGRE (world mm)")
    p.add_argument("--mask-json", default="",
                   help="brain-mask JSON of the anat stage; its TemplateToMEGRE (x_MEGRE = M @ x_MNI) "
                        "places lesions in the atlas when --mni-xfm is not given")
    p.add_argument("--qc", default="", help="PNG with every lesion outlined and numbered")
    p.add_argument("--atlas", default="", help="MNI atlas cache (.npz of `deepmir atlas`)")
    p.add_argument("--keep-calcifications", action="store_true",
                   help="count diamagnetic CMBs as CMBs (default: counted as calcifications)")
    p.add_argument("--keep-veins", action="store_true",
                   help="count CMBs on an elongated paramagnetic structure as CMBs (default: counted as veins)")
    p.add_argument("--output", required=True)
    p.set_defaults(func=run_census)

    p = sub.add_parser("mni-warp", help="MNI coordinate map on the MEGRE grid: the template's affine "
                                        "fit to the T1w refined by a SyN warp (antspyx)")
    p.add_argument("--t1w", required=True, help="bias-corrected T1w (native grid)")
    p.add_argument("--mask-json", required=True, help="brain-mask JSON of the anat stage (TemplateToT1w)")
    p.add_argument("--xfm", required=True, help="4×4 text: x_MEGRE = M @ x_T1w")
    p.add_argument("--ref", required=True, help="an image on the MEGRE grid (e.g. the brain mask)")
    p.add_argument("--iterations", type=int, nargs="+", default=None,
                   help="SyN iterations per level (coarse to fine)")
    p.add_argument("--working-mm", type=float, default=None, help="registration voxel size (mm)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1, help="ITK threads")
    p.add_argument("--output", required=True, help="4D NIfTI: MNI x, y, z (mm) of every MEGRE voxel")
    p.set_defaults(func=run_mni_warp)

    p = sub.add_parser("iron-region", help="where an iron deposit may lie, on the MEGRE grid: the brain "
                                           "within a margin of the atlas's basal ganglia")
    p.add_argument("--mask", required=True, help="brain mask on the MEGRE grid (the anat stage's)")
    p.add_argument("--mask-json", required=True,
                   help="its JSON; TemplateToMEGRE (x_MEGRE = M @ x_MNI) places the atlas (a T1w-based mask)")
    p.add_argument("--atlas", default="", help="MNI atlas cache (.npz of `deepmir atlas`)")
    p.add_argument("--margin-mm", type=float, default=3.0, help="margin around the basal ganglia (mm)")
    p.add_argument("--output", required=True, help="uint8 mask NIfTI (1: an iron deposit may lie here)")
    p.set_defaults(func=run_iron_region)

    p = sub.add_parser("atlas", help="build the MNI atlas (templates and atlases of the wheels) as .npz")
    p.add_argument("--out", required=True)
    p.set_defaults(func=lambda a: __import__("deepmir.synth.anatomy", fromlist=["x"]).head_model(a.out) and 0)

    p = sub.add_parser("final-split", help="training/validation split of the final model")
    p.add_argument("--participants", nargs="+", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--out", required=True)
    p.set_defaults(func=run_final_split)

    p = sub.add_parser("cohort-table", help="cohort table and summary from census TSVs")
    p.add_argument("census", nargs="+", help="census TSVs named <pid>_..._census.tsv")
    p.add_argument("--output", required=True, help="TSV, one row per participant")
    p.add_argument("--summary", required=True, help="Markdown summary")
    p.set_defaults(func=run_table)


def _matrix(path):
    p = Path(path)
    if not p.is_file():
        raise InputError(path, "transform not found")
    try:
        m = np.loadtxt(p)
    except ValueError as err:
        raise InputError(path, f"not a text matrix ({err})") from None
    if m.shape != (4, 4):
        raise InputError(path, "expected a 4×4 matrix")
    return m


def _grid(path, ref_shape, ref_aff, what):
    a, aff = _load_image(path, what)
    if a.shape[:3] != tuple(ref_shape) or not np.allclose(aff, ref_aff, atol=1e-3):
        raise InputError(path, f"{what} is not on the grid of the label map {tuple(ref_shape)}")
    return a


def run_census(args) -> int:
    from deepmir import census
    from deepmir.synth import anatomy
    labels, aff = _load_image(args.labels, "label map")
    if labels.ndim != 3:
        raise InputError(args.labels, f"expected a 3D label map, found shape {labels.shape}")
    bad = sorted(set(np.unique(labels)) - {0, 1, 2})
    if bad:
        raise InputError(args.labels, f"labels must be 0, 1 or 2; found {bad[:5]}")
    probs = _grid(args.probs, labels.shape, aff, "probability map") if args.probs else None
    if probs is not None and probs.ndim == 4:
        probs = np.moveaxis(probs, -1, 0)
    chi = _grid(args.chi, labels.shape, aff, "QSM") if args.chi else None
    swi = _grid(args.swi, labels.shape, aff, "SWI") if args.swi else None
    to_mni = atlas = None
    m = None
    if args.mni_coords:
        coords = _grid(args.mni_coords, labels.shape, aff, "MNI coordinate map")
        if coords.ndim != 4 or coords.shape[3] != 3:
            raise InputError(args.mni_coords, f"expected 3 volumes (MNI x, y, z), found shape {coords.shape}")
        from deepmir import template
        inv_aff = np.linalg.inv(aff)
        to_mni = lambda x: template.mni_at(coords, np.asarray(x) @ inv_aff[:3, :3].T + inv_aff[:3, 3])
        atlas = anatomy.head_model(args.atlas or None)
    elif args.mni_xfm:
        m = _matrix(args.mni_xfm)
    elif args.mask_json:
        m = _megre_to_mni(niio.read_json(args.mask_json, "brain-mask JSON"))
    if m is not None:
        to_mni = lambda x: np.asarray(x) @ m[:3, :3].T + m[:3, 3]
        atlas = anatomy.head_model(args.atlas or None)
    table = census.lesion_census(labels.astype(np.uint8), aff, probs=probs, chi=chi, swi=swi,
                                 to_mni=to_mni, atlas=atlas,
                                 exclude_calcifications=not args.keep_calcifications,
                                 exclude_veins=not args.keep_veins)
    _write_tsv(table, args.output)
    if args.qc:
        from deepmir import montage
        from deepmir.geometry import b0_direction
        image = swi if swi is not None else (chi if chi is not None else labels)
        fig = montage.census_figure(image, labels, table, int(np.argmax(np.abs(b0_direction(aff)))),
                                    f"{Path(args.labels).name.split('_space')[0]}: {len(table)} lesions")
        niio.write_png(args.qc, fig)
    return 0


def run_mni_warp(args) -> int:
    from deepmir import template
    from deepmir.commands.anat import _threads
    _threads(args.threads)
    t1, t1_aff = _load_image(args.t1w, "T1w")
    if t1.ndim != 3:
        raise InputError(args.t1w, f"expected a 3D T1w, found shape {t1.shape}")
    info = niio.read_json(args.mask_json, "brain-mask JSON")
    if "TemplateToT1w" not in info:
        raise InputError(args.mask_json, "no TemplateToT1w (the mask was not made from a T1w)")
    xfm = _matrix(args.xfm)
    ref, ref_aff = _load_image(args.ref, "reference image")
    syn = {k: v for k, v in (("iterations", args.iterations), ("working_mm", args.working_mm)) if v}
    coords, c_aff = template.warp_template_to_t1(t1, t1_aff, info["TemplateToT1w"], seed=args.seed, syn=syn)
    niio.save(args.output, template.coordinates_on_grid(coords, c_aff, xfm, ref.shape[:3], ref_aff), ref_aff)
    return 0


def _megre_to_mni(mask_info: dict):
    """x_MNI = M @ x_MEGRE (world mm) from a brain-mask JSON's TemplateToMEGRE, or None (a mask
    not made from a T1w has no template fit)."""
    if "TemplateToMEGRE" not in mask_info:
        return None
    return np.linalg.inv(np.asarray(mask_info["TemplateToMEGRE"], float))


def run_iron_region(args) -> int:
    from deepmir import regions
    from deepmir.synth import anatomy
    if not args.margin_mm >= 0:
        raise InputError("--margin-mm", f"must be ≥ 0, got {args.margin_mm}")
    mask, aff = _load_image(args.mask, "brain mask")
    if mask.ndim != 3:
        raise InputError(args.mask, f"expected a 3D mask, found shape {mask.shape}")
    m = _megre_to_mni(niio.read_json(args.mask_json, "brain-mask JSON"))
    if m is None:
        raise InputError(args.mask_json, "no TemplateToMEGRE (the mask was not placed in MNI space: "
                                         "it needs a T1w-based brain mask)")
    to_mni = m @ aff
    ijk = np.argwhere(mask > 0)
    region = np.zeros(mask.shape, np.uint8)
    region[tuple(ijk.T)] = regions.iron_region(anatomy.head_model(args.atlas or None),
                                               ijk @ to_mni[:3, :3].T + to_mni[:3, 3], args.margin_mm)
    niio.save(args.output, region, aff, dtype=np.uint8)
    return 0


def run_final_split(args) -> int:
    from deepmir import folds
    try:
        split = folds.train_val_split(args.participants, args.seed, args.val_fraction)
    except ValueError as err:  # fewer than 2 participants, a fraction outside (0, 1)
        raise InputError("--participants", str(err)) from None
    niio.write_json(args.out, split)
    return 0


def run_table(args) -> int:
    from deepmir import census
    rows = []
    for path in args.census:
        name = Path(path).name
        pid = name.split("_census")[0].replace("_desc-", "|").split("|")[0]
        try:
            df = pd.read_csv(path, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise InputError(path, f"unreadable TSV ({err})")
        missing = {"counted_as", "region_group", "size_group", "probable_calcification"} - set(df.columns)
        if missing:
            raise InputError(path, f"missing columns {sorted(missing)}")
        rows.append(dict(participant_id=pid, **census.participant_counts(df)))
    table = pd.DataFrame(rows)
    _write_tsv(table, args.output)
    n = len(table)
    lines = [f"# Lesion census: {n} participants", "",
             "| class | prevalence (≥1) | median | IQR | max | lobar | deep | infratentorial |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for cls in ("cmb", "iron"):
        c = table[f"{cls}_total"]
        q1, q3 = np.percentile(c, [25, 75]) if n else (0, 0)
        lines.append(f"| {cls} | {(c > 0).sum()}/{n} ({100 * (c > 0).mean():.0f} %) | {c.median():g} | "
                     f"{q1:g}–{q3:g} | {c.max()} | {table[f'{cls}_lobar'].sum()} | "
                     f"{table[f'{cls}_deep'].sum()} | {table[f'{cls}_infratentorial'].sum()} |")
    lines += ["", f"Probable calcifications (diamagnetic lesions labelled CMB): "
                  f"{table.probable_calcifications.sum()}",
              f"Probable veins (lesions labelled CMB on an elongated paramagnetic structure): "
              f"{table.probable_veins.sum()}", ""]
    niio.write_text(args.summary, "\n".join(lines))
    return 0


def _write_tsv(df, path):
    niio.write_tsv(path, df)


def _bench_register(sub):
    p = sub.add_parser("bench-table", help="the per-job Snakemake benchmarks as report tables")
    p.add_argument("--dir", default="benchmarks")
    p.add_argument("--output", required=True, help="TSV, one row per job")
    p.add_argument("--markdown", required=True)
    p.set_defaults(func=run_bench_table)


def run_bench_table(args) -> int:
    from deepmir import benchtable
    from deepmir.tables import to_markdown
    jobs = benchtable.collect(args.dir)
    _write_tsv(jobs, args.output)
    parts = ["# Time and memory per stage", "",
             "From Snakemake's `benchmark:` files of this run (wall seconds, CPU seconds, peak RSS in "
             "MB); a job run again overwrites its file.", ""]
    for name, df in benchtable.summaries(jobs).items():
        parts += [to_markdown(df.round(1), f"per {name}").strip(), ""]
    niio.write_text(args.markdown, "\n".join(parts))
    return 0
