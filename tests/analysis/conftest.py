"""Shared fixtures of the analysis tests (CPU only, synthetic data)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import synthetic_runs  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261127)


@pytest.fixture
def run_cli():
    """Run an analysis sub-command as ``mace-lp`` would (without the other packages)."""
    from openmm_mace_lp.analysis import cli

    def run(*argv: str) -> int:
        parser = argparse.ArgumentParser(prog="mace-lp")
        cli.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args([str(a) for a in argv])
        return args.func(args)

    return run


@pytest.fixture(scope="session")
def arms_dir(tmp_path_factory) -> Path:
    """fp64 x2, fp32 x2 (same physics), bf16 x2 (density +3 %, O-H bond 0.100 nm)."""
    root = tmp_path_factory.mktemp("arms")
    return synthetic_runs.make_arms_dir(root, {
        "fp64": {"ns_per_day": 10.0},
        "fp32": {"ns_per_day": 20.0},
        "bf16": {"ns_per_day": 25.0, "density": 1.03, "o_h_nm": 0.100},
    }, seeds=2)


@pytest.fixture(scope="session")
def comparison(arms_dir):
    from openmm_mace_lp.analysis.compare import compare_arms

    return compare_arms(arms_dir)
