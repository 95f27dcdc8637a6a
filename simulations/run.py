"""One simulation from config to finished run directory: the recipe itself.

Minimise, draw velocities from the seed, equilibrate, then produce (NVT/NPT with a Langevin
integrator throughout; NVE equilibrates with Langevin at the target temperature and then
switches to Verlet). Each phase counts its own steps from 0; the production phase writes
``state.csv`` and ``trajectory.dcd``, equilibration writes ``equilibration.csv``.

A run directory holds::

    config.toml          resolved config (repeat the run from it)
    manifest.json        schema openmm-mace-lp/run/1 (status, speed, versions, card, ...)
    topology.pdb         starting structure with box (after minimisation)
    initial_state.xml    exact positions, velocities and box at step 0 (OpenMM State XML)
    equilibration.csv    state rows of the equilibration phase
    state.csv            state rows of production
    trajectory.dcd       production frames (first frame at one trajectory interval)
    checkpoint.json      the newest checkpoints and the output lengths at each
    checkpoints/*.chk    OpenMM context checkpoints
    final_state.xml      positions, velocities and box at the end
    run.log              what happened, with times
    .run.lock            held (flock) by the process writing the run
    failure-*.xml/.pdb   the offending frame, if a guard stopped the run
    last_good_state.xml  the state of the last good checkpoint, if a guard stopped the run

What the directory holds, what may be resumed or deleted and who writes it is decided by
:class:`~openmm_mace_lp.simulations.rundir.RunDirectory` alone; see ``checkpoint.py`` for
how ``--resume`` continues without duplicated or missing rows.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from io import StringIO
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from . import checkpoint as ckpt
from .config import SimulationConfig, cautions, check_resume_changes, read_run_config, resolved, validate
from openmm_mace_lp.atomic import atomic_write_text
from openmm_mace_lp.capacity import watches_for as capacity_watches
from .guards import GuardError, GuardLimits, find_problem, guard_failure, Guard
from .manifest import new_manifest, read_manifest, write_manifest
from .openmm_setup import (LANGEVIN, VERLET, create_simulation, create_system, degrees_of_freedom,
                           seeded_velocities, set_box_and_positions, total_mass_dalton)
from .platforms import check_platform_properties, device_name, reinitializes_on_checkpoint
from .reporters import PhaseReporter, Progress, StateCSV, Thermo, Trajectory, all_tasks_closed
from .rundir import (CONFIG_FILE, EMPTY, FINAL_STATE, FOREIGN, FRESH, INITIAL_STATE, LAST_GOOD_STATE, LOG_FILE,
                     MISSING, TOPOLOGY_FILE, TRAJECTORY_FILE, RunDirectory, RunDirectoryBusy,  # noqa: F401
                     is_disk_full)
from .structure import StartStructure, check_structure, load_structure, read_state_xml

logger = logging.getLogger("openmm_mace_lp.simulations")

EQUILIBRATION = "equilibration"
PRODUCTION = "production"
# Edge-capacity margin of a force re-exported during a run (at least): it must leave headroom.
GROWTH_MARGIN = 0.1


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a scheduler or a closed terminal stopping the job) during a run.

    A KeyboardInterrupt, so it stops the run exactly as Ctrl-C does: manifest "interrupted",
    the last checkpoint kept, continue with ``--resume``.
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"{signal_name} received")
        self.signal_name = signal_name


@dataclass(frozen=True)
class Phase:
    name: str
    steps: int
    integrator: str  # LANGEVIN or VERLET
    csv: str
    trajectory: bool
    check_low_temperature: bool  # equilibration starts with the post-minimisation dip in T


def plan_phases(config: SimulationConfig) -> list[Phase]:
    phases = []
    if config.run.equilibration_steps > 0:
        phases.append(Phase(EQUILIBRATION, config.run.equilibration_steps, LANGEVIN,
                            "equilibration.csv", False, False))
    phases.append(Phase(PRODUCTION, config.run.production_steps,
                        VERLET if config.ensemble == "nve" else LANGEVIN, "state.csv", True, True))
    return phases


@dataclass
class RunHooks:
    """Extension points (used by the tests; useful for extra forces or reporters).

    ``modify_system`` is called on the System before any context exists, on every start and
    resume; ``reporters`` maps a phase name to extra OpenMM reporters for that phase.
    """

    modify_system: Callable[[Any], None] | None = None
    reporters: Mapping[str, Sequence[Any]] = field(default_factory=dict)


@dataclass
class RunResult:
    run_dir: Path
    manifest: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.manifest.get("status"))


class Clock:
    """Wall seconds spent in each phase, carried over from the checkpoint on resume."""

    def __init__(self, initial: Mapping[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = {k: float(v) for k, v in (initial or {}).items()}
        self._phase: str | None = None
        self._since = 0.0

    def start(self, phase: str) -> None:
        self._phase, self._since = phase, time.perf_counter()

    def stop(self) -> None:
        if self._phase is not None:
            self.seconds[self._phase] = self.snapshot()[self._phase]
            self._phase = None

    def snapshot(self) -> dict[str, float]:
        seconds = dict(self.seconds)
        if self._phase is not None:
            seconds[self._phase] = seconds.get(self._phase, 0.0) + time.perf_counter() - self._since
        return seconds


class _Paused(Exception):
    """The deadline passed: a checkpoint was written and the run stops cleanly."""

    def __init__(self, phase: str, step: int) -> None:
        super().__init__(f"paused at {phase} step {step}")
        self.phase, self.step = phase, step


class _DeadlineTask:
    """Reporter task (after the checkpointer): past the deadline, checkpoint and stop."""

    include: tuple[str, ...] = ()

    def __init__(self, deadline: float | None, checkpointer: ckpt.Checkpointer, interval: int,
                 phase: str) -> None:
        self.deadline = deadline
        self.checkpointer = checkpointer
        self.interval = interval
        self.phase = phase

    def report(self, simulation, state, step: int) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.checkpointer.save(simulation, step)
            raise _Paused(self.phase, step)


class _GrowCapacity(Exception):
    """Raised by the capacity task: the force must be re-exported with larger capacities."""

    def __init__(self, step: int, reason: str, positions: np.ndarray, box: np.ndarray | None) -> None:
        super().__init__(f"step {step}: {reason}")
        self.step, self.reason, self.positions, self.box = step, reason, positions, box


class _CapacityTask:
    """Reporter task (before the guard): stop the step loop when a fixed-capacity neighbour list
    is nearly full, so the runner can grow it before the model would return NaN."""

    include: tuple[str, ...] = ("positions",)

    def __init__(self, watches: Sequence, interval: int, periodic: bool) -> None:
        self.watches = list(watches)
        self.interval = interval
        self.periodic = periodic

    def shortfall(self, state) -> tuple[str | None, np.ndarray, np.ndarray | None]:
        """(why a capacity must grow or None, positions nm, box nm) of this state."""
        from openmm import unit

        positions = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        box = np.array(state.getPeriodicBoxVectors().value_in_unit(unit.nanometer)) if self.periodic else None
        reasons = (watch.shortfall(positions, box) for watch in self.watches)
        return next((reason for reason in reasons if reason is not None), None), positions, box

    def report(self, simulation, state, step: int) -> None:
        reason, positions, box = self.shortfall(state)
        if reason is not None:
            raise _GrowCapacity(step, reason, positions, box)


@dataclass
class _Start:
    kind: str  # "fresh", "resume" or "done"
    config: SimulationConfig
    record: ckpt.CheckpointRecord | None = None
    checkpoint: bytes | None = None
    changed: list[str] = field(default_factory=list)  # config keys changed on resume


# ----------------------------------------------------------------------------- entry point


def prepare_config(config: SimulationConfig) -> SimulationConfig:
    """The config validated, resolved (concrete platform, device, backend) and with
    ``[platform.properties]`` checked against that platform: all a dry run can check."""
    validate(config)
    config = resolved(config)
    check_platform_properties(config.platform.name, config.platform.properties)
    return config


def simulate(config: SimulationConfig | None, run_dir: str | Path, *, resume: bool = False,
             quiet: bool = False, overwrite: bool = False, deadline: float | None = None,
             hooks: RunHooks | None = None) -> RunResult:
    """Run (or with ``resume`` continue) the simulation ``config`` describes in ``run_dir``.

    The process holds the directory's lock for the whole call (a second writer gets
    :class:`RunDirectoryBusy` at once). With ``resume`` and ``config=None`` the directory's own
    config.toml is used; with a config it must match the stored one except for the keys in
    ``RESUMABLE_CHANGES``. ``resume`` of a missing or empty directory with a config starts the
    run, so a job script can always pass ``--resume``; it never deletes anything a checkpoint
    vouched for, and refuses (saying what is missing) without config.toml, without a usable
    checkpoint, or in a directory that is not a run. A directory of ours in which no checkpoint
    was ever committed (killed before its first one) holds nothing of value and starts again
    from step 0, by ``resume`` or not (see :mod:`.rundir`). A fresh run refuses a directory
    that is not empty and not ours; ``overwrite`` replaces an earlier run (or, in a foreign
    directory, the files named like a run's). ``deadline`` (a ``time.monotonic()`` value)
    pauses the run at the first report step after it, with a checkpoint: status "paused",
    continue with ``resume`` (for job time limits). SIGTERM, SIGINT and a full disk stop it
    with status "interrupted" and the last checkpoint kept.
    """
    hooks = hooks or RunHooks()
    directory = RunDirectory(run_dir)
    run_dir = directory.path
    if config is not None:
        config = prepare_config(config)
    directory.check_is_directory()
    if config is not None and not directory.holds_results():
        check_start_inputs(config)  # a bad structure or model file fails before anything is created
    choice = dict(resume=resume, overwrite=overwrite, config_given=config is not None)
    if directory.kind() in (MISSING, EMPTY, FOREIGN):
        _refuse_if_busy(directory)
        directory.start_mode(**choice)  # refuses before anything is created or locked
    directory.create()
    with directory.lock():
        mode = directory.start_mode(**choice)
        leftovers = directory.clean_temporary_files()
        removed: list[str] = []
        if mode == FRESH:
            if config is None:
                config = prepare_config(read_run_config(run_dir))
            removed = directory.clear_for_fresh_start(overwrite)
            start = _Start("fresh", config)
        else:
            start = _resume_point(config, directory)
            if start.kind == "done":
                return RunResult(run_dir, directory.manifest() or {})
        with run_logging(run_dir, quiet), _stop_signals_interrupt():
            if leftovers:
                logger.info("removed %d temporary file(s) left by a killed process: %s", len(leftovers),
                            ", ".join(str(path.relative_to(run_dir)) for path in leftovers))
            if removed:
                logger.info("%s: %s", "--overwrite removed" if overwrite else
                            "no checkpoint to resume from: starting from scratch; removed", ", ".join(removed))
            return _Runner(start, directory, quiet, hooks, deadline).run()


def check_start_inputs(config: SimulationConfig) -> None:
    """The starting structure (readable, finite, a box for NPT) and the model (a MACE model, not
    a state dict, with parameters for every element of the structure), checked before a fresh
    run creates its directory, so bad input leaves nothing."""
    from openmm_mace_lp.export import check_elements
    from openmm_mace_lp.model_files import default_model_path, load_mace_model

    structure = load_structure(config.system)
    check_structure(structure, config.ensemble)
    if config.model.kind == "mace":
        model = load_mace_model(default_model_path() if config.model.path == "default" else Path(config.model.path))
        check_elements(model, [atom.element.atomic_number for atom in structure.topology.atoms()
                               if atom.element is not None])  # element-less atoms: the potential names them


def _refuse_if_busy(directory: RunDirectory) -> None:
    holder = directory.holder()
    if holder is not None:
        with directory.lock():  # raises RunDirectoryBusy naming the holder
            pass


def _resume_point(config: SimulationConfig | None, directory: RunDirectory) -> _Start:
    """Where a resume continues (start_mode said RESUME: config.toml and a usable checkpoint exist)."""
    run_dir = directory.path
    stored = read_run_config(run_dir)
    changed: list[str] = []
    if config is not None:
        changed = check_resume_changes(stored, config)
    else:
        config = prepare_config(stored)
    record, data = directory.latest_checkpoint()
    phases = plan_phases(config)
    if record.phase == PRODUCTION and record.step > config.run.production_steps:
        raise ValueError(f"run.production_steps = {config.run.production_steps} but {run_dir} already "
                         f"has {record.step} production steps; ask for at least that many.")
    if (record.phase == phases[-1].name and record.step == phases[-1].steps
            and directory.status() == "completed"):
        return _Start("done", config, record, data)
    # Refusals come before anything is written: the manifest keeps its status, run.log and the
    # outputs their bytes (a refused resume must leave the run as it found it).
    _check_same_model(config, directory.manifest() or {})
    directory.check_outputs(record)
    return _Start("resume", config, record, data, changed)


@contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`RunInterrupted` during the run (main thread only, and
    only where nobody installed a handler), so the manifest can say "interrupted"."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        raise RunInterrupted(signal.Signals(signum).name)

    previous = {}
    for number in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(number) is signal.SIG_DFL:
            previous[number] = signal.signal(number, interrupt)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


# ----------------------------------------------------------------------------- the runner


class _Runner:
    """State of one process's work on a run directory (one 'segment' of the run)."""

    def __init__(self, start: _Start, directory: RunDirectory, quiet: bool, hooks: RunHooks,
                 deadline: float | None = None) -> None:
        self.start = start
        self.deadline = deadline
        self.config = start.config
        self.directory = directory
        self.run_dir = directory.path
        self.quiet = quiet
        self.hooks = hooks
        self.phases = plan_phases(self.config)
        self.clock = Clock(start.record.clock if start.record else None)
        self.manifest: dict[str, Any] = {}
        self.closed_outputs: dict[str, Any] = dict(start.record.outputs) if start.record else {}
        self.tasks: list[Any] = []
        self.progress = Progress(sum(phase.steps for phase in self.phases), self._steps_done(), quiet)
        self.last_record: ckpt.CheckpointRecord | None = start.record
        self.simulation = None

    def _steps_done(self) -> int:
        """Steps of all phases before the start point (for the progress bar)."""
        record = self.start.record
        if record is None:
            return 0
        index = [phase.name for phase in self.phases].index(record.phase)
        return sum(phase.steps for phase in self.phases[:index]) + record.step

    # -- top level ---------------------------------------------------------------------

    def run(self) -> RunResult:
        try:
            if self.start.kind == "fresh":
                phase_index, step = self._fresh_start(), 0
            else:
                phase_index, step = self._resume_start()
            self._run_phases(phase_index, step)
            self._finish()
        except _Paused as pause:
            self._pause(pause)
        except GuardError as error:
            self._fail_guard(error)
            raise
        except BaseException as error:
            self._fail(error)
            raise
        finally:
            all_tasks_closed(self.tasks)
            self.progress.close()
        return RunResult(self.run_dir, self.manifest)

    def _fresh_start(self) -> int:
        config = self.config
        self.progress.stage("building")
        logger.info("run %s: %s %s, policy %s, model %s, platform %s (%s)", self.run_dir,
                    config.ensemble.upper(), config.arm_name, config.model.policy, config.model.path,
                    config.platform.name, config.platform.device)
        structure = load_structure(config.system)
        check_structure(structure, config.ensemble)
        logger.info("structure: %s, %d atoms", structure.source, structure.n_atoms)
        for caution in cautions(config):
            logger.warning("caution: %s", caution)
        atomic_write_text(self.run_dir / CONFIG_FILE, config.to_toml())
        self._write_manifest_start(structure.n_atoms)
        self._build(structure, self.phases[0].integrator)
        context = self.simulation.context
        set_box_and_positions(context, structure.box, structure.positions)
        self._minimise()
        positions = context.getState(getPositions=True).getPositions(asNumpy=True)
        context.setVelocities(seeded_velocities(self.system, positions, config.integrator.temperature_K,
                                                config.run.seed))
        state = context.getState(getPositions=True, getVelocities=True)
        atomic_write_text(self.run_dir / INITIAL_STATE, _serialize(state))
        _write_pdb(self.run_dir / TOPOLOGY_FILE, structure.topology, state)
        return 0

    def _resume_start(self) -> tuple[int, int]:
        record = self.start.record
        from openmm.app import PDBFile

        self.progress.stage("building")
        topology = PDBFile(str(self.run_dir / TOPOLOGY_FILE)).topology
        initial = read_state_xml(self.run_dir / INITIAL_STATE)
        positions = np.asarray(initial.getPositions(asNumpy=True)._value)
        box = None
        if topology.getPeriodicBoxVectors() is not None:
            box = np.array([[v[i] for i in range(3)] for v in initial.getPeriodicBoxVectors()._value])
        structure = StartStructure(topology, positions, box, str(self.run_dir / TOPOLOGY_FILE))
        self.manifest = read_manifest(self.run_dir) or {}
        if not self.manifest:
            self._write_manifest_start(structure.n_atoms)
        self.manifest.update(status="running", failure=None,
                             segments=int(self.manifest.get("segments", 1)) + 1,
                             production_steps=self.config.run.production_steps)
        write_manifest(self.run_dir, self.manifest)
        index = [phase.name for phase in self.phases].index(record.phase)
        logger.info("resuming %s from the checkpoint at %s step %d (%s)", self.run_dir, record.phase,
                    record.step, record.file)
        if self.start.changed:
            logger.info("changed on resume: %s", ", ".join(self.start.changed))
        self.directory.restore_outputs(record)
        self._build(structure, self.phases[index].integrator)
        self.simulation.context.loadCheckpoint(self.start.checkpoint)
        return index, record.step

    def _build(self, structure: StartStructure, integrator_kind: str) -> None:
        """System and first Simulation (the model is exported here: the expensive part)."""
        t0 = time.perf_counter()
        self.progress.stage("exporting")
        self.structure = structure
        with self.progress.ticking():
            self.system = create_system(self.config, structure)
            if self.hooks.modify_system is not None:
                self.hooks.modify_system(self.system)
            self.simulation = create_simulation(self.config, structure.topology, self.system, integrator_kind)
        self.capacity_watches = capacity_watches(self.system)
        self.periodic = structure.box is not None
        self.thermo = Thermo(degrees_of_freedom(self.system), total_mass_dalton(self.system),
                             self.config.integrator.timestep_fs / 1000.0)
        self.reinitialize = reinitializes_on_checkpoint(self.config.output.reinitialize_on_checkpoint,
                                                        self.config.platform.name)
        self.progress.attach(self.thermo, self.periodic, self.config.output.report_interval_steps)
        logger.info("system built in %.1f s (%d degrees of freedom)", time.perf_counter() - t0,
                    self.thermo.dof)

    def _grow_capacity(self, phase: Phase, grow: _GrowCapacity) -> None:
        """Re-export the force sized for the current positions and carry the exact state over.

        The task stopped the loop right after a step, before the guard, CSV or checkpoint saw it:
        the new Simulation continues from that step through an OpenMM checkpoint (positions,
        velocities, box, step count, random states), so no step is lost or repeated.
        """
        t0 = time.perf_counter()
        saved = self.simulation.context.createCheckpoint()
        reporters = self.simulation.reporters
        kind = self._integrator_kind(self.simulation)
        margin = max(self.config.model.neighbor_margin, GROWTH_MARGIN)
        # Sized for where the run is now: positions and (under a barostat) box of this step.
        now = replace(self.structure, positions=grow.positions, box=grow.box)
        self.system = create_system(self.config, now, margin=margin)
        if self.structure.box is not None:
            # The barostat sizes its first trial moves from the System's default box: keep the
            # run's own, as a resumed run does.
            import openmm

            self.system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*map(float, row)) for row in self.structure.box])
        if self.hooks.modify_system is not None:
            self.hooks.modify_system(self.system)
        self.simulation = create_simulation(self.config, self.structure.topology, self.system, kind)
        self.simulation.context.loadCheckpoint(saved)
        self.simulation.reporters = reporters
        self.capacity_watches = capacity_watches(self.system)
        (capacity_task,) = [task for task in self.tasks if isinstance(task, _CapacityTask)]
        capacity_task.watches = self.capacity_watches
        self.manifest["capacity_growths"] = int(self.manifest.get("capacity_growths", 0)) + 1
        write_manifest(self.run_dir, self.manifest)
        logger.info("%s step %d: %s; neighbour capacities re-sized for the current positions and the "
                    "force re-exported in %.1f s", phase.name, grow.step, grow.reason, time.perf_counter() - t0)
        state = self.simulation.context.getState(getPositions=True, getVelocities=True, getEnergy=True,
                                                 getForces=True, enforcePeriodicBox=False)
        reason, _, _ = capacity_task.shortfall(state)
        if reason is not None:
            raise RuntimeError(f"{phase.name} step {grow.step}: the neighbour list re-sized for the "
                               f"current positions is still short ({reason}); set model.neighbor_list "
                               f"= \"dynamic\" (no CUDA graphs) for this system.")
        # The other tasks have not seen this step yet (guard, CSV row, frame, checkpoint).
        for task in reporters[0].tasks:
            if not isinstance(task, _CapacityTask) and (task.interval == 0 or grow.step % task.interval == 0):
                task.report(self.simulation, state, grow.step)

    def _minimise(self) -> None:
        run = self.config.run
        context = self.simulation.context
        before = _potential(context)
        from openmm import unit

        t0 = time.perf_counter()
        if run.minimize:
            self.progress.stage("minimising")
            logger.info("minimising (at most %s iterations)", run.minimize_max_iterations or "unlimited")
            with self.progress.ticking():
                self.simulation.minimizeEnergy(
                    tolerance=run.minimize_tolerance_kJ_mol_nm * unit.kilojoule_per_mole / unit.nanometer,
                    maxIterations=run.minimize_max_iterations)
        state = context.getState(getEnergy=True, getPositions=True, getForces=True, getVelocities=True)
        after = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        if run.minimize:
            logger.info("minimised: %.3f -> %.3f kJ/mol in %.1f s", before, after, time.perf_counter() - t0)
        self.manifest["minimization"] = {"done": run.minimize, "initial_energy_kJ_mol": before,
                                         "final_energy_kJ_mol": after}
        write_manifest(self.run_dir, self.manifest)
        limits = GuardLimits(self.config.integrator.temperature_K, np.inf, 0.0, True)
        problem = find_problem(state, self.thermo, limits, False)
        if problem is not None:
            raise guard_failure(self.run_dir, "minimization", 0, problem, state, self.structure.topology)

    # -- phases ------------------------------------------------------------------------

    def _run_phases(self, first_index: int, first_step: int) -> None:
        for index in range(first_index, len(self.phases)):
            phase = self.phases[index]
            resuming_phase = index == first_index and self.start.kind == "resume"
            if index > first_index:
                self._enter_phase(phase)
            self._run_phase(phase, first_step if index == first_index else 0, resuming_phase)

    def _enter_phase(self, phase: Phase) -> None:
        """Switch to ``phase``: same context with its step count and time reset, or (NVE) a new
        Verlet context with the equilibrated positions, velocities and box."""
        current = self.simulation
        if phase.integrator != self._integrator_kind(current):
            state = current.context.getState(getPositions=True, getVelocities=True)
            new = create_simulation(self.config, self.structure.topology, self.system, phase.integrator)
            new.context.setPeriodicBoxVectors(*state.getPeriodicBoxVectors())
            new.context.setPositions(state.getPositions())
            new.context.setVelocities(state.getVelocities())
            del current
            self.simulation = new
        self.simulation.context.setStepCount(0)
        self.simulation.context.setTime(0.0)
        logger.info("%s: %d steps", phase.name, phase.steps)

    @staticmethod
    def _integrator_kind(simulation) -> str:
        import openmm

        return VERLET if isinstance(simulation.integrator, openmm.VerletIntegrator) else LANGEVIN

    def _run_phase(self, phase: Phase, step: int, resuming: bool) -> None:
        config, out = self.config, self.config.output
        csv = StateCSV(self.run_dir / phase.csv, self.thermo, out.report_interval_steps, self.periodic,
                       resume=resuming)
        trajectory = None
        if phase.trajectory:
            trajectory = Trajectory(self.run_dir / TRAJECTORY_FILE, self.structure.topology,
                                    self.thermo.timestep_ps, out.trajectory_interval_steps, resume=resuming)

        def outputs() -> dict[str, Any]:
            lengths = {key: value for key, value in self.closed_outputs.items() if key != phase.csv}
            lengths[phase.csv] = csv.sync()
            if trajectory is not None:
                frames, size = trajectory.sync()
                lengths[TRAJECTORY_FILE] = {"frames": frames, "bytes": size}
            return lengths

        limits = GuardLimits(config.integrator.temperature_K, config.guards.max_temperature_factor,
                             config.guards.min_temperature_factor, config.guards.check_forces)
        guard = Guard(self.run_dir, phase.name, self.thermo, limits, self.structure.topology,
                      phase.check_low_temperature)
        checkpointer = ckpt.Checkpointer(self.run_dir, phase.name, out.checkpoint_interval_steps,
                                         out.keep_checkpoints, outputs, self.clock.snapshot,
                                         self._on_checkpoint, self.reinitialize)
        if resuming:
            checkpointer.last_step = step
        stop = _DeadlineTask(self.deadline, checkpointer, out.report_interval_steps, phase.name)
        capacity = None
        if self.capacity_watches:
            capacity = _CapacityTask(self.capacity_watches, out.report_interval_steps, self.periodic)
        self.tasks = [task for task in (capacity, guard, csv, trajectory, checkpointer, stop, self.progress)
                      if task is not None]
        self.simulation.reporters = [PhaseReporter(self.tasks), *self.hooks.reporters.get(phase.name, ())]
        offset = sum(p.steps for p in self.phases[:self.phases.index(phase)])
        self.progress.set_phase(phase.name, offset, step)
        csv.start(step)
        self.clock.start(phase.name)
        try:
            while True:
                try:
                    self._step(phase, phase.steps - self.simulation.currentStep)
                    break
                except _GrowCapacity as grow:
                    self._grow_capacity(phase, grow)
            self._check_final_state(phase, guard, checkpointer)
            checkpointer.save(self.simulation, phase.steps)
        finally:
            self.clock.stop()
        self.closed_outputs = outputs()
        csv.close()
        if trajectory is not None:
            trajectory.close()
        self.tasks = [self.progress]

    def _step(self, phase: Phase, steps: int) -> None:
        import openmm

        if steps <= 0:
            return
        try:
            self.simulation.step(steps)
        except openmm.OpenMMException as error:
            # e.g. "Particle coordinate is NaN": the dynamics blew up between two reports.
            step = self.simulation.currentStep
            try:
                state = self.simulation.context.getState(getPositions=True, getVelocities=True)
            except Exception:  # noqa: BLE001
                state = None
            if state is None:
                raise GuardError(f"OpenMM stopped the run at {phase.name} step {step}: {error}",
                                 phase=phase.name, step=step, reason=str(error), frame_files=[]) from None
            raise guard_failure(self.run_dir, phase.name, step, f"OpenMM raised '{error}'", state,
                                self.structure.topology) from None

    def _check_final_state(self, phase: Phase, guard: Guard, checkpointer: ckpt.Checkpointer) -> None:
        """Guard the last state of a phase before its end-of-phase checkpoint (skipped when the
        last step was a checkpoint step: that state was checked, and no extra model call
        may happen between a checkpoint and the next step)."""
        if checkpointer.last_step == phase.steps:
            return
        state = self.simulation.context.getState(getEnergy=True, getPositions=True, getVelocities=True,
                                                 getForces=guard.limits.check_forces)
        guard.report(self.simulation, state, phase.steps)

    # -- manifest ----------------------------------------------------------------------

    def _write_manifest_start(self, n_atoms: int) -> None:
        config = self.config  # resolved: the backend is concrete (cueq or e3nn)
        self.manifest = new_manifest(config, arm=config.arm_name, backend=config.model.backend, n_atoms=n_atoms,
                                     device=device_name(config.platform.device),
                                     extra={"run_dir": str(self.run_dir.resolve()),
                                            "structure": config.system.pdb or
                                            f"water_molecules={config.system.water_molecules}",
                                            "cautions": cautions(config)})
        write_manifest(self.run_dir, self.manifest)

    def _on_checkpoint(self, record: ckpt.CheckpointRecord) -> None:
        self.last_record = record
        production = record.phase == PRODUCTION
        self.manifest.update(self._progress_fields(record.phase, record.step, record.clock))
        self.manifest["checkpoint"] = {"file": record.file, "phase": record.phase, "step": record.step,
                                       "created": record.created}
        if not production and record.phase == EQUILIBRATION:
            self.manifest["equilibration_steps_completed"] = record.step
        write_manifest(self.run_dir, self.manifest)

    def _progress_fields(self, phase: str, step: int, clock: Mapping[str, float]) -> dict[str, Any]:
        seconds = float(clock.get(PRODUCTION, 0.0))
        steps = step if phase == PRODUCTION else 0
        ns = steps * self.config.integrator.timestep_fs * 1e-6
        fields: dict[str, Any] = {
            "steps_completed": steps,
            "wall_time_s": seconds,
            "ns_per_day": ns / (seconds / 86400.0) if seconds > 0 and steps > 0 else None,
            "phase_wall_time_s": dict(clock),
        }
        if phase == PRODUCTION:
            fields["equilibration_steps_completed"] = self.config.run.equilibration_steps
        return fields

    def _finish(self) -> None:
        state = self.simulation.context.getState(getPositions=True, getVelocities=True)
        atomic_write_text(self.run_dir / FINAL_STATE, _serialize(state))
        self.manifest.update(self._progress_fields(PRODUCTION, self.config.run.production_steps,
                                                   self.clock.snapshot()))
        self.manifest.update(status="completed", failure=None)
        write_manifest(self.run_dir, self.manifest)
        logger.info("completed %d production steps; %s ns/day", self.config.run.production_steps,
                    _fmt(self.manifest.get("ns_per_day")))

    def _pause(self, pause: "_Paused") -> None:
        record = self.last_record
        self.manifest.update(self._progress_fields(record.phase, record.step, record.clock))
        self.manifest.update(status="paused", failure=None)
        write_manifest(self.run_dir, self.manifest)
        logger.info("time limit reached: paused at %s step %d with a checkpoint; continue with --resume",
                    pause.phase, pause.step)

    def _fail_guard(self, error: GuardError) -> None:
        error.args = (f"{error.args[0]} {self._guard_advice(self.last_record)}",)
        logger.error("%s", error.args[0])
        self._record_failure("failed", {"kind": "guard", "phase": error.phase, "step": error.step,
                                        "reason": error.reason, "frames": [str(p) for p in error.frame_files],
                                        "message": error.args[0]})

    def _guard_advice(self, record: ckpt.CheckpointRecord | None) -> str:
        """What the user can do next, limited to what --resume and a new run allow."""
        if record is None:
            return ("No checkpoint had been written yet, so nothing of value is kept: fix the cause "
                    "(smaller timestep, another policy, a better structure) and start again; this "
                    "directory restarts from step 0.")
        advice = (f"The last good checkpoint ({record.phase} step {record.step}, {record.file}) is kept. "
                  "--resume continues from it as the same simulation: it may change guards.* (e.g. "
                  "--set guards.max_temperature_factor=3) or run.production_steps, not the timestep "
                  "or the policy.")
        state_file = self._write_last_good_state(record)
        if state_file is not None:
            config = self.config
            advice += (f" To go on from that state with a smaller timestep or another policy, start a "
                       f"new run from it (velocities are drawn again from run.seed): mace-lp simulate "
                       f"{config.ensemble} {self.run_dir / CONFIG_FILE} --set system.state={state_file} "
                       f"--set run.minimize=false --set integrator.timestep_fs="
                       f"{config.integrator.timestep_fs / 2:g} -o {self.run_dir}-next")
        return advice

    def _write_last_good_state(self, record: ckpt.CheckpointRecord) -> Path | None:
        """Positions, velocities and box of ``record`` as State XML (what system.state reads)."""
        latest = self.directory.latest_checkpoint()
        if self.simulation is None or latest is None or latest[0].file != record.file:
            return None
        try:
            context = self.simulation.context
            context.loadCheckpoint(latest[1])
            state = context.getState(getPositions=True, getVelocities=True, enforcePeriodicBox=False)
            return atomic_write_text(self.run_dir / LAST_GOOD_STATE, _serialize(state))
        except Exception as error:  # noqa: BLE001 - e.g. an equilibration checkpoint in NVE's Verlet context
            logger.info("could not write %s from %s: %s", LAST_GOOD_STATE, record.file, error)
            return None

    def _fail(self, error: BaseException) -> None:
        if isinstance(error, RunInterrupted):
            cause = error.signal_name
        elif isinstance(error, KeyboardInterrupt):
            cause = "SIGINT (Ctrl-C)"
        elif isinstance(error, SystemExit):
            cause = f"exit({error.code})"
        elif is_disk_full(error):
            cause = "disk full"
        else:
            logger.error("run stopped (error): %s: %s", type(error).__name__, error)
            self._record_failure("failed", {"kind": "error", "type": type(error).__name__,
                                            "message": str(error)})
            return
        record = self.last_record
        kept = (f"the checkpoint at {record.phase} step {record.step} is kept" if record else
                "no checkpoint had been written yet")
        logger.error("run interrupted (%s): %s; continue with --resume", cause, kept)
        self._record_failure("interrupted", {"kind": "interrupted", "cause": cause,
                                             "type": type(error).__name__, "message": str(error)})

    def _record_failure(self, status: str, failure: dict[str, Any]) -> None:
        if not self.manifest:
            return
        if self.last_record is not None:
            self.manifest.update(self._progress_fields(self.last_record.phase, self.last_record.step,
                                                       self.last_record.clock))
        self.manifest.update(status=status, failure=failure)
        try:
            write_manifest(self.run_dir, self.manifest, in_place_if_full=True)
        except OSError as error:
            logger.error("could not record the status %r in manifest.json: %s", status, error)


# ----------------------------------------------------------------------------- helpers


def _check_same_model(config: SimulationConfig, manifest: Mapping[str, Any]) -> None:
    """A resumed run may find its model at a new path, but it must be the same file."""
    from .manifest import model_record

    expected = (manifest.get("model") or {}).get("sha256")
    found = model_record(config.model)["sha256"]
    if expected and found != expected:
        raise ValueError(f"model.path = {config.model.path!r} has SHA-256 {found[:12]}..., but the run "
                         f"started with {expected[:12]}... ({manifest['model'].get('path')}); resume "
                         "with the same model file.")


def _potential(context) -> float:
    from openmm import unit

    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def _serialize(state) -> str:
    import openmm

    return openmm.XmlSerializer.serialize(state)


def _write_pdb(path: Path, topology, state) -> None:
    from openmm.app import PDBFile

    if topology.getPeriodicBoxVectors() is not None:
        topology.setPeriodicBoxVectors(state.getPeriodicBoxVectors())
    text = StringIO()
    PDBFile.writeFile(topology, state.getPositions(), text, keepIds=True)
    atomic_write_text(path, text.getvalue())


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001
            self.handleError(record)


@contextmanager
def run_logging(run_dir: Path, quiet: bool) -> Iterator[logging.Logger]:
    """Log to ``run.log`` (always, appending across resumes) and to the terminal unless quiet."""
    handlers: list[logging.Handler] = [logging.FileHandler(run_dir / LOG_FILE)]
    handlers[0].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    if not quiet:
        console = _TqdmHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(console)
    previous = (logger.level, logger.propagate)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield logger
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(previous[0])
        logger.propagate = previous[1]
