"""barostat.scale_molecules: the barostat sees waters, and the energy does not change."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from openmm_mace_lp.simulations.config import resolved
from openmm_mace_lp.simulations.openmm_setup import create_system
from openmm_mace_lp.simulations.structure import load_structure

from sim_helpers import tiny_config
from tests.benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


def _context(system, structure):
    import openmm

    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in structure.box])
    context.setPositions(structure.positions)
    return context


def _energy_forces(context):
    from openmm import unit

    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


def test_molecule_bonds_give_the_barostat_molecules_and_no_energy(tiny_model):
    config = resolved(tiny_config(tiny_model, "npt"))
    structure = load_structure(config.system)
    n_waters = structure.n_atoms // 3
    with_bonds = _context(create_system(config, structure), structure)
    config.barostat.scale_molecules = False
    without = _context(create_system(config, structure), structure)
    assert len(with_bonds.getMolecules()) == n_waters
    assert len(without.getMolecules()) == structure.n_atoms
    energy_a, forces_a = _energy_forces(with_bonds)
    energy_b, forces_b = _energy_forces(without)
    assert energy_a == energy_b
    assert np.array_equal(forces_a, forces_b)


def _barostat_benchmark():
    return load_benchmark("barostat_molecules")


def test_acceptance_from_a_volume_series_once_per_trial():
    acceptance = _barostat_benchmark().acceptance
    volumes = np.array([10.0, 10.0, 10.1, 10.1, 10.05, 10.05, 10.05])  # 2 of 6 trials moved
    fraction, step = acceptance(volumes)
    assert fraction == pytest.approx(2 / 6)
    assert step == pytest.approx(np.median([0.1 / 10.0, 0.05 / 10.1]))
    with pytest.raises(ValueError, match="two volumes"):
        acceptance(np.array([1.0]))


def test_the_teacher_runs_through_the_same_recipe(tmp_path):
    """model.kind = "amoeba": the run's System is the teacher's own (AMOEBA, extrapolated
    polarisation, PME 0.8 nm), and the recipe writes an ordinary run directory."""
    import openmm

    from openmm_mace_lp.simulations.config import load_config
    from openmm_mace_lp.simulations.run import simulate
    from openmm_mace_lp.systems.recipes.teachers import AmoebaTeacher

    config = load_config(None, ["model.kind=amoeba", f"system.pdb={ROOT / 'systems/structures/water_343.pdb'}",
                                "run.minimize=false", "run.equilibration_steps=0", "run.production_steps=2",
                                "output.report_interval_steps=1", "output.trajectory_interval_steps=2",
                                "platform.name=Reference"], ensemble="npt")
    structure = load_structure(config.system)
    system = create_system(resolved(config), structure)
    names = {type(force).__name__ for force in system.getForces()}
    assert {"AmoebaMultipoleForce", "AmoebaVdwForce", "MonteCarloBarostat"} <= names
    topology = structure.topology
    topology.setPeriodicBoxVectors([openmm.Vec3(*row) for row in structure.box])
    teacher = AmoebaTeacher().create_system(topology, periodic=True, polarization="extrapolated")
    run_energy, _ = _energy_forces(_context(system, structure))
    teacher_energy, _ = _energy_forces(_context(teacher, structure))
    assert run_energy == pytest.approx(teacher_energy, rel=1e-12)
    result = simulate(config, tmp_path / "teacher", quiet=True)
    assert result.status == "completed"
    rows = (tmp_path / "teacher" / "state.csv").read_text().splitlines()
    assert len(rows) == 3  # header + steps 1 and 2
