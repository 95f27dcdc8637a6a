"""Checkpoint and resume: a run killed mid-way and resumed is the uninterrupted run, exactly.

On the Reference platform with NPT (Langevin noise and Monte Carlo barostat moves both draw
from the random number generator stored in OpenMM checkpoints; the barostat's adaptive step
size is not stored, which ``output.reinitialize_on_checkpoint`` takes care of).
"""
from __future__ import annotations

import csv
import json
import os
import signal
import time

import mdtraj as md
import numpy as np
import openmm
import pytest

from openmm_mace_lp.simulations.checkpoint import read_records
from openmm_mace_lp.simulations.run import RunInterrupted, simulate
from sim_helpers import SignalAt, tiny_config

PRODUCTION = 12
KILL_AT = 10  # after the checkpoint at step 8, with rows 10 and a frame at 10 written after it


def config_for(model, **overrides):
    settings = dict(run__production_steps=PRODUCTION, output__checkpoint_interval_steps=4,
                    output__trajectory_interval_steps=2)
    settings.update(overrides)
    return tiny_config(model, "npt", **settings)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("resume")
    config = config_for(tiny_model)
    whole = simulate(config, root / "whole", quiet=True).run_dir
    killed = root / "killed"
    # A scheduler's stop: a real SIGTERM to this process while it steps.
    with pytest.raises(RunInterrupted, match="SIGTERM"):
        simulate(config, killed, quiet=True, hooks=_hooks({"production": [SignalAt(KILL_AT, signal.SIGTERM)]}))
    state = {"manifest": json.loads((killed / "manifest.json").read_text()),
             "records": read_records(killed), "csv": (killed / "state.csv").read_text(),
             "sigterm_handler": signal.getsignal(signal.SIGTERM)}
    # A kill can also land mid-write: leave half a row and half a frame behind, and the
    # temporary files of atomic writes that a SIGKILL leaves (beside a file that is not ours).
    with open(killed / "state.csv", "a") as handle:
        handle.write("12,0.006,-1")
    with open(killed / "trajectory.dcd", "ab") as handle:
        handle.write(b"\0" * 100)
    state["leftovers"] = [_leftover_of_atomic_write(killed / name) for name in LEFTOVER_TARGETS]
    (killed / NOT_OURS).write_bytes(b"partial")
    resumed = simulate(None, killed, resume=True, quiet=True)
    return whole, killed, state, resumed


LEFTOVER_TARGETS = ("manifest.json", "checkpoint.json", "checkpoints/production-000000000012.chk")
NOT_OURS = ".notes.tmp"


def _leftover_of_atomic_write(target):
    """The temporary file openmm_mace_lp.atomic.atomic_path makes for ``target`` (same naming),
    as a SIGKILL between its creation and the rename leaves it."""
    import os
    import tempfile

    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp" + target.suffix)
    os.write(fd, b"partial")
    os.close(fd)
    return name


def rows(run_dir):
    with open(run_dir / "state.csv", newline="") as handle:
        return [row[:-1] for row in csv.reader(handle)]  # all but the wall-clock speed column


def test_kill_left_the_last_checkpoint_and_rows_after_it(pair):
    _, _, state, _ = pair
    assert state["manifest"]["status"] == "interrupted"
    assert state["manifest"]["failure"]["kind"] == "interrupted"
    assert state["manifest"]["failure"]["cause"] == "SIGTERM"
    assert state["sigterm_handler"] is signal.SIG_DFL  # the run restored the default on the way out
    assert state["manifest"]["steps_completed"] == 8
    assert state["records"][0].phase == "production" and state["records"][0].step == 8
    assert [int(line.split(",")[0]) for line in state["csv"].splitlines()[1:]] == [2, 4, 6, 8, 10]


def test_stale_temporary_files_are_cleaned_at_the_next_start(pair):
    _, killed, state, resumed = pair
    assert resumed.status == "completed"
    assert not any(os.path.exists(name) for name in state["leftovers"])
    assert (killed / NOT_OURS).read_bytes() == b"partial"  # not a temporary file of ours: kept
    assert "removed 3 temporary file(s)" in (killed / "run.log").read_text()


def test_resumed_run_reproduces_the_uninterrupted_run_exactly(pair):
    whole, killed, _, resumed = pair
    assert resumed.status == "completed" and resumed.manifest["segments"] == 2
    assert rows(killed) == rows(whole)
    steps = [int(row[0]) for row in rows(killed)[1:]]
    assert steps == list(range(2, PRODUCTION + 1, 2))  # no duplicated or missing rows
    volumes = {row[6] for row in rows(killed)[1:]}
    assert len(volumes) > 1  # the barostat did move

    a = md.load_dcd(str(whole / "trajectory.dcd"), top=str(whole / "topology.pdb"))
    b = md.load_dcd(str(killed / "trajectory.dcd"), top=str(killed / "topology.pdb"))
    assert a.n_frames == b.n_frames == PRODUCTION // 2
    np.testing.assert_array_equal(a.xyz, b.xyz)
    np.testing.assert_array_equal(a.unitcell_vectors, b.unitcell_vectors)

    final = [openmm.XmlSerializer.deserialize((d / "final_state.xml").read_text()) for d in (whole, killed)]
    for getter in ("getPositions", "getVelocities"):
        x, y = (np.asarray(getattr(s, getter)(asNumpy=True)._value) for s in final)
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(np.asarray(final[0].getPeriodicBoxVectors()._value),
                                  np.asarray(final[1].getPeriodicBoxVectors()._value))


def test_resuming_a_finished_run_does_nothing_and_may_extend_it(pair, tiny_model):
    _, killed, _, _ = pair
    again = simulate(None, killed, resume=True, quiet=True)
    assert again.manifest["segments"] == 2  # nothing was run
    longer = simulate(config_for(tiny_model, run__production_steps=PRODUCTION + 2), killed,
                      resume=True, quiet=True)
    assert longer.status == "completed" and longer.manifest["steps_completed"] == PRODUCTION + 2
    assert [int(row[0]) for row in rows(killed)[1:]] == list(range(2, PRODUCTION + 3, 2))


def test_pause_at_a_deadline_then_resume_is_exact(pair, tmp_path, tiny_model):
    """A time limit (--max-minutes) pauses at the next report step with a checkpoint; here that
    is the end of equilibration, so this also resumes from an equilibration checkpoint."""
    whole = pair[0]
    run_dir = tmp_path / "paused"
    paused = simulate(config_for(tiny_model), run_dir, quiet=True, deadline=time.monotonic() - 1.0)
    assert paused.status == "paused" and paused.manifest["checkpoint"]["phase"] == "equilibration"
    assert not (run_dir / "state.csv").exists() or len(rows(run_dir)) == 1
    done = simulate(None, run_dir, resume=True, quiet=True)
    assert done.status == "completed"
    assert rows(run_dir) == rows(whole)


def test_resume_refuses_a_different_simulation(pair, tiny_model):
    _, killed, _, _ = pair
    with pytest.raises(ValueError, match="integrator.timestep_fs"):
        simulate(config_for(tiny_model, integrator__timestep_fs=0.25), killed, resume=True, quiet=True)
    with pytest.raises(ValueError, match="already holds a run"):
        simulate(config_for(tiny_model), killed, quiet=True)


def _hooks(reporters):
    from openmm_mace_lp.simulations.run import RunHooks

    return RunHooks(reporters=reporters)


def _files(run_dir):
    """Every file of a run directory and its bytes (the lock file records its holder: left out)."""
    return {path.relative_to(run_dir).as_posix(): path.read_bytes() for path in sorted(run_dir.rglob("*"))
            if path.is_file() and path.name != ".run.lock"}


def test_a_refused_resume_leaves_every_file_as_it_was(tmp_path, tiny_model):
    """A resume with another model file, or of a run whose trajectory was cut outside it, is
    refused before anything is written: the manifest keeps its status, run.log and the outputs
    their bytes (state.csv is not cut back before the trajectory is found short)."""
    import dataclasses

    from openmm_mace_lp.systems.architectures import TINY, build_mace, save_model

    run_dir = tmp_path / "killed"
    with pytest.raises(RunInterrupted):
        simulate(config_for(tiny_model), run_dir, quiet=True,
                 hooks=_hooks({"production": [SignalAt(KILL_AT, signal.SIGTERM)]}))
    other_model = tmp_path / "other.model"
    save_model(build_mace(dataclasses.replace(TINY, max_ell=1, correlation=3), seed=2), other_model)
    before = _files(run_dir)
    assert json.loads(before["manifest.json"])["status"] == "interrupted"
    with pytest.raises(ValueError, match="resume with the same model file"):
        simulate(config_for(other_model), run_dir, resume=True, quiet=True)
    assert _files(run_dir) == before
    trajectory = run_dir / "trajectory.dcd"
    whole = trajectory.read_bytes()
    recorded = read_records(run_dir)[-1].outputs["trajectory.dcd"]["bytes"]
    os.truncate(trajectory, recorded - 100)
    before = _files(run_dir)
    with pytest.raises(ValueError, match="truncated outside the run"):
        simulate(None, run_dir, resume=True, quiet=True)
    assert _files(run_dir) == before
    # With the trajectory restored the same directory resumes and completes.
    trajectory.write_bytes(whole)
    assert simulate(None, run_dir, resume=True, quiet=True).status == "completed"
