"""The run directory has one owner: what it holds, what may be resumed or deleted, who writes it.

Every refusal must leave the directory byte for byte as it was; every run uses the tiny
Reference-platform model of conftest.py (a few steps, about a second each).
"""
from __future__ import annotations

import csv
import errno
import json
import shutil
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch

from openmm_mace_lp.analysis import rundir as analysis_rundir
from openmm_mace_lp.cli import main
from openmm_mace_lp.simulations import manifest as manifest_module
from openmm_mace_lp.simulations import reporters
from openmm_mace_lp.simulations.arms import run_arms
from openmm_mace_lp.simulations.cli import main_run_directory
from openmm_mace_lp.simulations.reporters import Progress, Thermo
from openmm_mace_lp.simulations.run import RunHooks, simulate
from openmm_mace_lp.simulations.rundir import RunDirectory, RunDirectoryBusy, RunDirectoryError
from sim_helpers import RaiseAt, snapshot, tiny_config, tiny_settings


@pytest.fixture(scope="module")
def completed(tmp_path_factory, tiny_model):
    """A finished tiny NVT run with checkpoints (at the end of each phase and at step 4)."""
    run_dir = tmp_path_factory.mktemp("rundir") / "done"
    result = simulate(tiny_config(tiny_model, output__checkpoint_interval_steps=4), run_dir, quiet=True)
    assert result.status == "completed"
    return run_dir


def copy_of(run_dir, tmp_path):
    target = tmp_path / run_dir.name
    shutil.copytree(run_dir, target)
    return target


def rows(run_dir, name="state.csv"):
    with open(run_dir / name, newline="") as handle:
        return [row[:-1] for row in csv.reader(handle)]  # all but the wall-clock speed column


# ----------------------------------------------------------------------------- kinds


def test_kind_tells_missing_empty_ours_and_foreign(completed, tmp_path):
    assert RunDirectory(tmp_path / "nowhere").kind() == "missing"
    (tmp_path / "empty").mkdir()
    assert RunDirectory(tmp_path / "empty").kind() == "empty"
    assert RunDirectory(completed).kind() == "ours"
    assert RunDirectory(completed).has_checkpoint() and RunDirectory(completed).status() == "completed"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "state.csv").write_text("my,own,data\n")
    assert RunDirectory(tmp_path / "mine").kind() == "foreign"
    assert not RunDirectory(tmp_path / "mine").has_checkpoint() and RunDirectory(tmp_path / "mine").status() is None


# ----------------------------------------------------------------------------- resume never deletes


def test_resume_without_config_toml_refuses_and_deletes_nothing(completed, tmp_path, tiny_model, capsys):
    run_dir = copy_of(completed, tmp_path)
    (run_dir / "config.toml").unlink()
    before = snapshot(run_dir)
    with pytest.raises(RunDirectoryError, match=r"config.toml is missing.*nothing was deleted"):
        simulate(None, run_dir, resume=True, quiet=True)
    with pytest.raises(RunDirectoryError, match="config.toml is missing"):
        simulate(tiny_config(tiny_model), run_dir, resume=True, quiet=True)
    assert snapshot(run_dir) == before
    # The command line: `--resume` without CONFIG used to start the default simulation here.
    assert main(["simulate", "nvt", "--resume", "-o", str(run_dir)]) == 1
    assert "config.toml is missing" in capsys.readouterr().err
    assert snapshot(run_dir) == before
    # A mistyped -o: nothing to resume, and nothing is created.
    assert main(["simulate", "nvt", "--resume", "-o", str(tmp_path / "typo")]) == 1
    assert "holds no run" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_resume_with_no_usable_checkpoint_keeps_valid_outputs(completed, tmp_path, tiny_model):
    run_dir = copy_of(completed, tmp_path)
    checkpoints = sorted((run_dir / "checkpoints").glob("*.chk"))
    assert len(checkpoints) == 2
    checkpoints[0].unlink()
    checkpoints[1].write_bytes(checkpoints[1].read_bytes()[:-1] + b"?")  # no longer its SHA-256
    directory = RunDirectory(run_dir)
    assert directory.kind() == "ours" and not directory.has_checkpoint()
    before = snapshot(run_dir)
    with pytest.raises(RunDirectoryError, match=r"none of the 2 checkpoints.*Nothing was deleted") as caught:
        simulate(None, run_dir, resume=True, quiet=True)
    assert "does not match its SHA-256" in str(caught.value) and "is missing" in str(caught.value)
    # A fresh run (what a campaign starts when has_checkpoint() is False) refuses too.
    with pytest.raises(RunDirectoryError, match=r"already holds a run.*--resume.*--overwrite"):
        simulate(tiny_config(tiny_model), run_dir, quiet=True)
    assert snapshot(run_dir) == before


def test_run_killed_before_its_first_checkpoint_starts_again(completed, tmp_path, tiny_model):
    """Nothing of value (no checkpoint ever committed): --resume restarts it from step 0, and
    the result is the uninterrupted run; run.log keeps the history."""
    run_dir = tmp_path / "early"
    hooks = RunHooks(reporters={"equilibration": [RaiseAt(2, KeyboardInterrupt("killed early"))]})
    with pytest.raises(KeyboardInterrupt):
        simulate(tiny_config(tiny_model, output__checkpoint_interval_steps=4), run_dir, quiet=True, hooks=hooks)
    directory = RunDirectory(run_dir)
    assert directory.kind() == "ours" and directory.status() == "interrupted"
    assert not directory.has_checkpoint() and not directory.holds_results()
    resumed = simulate(None, run_dir, resume=True, quiet=True)
    assert resumed.status == "completed" and resumed.manifest["segments"] == 1
    assert rows(run_dir) == rows(completed) and rows(run_dir, "equilibration.csv") == rows(completed, "equilibration.csv")
    log = (run_dir / "run.log").read_text()
    assert "interrupted (SIGINT (Ctrl-C))" in log and "starting from scratch" in log


# ----------------------------------------------------------------------------- fresh runs


def test_fresh_run_refuses_a_foreign_directory_unless_overwrite(tmp_path, tiny_model):
    own = tmp_path / "project"
    own.mkdir()
    (own / "state.csv").write_text("my,own,data\n")
    (own / "notes.txt").write_text("keep me\n")
    before = snapshot(own)
    with pytest.raises(RunDirectoryError, match=r"not a run directory.*state.csv.*--overwrite"):
        simulate(tiny_config(tiny_model), own, quiet=True)
    with pytest.raises(RunDirectoryError, match="not a run directory"):
        simulate(tiny_config(tiny_model), own, resume=True, quiet=True)
    assert snapshot(own) == before and not (own / ".run.lock").exists()
    result = simulate(tiny_config(tiny_model), own, overwrite=True, quiet=True)
    assert result.status == "completed"
    assert (own / "notes.txt").read_text() == "keep me\n"  # not a run file: untouched
    assert rows(own)[0][0] == "step"  # state.csv is the run's now


# ----------------------------------------------------------------------------- two writers

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from openmm_mace_lp.simulations.rundir import RunDirectory
    with RunDirectory(sys.argv[1]).lock():
        print("locked", flush=True)
        time.sleep(120)
""")


def test_second_writer_is_refused_and_the_lock_dies_with_its_holder(completed, tmp_path, tiny_model):
    run_dir = copy_of(completed, tmp_path)
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        before = snapshot(run_dir)
        with pytest.raises(RunDirectoryBusy, match=rf"process {child.pid} on .*--resume"):
            simulate(tiny_config(tiny_model, run__production_steps=10), run_dir, resume=True, quiet=True)
        with pytest.raises(RunDirectoryBusy, match=f"process {child.pid}"):
            simulate(None, run_dir, resume=True, quiet=True)
        assert RunDirectory(run_dir).holder().pid == child.pid
        assert snapshot(run_dir) == before
    finally:
        child.kill()  # SIGKILL: no clean-up code runs in the child
        child.wait()
    assert RunDirectory(run_dir).holder() is None
    with RunDirectory(run_dir).lock():
        with pytest.raises(RunDirectoryBusy):  # a second open in one process is a second writer too
            with RunDirectory(run_dir).lock():
                pass


def test_overlapping_arms_skip_the_arm_another_process_writes(tmp_path, tiny_model, capsys):
    arms_dir = tmp_path / "arms"
    busy = arms_dir / "fp64-seed1"
    busy.mkdir(parents=True)
    config = tiny_config(tiny_model, "nvt", run__equilibration_steps=0, run__production_steps=2)
    with RunDirectory(busy).lock():
        assert run_arms(config, arms_dir, ["fp64"], [1], quiet=True) == []
    assert "fp64-seed1 skipped" in capsys.readouterr().err
    assert RunDirectory(busy).kind() == "empty"  # the skipped arm was not written


# ----------------------------------------------------------------------------- OS errors, signals


def test_output_naming_a_file_is_one_line(tmp_path, tiny_model, capsys):
    target = tmp_path / "results.txt"
    target.write_text("not a directory\n")
    code = main(["simulate", "nvt", *sum((["--set", s] for s in tiny_settings(tiny_model)), []), "-o", str(target)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "is a file, not a directory" in err
    assert target.read_text() == "not a directory\n"


def test_disk_full_mid_run_is_one_line_and_the_manifest_says_interrupted(tmp_path, tiny_model, capsys,
                                                                        monkeypatch):
    """Also shows each stage on the progress line (the run is not quiet and minimises)."""
    calls = {"n": 0}
    write_row = reporters.StateCSV.report

    def full_disk_at_third_row(self, simulation, state, step):
        calls["n"] += 1
        if calls["n"] == 3:  # production step 6, before its checkpoint
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        write_row(self, simulation, state, step)

    monkeypatch.setattr(reporters.StateCSV, "report", full_disk_at_third_row)
    run_dir = tmp_path / "full"
    settings = tiny_settings(tiny_model, run__equilibration_steps=0, run__minimize=True,
                             run__minimize_max_iterations=2, output__checkpoint_interval_steps=2)
    code = main(["simulate", "nvt", *sum((["--set", s] for s in settings), []), "-o", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 1
    line = [text for text in err.splitlines() if "mace-lp simulate" in text]
    assert len(line) == 1 and "Traceback" not in err
    assert "the disk is full" in line[0] and f"--resume -o {run_dir}" in line[0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["failure"]["cause"] == "disk full"
    assert manifest["steps_completed"] == 4
    shown = [err.find(stage) for stage in ("building", "exporting", "minimising", "producing")]
    assert -1 not in shown and shown == sorted(shown), err


def test_manifest_is_written_in_place_when_the_disk_is_too_full_for_a_copy(tmp_path, monkeypatch):
    manifest_module.atomic_write_json(tmp_path / "manifest.json", {"status": "running"})

    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manifest_module, "atomic_write_json", no_space)
    with pytest.raises(OSError):
        manifest_module.write_manifest(tmp_path, {"status": "interrupted"})
    manifest_module.write_manifest(tmp_path, {"status": "interrupted"}, in_place_if_full=True)
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "interrupted"


def test_interrupt_in_a_command_is_one_line(capsys):
    from openmm_mace_lp.simulations.cli import _one_line_errors
    from openmm_mace_lp.simulations.run import RunInterrupted

    def stopped(args):
        raise RunInterrupted("SIGTERM")

    args = type("Args", (), {"command": "simulate", "output": "runs/w"})()
    assert _one_line_errors(stopped)(args) == 143
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted (SIGTERM)" in err and "--resume -o runs/w" in err


def test_invalid_platform_properties_fail_in_dry_run(tmp_path, tiny_model, capsys):
    base = ["simulate", "nvt", "--set", f"model.path={tiny_model}", "--set", "platform.device=cpu", "--dry-run",
            "-o", str(tmp_path / "run")]
    assert main(base + ["--set", "platform.name=Reference", "--set", "platform.properties.Precision=double"]) == 1
    err = capsys.readouterr().err
    assert "platform.properties.Precision" in err and "Reference platform (it takes no properties)" in err
    assert main(base + ["--set", "platform.name=CPU", "--set", "platform.properties.Threads=two"]) == 1
    assert "platform.properties.Threads = 'two'" in capsys.readouterr().err
    assert main(base + ["--set", "platform.name=CPU", "--set", "platform.properties.Threads=1"]) == 0
    assert 'Threads = "1"' in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def toy_state():
    import openmm

    system = openmm.System()
    system.addParticle(1.0)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions([[0, 0, 0]])
    return context.getState(getEnergy=True)


def test_progress_shows_each_stage_and_times_the_eta_from_md_steps_only():
    clock, out = FakeClock(), StringIO()
    progress = Progress(total_steps=100, done_steps=0, quiet=False, file=out, clock=clock)
    progress.stage("building")
    clock.now += 600.0  # ten minutes of building and exporting ...
    progress.stage("exporting")
    clock.now += 300.0
    progress.stage("minimising")
    clock.now += 37.0
    progress.detail("37 s")  # what ticking() shows while minimizeEnergy blocks
    clock.now += 263.0  # ... and minimising: none of it is MD
    progress.attach(Thermo(dof=3, mass_dalton=1.0, timestep_ps=0.0005), periodic=False, interval=10)
    assert progress.eta_seconds() is None
    progress.set_phase("equilibration", offset=0, step=0)
    assert progress.eta_seconds() is None  # no MD step yet: no ETA
    state = toy_state()
    for step in (10, 20):  # equilibration: 20 steps in 40 s
        clock.now += 20.0
        progress.report(None, state, step)
    assert progress.eta_seconds() == pytest.approx(80 / (20 / 40.0))  # not 80 / (20 / 1240)
    clock.now += 5.0  # the end-of-phase checkpoint: MD time too
    progress.set_phase("production", offset=20, step=0)
    clock.now += 15.0
    progress.report(None, state, 20)  # bar position 40: 40 MD steps in 60 s
    assert progress.eta_seconds() == pytest.approx(60 / (40 / 60.0))
    progress.close()
    text = out.getvalue()
    shown = [text.find(stage) for stage in ("building", "exporting", "minimising", "37 s",
                                             "equilibrating", "ETA=02:40", "producing", "ETA=01:30")]
    assert -1 not in shown and shown == sorted(shown), text


def test_progress_ticks_while_a_stage_blocks():
    import time

    out = StringIO()
    progress = Progress(total_steps=10, done_steps=0, quiet=False, file=out)
    progress.stage("minimising")
    with progress.ticking(every_s=0.02):
        time.sleep(0.2)  # a blocking call that says nothing (minimizeEnergy)
    progress.close()
    assert "minimising: " in out.getvalue() and " 0 s" in out.getvalue()


# ----------------------------------------------------------------------------- analysis


def test_analysis_reports_duplicated_and_missing_steps(completed, tmp_path):
    run_dir = copy_of(completed, tmp_path)
    lines = (run_dir / "state.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in lines[1:]] == [2, 4, 6, 8]
    # Two writers repeated steps 4 and 6; the row of step 2 was lost.
    (run_dir / "state.csv").write_text("\n".join([lines[0], lines[2], lines[3], lines[2], lines[3], lines[4]]) + "\n")
    state = analysis_rundir.read_state_csv(run_dir / "state.csv")
    assert state.duplicated_steps == [4, 6] and state.missing_steps == [(2, 2)] and state.interval == 2
    assert list(state["step"]) == [4, 6, 8]
    run = analysis_rundir.open_run(run_dir)
    run.load_state()
    text = " ".join(run.warnings)
    assert "2 step(s) appear more than once" in text and "lacks the rows of 1 report step(s)" in text
    # A clean file has neither.
    clean = analysis_rundir.read_state_csv(completed / "state.csv")
    assert clean.duplicated_steps == [] and clean.missing_steps == [] and clean.step_problems() == []


def test_step_gaps_against_a_hand_worked_example(tmp_path):
    header = ",".join(analysis_rundir.STATE_COLUMNS)
    steps = [10, 20, 50, 60, 60, 100]  # missing 30-40 and 70-90, 60 twice
    body = "\n".join(f"{s},{s * 1e-3},-1.0,1.0,0.0,300,,," for s in steps)
    (tmp_path / "state.csv").write_text(f"{header}\n{body}\n")
    state = analysis_rundir.read_state_csv(tmp_path / "state.csv", interval=10)
    assert state.missing_steps == [(30, 40), (70, 90)] and state.n_missing_steps == 5
    assert state.duplicated_steps == [60]
    np.testing.assert_array_equal(state["step"], [10, 20, 50, 60, 100])


# ----------------------------------------------------------------------------- the main job


def test_main_job_directory_goes_to_the_next_free_one(completed, tmp_path, capsys):
    base = tmp_path / "runs" / "main"
    assert main_run_directory(False, False, base) == base  # missing: used as is
    shutil.copytree(completed, base)
    assert main_run_directory(True, False, base) == base and main_run_directory(False, True, base) == base
    assert main_run_directory(False, False, base) == tmp_path / "runs" / "main-2"
    err = capsys.readouterr().err
    assert "already holds a run (status 'completed'" in err and "--overwrite" in err
    (tmp_path / "runs" / "main-2").mkdir()  # empty: free
    assert main_run_directory(False, False, base) == tmp_path / "runs" / "main-2"
    (tmp_path / "runs" / "main-2" / "notes.txt").write_text("x")
    assert main_run_directory(False, False, base) == tmp_path / "runs" / "main-3"


def _refused_before_the_directory_exists(config, run_dir, match):
    with pytest.raises(ValueError, match=match):
        simulate(config, run_dir, quiet=True)
    assert not run_dir.exists()


def test_a_bad_structure_or_model_file_fails_before_the_run_directory_exists(tmp_path, tiny_model):
    empty_pdb = tmp_path / "empty.pdb"
    empty_pdb.write_text("")
    garbage_cif = tmp_path / "garbage.cif"
    garbage_cif.write_text("data_x\nloop_\n_atom_site.id\n1 2 3\n")  # parses: three atoms, no elements
    for name, ensemble, structure, match in (
            ("empty", "nvt", empty_pdb, "cannot be read"),
            ("cif", "npt", garbage_cif, "cannot be read as PDBxFile: 3 of its 3 atoms name no element")):
        config = tiny_config(tiny_model, ensemble)
        config.system.water_molecules = None
        config.system.pdb = str(structure)
        _refused_before_the_directory_exists(config, tmp_path / f"run-{name}", match)
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(Path(tiny_model).read_bytes()[:1000])
    state_dict = tmp_path / "state_dict.model"
    torch.save({"weights": torch.zeros(3)}, state_dict)
    for model, match in ((truncated, "truncated or corrupt|not a PyTorch-saved model"), (state_dict, "not a state dict")):
        config = tiny_config(tiny_model, "nvt")
        config.model.path = str(model)
        _refused_before_the_directory_exists(config, tmp_path / f"run-{model.stem}", match)


def test_an_element_the_model_lacks_fails_before_the_run_directory_exists(tmp_path):
    """Water for a model that knows only H and C: refused, naming O, before anything is made."""
    import dataclasses

    from openmm_mace_lp.systems.architectures import TINY, build_mace, save_model

    carbon_only = tmp_path / "hc.model"
    save_model(build_mace(dataclasses.replace(TINY, elements=(1, 6)), seed=0), carbon_only)
    _refused_before_the_directory_exists(tiny_config(carbon_only, "nvt"), tmp_path / "run",
                                         r"no parameters for element\(s\) O")


def test_resume_of_an_empty_directory_is_refused_and_leaves_it_empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunDirectoryError, match="holds no run .it is empty"):
        simulate(None, empty, resume=True, quiet=True)
    assert list(empty.iterdir()) == []
