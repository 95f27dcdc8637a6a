"""Each ensemble runs on the Reference platform and writes a well-formed run directory."""
from __future__ import annotations

import csv
import json
import tomllib

import mdtraj as md
import numpy as np
import openmm
import pytest

from openmm_mace_lp.analysis import rundir
from openmm_mace_lp.analysis.analyze import AnalysisOptions, analyze_run
from openmm_mace_lp.simulations.config import config_from_dict
from openmm_mace_lp.simulations.reporters import STATE_COLUMNS
from openmm_mace_lp.simulations.run import simulate
from sim_helpers import tiny_config

# NVT runs long enough for the analysis layer (it wants >= 8 state rows).
STEPS = {"nvt": 16, "npt": 8, "nve": 8}
TRAJECTORY_INTERVAL = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("ensembles")
    done = {}
    for ensemble, steps in STEPS.items():
        config = tiny_config(tiny_model, ensemble, run__production_steps=steps,
                             output__trajectory_interval_steps=TRAJECTORY_INTERVAL,
                             output__checkpoint_interval_steps=steps)
        done[ensemble] = simulate(config, root / ensemble, quiet=True).run_dir
    return done


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize("ensemble", list(STEPS))
def test_run_directory_is_well_formed(runs, ensemble):
    run_dir, steps = runs[ensemble], STEPS[ensemble]
    rows = read_rows(run_dir / "state.csv")
    assert tuple(rows[0]) == STATE_COLUMNS
    assert [int(row[0]) for row in rows[1:]] == list(range(2, steps + 1, 2))
    values = np.array([[float(cell) for cell in row[:8]] for row in rows[1:]])
    assert np.all(np.isfinite(values))
    np.testing.assert_allclose(values[:, 1], values[:, 0] * 0.5e-3)  # time_ps = step * 0.5 fs
    np.testing.assert_allclose(values[:, 4], values[:, 2] + values[:, 3])  # total = potential + kinetic
    assert [int(row[0]) for row in read_rows(run_dir / "equilibration.csv")[1:]] == [2]

    traj = md.load_dcd(str(run_dir / "trajectory.dcd"), top=str(run_dir / "topology.pdb"))
    assert traj.n_frames == steps // TRAJECTORY_INTERVAL and traj.n_atoms == 24
    assert traj.unitcell_lengths is not None

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["schema"] == "openmm-mace-lp/run/1" and manifest["status"] == "completed"
    assert manifest["ensemble"] == ensemble and manifest["arm"] == "fp64-seed1"
    assert manifest["policy"] == "fp64" and manifest["backend"] == "e3nn" and manifest["seed"] == 1
    assert manifest["steps_completed"] == steps and manifest["n_atoms"] == 24
    assert manifest["platform"] == "Reference" and manifest["device"] == "cpu"
    assert manifest["report_interval_steps"] == 2
    assert manifest["trajectory_interval_steps"] == TRAJECTORY_INTERVAL
    assert manifest["ns_per_day"] > 0 and manifest["wall_time_s"] > 0
    assert len(manifest["model"]["sha256"]) == 64 and "openmm" in manifest["versions"]
    assert (manifest["pressure_bar"] is not None) == (ensemble == "npt")

    stored = config_from_dict(tomllib.loads((run_dir / "config.toml").read_text()))
    assert stored.ensemble == ensemble and stored.run.production_steps == steps
    final = openmm.XmlSerializer.deserialize((run_dir / "final_state.xml").read_text())
    assert final.getStepCount() == steps
    assert "completed" in (run_dir / "run.log").read_text()


def test_npt_changes_the_volume_and_nvt_nve_do_not(runs):
    volumes = {ens: np.array([float(row[6]) for row in read_rows(runs[ens] / "state.csv")[1:]])
               for ens in STEPS}
    assert len(np.unique(volumes["npt"])) > 1
    assert np.ptp(volumes["nvt"]) == 0 and np.ptp(volumes["nve"]) == 0


def test_nve_production_uses_verlet(runs):
    """NVE has no thermostat: energies conserved to integration error, not reset by friction."""
    rows = np.array([[float(c) for c in row[:8]] for row in read_rows(runs["nve"] / "state.csv")[1:]])
    total = rows[:, 4]
    assert np.ptp(total) < 0.05 * np.abs(rows[:, 3]).mean()
    assert json.loads((runs["nve"] / "manifest.json").read_text())["friction_per_ps"] is None


def test_analysis_layer_reads_the_run(runs):
    run = rundir.open_run(runs["nvt"])
    assert run.policy == "fp64" and run.n_atoms == 24 and not run.warnings
    traj = run.load_trajectory()
    assert traj.n_frames == STEPS["nvt"] // TRAJECTORY_INTERVAL and not run.warnings
    analysis = analyze_run(runs["nvt"], AnalysisOptions(equilibration="none", rdf_r_max_nm=0.3, rdf_blocks=2,
                                                        msd_groups=2))
    assert "temperature" in analysis.scalars and analysis.series["time_ps"].size == STEPS["nvt"] // 2
    assert len(rundir.group_by_policy(rundir.find_runs(runs["nvt"].parent))["fp64"]) == 3


def test_bf16_npt_run_carries_the_measured_barostat_caution(tmp_path, tiny_model, runs):
    from openmm_mace_lp.simulations.config import BF16_NPT_CAUTION, cautions

    config = tiny_config(tiny_model, "npt", model__policy="bf16", run__production_steps=4,
                         output__checkpoint_interval_steps=4)
    run_dir = simulate(config, tmp_path / "bf16-npt", quiet=True).run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["cautions"] == [BF16_NPT_CAUTION]
    assert "caution: policy bf16 with the Monte Carlo barostat" in (run_dir / "run.log").read_text()
    # none where nothing is known to be biased: fp64 NPT (the module's run), bf16 NVT
    assert json.loads((runs["npt"] / "manifest.json").read_text())["cautions"] == []
    assert cautions(tiny_config(tiny_model, "nvt", model__policy="bf16")) == []
