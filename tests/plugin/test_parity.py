"""The OpenMM path reproduces mace-torch's own eager evaluation (MACECalculator, matscipy)."""
from __future__ import annotations

import pytest
from openmmml import MLPotential

from .helpers import acetamide, eager_reference, model_file, openmm_state, rel_error, water_box

# Relative force error (Frobenius) allowed against eager MACE in the same dtype.
TOLERANCE = {"fp64": 1e-10, "fp32": 1e-5}

SYSTEMS = {"water": lambda: water_box(2), "acetamide": acetamide}


@pytest.mark.parametrize("backend", ["e3nn", "cueq"])
@pytest.mark.parametrize("policy", ["fp64", "fp32"])
@pytest.mark.parametrize("system_name", ["water", "acetamide"])
def test_openmm_matches_eager_mace(tmp_path_factory, backend, policy, system_name):
    path = model_file(tmp_path_factory.getbasetemp())
    system = SYSTEMS[system_name]()
    reference_energy, reference_forces = eager_reference(path, system, "float64" if policy == "fp64" else "float32")
    potential = MLPotential("mace-lp", modelPath=str(path), policy=policy, backend=backend)
    omm_system = potential.createSystem(system.topology, device="cpu", returnEnergyType="energy")
    energy, forces = openmm_state(omm_system, system)
    assert rel_error(forces, reference_forces) <= TOLERANCE[policy]
    assert abs(energy - reference_energy) <= TOLERANCE[policy] * abs(reference_energy)


def test_full_angular_model_matches_eager_mace(tmp_path_factory):
    """max_ell 3, correlation 3 (MACE-OFF's angular structure), e3nn, float64."""
    path = model_file(tmp_path_factory.getbasetemp(), "full")
    system = water_box(2, seed=3)
    reference_energy, reference_forces = eager_reference(path, system)
    potential = MLPotential("mace-lp", modelPath=str(path), policy="fp64", backend="e3nn")
    energy, forces = openmm_state(potential.createSystem(system.topology, device="cpu", returnEnergyType="energy"), system)
    assert rel_error(forces, reference_forces) <= 1e-10
    assert abs(energy - reference_energy) <= 1e-10 * abs(reference_energy)


def test_interaction_energy_excludes_atomic_energies(tmp_path_factory):
    """openmm-ml's default energy is the interaction energy: total minus the E0 of each atom."""
    import numpy as np

    from .helpers import model

    path = model_file(tmp_path_factory.getbasetemp())
    system = acetamide()
    total, _ = eager_reference(path, system)
    table = [int(z) for z in model().atomic_numbers]
    e0 = model().atomic_energies_fn.atomic_energies.detach().numpy().reshape(-1)
    expected = total - sum(e0[table.index(z)] for z in system.atomic_numbers) * 96.48533212331002
    potential = MLPotential("mace-lp", modelPath=str(path), policy="fp64", backend="e3nn")
    energy, _ = openmm_state(potential.createSystem(system.topology, device="cpu"), system)
    assert np.isclose(energy, expected, rtol=1e-10, atol=1e-8)
