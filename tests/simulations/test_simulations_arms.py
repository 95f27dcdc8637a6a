"""Precision arms: one run directory per policy x seed, all from the same start."""
from __future__ import annotations

import json

import numpy as np
import openmm
import pytest

from openmm_mace_lp.analysis import rundir
from openmm_mace_lp.simulations.arms import Arm, parse_only, parse_policies, parse_seeds, run_arms
from sim_helpers import tiny_config

POLICIES = ["fp64", "fp32"]
SEEDS = [1, 2]


@pytest.fixture(scope="module")
def arms_dir(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("arms") / "arms"
    config = tiny_config(tiny_model, "npt", run__equilibration_steps=0, run__production_steps=2,
                         run__minimize=True, run__minimize_max_iterations=3)
    run_arms(config, root, POLICIES, SEEDS, quiet=True)
    return root


def initial_state(run_dir):
    state = openmm.XmlSerializer.deserialize((run_dir / "initial_state.xml").read_text())
    return (np.asarray(state.getPositions(asNumpy=True)._value),
            np.asarray(state.getVelocities(asNumpy=True)._value),
            np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value))


def test_one_directory_per_arm_with_identical_starts(arms_dir):
    names = sorted(p.name for p in arms_dir.iterdir() if p.is_dir())
    assert names == ["fp32-seed1", "fp32-seed2", "fp64-seed1", "fp64-seed2"]
    starts = {name: initial_state(arms_dir / name) for name in names}
    reference = starts["fp64-seed1"]
    for name, (positions, velocities, box) in starts.items():
        np.testing.assert_array_equal(positions, reference[0])  # one structure for all arms
        np.testing.assert_array_equal(box, reference[2])
        same_seed = starts[f"fp64-seed{name[-1]}"]
        np.testing.assert_array_equal(velocities, same_seed[1])  # same seed -> same velocities
    assert not np.array_equal(starts["fp64-seed1"][1], starts["fp64-seed2"][1])
    for name in names:
        manifest = json.loads((arms_dir / name / "manifest.json").read_text())
        assert manifest["arm"] == name and manifest["status"] == "completed"
        assert manifest["policy"] == name.split("-")[0] and manifest["seed"] == int(name[-1])
        assert manifest["minimization"]["done"] is False  # minimised once, in the shared start
    record = json.loads((arms_dir / "arms.json").read_text())
    assert record["policies"] == POLICIES and record["seeds"] == SEEDS


def test_analysis_layer_finds_the_arms(arms_dir):
    groups = rundir.group_by_policy(rundir.find_runs(arms_dir))
    assert list(groups) == ["fp32", "fp64"]
    assert [run.seed for run in groups["fp64"]] == SEEDS
    assert groups["fp32"][0].load_state().n_rows == 1


def test_rerun_skips_finished_arms(arms_dir, tiny_model):
    config = tiny_config(tiny_model, "npt", run__equilibration_steps=0, run__production_steps=2,
                         run__minimize=True, run__minimize_max_iterations=3)
    before = (arms_dir / "fp64-seed1" / "manifest.json").read_text()
    assert len(run_arms(config, arms_dir, POLICIES, SEEDS, quiet=True)) == 4
    assert (arms_dir / "fp64-seed1" / "manifest.json").read_text() == before
    changed = tiny_config(tiny_model, "npt", run__equilibration_steps=0, run__production_steps=2,
                          run__minimize=True, run__minimize_max_iterations=3, integrator__temperature_K=350.0)
    with pytest.raises(ValueError, match="integrator.temperature_K"):
        run_arms(changed, arms_dir, POLICIES, SEEDS, quiet=True)


def test_arm_selection_parsing():
    arms = [Arm(p, s) for p in ("fp64", "bf16") for s in (1, 2)]
    assert parse_only(["bf16/2", "fp64-seed1"], arms) == [Arm("bf16", 2), Arm("fp64", 1)]
    with pytest.raises(ValueError, match="--only 'fp16/1'"):
        parse_only(["fp16/1"], arms)
    assert parse_policies("fp64, bf16,fp64") == ["fp64", "bf16"]
    with pytest.raises(ValueError, match="unknown fp8"):
        parse_policies("fp64,fp8")
    assert parse_seeds("1,2, 3") == [1, 2, 3]
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("1,x")
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("0")


def test_report_runs_on_recipe_arms(tmp_path, tiny_model):
    """The analysis report, end to end, on run directories the recipes wrote (not synthetic)."""
    from openmm_mace_lp.cli import main

    root = tmp_path / "arms"
    config = tiny_config(tiny_model, "npt", run__equilibration_steps=0, run__production_steps=20)
    run_arms(config, root, ["fp64", "bf16"], [1], quiet=True)
    out = tmp_path / "report"
    assert main(["report", str(root), "-o", str(out)]) == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    text = (out / "report.md").read_text()
    assert "bf16" in text and "fp64" in text
    assert list((out / "figures").glob("*.png"))
