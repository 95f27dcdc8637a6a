"""Reading run directories: the errors a user gets must name the problem and the fix."""
from __future__ import annotations

import json

import numpy as np
import pytest

from openmm_mace_lp.analysis import rundir
from openmm_mace_lp.analysis.atomic import write_json
from openmm_mace_lp.atomic import atomic_path
from synthetic_runs import make_run_dir


@pytest.fixture
def run(tmp_path):
    return make_run_dir(tmp_path / "fp64-seed1", n_frames=20, n_rows=50, n_side=3)


def test_reads_a_valid_run(run):
    opened = rundir.open_run(run)
    assert opened.policy == "fp64" and opened.seed == 1 and opened.n_atoms == 81
    state = opened.load_state()
    assert state.n_rows == 50 and state.has("density_g_cm3")
    traj = opened.load_trajectory()
    assert traj.n_frames == 20
    # First DCD frame after one interval (50 steps of 1 fs).
    np.testing.assert_allclose(traj.time[:2], [0.05, 0.10])
    np.testing.assert_allclose(opened.load_trajectory(stride=5).time, [0.05, 0.30, 0.55, 0.80])


def test_missing_manifest(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        rundir.open_run(tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rundir.open_run(tmp_path / "nowhere")


def test_wrong_schema_and_missing_keys(run):
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "schema": "other/9"}))
    with pytest.raises(ValueError, match="schema"):
        rundir.open_run(run)
    del manifest["timestep_fs"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="timestep_fs"):
        rundir.open_run(run)


def test_csv_missing_column_is_named(run):
    text = (run / "state.csv").read_text().replace("temperature_K", "T")
    (run / "state.csv").write_text(text)
    with pytest.raises(ValueError, match="temperature_K"):
        rundir.open_run(run).load_state()


def test_diverged_run_is_truncated_with_a_warning(run):
    lines = (run / "state.csv").read_text().splitlines()
    cells = lines[31].split(",")
    cells[2] = "nan"
    lines[31] = ",".join(cells)
    (run / "state.csv").write_text("\n".join(lines) + "\n")
    opened = rundir.open_run(run)
    state = opened.load_state()
    assert state.n_rows == 30
    assert state.truncated_at_step == 310
    assert any("diverged" in w for w in opened.warnings)


def test_partially_written_last_row_is_ignored(run):
    with open(run / "state.csv", "a") as handle:
        handle.write("510,0.51,-3")
    assert rundir.open_run(run).load_state().n_rows == 50


def test_header_only_csv(run):
    (run / "state.csv").write_text(",".join(rundir.STATE_COLUMNS) + "\n")
    with pytest.raises(ValueError, match="no rows"):
        rundir.open_run(run).load_state()


def test_missing_trajectory_is_reported(run):
    (run / "trajectory.dcd").unlink()
    with pytest.raises(FileNotFoundError, match="trajectory"):
        rundir.open_run(run).load_trajectory()


def test_find_runs_and_group_by_policy(tmp_path):
    for name, policy, seed in (("b", "bf16", 2), ("a", "bf16", 1), ("r", "fp64", 1)):
        make_run_dir(tmp_path / name, policy, seed, n_frames=5, n_rows=10, n_side=2)
    (tmp_path / "not-a-run").mkdir()
    groups = rundir.group_by_policy(rundir.find_runs(tmp_path))
    assert list(groups) == ["bf16", "fp64"]
    assert [r.seed for r in groups["bf16"]] == [1, 2]
    with pytest.raises(FileNotFoundError, match="no run directories"):
        rundir.find_runs(tmp_path / "not-a-run")


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_json_output_is_strict(tmp_path):
    write_json(tmp_path / "x.json", {"nan": float("nan"), "arr": np.arange(3),
                                     "inf": np.float64("inf")})
    assert json.loads((tmp_path / "x.json").read_text()) == {"nan": None, "arr": [0, 1, 2],
                                                            "inf": None}
