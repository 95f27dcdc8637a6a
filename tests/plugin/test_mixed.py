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


def test_interpolating_mixed_system_is_built_and_interpolates(tmp_path_factory):
    """createMixedSystem(interpolate=True): openmm-ml deep-copies the potential's forces into a
    CustomCVForce, and copying a TorchForce crashes the process (so does a CustomCVForce holding
    one); the plug-in builds its force itself, beside the CustomCVForce and scaled by the same
    parameter. At lambda_interpolate = 1 the energy is the mixed system's, at 0 the pure MM
    system's, and in between the straight line between them."""
    from openmm_mace_lp.capacity import torch_forces
    from openmm_mace_lp.potential import PLACEHOLDER_PREFIX

    path = model_file(tmp_path_factory.getbasetemp())
    system = water_box(3, spacing=0.31, seed=9)
    forcefield = app.ForceField("amber14/tip3pfb.xml")
    # Plain Coulomb (no cutoff): openmm-ml's interpolation of the ML region's MM nonbonded terms
    # is exact for it, so the lambda = 0 end is exactly the MM system.
    mm_system = forcefield.createSystem(system.topology, nonbondedMethod=app.NoCutoff, rigidWater=False)
    ml_atoms = list(range(9))
    potential = MLPotential("mace-lp", modelPath=str(path), policy="fp64", backend="e3nn")
    mixed = potential.createMixedSystem(system.topology, mm_system, ml_atoms, device="cpu")
    interpolating = potential.createMixedSystem(system.topology, mm_system, ml_atoms, interpolate=True, device="cpu")
    (cv_force,) = [f for f in interpolating.getForces() if isinstance(f, openmm.CustomCVForce)]
    assert cv_force.getGlobalParameterName(0) == "lambda_interpolate"
    inner = [cv_force.getCollectiveVariable(i) for i in range(cv_force.getNumCollectiveVariables())]
    assert sum(f.getName().startswith(PLACEHOLDER_PREFIX) for f in inner) == 1
    (torch_force,) = torch_forces(interpolating)  # beside the CustomCVForce, not inside it
    assert torch_force.getNumGlobalParameters() == 1 and torch_force.getGlobalParameterName(0) == "lambda_interpolate"

    def energy(omm_system, lam=None):
        context = openmm.Context(omm_system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(system.positions)
        if lam is not None:
            context.setParameter("lambda_interpolate", lam)
        return context.getState(getEnergy=True).getPotentialEnergy()._value

    mixed_energy, mm_energy = energy(mixed), energy(mm_system)
    assert abs(mixed_energy - mm_energy) > 1.0  # the two ends differ
    assert np.isclose(energy(interpolating, 1.0), mixed_energy, rtol=1e-9, atol=1e-6)
    assert np.isclose(energy(interpolating, 0.0), mm_energy, rtol=1e-9, atol=1e-6)
    assert np.isclose(energy(interpolating, 0.25), 0.25 * mixed_energy + 0.75 * mm_energy, rtol=1e-9, atol=1e-6)
