"""A few MD steps through OpenMM's Reference and CPU platforms, and NVE energy conservation."""
from __future__ import annotations

import numpy as np
import openmm
import openmm.unit as unit
import pytest
from openmmml import MLPotential

from .helpers import model_file, water_box


def _context(tmp_path_factory, backend, policy, platform, integrator, seed=0):
    path = model_file(tmp_path_factory.getbasetemp())
    system = water_box(2, spacing=0.33, seed=seed)
    potential = MLPotential("mace-lp", modelPath=str(path), policy=policy, backend=backend)
    omm_system = potential.createSystem(system.topology, device="cpu", platform=platform)
    context = openmm.Context(omm_system, integrator, openmm.Platform.getPlatformByName(platform))
    context.setPositions(system.positions)
    return context


@pytest.mark.parametrize("backend", ["e3nn", "cueq"])
@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_langevin_steps_move_atoms_and_stay_finite(tmp_path_factory, backend, platform):
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
    integrator.setRandomNumberSeed(1)
    context = _context(tmp_path_factory, backend, "fp32", platform, integrator)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    before = context.getState(getPositions=True).getPositions(asNumpy=True)._value
    integrator.step(5)
    state = context.getState(getPositions=True, getEnergy=True, getForces=True)
    after = state.getPositions(asNumpy=True)._value
    assert np.all(np.isfinite(after)) and np.isfinite(state.getPotentialEnergy()._value)
    displacement = np.linalg.norm(after - before, axis=1)
    assert 0 < displacement.max() < 0.05  # nm in 2.5 fs: thermal motion, no blow-up


def test_nve_energy_is_conserved_in_fp64(tmp_path_factory):
    """Velocity Verlet at 0.25 fs: total energy fluctuates and drifts far less than kT/atom."""
    integrator = openmm.VerletIntegrator(0.25 * unit.femtosecond)
    context = _context(tmp_path_factory, "e3nn", "fp64", "Reference", integrator, seed=11)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 50)
    context.setVelocitiesToTemperature(100 * unit.kelvin, 3)
    totals = []
    for _ in range(20):
        integrator.step(5)
        state = context.getState(getEnergy=True)
        totals.append((state.getPotentialEnergy() + state.getKineticEnergy()).value_in_unit(unit.kilojoule_per_mole))
    kinetic = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
    n_atoms = context.getSystem().getNumParticles()
    spread = max(totals) - min(totals)
    assert kinetic > 0.1 * n_atoms  # it does move
    assert spread < 0.005 * kinetic, (spread, kinetic)
