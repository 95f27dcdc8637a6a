"""openmm-ml finds every name through the entry point, whatever is imported first."""
from __future__ import annotations

import subprocess
import sys

import pytest

NAMES = ["mace-lp", "mace-off24-lp", "mace-off23-small-lp", "mace-off23-medium-lp", "mace-off23-large-lp"]


@pytest.mark.parametrize("first_import", ["openmmml", "openmm_mace_lp.potential", "openmm_mace_lp.entry_point"])
def test_names_are_registered(first_import):
    code = (f"import {first_import}\nfrom openmmml import MLPotential\n"
            f"print(sorted(n for n in MLPotential._implFactories if n.endswith('-lp')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(sorted(NAMES))
