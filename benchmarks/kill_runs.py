"""SIGKILL at random moments, resume until done: are rows and frames lost or duplicated?

Tiny Reference-platform NPT runs (8 waters, the tiny MACE model, fp64, one thread) are started
as real processes, ``python -m openmm_mace_lp.cli simulate npt CONFIG -o RUN_DIR``, killed
with SIGKILL at seeded random moments, and continued with ``--resume`` (with CONFIG, or without
it from the run's own config.toml, chosen by the seed) until one finishes. Each finished run
is then compared with an uninterrupted run of the same config: every state.csv and
equilibration.csv row (all columns but the wall-clock speed) and every DCD frame (its bytes),
bit for bit, since the Reference platform makes a resumed run the same computation.

Two kinds of moment: *timed* (a delay drawn uniformly over the life of an uninterrupted
process, imports included) and *atomic write* (after a random delay, the first moment a
temporary file of an atomic write is seen in the run directory: inside a checkpoint or
manifest commit). Where a kill landed is read from the directory afterwards.

Concurrent writers: two processes are started on the same run directory at once (fresh,
``--resume``, ``--overwrite``, resuming a paused run, or the second a moment later) and the
second must be refused with the lock's "being written by" message while the first completes
a run identical to the reference.

    python benchmarks/kill_runs.py                       # 40 kills, 10 trials, a few minutes
    python benchmarks/kill_runs.py --kills 60 --seed 7 --trials 12
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "kill_runs_2026-12-01_cpu"
DEFAULT_SEED = 20261201
ATOMIC_WRITE_SHARE = 0.3  # of the kills: at a temporary file of an atomic write
POLL_S = 0.001
MAX_ROUNDS = 4  # rounds of extra runs that make up for planned kills that missed
PROCESS_TIMEOUT_S = 300
BUSY_MESSAGE = re.compile(r"is being written by process \d+")

# Two run configs: checkpoints aligned with the report and frame intervals, and not.
CONFIGS: dict[str, dict[str, Any]] = {
    "aligned": {
        "run": {"minimize": False, "equilibration_steps": 4, "production_steps": 24},
        "output": {"report_interval_steps": 2, "trajectory_interval_steps": 2, "checkpoint_interval_steps": 4,
                   "keep_checkpoints": 2},
        "barostat": {"interval_steps": 2},
    },
    "offset": {
        "run": {"minimize": True, "minimize_max_iterations": 10, "equilibration_steps": 6, "production_steps": 30},
        "output": {"report_interval_steps": 2, "trajectory_interval_steps": 4, "checkpoint_interval_steps": 6,
                   "keep_checkpoints": 1},
        "barostat": {"interval_steps": 3},
    },
}


def config_data(model: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ensemble": "npt",
        "model": {"path": str(model), "policy": "fp64", "backend": "e3nn"},
        "system": {"water_molecules": 8},
        "integrator": {"timestep_fs": 0.5},
        "guards": {"max_temperature_factor": 10.0},
        "platform": {"name": "Reference", "device": "cpu", "cpu_threads": 1},
    }
    for section, values in CONFIGS[name].items():
        data.setdefault(section, {}).update(values)
    return data


# ----------------------------------------------------------------------------- processes


class Launcher:
    """Starts ``mace-lp simulate`` processes with their output in a log folder."""

    def __init__(self, work: Path) -> None:
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENMM_MACE_LP_CACHE": str(work / "cache")}
        self._count = 0
        self._lock = threading.Lock()

    def start(self, config: Path | None, run_dir: Path, *flags: str) -> "Process":
        args = ["simulate", "npt"] + ([str(config)] if config is not None else []) + \
               ["-o", str(run_dir), "--quiet", *flags]
        with self._lock:
            self._count += 1
            log = self.logs / f"{self._count:04d}-{run_dir.name}.log"
        handle = open(log, "w")
        popen = subprocess.Popen([sys.executable, "-m", "openmm_mace_lp.cli", *args], stdout=handle,
                                 stderr=subprocess.PIPE, text=True, env=self.env, cwd=run_dir.parent)
        return Process(popen, handle, log, args, time.monotonic())


@dataclass
class Process:
    popen: subprocess.Popen
    handle: Any
    log: Path
    args: list[str]
    started: float
    stderr: str = ""

    def wait(self) -> int:
        try:
            _, self.stderr = self.popen.communicate(timeout=PROCESS_TIMEOUT_S)
        finally:
            self.handle.close()
        return self.popen.returncode

    def kill(self) -> bool:
        """SIGKILL this process (by its own pid); True when it was still running."""
        if self.popen.poll() is not None:
            return False
        os.kill(self.popen.pid, signal.SIGKILL)
        self.wait()
        return self.popen.returncode == -signal.SIGKILL


# ----------------------------------------------------------------------------- outputs


def state_rows(path: Path) -> list[tuple[str, ...]]:
    """CSV rows without the wall-clock speed column (the last); [] when the file is missing."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [tuple(row[:-1]) for row in csv.reader(handle)]


@dataclass
class Frames:
    frames: list[bytes]
    header_frames: int  # what the DCD header says
    trailing_bytes: int  # bytes after the last whole frame


def dcd_frames(path: Path) -> Frames:
    import struct

    from openmm_mace_lp.simulations.reporters import dcd_layout

    if not path.is_file():
        return Frames([], 0, 0)
    layout = dcd_layout(path)
    data = path.read_bytes()
    body = data[layout.header_bytes:]
    count = len(body) // layout.frame_bytes
    frames = [body[i * layout.frame_bytes:(i + 1) * layout.frame_bytes] for i in range(count)]
    return Frames(frames, struct.unpack("<i", data[8:12])[0], len(body) - count * layout.frame_bytes)


def compare(reference: Sequence[Any], found: Sequence[Any]) -> dict[str, int | bool]:
    """Lost (in the reference, missing here), duplicated (here more often than there) and
    differing (here, not in the reference at all) items; identical: same items in the same order."""
    want, got = Counter(reference), Counter(found)
    lost = sum((want - got).values())
    extra = got - want
    differing = sum(count for item, count in extra.items() if item not in want)
    duplicated = sum(count for item, count in extra.items() if item in want)
    return {"lost": lost, "duplicated": duplicated, "differing": differing,
            "identical": list(reference) == list(found)}


@dataclass
class Outputs:
    state: list[tuple[str, ...]]
    equilibration: list[tuple[str, ...]]
    trajectory: Frames
    final_state: str | None
    status: str | None
    segments: int | None
    leftovers: list[str]


def read_outputs(run_dir: Path) -> Outputs:
    from openmm_mace_lp.simulations.rundir import RunDirectory

    manifest = RunDirectory(run_dir).manifest() or {}
    final = run_dir / "final_state.xml"
    return Outputs(state_rows(run_dir / "state.csv"), state_rows(run_dir / "equilibration.csv"),
                   dcd_frames(run_dir / "trajectory.dcd"), final.read_text() if final.is_file() else None,
                   manifest.get("status"), manifest.get("segments"),
                   [str(p.relative_to(run_dir)) for p in RunDirectory(run_dir).temporary_files()])


def differences(reference: Outputs, found: Outputs) -> dict[str, Any]:
    rows = compare(reference.state, found.state)
    equilibration = compare(reference.equilibration, found.equilibration)
    frames = compare(reference.trajectory.frames, found.trajectory.frames)
    header_ok = found.trajectory.header_frames == len(found.trajectory.frames) and found.trajectory.trailing_bytes == 0
    same_final = reference.final_state is not None and reference.final_state == found.final_state
    identical = (rows["identical"] and equilibration["identical"] and frames["identical"] and header_ok
                 and same_final and found.status == "completed" and not found.leftovers)
    return {"rows": rows, "equilibration_rows": equilibration, "frames": frames, "dcd_header_ok": header_ok,
            "final_state_identical": same_final, "status": found.status, "segments": found.segments,
            "leftover_temporary_files": found.leftovers, "identical": identical}


# ----------------------------------------------------------------------------- where a kill landed


def log_lines(run_dir: Path) -> list[str]:
    path = run_dir / "run.log"
    return path.read_text().splitlines() if path.is_file() else []


def temporary_names(run_dir: Path) -> set[str]:
    """Temporary files of atomic writes in the run directory now (relative paths)."""
    from openmm_mace_lp.simulations.rundir import RunDirectory

    return {str(path.relative_to(run_dir)) for path in RunDirectory(run_dir).temporary_files()}


def landing(run_dir: Path, lines_before: int, temporary_before: set[str]) -> tuple[str, str]:
    """(class, description) of where a killed process had got to, from its run directory: the
    newest checkpoint, the last line it logged, and the temporary files of atomic writes it left
    (those an earlier kill left are not counted)."""
    from openmm_mace_lp.simulations.rundir import RunDirectory

    directory = RunDirectory(run_dir)
    temporary = sorted(temporary_names(run_dir) - temporary_before)
    lines = log_lines(run_dir)
    try:
        records = directory.records()
    except ValueError:
        records = None
    if records is None:
        where, checkpoint = "checkpoint.json damaged", "checkpoint.json damaged"
    elif not records:
        where, checkpoint = "before the first checkpoint", "no checkpoint"
    else:
        where, checkpoint = records[0].phase, f"checkpoint {records[0].phase} step {records[0].step}"
    if len(lines) <= lines_before:
        where = "start-up (nothing logged yet)"
    last = lines[-1].split(" ", 3)[-1] if len(lines) > lines_before else "-"
    if temporary:
        where += ", inside an atomic write"
    text = f"{checkpoint}; last logged: {last[:90]}" + (
        f"; temporary file(s) left: {', '.join(temporary)}" if temporary else "")
    return where, text


def progress_fraction(run_dir: Path, reference: "Reference") -> float:
    """Share of all MD steps already behind the newest checkpoint (0 when there is none)."""
    from openmm_mace_lp.simulations.rundir import RunDirectory

    try:
        records = RunDirectory(run_dir).records()
    except ValueError:
        return 0.0
    if not records:
        return 0.0
    run = CONFIGS[reference.name]["run"]
    equilibration, production = run["equilibration_steps"], run["production_steps"]
    done = records[0].step + (equilibration if records[0].phase == "production" else 0)
    return min(1.0, done / (equilibration + production))


# ----------------------------------------------------------------------------- the kill runs


@dataclass
class KillPlan:
    kind: str  # "timed" or "atomic write"
    share: float  # where in the process's expected life, 0..1


@dataclass
class KillRecord:
    run: str
    number: int
    kind: str
    delay_s: float
    delivered: bool
    where: str
    landed: str
    seconds_alive: float


@dataclass
class RunRecord:
    name: str
    config: str
    kills_planned: int
    kills_delivered: int = 0
    missed: int = 0
    processes: int = 0
    resumes_without_config: int = 0
    final_rc: int | None = None
    failures: list[str] = field(default_factory=list)
    kills: list[KillRecord] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Reference:
    name: str
    config: Path
    run_dir: Path
    outputs: Outputs
    seconds: float  # wall time of the uninterrupted process
    lock_after_s: float  # when its lock file appeared (start-up cost)


def run_reference(launcher: Launcher, name: str, config: Path, work: Path) -> Reference:
    run_dir = work / f"reference-{name}"
    process = launcher.start(config, run_dir)
    lock_after = None
    while process.popen.poll() is None:
        if lock_after is None and (run_dir / ".run.lock").exists():
            lock_after = time.monotonic() - process.started
        time.sleep(0.01)
    rc = process.wait()
    seconds = time.monotonic() - process.started
    if rc != 0:
        raise RuntimeError(f"the reference run {name} failed (rc {rc}): {process.stderr.strip()}")
    return Reference(name, config, run_dir, read_outputs(run_dir), seconds, lock_after or seconds / 2)


def warm_up(launcher: Launcher, config: Path, work: Path) -> None:
    """One short run, so that the model's export is cached before any process is timed (every
    run here uses the same exported module: same atoms, policy and backend)."""
    process = launcher.start(config, work / "warm-up", "--set", "run.equilibration_steps=0", "--set",
                             "run.production_steps=2")
    rc = process.wait()
    if rc != 0:
        raise RuntimeError(f"the warm-up run failed (rc {rc}): {process.stderr.strip()}")


def plan_kills(total: int, names: Sequence[str], rng: random.Random, first: int = 0) -> list[tuple[str, list[KillPlan]]]:
    """Runs (config name, kills) whose kills add up to ``total``: 1-4 kills a run."""
    plans = []
    left = total
    while left > 0:
        count = min(left, rng.randint(1, 4))
        name = names[(first + len(plans)) % len(names)]
        kills = [KillPlan("atomic write" if rng.random() < ATOMIC_WRITE_SHARE else "timed", rng.random())
                 for _ in range(count)]
        plans.append((name, kills))
        left -= count
    return plans


def kill_delay(plan: KillPlan, reference: Reference, done: float) -> float:
    """Seconds after the start: ``plan.share`` of the way from 30 % of the start-up cost to the
    expected end of a process that finds ``done`` of the steps behind a checkpoint."""
    start = reference.lock_after_s if plan.kind == "atomic write" else 0.3 * reference.lock_after_s
    end = reference.lock_after_s + (1.0 - done) * (reference.seconds - reference.lock_after_s)
    return start + plan.share * max(end - start, 0.0)


def wait_for_temporary_file(process: Process, run_dir: Path, delay: float, earlier: set[str]) -> bool:
    """Sleep ``delay`` s, then poll until a temporary file of an atomic write that is not one of
    ``earlier`` (left by a previous kill) exists (True), or the process ends (False)."""
    from openmm_mace_lp.simulations.rundir import TEMPORARY_FILE

    deadline = process.started + delay
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            return False
        time.sleep(0.01)
    folders = (run_dir, run_dir / "checkpoints")
    while process.popen.poll() is None:
        for folder in folders:
            try:
                prefix = "" if folder == run_dir else f"{folder.name}/"
                if any(TEMPORARY_FILE.match(entry.name) and prefix + entry.name not in earlier
                       for entry in os.scandir(folder)):
                    return True
            except FileNotFoundError:
                pass
        time.sleep(POLL_S)
    return False


def wait_until(process: Process, delay: float) -> bool:
    """Sleep until ``delay`` s after the start; False if the process ended before."""
    while time.monotonic() < process.started + delay:
        if process.popen.poll() is not None:
            return False
        time.sleep(0.005)
    return process.popen.poll() is None


def run_with_kills(launcher: Launcher, reference: Reference, name: str, kills: list[KillPlan],
                   seed: int, work: Path) -> RunRecord:
    """Start, kill at each planned moment, resume until completed, compare with the reference."""
    rng = random.Random(seed)
    run_dir = work / "runs" / name
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    record = RunRecord(name, reference.name, len(kills))
    t0 = time.monotonic()
    pending = list(kills)
    first = True
    while True:
        config: Path | None = reference.config
        flags = [] if first else ["--resume"]
        if not first and (run_dir / "config.toml").is_file() and rng.random() < 0.5:
            config = None
            record.resumes_without_config += 1
        delay = kill_delay(pending[0], reference, progress_fraction(run_dir, reference)) if pending else 0.0
        lines_before = len(log_lines(run_dir))
        temporary_before = temporary_names(run_dir)
        process = launcher.start(config, run_dir, *flags)
        record.processes += 1
        first = False
        if pending:
            plan = pending.pop(0)
            ready = (wait_for_temporary_file(process, run_dir, delay, temporary_before) if plan.kind == "atomic write"
                     else wait_until(process, delay))
            alive = time.monotonic() - process.started
            delivered = ready and process.kill()
            number = len(record.kills) + 1
            if delivered:
                record.kills_delivered += 1
                where, text = landing(run_dir, lines_before, temporary_before)
                record.kills.append(KillRecord(name, number, plan.kind, round(delay, 3), True, where, text,
                                               round(alive, 3)))
                continue
            record.missed += 1
            record.kills.append(KillRecord(name, number, plan.kind, round(delay, 3), False, "missed",
                                           "the process had ended", round(alive, 3)))
        rc = process.wait()
        record.final_rc = rc
        if rc == 0:
            break
        record.failures.append(f"rc {rc}: {process.stderr.strip()[-500:]}")
        if len(record.failures) >= 3:
            break
    record.seconds = round(time.monotonic() - t0, 2)
    record.result = differences(reference.outputs, read_outputs(run_dir))
    return record


# ----------------------------------------------------------------------------- concurrent writers


VARIANTS = ("both fresh", "both --resume", "--overwrite second", "both resume a paused run", "second a moment later")


@dataclass
class Trial:
    number: int
    variant: str
    delay_s: float
    rc: list[int]
    refused: int  # processes refused with the busy message
    verdict: str
    messages: list[str]
    result: dict[str, Any]


@dataclass
class Paused:
    """A run paused by --max-minutes at its first report step, and that run resumed alone."""

    template: Path
    resumed: Outputs
    against_uninterrupted: dict[str, Any]  # the resumed pause compared with the uninterrupted run
    first_rows: list[dict[str, Any]]  # the first differing rows, column by column


def paused_run(launcher: Launcher, reference: Reference, work: Path) -> Paused:
    """Pause a run at once (--max-minutes), then resume a copy of it with no other writer: the
    baseline of the trials that resume a paused run. The pause writes a checkpoint at a step
    the uninterrupted run has none at, so the two need not be the same computation."""
    template = work / "paused-template"
    process = launcher.start(reference.config, template, "--max-minutes", "0.0001")
    rc = process.wait()
    if rc != 0:
        raise RuntimeError(f"could not prepare a paused run (rc {rc}): {process.stderr.strip()}")
    alone = work / "paused-resumed-alone"
    shutil.copytree(template, alone)
    process = launcher.start(reference.config, alone, "--resume")
    rc = process.wait()
    if rc != 0:
        raise RuntimeError(f"could not resume the paused run (rc {rc}): {process.stderr.strip()}")
    resumed = read_outputs(alone)
    first = first_differing_rows(reference.outputs.equilibration, resumed.equilibration, "equilibration.csv") + \
        first_differing_rows(reference.outputs.state, resumed.state, "state.csv")
    return Paused(template, resumed, differences(reference.outputs, resumed), first[:3])


def first_differing_rows(reference: Sequence[tuple[str, ...]], found: Sequence[tuple[str, ...]], name: str,
                         limit: int = 3) -> list[dict[str, Any]]:
    """Rows at the same position that differ: step, and each differing column's two values."""
    header = reference[0] if reference else ()
    rows = []
    for want, got in zip(reference[1:], found[1:]):
        if want != got and len(rows) < limit:
            columns = {header[i]: [a, b] for i, (a, b) in enumerate(zip(want, got)) if a != b}
            rows.append({"file": name, "step": want[0], "columns": columns})
    return rows


def concurrent_trial(launcher: Launcher, reference: Reference, paused: Paused, number: int,
                     rng: random.Random, work: Path) -> Trial:
    variant = VARIANTS[(number - 1) % len(VARIANTS)]
    run_dir = work / "concurrent" / f"trial-{number:02d}"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    flags: tuple[list[str], list[str]] = ([], [])
    delay = rng.uniform(0.0, 0.05)
    baseline = reference.outputs
    if variant == "both --resume":
        flags = (["--resume"], ["--resume"])
    elif variant == "--overwrite second":
        flags = ([], ["--overwrite"])
    elif variant == "both resume a paused run":
        shutil.copytree(paused.template, run_dir)
        flags = (["--resume"], ["--resume"])
        baseline = paused.resumed
    elif variant == "second a moment later":
        delay = rng.uniform(0.5, reference.lock_after_s + 1.0)
    first = launcher.start(reference.config, run_dir, *flags[0])
    time.sleep(delay)
    second = launcher.start(reference.config, run_dir, *flags[1])
    codes = [first.wait(), second.wait()]
    messages = [p.stderr.strip() for p in (first, second)]
    refused = sum(code != 0 and BUSY_MESSAGE.search(text) is not None and "Traceback" not in text
                  and len(text.splitlines()) == 1 for code, text in zip(codes, messages))
    log = (run_dir / "run.log").read_text() if (run_dir / "run.log").is_file() else ""
    starts = len(re.findall(r" INFO (run \S+: NPT|resuming )", log))
    if refused == 1 and sorted(codes)[0] == 0:
        verdict = "refused"
    elif codes == [0, 0]:
        expected_starts = 2 if variant == "both resume a paused run" else 1
        verdict = "both wrote" if starts > expected_starts else "one after the other"
    else:
        verdict = "other"
    result = differences(baseline, read_outputs(run_dir))
    return Trial(number, variant, round(delay, 3), codes, refused, verdict, [m[-400:] for m in messages], result)


# ----------------------------------------------------------------------------- report


def kill_totals(records: Sequence[RunRecord]) -> dict[str, Any]:
    delivered = [k for r in records for k in r.kills if k.delivered]
    return {
        "runs": len(records),
        "kills_delivered": len(delivered),
        "kills_at_atomic_writes": sum(k.kind == "atomic write" for k in delivered),
        "kills_missed": sum(r.missed for r in records),
        "processes": sum(r.processes for r in records),
        "resumes_without_config": sum(r.resumes_without_config for r in records),
        "runs_completed": sum(r.result.get("status") == "completed" for r in records),
        "rows_lost": sum(r.result["rows"]["lost"] + r.result["equilibration_rows"]["lost"] for r in records),
        "rows_duplicated": sum(r.result["rows"]["duplicated"] + r.result["equilibration_rows"]["duplicated"]
                               for r in records),
        "rows_differing": sum(r.result["rows"]["differing"] + r.result["equilibration_rows"]["differing"]
                              for r in records),
        "frames_lost": sum(r.result["frames"]["lost"] for r in records),
        "frames_duplicated": sum(r.result["frames"]["duplicated"] for r in records),
        "frames_differing": sum(r.result["frames"]["differing"] for r in records),
        "runs_differing": sum(not r.result["identical"] for r in records),
        "failed_resumes": sum(len(r.failures) for r in records),
        "landed": dict(Counter(k.where for k in delivered)),
    }


def trial_totals(trials: Sequence[Trial]) -> dict[str, Any]:
    return {"trials": len(trials), **{verdict: sum(t.verdict == verdict for t in trials)
                                      for verdict in ("refused", "both wrote", "one after the other", "other")},
            "outputs_identical": sum(t.result["identical"] for t in trials)}


def print_tables(records: Sequence[RunRecord], trials: Sequence[Trial], kills: dict, concurrent: dict) -> None:
    print(f"\n{'run':<12} {'config':<8} {'kills':>5} {'missed':>6} {'procs':>5} {'rows lost/dup/diff':>18} "
          f"{'frames lost/dup/diff':>20} {'final':>6} verdict")
    for r in records:
        rows, eq, frames = r.result["rows"], r.result["equilibration_rows"], r.result["frames"]
        print(f"{r.name:<12} {r.config:<8} {r.kills_delivered:>5} {r.missed:>6} {r.processes:>5} "
              f"{rows['lost'] + eq['lost']:>6}/{rows['duplicated'] + eq['duplicated']}/{rows['differing'] + eq['differing']:<6} "
              f"{frames['lost']:>8}/{frames['duplicated']}/{frames['differing']:<8} "
              f"{'same' if r.result['final_state_identical'] else 'DIFF':>6} "
              f"{'identical' if r.result['identical'] else 'DIFFERS'}")
    print(f"\nkills delivered {kills['kills_delivered']} ({kills['kills_at_atomic_writes']} at atomic writes, "
          f"{kills['kills_missed']} planned kills missed), {kills['runs']} runs, {kills['processes']} processes; "
          f"rows lost {kills['rows_lost']}, duplicated {kills['rows_duplicated']}, differing {kills['rows_differing']}; "
          f"frames lost {kills['frames_lost']}, duplicated {kills['frames_duplicated']}, differing "
          f"{kills['frames_differing']}; runs that differ {kills['runs_differing']}")
    print(f"where the kills landed: {kills['landed']}")
    print(f"\n{'trial':>5} {'variant':<26} {'delay s':>7} {'rc':>8} verdict      outputs")
    for t in trials:
        print(f"{t.number:>5} {t.variant:<26} {t.delay_s:>7.3f} {str(t.rc):>8} {t.verdict:<12} "
              f"{'identical' if t.result['identical'] else 'DIFFER'}")
    print(f"\nconcurrent writers: {concurrent['trials']} trials, second writer refused {concurrent['refused']}, "
          f"both wrote {concurrent['both wrote']}, one after the other {concurrent['one after the other']}, "
          f"other {concurrent['other']}; outputs identical to the reference {concurrent['outputs_identical']}")


def pause_summary(paused: "Paused | None") -> dict[str, Any] | None:
    """How a run paused by --max-minutes and resumed compares with the uninterrupted run."""
    if paused is None:
        return None
    diff = paused.against_uninterrupted
    rows, eq, frames = diff["rows"], diff["equilibration_rows"], diff["frames"]
    text = ("identical" if diff["identical"] else
            f"differs: {rows['differing'] + eq['differing']} of {len(paused.resumed.state) + len(paused.resumed.equilibration) - 2} "
            f"rows differ, {frames['differing']} frames differ, final state "
            f"{'identical' if diff['final_state_identical'] else 'differs'}")
    return {"identical": diff["identical"], "text": text, "differences": diff,
            "first_differing_rows": paused.first_rows}


def markdown(records: Sequence[RunRecord], trials: Sequence[Trial], kills: dict, concurrent: dict,
             meta: dict[str, Any], pause: dict[str, Any] | None = None) -> str:
    out = [f"# Kills and concurrent writers, {meta['date']} (CPU)", "",
           f"`python benchmarks/kill_runs.py --kills {meta['kills']} --seed {meta['seed']} --trials {meta['trials']}` "
           f"on {meta['machine']}, commit {meta['commit']}{' (with uncommitted changes)' if meta['dirty'] else ''}; "
           f"torch {meta['torch']}, openmm {meta['openmm']}; {meta['seconds']:.0f} s.", "",
           "Tiny NPT runs (8 waters, tiny MACE model, fp64, Reference platform, one thread) started as "
           "`python -m openmm_mace_lp.cli simulate npt CONFIG -o RUN_DIR`, SIGKILLed at seeded random moments "
           "(timed over the whole process life, or at the first temporary file of an atomic write), resumed "
           "with `--resume` until completed, then compared row by row and frame by frame (bytes) with an "
           "uninterrupted run of the same config. Configs: "
           + "; ".join(f"*{name}* {json.dumps(values)}" for name, values in CONFIGS.items()) + ".", "",
           "## Kills", "",
           "| kills delivered | at atomic writes | runs | processes | rows lost | rows duplicated | rows differing "
           "| frames lost | frames duplicated | frames differing | runs that differ |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
           f"| {kills['kills_delivered']} | {kills['kills_at_atomic_writes']} | {kills['runs']} | {kills['processes']} | "
           f"{kills['rows_lost']} | {kills['rows_duplicated']} | {kills['rows_differing']} | {kills['frames_lost']} | "
           f"{kills['frames_duplicated']} | {kills['frames_differing']} | {kills['runs_differing']} |", "",
           f"Planned kills that found the process already finished: {kills['kills_missed']}. Resumes without "
           f"CONFIG (from the run's config.toml): {kills['resumes_without_config']}. Failed resumes: "
           f"{kills['failed_resumes']}.", "",
           "Where the kills landed: " + ", ".join(f"{where}: {count}" for where, count in sorted(kills["landed"].items()))
           + ".", "",
           "| run | config | kills | missed | processes | rows lost/dup/diff | frames lost/dup/diff | final state | verdict |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        rows, eq, frames = r.result["rows"], r.result["equilibration_rows"], r.result["frames"]
        out.append(f"| {r.name} | {r.config} | {r.kills_delivered} | {r.missed} | {r.processes} | "
                   f"{rows['lost'] + eq['lost']}/{rows['duplicated'] + eq['duplicated']}/{rows['differing'] + eq['differing']} | "
                   f"{frames['lost']}/{frames['duplicated']}/{frames['differing']} | "
                   f"{'identical' if r.result['final_state_identical'] else 'differs'} | "
                   f"{'identical' if r.result['identical'] else 'DIFFERS'} |")
    out += ["", "| run | kill | moment | planned delay s | alive s | where | landed |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        for k in r.kills:
            out.append(f"| {k.run} | {k.number} | {k.kind} | {k.delay_s} | {k.seconds_alive} | {k.where} | "
                       f"{_md(k.landed, 200)} |")
    if pause:
        out += ["", "## A pause (--max-minutes) and its resume", "",
                f"A run paused at once by `--max-minutes` (at its first report step, with a checkpoint) and resumed "
                f"with no other writer, against the uninterrupted run: {pause['text']}."]
        for row in pause["first_differing_rows"]:
            columns = ", ".join(f"{name} {a} vs {b}" for name, (a, b) in row["columns"].items())
            out.append(f"- {row['file']} step {row['step']}: {columns}")
        out += ["", "The trials that resume a paused run are compared with this resumed pause, not with the "
                "uninterrupted run."]
    out += ["", "## Concurrent writers", "",
            "| trials | second writer refused | both wrote | one after the other | other | outputs identical |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| {concurrent['trials']} | {concurrent['refused']} | {concurrent['both wrote']} | "
            f"{concurrent['one after the other']} | {concurrent['other']} | {concurrent['outputs_identical']} |", "",
            "*Refused*: one process completed and the other stopped with rc != 0 and one line naming the "
            "lock holder (`... is being written by process N ...`).", "",
            "| trial | variant | second started after s | rc | verdict | outputs | refused writer's message |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for t in trials:
        message = next((m for m, code in zip(t.messages, t.rc) if code != 0), "")
        out.append(f"| {t.number} | {t.variant} | {t.delay_s} | {t.rc} | {t.verdict} | "
                   f"{'identical' if t.result['identical'] else 'differ'} | {_md(message, 220)} |")
    return "\n".join(out) + "\n"


def _md(text: str, limit: int) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.replace("|", "\\|")


def metadata(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    import openmm
    import torch

    def git(*command: str) -> str:
        try:
            return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    return {"date": date.today().isoformat(), "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
            "commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain")),
            "torch": torch.__version__, "openmm": openmm.__version__, "kills": args.kills, "seed": args.seed,
            "trials": args.trials, "workers": args.workers, "seconds": seconds}


# ----------------------------------------------------------------------------- main


def build_inputs(work: Path) -> dict[str, Path]:
    """The tiny model and one TOML config per entry of CONFIGS."""
    import tomli_w

    from openmm_mace_lp.upstream import import_mace

    import_mace()
    from openmm_mace_lp.systems.architectures import TINY, build_mace, save_model

    model = work / "tiny.model"
    save_model(build_mace(dataclasses.replace(TINY, max_ell=1, correlation=3), seed=1), model)
    configs = {}
    for name in CONFIGS:
        path = work / f"{name}.toml"
        path.write_text(tomli_w.dumps(config_data(model, name)))
        configs[name] = path
    return configs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=40, help="SIGKILLs to plan (default 40)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument("--trials", type=int, default=10, help="concurrent-writer trials (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="kill runs in parallel (default 2)")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                        help="results path without suffix (writes .json and .md)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.trials < 0 or args.workers < 1:
        parser.error("--kills and --workers must be >= 1, --trials >= 0")
    output = args.output.with_suffix("") if args.output.suffix in (".json", ".md") else args.output
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-runs-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    rng = random.Random(args.seed)
    configs = build_inputs(work)
    launcher = Launcher(work)
    warm_up(launcher, configs["aligned"], work)
    references = {}
    for name, config in configs.items():
        references[name] = run_reference(launcher, name, config, work)
        print(f"reference {name}: {references[name].seconds:.1f} s, lock after {references[name].lock_after_s:.1f} s, "
              f"{len(references[name].outputs.state) - 1} rows, {len(references[name].outputs.trajectory.frames)} frames",
              flush=True)
    plans: list[tuple[str, list[KillPlan]]] = []
    seeds: list[int] = []

    def one(index: int) -> RunRecord:
        name, kills = plans[index]
        record = run_with_kills(launcher, references[name], f"run-{index + 1:02d}", kills, seeds[index], work)
        print(f"run-{index + 1:02d} ({name}): {record.kills_delivered} kill(s), {record.missed} missed, "
              f"{record.processes} processes, {'identical' if record.result['identical'] else 'DIFFERS'} "
              f"({record.seconds:.0f} s)", flush=True)
        return record

    records: list[RunRecord] = []
    for _ in range(MAX_ROUNDS):  # planned kills that find the process finished are made up for
        missing = args.kills - sum(r.kills_delivered for r in records)
        if missing <= 0:
            break
        first = len(plans)
        plans += plan_kills(missing, sorted(references), rng, first)
        seeds += [rng.randrange(2**31) for _ in range(len(plans) - first)]
        with ThreadPoolExecutor(args.workers) as pool:
            records += list(pool.map(one, range(first, len(plans))))
    trials = []
    paused = None
    if args.trials:
        paused = paused_run(launcher, references["aligned"], work)
        for number in range(1, args.trials + 1):
            trial = concurrent_trial(launcher, references["aligned"], paused, number, rng, work)
            trials.append(trial)
            print(f"trial {number}: {trial.variant}, rc {trial.rc}, {trial.verdict}", flush=True)
    seconds = time.monotonic() - start
    kills, concurrent = kill_totals(records), trial_totals(trials)
    pause = pause_summary(paused)
    print_tables(records, trials, kills, concurrent)
    if pause:
        print(f"\n--max-minutes pause + resume (no other writer) against the uninterrupted run: {pause['text']}")
    meta = metadata(args, seconds)
    from openmm_mace_lp.atomic import atomic_write_json, atomic_write_text

    json_path, md_path = output.with_suffix(".json"), output.with_suffix(".md")
    atomic_write_json(json_path, {
        "schema": "openmm-mace-lp/kill-runs/1", "meta": meta, "configs": CONFIGS,
        "references": {n: {"seconds": r.seconds, "lock_after_s": r.lock_after_s, "rows": len(r.outputs.state) - 1,
                           "frames": len(r.outputs.trajectory.frames)} for n, r in references.items()},
        "kills": kills, "concurrent": concurrent, "pause_against_uninterrupted": pause,
        "runs": [dataclasses.asdict(r) for r in records], "trials": [dataclasses.asdict(t) for t in trials]})
    atomic_write_text(md_path, markdown(records, trials, kills, concurrent, meta, pause))
    print(f"\n{seconds:.0f} s; wrote {json_path} and {md_path}")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
