"""The OpenMM path reproduces mace-torch's own eager evaluation (MACECalculator, matscipy).

Energies are compared as interaction energies (openmm-ml's default: the total minus the atoms'
E0s), against the float64 eager model. The total is dominated by the E0s (-2042 eV per O
atom), so a tolerance relative to it would let through kJ/mol errors of the part MACE computes;
the test models also carry a non-zero per-atom shift (helpers.TEST_SHIFT_EV), which a module
that dropped the model's ScaleShift would miss.
"""
from __future__ import annotations

import pytest
from openmmml import MLPotential

from .helpers import (TEST_SHIFT_EV, acetamide, eager_reference, eager_reference_with_interaction, model,
                      model_file, openmm_state, rel_error, water_box)

# Relative force error (Frobenius) allowed against eager MACE in the same dtype, and relative
# interaction-energy error against eager float64 MACE.
TOLERANCE = {"fp64": 1e-10, "fp32": 1e-5}

SYSTEMS = {"water": lambda: water_box(2), "acetamide": acetamide}


def test_test_models_carry_a_shift():
    assert float(model().scale_shift.shift) == pytest.approx(TEST_SHIFT_EV)


@pytest.mark.parametrize("backend", ["e3nn", "cueq"])
@pytest.mark.parametrize("policy", ["fp64", "fp32"])
@pytest.mark.parametrize("system_name", ["water", "acetamide"])
def test_openmm_matches_eager_mace(tmp_path_factory, backend, policy, system_name):
    path = model_file(tmp_path_factory.getbasetemp())
    system = SYSTEMS[system_name]()
    _, _, reference_interaction = eager_reference_with_interaction(path, system)
    _, reference_forces = eager_reference(path, system, "float64" if policy == "fp64" else "float32")
    potential = MLPotential("mace-lp", modelPath=str(path), policy=policy, backend=backend)
    omm_system = potential.createSystem(system.topology, device="cpu")  # interaction energy
    energy, forces = openmm_state(omm_system, system)
    assert rel_error(forces, reference_forces) <= TOLERANCE[policy]
    # The shift alone is 0.37 eV per atom; the model's own part is of the same order.
    assert abs(reference_interaction) > 0.5 * TEST_SHIFT_EV * 96.485 * len(system.positions)
    assert abs(energy - reference_interaction) <= TOLERANCE[policy] * abs(reference_interaction)


def test_full_angular_model_matches_eager_mace(tmp_path_factory):
    """max_ell 3, correlation 3 (MACE-OFF's angular structure), e3nn, float64."""
    path = model_file(tmp_path_factory.getbasetemp(), "full")
    system = water_box(2, seed=3)
    reference_energy, reference_forces, reference_interaction = eager_reference_with_interaction(path, system)
    potential = MLPotential("mace-lp", modelPath=str(path), policy="fp64", backend="e3nn")
    energy, forces = openmm_state(potential.createSystem(system.topology, device="cpu", returnEnergyType="energy"), system)
    assert rel_error(forces, reference_forces) <= 1e-10
    # The total, with the E0s, in absolute terms a float64 sum of ~1e6 kJ/mol resolves.
    assert abs(energy - reference_energy) <= 1e-6
    interaction, _ = openmm_state(potential.createSystem(system.topology, device="cpu"), system)
    assert abs(interaction - reference_interaction) <= 1e-10 * abs(reference_interaction)


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
