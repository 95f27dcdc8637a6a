"""The ``mace-lp`` command line: one sub-command per stage of the data path.

Each stage's package registers its own sub-commands through a ``register(subparsers)``
function, so this file only wires them together. Commands run quietly: the known-harmless
upstream warnings are filtered (``upstream``), and MDTraj's ``dcdplugin)`` lines are dropped
from stdout; our own output, and every other upstream message, is kept.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Modules that contribute sub-commands, in the order of the data path.
_COMMAND_MODULES = (
    "openmm_mace_lp.commands",  # policies, export, run
    "openmm_mace_lp.simulations.cli",  # simulate, arms
    "openmm_mace_lp.simulations.campaign",
    "openmm_mace_lp.analysis.cli",  # analyze, compare, report, static
    "openmm_mace_lp.bench",  # bench
    "openmm_mace_lp.profile",  # profile
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mace-lp",
        description="Precision-aware MACE for OpenMM: export, simulate, analyse.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .upstream import install_warning_filters, without_dcd_plugin_lines

    install_warning_filters()
    try:
        with without_dcd_plugin_lines():
            return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # Our errors are written to be read by a person: no traceback.
        print(f"mace-lp {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
