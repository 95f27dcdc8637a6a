"""Guards: a non-finite force or a runaway temperature stops the run, keeps the last good
checkpoint and writes the offending frame; the run can then be resumed from that checkpoint."""
from __future__ import annotations

import json

import mdtraj as md
import numpy as np
import openmm
import pytest
from openmm import unit

from openmm_mace_lp.simulations.checkpoint import read_records
from openmm_mace_lp.simulations.config import load_config
from openmm_mace_lp.simulations.guards import GuardError, GuardLimits, find_problem
from openmm_mace_lp.simulations.reporters import Thermo
from openmm_mace_lp.simulations.run import RunHooks, simulate
from sim_helpers import SetParameterAt, add_switchable_force, tiny_config


def test_non_finite_forces_stop_the_run_and_keep_the_checkpoint(tmp_path, tiny_model):
    config = tiny_config(tiny_model, "nvt", run__production_steps=8, output__checkpoint_interval_steps=4)
    run_dir = tmp_path / "run"
    hooks = RunHooks(modify_system=add_switchable_force,
                     reporters={"production": [SetParameterAt(6, "k", float("nan"))]})
    with pytest.raises(GuardError, match=r"production step 6: non-finite forces on 24 atom\(s\)") as caught:
        simulate(config, run_dir, quiet=True, hooks=hooks)
    message = str(caught.value)
    assert "last good checkpoint (production step 4" in message and "--resume" in message

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failure"]["kind"] == "guard"
    assert manifest["failure"]["step"] == 6 and manifest["steps_completed"] == 4
    records = read_records(run_dir)
    assert (records[0].phase, records[0].step) == ("production", 4)
    assert (run_dir / records[0].file).is_file()
    frame = openmm.XmlSerializer.deserialize((run_dir / "failure-production-step6.xml").read_text())
    assert not np.all(np.isfinite(frame.getForces(asNumpy=True)._value))
    assert (run_dir / "failure-production-step6.pdb").is_file()
    rows = (run_dir / "state.csv").read_text().splitlines()
    assert [int(row.split(",")[0]) for row in rows[1:]] == [2, 4]  # nothing written from step 6

    # The advice is what the tools allow: --resume keeps the timestep and policy, and a new run
    # can start from the last good state with a smaller timestep.
    assert "not the timestep or the policy" in message
    last_good = run_dir / "last_good_state.xml"
    assert f"--set system.state={last_good}" in message and "integrator.timestep_fs=0.25" in message
    good = openmm.XmlSerializer.deserialize(last_good.read_text())
    assert good.getTime().value_in_unit(unit.picosecond) == pytest.approx(4 * 0.5e-3)
    # Independent record of that state: the trajectory frame the run wrote at step 4 (float32, A).
    frames = md.load_dcd(str(run_dir / "trajectory.dcd"), top=str(run_dir / "topology.pdb"))
    assert frames.n_frames == 2  # steps 2 and 4
    good_nm = np.asarray(good.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    np.testing.assert_allclose(frames.xyz[1], good_nm, atol=2e-6)

    # The kept checkpoint is good: without the fault the run resumes and completes.
    resumed = simulate(None, run_dir, resume=True, quiet=True, hooks=RunHooks(modify_system=add_switchable_force))
    assert resumed.status == "completed" and resumed.manifest["steps_completed"] == 8

    # Following the advice: a new run from the last good state with half the timestep.
    settings = [f"system.state={last_good}", "run.minimize=false", "integrator.timestep_fs=0.25"]
    follow = simulate(load_config(run_dir / "config.toml", settings), tmp_path / "run-next", quiet=True)
    assert follow.status == "completed" and follow.manifest["timestep_fs"] == 0.25
    start = openmm.XmlSerializer.deserialize((tmp_path / "run-next" / "initial_state.xml").read_text())
    np.testing.assert_array_equal(np.asarray(start.getPositions(asNumpy=True)._value), good_nm)


def toy_state(temperature: float, nan_force: bool = False):
    """A State of a two-particle system with a chosen kinetic temperature (no MACE)."""
    system = openmm.System()
    for _ in range(2):
        system.addParticle(1.0)
    force = openmm.CustomExternalForce("k*x")
    force.addGlobalParameter("k", float("nan") if nan_force else 0.0)
    force.addParticle(0, [])
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions([[0, 0, 0], [1, 0, 0]])
    # dof = 6: T = 2 KE / (6 R) with KE = v^2 (two unit masses moving at +-v along x).
    speed = np.sqrt(3 * 8.314462618e-3 * temperature)
    context.setVelocities([[speed, 0, 0], [-speed, 0, 0]] * unit.nanometer / unit.picosecond)
    return context.getState(getEnergy=True, getForces=True, getPositions=True)


@pytest.mark.parametrize("temperature, check_low, expected", [
    (300.0, True, None),
    (700.0, True, "exceeds 2 x the target 300 K (guards.max_temperature_factor)"),
    (50.0, True, "below 0.25 x the target 300 K (guards.min_temperature_factor)"),
    (50.0, False, None),  # equilibration: the post-minimisation dip is expected
])
def test_temperature_guard(temperature, check_low, expected):
    limits = GuardLimits(300.0, 2.0, 0.25, True)
    problem = find_problem(toy_state(temperature), Thermo(6, 2.0, 0.001), limits, check_low)
    assert (problem is None) if expected is None else expected in problem


def test_non_finite_force_guard():
    limits = GuardLimits(300.0, 2.0, 0.25, True)
    assert "non-finite forces on 1 atom(s)" in find_problem(toy_state(300.0, nan_force=True),
                                                              Thermo(6, 2.0, 0.001), limits, True)
