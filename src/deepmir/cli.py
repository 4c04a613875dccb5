"""The ``deepmir`` command: one subcommand per workflow step.

Each stage package (``deepmir.<stage>.cli``, one per rule file of workflow/rules/) adds its
subcommands through ``register(subparsers)``; the function it sets as ``func`` receives the
parsed arguments. ``deepmir run`` (the workflow as a BIDS App, :mod:`deepmir.app`) is here."""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

from deepmir import __version__, app
from deepmir.errors import InputError

#: the stage packages whose ``cli`` module adds subcommands
STAGES = ("inputs", "anat", "qsm", "swi", "learn", "evaluate", "census", "synth", "atlas")


def register_run(sub):
    p = sub.add_parser("run", help="the workflow as a BIDS App: BIDS_DIR OUTPUT_DIR participant|group",
                       description=app.__doc__, usage="deepmir run [options] [BIDS_DIR] OUTPUT_DIR "
                                                  "{participant,group} [-- SNAKEMAKE_ARGS]")
    p.add_argument("paths", nargs="+", metavar="BIDS_DIR OUTPUT_DIR LEVEL",
                   help="the BIDS dataset (left out with --demo), the output folder, and the "
                        "analysis level: participant or group")
    p.add_argument("--participant-label", nargs="+", default=[], metavar="LABEL",
                   help="only these participants (with or without 'sub-'; sub-X takes all its "
                        "sessions, sub-X_ses-Y one)")
    p.add_argument("--cores", default="all", help="cores for Snakemake (default: all)")
    p.add_argument("--profile", help="a Snakemake profile (e.g. profiles/slurm)")
    p.add_argument("--config-file", type=Path, help="a config file (config/README.md); its "
                   "learn.experiments replace the demo's")
    p.add_argument("--demo", action="store_true", help="the synthetic cohort instead of a dataset")
    p.set_defaults(func=run, passthrough=[])


def run(args) -> int:
    cmd = app.command(args.paths, args.participant_label, args.cores, args.profile, args.config_file,
                      args.demo, args.passthrough)
    os.makedirs(cmd[cmd.index("--directory") + 1], exist_ok=True)
    return subprocess.run(cmd).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepmir", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"deepmir {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        importlib.import_module(f"deepmir.{stage}.cli").register(sub)
    register_run(sub)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = []
    if argv[:1] == ["run"] and "--" in argv:        # deepmir run … -- SNAKEMAKE_ARGS
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    if passthrough:
        args.passthrough = passthrough
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"deepmir {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
