"""The `deepmir` command: every subcommand registered, and starting it stays light (no torch
import until a command needs it: hundreds of short jobs per cohort each pay the start-up)."""
import subprocess
import sys


def test_parser_has_every_command_and_does_not_import_torch():
    code = ("import sys\nfrom deepmir.cli import build_parser\n"
            "p = build_parser()\n"
            "names = set(p._subparsers._group_actions[0].choices)\n"
            "print(sorted(names))\n"
            "print('torch' in sys.modules, 'ants' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, heavy = res.stdout.strip().splitlines()
    for cmd in ("synth", "validate", "inputs", "montage", "census", "cohort-table"):
        assert f"'{cmd}'" in names
    assert heavy == "False False"
