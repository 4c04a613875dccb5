"""Subcommands of ``deepmir``: one module each, with ``register(subparsers)``."""
