"""The ``deepmir`` command. Each module in ``deepmir.commands`` adds one subcommand through
``register(subparsers)``; the function it sets as ``func`` receives the parsed arguments."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from deepmir import __version__
import deepmir.commands
from deepmir.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepmir", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"deepmir {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(deepmir.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"deepmir.commands.{info.name}")
        module.register(sub)
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
