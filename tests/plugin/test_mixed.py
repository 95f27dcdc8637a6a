"""createMixedSystem: MACE on a subset of atoms, a classical force field for the rest."""
from __future__ import annotations

import numpy as np
import openmm
import openmm.app as app
from openmmml import MLPotential

from .helpers import TestSystem, evaluate, model_file, openmm_state, water_box


def test_ml_subset_force_group_equals_mace_on_the_subset(tmp_path_factory):
    path = model_file(tmp_path_factory.getbasetemp())
    system = water_box(3, spacing=0.31, seed=9)
    forcefield = app.ForceField("amber14/tip3pfb.xml")
    mm_system = forcefield.createSystem(system.topology, nonbondedMethod=app.CutoffPeriodic,
                                        nonbondedCutoff=0.45 * openmm.unit.nanometer, rigidWater=False)
    ml_atoms = list(range(9))  # the first three waters
    potential = MLPotential("mace-lp", modelPath=str(path), policy="fp64", backend="e3nn")
    mixed = potential.createMixedSystem(system.topology, mm_system, ml_atoms, forceGroup=5, device="cpu")
    for i, force in enumerate(mixed.getForces()):
        if force.getForceGroup() != 5:
            force.setForceGroup(0)
    integrator = openmm.VerletIntegrator(0.001)
    context = openmm.Context(mixed, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(system.positions)
    state = context.getState(getEnergy=True, getForces=True, groups={5})
    ml_forces = state.getForces(asNumpy=True)._value

    numbers = system.atomic_numbers[:9]
    subset = TestSystem(system.topology, system.positions[:9], system.box)
    energy, forces = evaluate(subset, numbers=numbers)
    assert np.isclose(state.getPotentialEnergy()._value, energy, rtol=1e-12)
    assert np.allclose(ml_forces[:9], forces, atol=1e-9 * np.abs(forces).max())
    assert np.all(ml_forces[9:] == 0)
