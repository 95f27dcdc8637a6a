"""Shared test set-up: a private cache, and small MACE models built from mace's constructors."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Exports go to a per-session cache so tests never see a stale file from elsewhere."""
    os.environ["OPENMM_MACE_LP_CACHE"] = str(tmp_path_factory.mktemp("mace-lp-cache"))
    yield
