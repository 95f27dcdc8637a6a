"""``mace-lp campaign`` on a local Dask cluster of two worker processes with faked GPUs (CPU).

One campaign (2 policies x 1 seed x 2 temperatures, tiny NPT runs on the Reference platform) is
run twice on the same directory. In the first command one run's worker process is SIGKILLed
after a checkpoint and another run fails; the second command finds the failed run's directory
locked by another process for a few seconds, waits, and continues it. Every run must then be
bit-identical to the same run made alone by ``run_arms`` in this process.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import mdtraj as md
import numpy as np
import openmm
import pytest

from openmm_mace_lp.simulations.arms import run_arms
from openmm_mace_lp.simulations.campaign import (
    CAMPAIGN_JSON, REPORT_INDEX, WORKER_END_ENV, ClusterSettings, LiveView, aggregate_ns_per_day,
    check_campaign_dir, format_duration, jobqueue_arguments, last_step, load_plan, local_cluster,
    local_worker_specs, parse_walltime, run_campaign)
from openmm_mace_lp.simulations.rundir import RunDirectory
from openmm_mace_lp.simulations.run import RunHooks
from sim_helpers import tiny_config, tiny_settings
from tests.benchmark_scripts import load_benchmark

# The workers cannot import this test module: send its reporters by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TEMPERATURES = (300.0, 330.0)
POLICIES = ("fp64", "fp32")
PRODUCTION = 12
SETTINGS = dict(run__production_steps=PRODUCTION, output__checkpoint_interval_steps=4,
                run__minimize=True, run__minimize_max_iterations=3)
KILLED = "water8-330K-1.01325bar/fp32-seed1"  # its worker is SIGKILLed at step 6 (checkpoint at 4)
FAILS = "water8-300K-1.01325bar/fp64-seed1"  # raises at step 6 in the first command


class KillProcessAt:
    """OpenMM reporter: SIGKILL this process at one step, once (a marker file remembers)."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def describeNextReport(self, simulation):  # noqa: N802
        remaining = self.step - simulation.currentStep
        return {"steps": remaining if remaining > 0 else 10**9, "periodic": None, "include": []}

    def report(self, simulation, state):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


class RaiseAt:
    def __init__(self, step: int, message: str) -> None:
        self.step, self.message = step, message

    def describeNextReport(self, simulation):  # noqa: N802
        remaining = self.step - simulation.currentStep
        return {"steps": remaining if remaining > 0 else 10**9, "periodic": None, "include": []}

    def report(self, simulation, state):
        raise RuntimeError(self.message)


def toml_value(value) -> str:
    return json.dumps(value)  # JSON strings, numbers and lists of them are TOML too


def write_plan(path: Path, model: Path, extra_set=(), **axes) -> Path:
    settings = ['ensemble="npt"', *tiny_settings(model, **SETTINGS), *extra_set]
    axes = {"policies": list(POLICIES), "seeds": [1], "temperatures_K": list(TEMPERATURES), **axes}
    lines = [f"set = {toml_value(settings)}", 'reference_policy = "fp64"', "", "[axes]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in axes.items()]
    lines += ["", "[cluster]", "gpus = [0, 1]", "busy_retry_seconds = 1.0"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    cluster = local_cluster(["0", "1"])
    client = Client(cluster)
    client.wait_for_workers(2, timeout=120)
    yield client
    client.close()
    cluster.close()


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, tiny_model, client):
    root = tmp_path_factory.mktemp("campaign")
    plan = load_plan(write_plan(root / "plan.toml", tiny_model))
    out = root / "out"
    pins_before = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    pids_before = set(client.run(os.getpid).values())
    hooks = {KILLED: RunHooks(reporters={"production": [KillProcessAt(6, str(root / "killed-once"))]}),
             FAILS: RunHooks(reporters={"production": [RaiseAt(6, "simulated failure")]})}
    first = run_campaign(plan, out, client=client, quiet=True, report=False, hooks_for=lambda p: hooks.get(p.name))
    after_first = {p.name: (p.run_dir(out) / "manifest.json").read_text() for p in plan.points}
    client.wait_for_workers(2, timeout=120)
    pids_after = set(client.run(os.getpid).values())
    pins_after = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))

    # Another process (this one) writes the failed run for 3 s: the second command must wait.
    holder = contextlib.ExitStack()
    holder.enter_context(RunDirectory(out / FAILS).lock())
    threading.Timer(3.0, holder.close).start()
    collect = Collect()
    log = logging.getLogger("openmm_mace_lp.simulations")
    log.addHandler(collect)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        second = run_campaign(plan, out, client=client, quiet=True, report=True)
    finally:
        log.removeHandler(collect)
        log.setLevel(level)
    after_second = {p.name: (p.run_dir(out) / "manifest.json").read_text() for p in plan.points}

    alone = root / "alone"
    for temperature in TEMPERATURES:
        config = tiny_config(tiny_model, "npt", integrator__temperature_K=temperature, **SETTINGS)
        run_arms(config, alone / f"{temperature:g}", list(POLICIES), [1], quiet=True)
    return SimpleNamespace(root=root, plan=plan, out=out, first=first, second=second, alone=alone,
                           after_first=after_first, after_second=after_second, log=collect.messages,
                           pids=(pids_before, pids_after), pins=(pins_before, pins_after))


def rows(run_dir: Path) -> list[list[str]]:
    with open(run_dir / "state.csv", newline="") as handle:
        return [row[:-1] for row in csv.reader(handle)]  # all but the wall-clock speed column


def state_arrays(path: Path):
    state = openmm.XmlSerializer.deserialize(path.read_text())
    return (np.asarray(state.getPositions(asNumpy=True)._value),
            np.asarray(state.getVelocities(asNumpy=True)._value),
            np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value))


def alone_dir(campaign, point) -> Path:
    return campaign.alone / f"{point.temperature_K:g}" / point.arm.name


# ----------------------------------------------------------------------------- the cluster


def test_workers_are_pinned_to_their_gpu_and_offer_one_run_each(campaign):
    before, after = campaign.pins
    assert sorted(before.values()) == sorted(after.values()) == ["0", "1"]
    specs = local_worker_specs(["0", "1"], runs_per_gpu=2)
    assert [spec["options"]["env"]["CUDA_VISIBLE_DEVICES"] for spec in specs.values()] == ["0", "0", "1", "1"]
    assert all(spec["options"]["resources"] == {"GPU": 1} and spec["options"]["nthreads"] == 1
               for spec in specs.values())
    cpu = local_worker_specs([], runs_per_gpu=1, cpu_workers=3)
    assert len(cpu) == 3 and all("resources" not in spec["options"] for spec in cpu.values())


# ----------------------------------------------------------------------------- the runs


def test_every_run_equals_the_same_run_made_alone(campaign):
    assert campaign.second.complete
    start = campaign.out / "starts" / "water8" / "start_state.xml"
    for point in campaign.plan.points:
        ours, alone = point.run_dir(campaign.out), alone_dir(campaign, point)
        assert (alone.parent / "start_state.xml").read_text() == start.read_text()  # one minimised start
        assert rows(ours) == rows(alone), point.name
        assert [int(row[0]) for row in rows(ours)[1:]] == list(range(2, PRODUCTION + 1, 2))
        a = md.load_dcd(str(ours / "trajectory.dcd"), top=str(ours / "topology.pdb"))
        b = md.load_dcd(str(alone / "trajectory.dcd"), top=str(alone / "topology.pdb"))
        assert a.n_frames == b.n_frames == PRODUCTION // 2
        np.testing.assert_array_equal(a.xyz, b.xyz)
        for got, want in zip(state_arrays(ours / "final_state.xml"), state_arrays(alone / "final_state.xml")):
            np.testing.assert_array_equal(got, want)
    # Policies of one seed start from the same positions and velocities (in each group).
    for temperature in TEMPERATURES:
        group = f"water8-{temperature:g}K-1.01325bar"
        fp64, fp32 = (state_arrays(campaign.out / group / f"{p}-seed1" / "initial_state.xml") for p in POLICIES)
        for x, y in zip(fp64, fp32):
            np.testing.assert_array_equal(x, y)


def test_killed_worker_is_replaced_and_its_run_resumes_without_lost_or_duplicated_frames(campaign):
    before, after = campaign.pids
    assert len(before) == len(after) == 2 and len(before & after) == 1  # one process replaced
    assert campaign.first.outcomes[KILLED].status == "completed"
    manifest = json.loads(campaign.after_first[KILLED])
    assert manifest["segments"] == 2 and manifest["steps_completed"] == PRODUCTION
    run_dir = campaign.out / KILLED
    frames = md.load_dcd(str(run_dir / "trajectory.dcd"), top=str(run_dir / "topology.pdb"))
    assert frames.n_frames == PRODUCTION // 2
    assert [int(row[0]) for row in rows(run_dir)[1:]] == list(range(2, PRODUCTION + 1, 2))
    assert (campaign.root / "killed-once").exists()


def test_second_command_continues_rather_than_redoes(campaign):
    first, second = campaign.first, campaign.second
    assert first.outcomes[FAILS].status == "failed" and "simulated failure" in first.outcomes[FAILS].message
    failed = json.loads(campaign.after_first[FAILS])
    assert failed["status"] == "failed" and failed["steps_completed"] == 4  # its checkpoint at step 4
    assert {o.status for o in second.outcomes.values()} == {"completed"}
    for name in campaign.after_first:
        if name != FAILS:  # finished runs are not touched again
            assert campaign.after_second[name] == campaign.after_first[name]
            assert second.outcomes[name].message == "finished earlier"
    resumed = json.loads(campaign.after_second[FAILS])
    assert resumed["status"] == "completed" and resumed["segments"] == 2
    assert any(f"{FAILS} is busy" in message for message in campaign.log)  # waited for the lock holder
    record = json.loads((campaign.out / CAMPAIGN_JSON).read_text())
    assert sorted(record["runs"]) == sorted(p.name for p in campaign.plan.points)


def test_report_indexes_the_verdicts_of_every_group(campaign):
    index = (campaign.out / REPORT_INDEX).read_text()
    for group in campaign.plan.groups:
        assert f"[report](reports/{group}/report.md)" in index, index
        text = (campaign.out / "reports" / group / "report.md").read_text()
        assert "fp32" in text and "fp64" in text
    for point in campaign.plan.points:
        assert f"| {point.name} | completed |" in index


def test_live_view_counts_and_speed(campaign):
    view = LiveView(campaign.plan.points, campaign.out, quiet=False, stream=io.StringIO())
    done_ns, total_ns = view.simulated_ns()
    # 4 runs x (2 equilibration + 12 production steps) x 0.5 fs
    assert done_ns == total_ns == pytest.approx(4 * 14 * 0.5e-6, rel=1e-12)
    view.samples.append((1000.0, 0.0))
    line = view.line({"done": 4, "failed": 0, "running": set(), "queued": 0, "workers": 2}, now=4600.0)
    rate = 2.8e-5 / 3600.0 * 86400.0  # ns over one hour, per day
    assert line == f"campaign: 4 done, 0 running, 0 queued on 2 workers | {rate:.3g} ns/day aggregate | ETA 0m00s"
    assert aggregate_ns_per_day([(0.0, 1.0), (1800.0, 1.5)]) == pytest.approx(24.0)
    assert aggregate_ns_per_day([(0.0, 1.0)]) is None
    assert format_duration(3 * 3600 + 12 * 60 + 5) == "3h12m" and format_duration(26 * 3600) == "1d02h"


def test_last_step_ignores_a_half_written_row(tmp_path):
    path = tmp_path / "state.csv"
    path.write_text("step,time_ps\n2,0.001\n4,0.002\n6,0.0")
    assert last_step(path) == 4
    assert last_step(tmp_path / "missing.csv") == 0


# ----------------------------------------------------------------------------- bad plans


@pytest.mark.parametrize("lines, named", [
    (['axis = {policies = ["fp64"]}'], "unknown key 'axis' (did you mean 'axes'?)"),
    (["[axes]", "temperature_K = [300.0]"], "unknown key 'axes.temperature_K' (did you mean 'axes.temperatures_K'?)"),
    (["[axes]", 'policies = ["fp64", "fp8"]'], "axes.policies: unknown 'fp8'"),
    (["[axes]", 'policies = ["bf16"]'], "reference_policy = 'fp64' is not in axes.policies"),
    (["[axes]", "seeds = [0]"], "axes.seeds = [0]"),
    (["[axes]", "temperatures_K = [-5.0]"], "axes.temperatures_K: -5.0 is not a positive temperature"),
    (["[axes.systems.small]", "water_molecule = 8"], "unknown key 'system.water_molecule'"),
    (["[axes.systems.small]", 'pdb = "no-such.pdb"'], "axes.systems.small: system.pdb"),
    (["[cluster]", "runs_per_gpu = 0"], "cluster.runs_per_gpu = 0"),
    (["[cluster]", 'kind = "slurmm"'], "cluster.kind = 'slurmm' is not one of local, scheduler, slurm, pbs (did you mean 'slurm'?)"),
    (["[cluster]", 'kind = "slurm"', "[cluster.jobqueue]", 'memory = "8GB"'], "cluster.jobqueue.walltime is missing"),
    (["[cluster]", 'kind = "scheduler"'], "cluster.address"),
    (["[cluster]", "gpus = []"], "cluster.cpu_workers"),
])
def test_bad_plan_fails_before_anything_runs_naming_the_key(tmp_path, tiny_model, lines, named):
    settings = ['ensemble="npt"', *tiny_settings(tiny_model)]
    plan = tmp_path / "plan.toml"
    plan.write_text(f"set = {toml_value(settings)}\n" + "\n".join(lines) + "\n")
    with pytest.raises((ValueError, FileNotFoundError, RuntimeError)) as error:
        load_plan(plan)
    assert named in str(error.value)


def test_bad_base_key_fails_through_the_command_naming_it(tmp_path, tiny_model, capsys):
    from openmm_mace_lp.cli import main

    plan = write_plan(tmp_path / "plan.toml", tiny_model, extra_set=["integrator.timestepfs=1.0"])
    out = tmp_path / "out"
    assert main(["campaign", str(plan), "-o", str(out)]) == 1
    assert "integrator.timestepfs" in capsys.readouterr().err
    assert not out.exists()


def test_changed_plan_on_an_existing_campaign_is_refused(campaign, tiny_model, tmp_path):
    before = (campaign.out / CAMPAIGN_JSON).read_text()
    changed = load_plan(write_plan(tmp_path / "plan.toml", tiny_model, extra_set=["integrator.timestep_fs=0.25"]))
    with pytest.raises(ValueError, match=r"fp64-seed1: integrator\.timestep_fs"):
        run_campaign(changed, campaign.out, quiet=True)
    assert (campaign.out / CAMPAIGN_JSON).read_text() == before
    # More seeds extend the campaign: accepted (and only checked here).
    extended = load_plan(write_plan(tmp_path / "more.toml", tiny_model, seeds=[1, 2]))
    assert check_campaign_dir(extended, campaign.out) is not None


def test_dry_run_lists_the_runs_and_writes_nothing(campaign, tiny_model, tmp_path, capsys):
    from openmm_mace_lp.cli import main

    plan = write_plan(tmp_path / "plan.toml", tiny_model)
    assert main(["campaign", str(plan), "-o", str(tmp_path / "new"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("4 runs in 2 groups") and text.count("to run") == 4
    assert not (tmp_path / "new").exists()
    assert main(["campaign", str(plan), "-o", str(campaign.out), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("done") == 4


# ----------------------------------------------------------------------------- SLURM / PBS


def test_slurm_job_asks_for_one_gpu_and_pauses_before_its_wall_time():
    pytest.importorskip("dask_jobqueue")
    from dask_jobqueue import SLURMCluster

    settings = ClusterSettings(kind="slurm", runs_per_gpu=2, stop_margin_minutes=5.0,
                               jobqueue={"walltime": "01:00:00", "memory": "16GB", "queue": "gpu"})
    assert parse_walltime("01:00:00") == 3600 and parse_walltime("1-02:03:04") == 93784
    cluster = SLURMCluster(**jobqueue_arguments(settings), scheduler_options={"host": "127.0.0.1"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -p gpu" in script
    assert "--nworkers 2" in script and "--resources GPU=1" in script
    assert "--lifetime 3450s" in script  # 1 h less half the 5-minute margin
    assert f"export {WORKER_END_ENV}=$(( $(date +%s) + 3600 ))" in script


# ----------------------------------------------------------------------------- the packing benchmark


def test_packing_window_throughput_by_hand():
    bench = load_benchmark("campaign_packing")
    # Run a steps 0..100 over t = 0..10 s, run b steps 0..50 over t = 2..12 s: both step in 2..10 s,
    # a makes 80 steps there and b 40; 120 steps x 1 fs = 1.2e-4 ns in 8 s.
    a = [(0.0, 0), (10.0, 100)]
    b = [(2.0, 0), (12.0, 50)]
    result = bench.overlap_throughput([a, b], timestep_fs=1.0)
    assert result["window_s"] == pytest.approx(8.0)
    assert result["steps_in_window"] == pytest.approx([80.0, 40.0])
    assert result["aggregate_ns_day"] == pytest.approx(1.2e-4 / 8.0 * 86400.0)
    assert bench.overlap_throughput([a, [(11.0, 0), (12.0, 5)]], 1.0)["aggregate_ns_day"] is None
    assert bench.recommend([{"n": 1, "aggregate_ns_day": 10.0}, {"n": 2, "aggregate_ns_day": 19.5},
                            {"n": 4, "aggregate_ns_day": 20.0}]) == 2


def test_packing_benchmark_smoke(client, tmp_path):
    bench = load_benchmark("campaign_packing")
    out = tmp_path / "packing.json"
    assert bench.main(["--smoke", "--scheduler", client.scheduler_info()["address"], "-o", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [row["n"] for row in record["results"]] == [1, 2]
    for row in record["results"]:
        assert row["statuses"] == ["completed"] * row["n"]
        assert row["window_s"] > 0 and row["aggregate_ns_day"] > 0
        assert row["steps_per_run"] == 16 // row["n"] and row["atoms"] == 24
    assert record["recommended_runs_per_gpu"]["water8"] in (1, 2)
    assert "| water8 | 24 | 2 |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("name", ["water_1029_campaign.toml", "water_192_campaign_cpu.toml"])
def test_example_plans_load(name, tiny_model):
    examples = Path(__file__).resolve().parents[2] / "simulations" / "examples"
    plan = load_plan(examples / name, [f"model.path={tiny_model}"])
    assert plan.points and plan.reference_policy in plan.policies
    assert len(plan.points) == len(plan.policies) * len(plan.seeds) * len(plan.temperatures_K) * \
        len(plan.pressures_bar) * len(plan.systems)


def test_deadline_passed_starts_nothing_and_says_so(campaign, client, tiny_model, tmp_path):
    """--max-minutes: past the deadline no run starts; they stay queued for the next command."""
    out = tmp_path / "out"
    (out / "starts").mkdir(parents=True)  # a start put there beforehand is used as it is
    shutil.copytree(campaign.out / "starts" / "water8", out / "starts" / "water8")
    plan = load_plan(write_plan(tmp_path / "plan.toml", tiny_model))
    result = run_campaign(plan, out, client=client, max_minutes=1e-5, quiet=True, report=False)
    assert {o.status for o in result.outcomes.values()} == {"queued"} and not result.complete
    assert all(not p.run_dir(out).exists() for p in plan.points)


def test_plan_checks_import_neither_dask_nor_jobqueue(tiny_model, tmp_path):
    """A plan (even a SLURM one) is checked without Dask; dask-jobqueue loads only to submit jobs."""
    import subprocess

    plan = tmp_path / "plan.toml"
    plan.write_text(f"set = {toml_value(tiny_settings(tiny_model))}\n[cluster]\nkind = \"slurm\"\n"
                    "[cluster.jobqueue]\nwalltime = \"01:00:00\"\nmemory = \"8GB\"\n")
    code = ("import sys; from openmm_mace_lp.simulations.campaign import load_plan; "
            f"load_plan({str(plan)!r}); print(sorted(m for m in ('distributed', 'dask_jobqueue') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
