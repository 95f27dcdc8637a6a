"""Fixtures of the simulation-recipe tests: a tiny MACE model and tiny water runs (CPU).

Every MD test uses 8 waters (24 atoms), the Reference platform, fp64 unless it says
otherwise, and a few tens of steps at most: the point is the plumbing (files, checkpoints,
guards, arms), not the physics. The tiny model has random weights, so the dynamics run hot;
the temperature guard is widened accordingly.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # sim_helpers

# Same architecture as tests/plugin/helpers.ARCH_BOTH: quick to script on a CPU.
TINY_SEED = 1


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    import mace  # noqa: F401  (before e3nn)

    from openmm_mace_lp.systems.architectures import TINY, build_mace, save_model

    path = tmp_path_factory.mktemp("sim-models") / "tiny.model"
    save_model(build_mace(dataclasses.replace(TINY, max_ell=1, correlation=3), seed=TINY_SEED), path)
    return path
