"""``deepmir run BIDS_DIR OUTPUT_DIR {participant,group}``: the workflow as a BIDS App.

``participant`` makes every participant's own outputs (inputs and montage, anatomy, QSM, SWI:
the Snakefile's rule ``participant``) for the participants named with ``--participant-label``
(all without it); ``group`` makes everything else (stacks, folds, training, evaluation,
tables, report, census) from them. Snakemake works in OUTPUT_DIR (its state, logs and
benchmarks stay there); anything after ``--`` goes to Snakemake as it is (``-n``,
``--report …``). ``--demo`` runs the synthetic cohort instead of a dataset
(``deepmir run --demo OUTPUT_DIR participant``).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from deepmir.errors import InputError

# the workflow (Snakefile, rules, schemas, report captions, envs) and the default config ship
# inside the package: deepmir/workflow and deepmir/config (in a checkout, links to the
# top-level workflow/ and config/, so an edited config/config.yaml is the one used)
PACKAGE = Path(__file__).resolve().parent
SNAKEFILE = PACKAGE / "workflow" / "Snakefile"
DEFAULT_CONFIG = PACKAGE / "config" / "config.yaml"
# the rules that make one participant's outputs from its own data alone (rule `participant`
# of the Snakefile asks for their outputs)
PARTICIPANT_RULES = ("inputs", "montage", "anat_n4", "anat_register", "anat_brainmask", "qsm", "swi",
                     "derivatives_participant")
LABEL = re.compile(r"(sub-)?([A-Za-z0-9]+)(_ses-[A-Za-z0-9]+)?")


def command(paths, participant_label=(), cores="all", profile=None, config_file=None, demo=False,
            passthrough=()) -> list[str]:
    """The Snakemake command line of ``deepmir run`` (checked; nothing run)."""
    want = 2 if demo else 3
    if len(paths) != want:
        raise InputError("deepmir run", f"expected {'OUTPUT_DIR LEVEL' if demo else 'BIDS_DIR OUTPUT_DIR LEVEL'}"
                                        f"{' (with --demo)' if demo else ''}, got {' '.join(paths)}")
    *bids, out, level = paths
    if level not in ("participant", "group"):
        raise InputError(level, "analysis level must be participant or group")
    if bids and not Path(bids[0]).is_dir():
        raise InputError(bids[0], "BIDS directory does not exist")
    if config_file and not config_file.is_file():
        raise InputError(config_file, "no such config file")
    for f in (SNAKEFILE, DEFAULT_CONFIG):
        if not f.is_file():
            raise InputError(f, "missing from the installed package (a broken install: reinstall deepmir)")
    labels = []
    for lab in participant_label:
        m = LABEL.fullmatch(lab)
        if not m:
            raise InputError(lab, "participant label must be letters and digits (sub-X or sub-X_ses-Y)")
        labels.append(f"sub-{m.group(2)}{m.group(3) or ''}")
    out = os.path.abspath(out)
    config = [f"output_dir={out}", "bids_dir=" + (os.path.abspath(bids[0]) if bids else "null")]
    if labels:
        config.append("participants=[" + ",".join(labels) + "]")
    # Snakemake's own arguments first: targets stay targets, options that take lists end there
    target = ["participant"] if level == "participant" else []
    cmd = [str(Path(sys.executable).parent / "snakemake"), *target, *passthrough, "-s", str(SNAKEFILE),
           "--directory", out, "--cores", str(cores)]
    if profile:
        cmd += ["--profile", profile]
    # the default config, then the user's (the Snakefile's own `configfile:` is relative to the
    # working folder, which here is OUTPUT_DIR)
    cmd += ["--configfile", str(DEFAULT_CONFIG)]
    if config_file:
        cmd += [str(config_file.resolve())]
    cmd += ["--config", *config]
    return cmd
