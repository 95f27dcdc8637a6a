"""What a running simulation writes: state CSV rows, DCD frames, a progress bar.

OpenMM's Simulation calls reporters in groups (wrapped positions first, then unwrapped, then
"don't care"), so the order of separate reporters at one step is not the order of the list.
Order matters here: the guard must see a state before it is written, and a checkpoint must
come after the CSV and DCD have been flushed. :class:`PhaseReporter` is therefore the one
OpenMM reporter of a run; it fetches one State per report step and hands it to its tasks in
a fixed order. Tasks are small objects with ``interval``, ``include`` and
``report(simulation, state, step)``.

Positions are written unwrapped (``enforcePeriodicBox=False``): MACE systems have no bonds,
so OpenMM would wrap every atom on its own and split molecules across the box.
"""
from __future__ import annotations

import math
import os
import struct
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from scipy.constants import Avogadro as AVOGADRO  # the project's one N_A (CODATA)

from openmm_mace_lp.atomic import sync_handle

STATE_COLUMNS = (
    "step", "time_ps", "potential_energy_kJ_mol", "kinetic_energy_kJ_mol", "total_energy_kJ_mol",
    "temperature_K", "box_volume_nm3", "density_g_cm3", "speed_ns_day",
)
MOLAR_GAS_CONSTANT = 8.314462618e-3  # kJ/(mol K)


class Task(Protocol):
    interval: int
    include: tuple[str, ...]

    def report(self, simulation, state, step: int) -> None: ...


class PhaseReporter:
    """The OpenMM reporter of one phase: runs its tasks in list order on one State.

    A task with ``interval == 0`` (the guard) runs at every step at which any other task does.
    """

    def __init__(self, tasks: Sequence[Task]) -> None:
        self.tasks = list(tasks)
        if not any(task.interval > 0 for task in self.tasks):
            raise ValueError("PhaseReporter needs at least one task with a positive interval")

    def describeNextReport(self, simulation) -> dict:  # noqa: N802 - OpenMM's reporter API
        step = simulation.currentStep
        distances = [task.interval - step % task.interval if task.interval > 0 else None
                     for task in self.tasks]
        steps = min(d for d in distances if d is not None)
        include = {part for task, distance in zip(self.tasks, distances)
                   if distance is None or distance == steps for part in task.include}
        return {"steps": steps, "periodic": False, "include": sorted(include)}

    def report(self, simulation, state) -> None:
        step = simulation.currentStep
        for task in self.tasks:
            if task.interval == 0 or step % task.interval == 0:
                task.report(simulation, state, step)


# ----------------------------------------------------------------------------- thermodynamics


@dataclass(frozen=True)
class Thermo:
    """What turns a State into a CSV row: degrees of freedom, mass, time step."""

    dof: int
    mass_dalton: float
    timestep_ps: float

    def temperature(self, kinetic_kj_mol: float) -> float:
        return 2.0 * kinetic_kj_mol / (self.dof * MOLAR_GAS_CONSTANT)

    def density(self, volume_nm3: float) -> float:
        return self.mass_dalton / AVOGADRO / (volume_nm3 * 1e-21)


def state_values(state, thermo: Thermo, periodic: bool) -> dict[str, float]:
    """Energies (kJ/mol), temperature (K), volume (nm^3) and density (g/cm^3) of a State."""
    from openmm import unit

    potential = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    kinetic = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
    values = {"potential": potential, "kinetic": kinetic, "total": potential + kinetic,
              "temperature": thermo.temperature(kinetic), "volume": math.nan, "density": math.nan}
    if periodic:
        volume = state.getPeriodicBoxVolume().value_in_unit(unit.nanometer ** 3)
        values["volume"] = volume
        values["density"] = thermo.density(volume)
    return values


class StateCSV:
    """``state.csv`` (production) or ``equilibration.csv``: one row every ``interval`` steps.

    The speed column is the simulated ns/day since the previous row (or since stepping began
    in this process), measured on the wall clock, so it includes reporting overhead.
    """

    include = ("energy",)

    def __init__(self, path: Path, thermo: Thermo, interval: int, periodic: bool,
                 resume: bool) -> None:
        self.path = Path(path)
        self.thermo = thermo
        self.interval = interval
        self.periodic = periodic
        exists = resume and self.path.is_file() and self.path.stat().st_size > 0
        self._handle = open(self.path, "a" if exists else "w", newline="")
        if not exists:
            self._handle.write(",".join(STATE_COLUMNS) + "\n")
        self._last_step: int | None = None
        self._last_time = time.perf_counter()
        self.last_values: dict[str, float] | None = None
        self.last_speed: float | None = None

    def start(self, step: int) -> None:
        """Stepping (re)starts at ``step`` now: the next speed is measured from here."""
        self._last_step, self._last_time = step, time.perf_counter()

    def report(self, simulation, state, step: int) -> None:
        now = time.perf_counter()
        speed = None
        if self._last_step is not None and step > self._last_step and now > self._last_time:
            ns = (step - self._last_step) * self.thermo.timestep_ps / 1000.0
            speed = ns / ((now - self._last_time) / 86400.0)
        self._last_step, self._last_time = step, now
        values = state_values(state, self.thermo, self.periodic)
        self.last_values, self.last_speed = values, speed
        volume = repr(values["volume"]) if self.periodic else ""
        density = repr(values["density"]) if self.periodic else ""
        row = [str(step), repr(step * self.thermo.timestep_ps), repr(values["potential"]),
               repr(values["kinetic"]), repr(values["total"]), repr(values["temperature"]),
               volume, density, "" if speed is None else f"{speed:.6g}"]
        self._handle.write(",".join(row) + "\n")

    def sync(self) -> int:
        """Flush to disk; the file's length in bytes (what a checkpoint records)."""
        sync_handle(self._handle)
        return os.fstat(self._handle.fileno()).st_size

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            self._handle.close()


def check_length(path: Path, length: int) -> None:
    """Refuse an output shorter than the ``length`` a checkpoint recorded for it."""
    size = path.stat().st_size
    if size < length:
        raise ValueError(f"{path} has {size} bytes but the checkpoint says {length} were written "
                         "and synced before it; the file was modified or truncated outside the run. "
                         "Restore it or start a new run directory.")


def truncate_file(path: Path, length: int) -> None:
    """Cut ``path`` back to ``length`` bytes (rows written after the checkpoint)."""
    check_length(path, length)
    with open(path, "r+b") as handle:
        handle.truncate(length)
        sync_handle(handle)


# ----------------------------------------------------------------------------- trajectory


class Trajectory:
    """``trajectory.dcd`` through OpenMM's DCDFile, frames every ``interval`` steps.

    As with OpenMM's DCDReporter the first frame is at step ``interval``, never at step 0
    (the analysis layer relies on it); the starting structure is ``topology.pdb``.
    """

    include = ("positions",)

    def __init__(self, path: Path, topology, timestep_ps: float, interval: int, resume: bool) -> None:
        from openmm.app import DCDFile

        self.path = Path(path)
        self.interval = interval
        append = resume and self.path.is_file() and self.path.stat().st_size > 0
        self.frames = 0
        if append:
            layout = dcd_layout(self.path)
            self.frames = (self.path.stat().st_size - layout.header_bytes) // layout.frame_bytes
        self._handle = open(self.path, "r+b" if append else "wb")
        self._dcd = DCDFile(self._handle, topology, timestep_ps, interval, interval, append=append)

    def report(self, simulation, state, step: int) -> None:
        self._dcd.writeModel(state.getPositions(asNumpy=True),
                             periodicBoxVectors=state.getPeriodicBoxVectors())
        self.frames += 1

    def sync(self) -> tuple[int, int]:
        """Flush to disk; (frames, bytes)."""
        sync_handle(self._handle)
        return self.frames, os.fstat(self._handle.fileno()).st_size

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            self._handle.close()


@dataclass(frozen=True)
class DCDLayout:
    header_bytes: int
    frame_bytes: int
    n_atoms: int
    first_step: int
    interval: int


def dcd_layout(path: Path) -> DCDLayout:
    """Header and frame sizes of a DCD written by OpenMM's DCDFile (CHARMM, little-endian)."""
    with open(path, "rb") as handle:
        head = handle.read(100)
        if len(head) < 100 or struct.unpack("<i", head[:4])[0] != 84 or head[4:8] != b"CORD":
            raise ValueError(f"{path} is not a DCD file written by OpenMM (bad header).")
        first_step, interval = struct.unpack("<ii", head[12:20])
        has_box = struct.unpack("<i", head[48:52])[0] != 0
        comments = struct.unpack("<i", head[92:96])[0]
        handle.seek(104 + comments)
        n_atoms = struct.unpack("<i", handle.read(4))[0]
    header = 112 + comments
    frame = (56 if has_box else 0) + 3 * (8 + 4 * n_atoms)
    return DCDLayout(header, frame, n_atoms, first_step, interval)


def truncate_dcd(path: Path, frames: int) -> None:
    """Keep the first ``frames`` frames and make the header say so (for appending)."""
    layout = dcd_layout(path)
    length = layout.header_bytes + frames * layout.frame_bytes
    truncate_file(path, length)
    with open(path, "r+b") as handle:
        handle.seek(8)
        handle.write(struct.pack("<i", frames))
        handle.seek(20)
        handle.write(struct.pack("<i", layout.first_step + max(frames - 1, 0) * layout.interval))
        sync_handle(handle)


# ----------------------------------------------------------------------------- progress


# What the bar says in each stage of a run: the MD phases by the name of their activity.
STAGE_LABELS = {"equilibration": "equilibrating", "production": "producing"}


class Progress:
    """What a run is doing, on one tqdm line: the stage before MD (building, exporting,
    minimising, with signs of life) and then a bar over all MD steps (equilibration +
    production) with ns/day, temperature, density and an ETA.

    The rate and ETA are timed over MD steps only, from the first MD step of this process
    (building, exporting and minimising can take minutes and say nothing about the time a
    step takes). Nothing at all is shown in quiet mode. ``clock`` is injectable for tests.
    """

    include = ("energy",)

    def __init__(self, total_steps: int, done_steps: int, quiet: bool, *, file=None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        from tqdm import tqdm

        self.interval = 1
        self.thermo: Thermo | None = None
        self.periodic = False
        self.offset = 0
        self.total = total_steps
        self.stage_name = ""
        self._clock = clock
        self._bar = tqdm(total=total_steps, initial=done_steps, unit="step", disable=quiet,
                         dynamic_ncols=True, file=file or sys.stderr, mininterval=1.0,
                         bar_format="{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}")
        self._position = done_steps
        self._md_seconds = 0.0  # MD wall time before the current MD stretch
        self._md_steps = 0  # steps done in this process's MD stretches before the current one
        self._stretch: tuple[int, float] | None = None  # (position, time) where MD (re)started
        self._last: tuple[int, float] | None = None  # last report, for the current ns/day
        self._last_refresh = -math.inf
        self._postfix: dict[str, str] = {}

    def attach(self, thermo: Thermo, periodic: bool, interval: int) -> None:
        """What turns states into the postfix, once the System exists."""
        self.thermo, self.periodic, self.interval = thermo, periodic, interval

    def stage(self, name: str, detail: str = "") -> None:
        """A stage that is not MD (building, exporting, minimising): the MD clock stops."""
        self._stop_md_clock()
        self.stage_name = name
        self._bar.set_description(name, refresh=False)
        self._postfix = {"": detail} if detail else {}
        self._show(force=True)

    def detail(self, text: str) -> None:
        """A sign of life within a stage (e.g. the minimiser's iteration), at most once a second."""
        self._postfix = {"": text}
        self._show(force=False)

    @contextmanager
    def ticking(self, every_s: float = 1.0) -> Iterator[None]:
        """Show the seconds spent in the current stage while a long call blocks (a sign of life
        during an export or a minimisation). A thread does it: OpenMM's minimiser cannot take a
        Python ``MinimizationReporter`` with a TorchForce (it keeps the GIL, and torch's
        autograd refuses to run under it), but it releases the GIL without one."""
        if self._bar.disable:
            yield
            return
        stop = threading.Event()
        started = self._clock()

        def tick() -> None:
            while not stop.wait(every_s):
                self.detail(f"{self._clock() - started:.0f} s")

        thread = threading.Thread(target=tick, name="progress-tick", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def set_phase(self, name: str, offset: int, step: int) -> None:
        """An MD phase: its steps count from ``offset`` in the bar; stepping restarts at ``step``."""
        self._stop_md_clock()
        self.offset = offset
        self.stage_name = STAGE_LABELS.get(name, name)
        self._bar.set_description(self.stage_name, refresh=False)
        now = self._clock()
        self._position = offset + step
        self._stretch = self._last = (self._position, now)
        self._postfix = {"ETA": "--"}
        self._show(force=True)

    def _stop_md_clock(self) -> None:
        if self._stretch is not None:
            self._md_steps += self._position - self._stretch[0]
            self._md_seconds += self._clock() - self._stretch[1]
            self._stretch = None

    def md_rate(self) -> float | None:
        """MD steps per wall second in this process so far (None before the first MD report)."""
        steps, seconds = self._md_steps, self._md_seconds
        if self._stretch is not None:
            steps += self._position - self._stretch[0]
            seconds += self._clock() - self._stretch[1]
        return steps / seconds if steps > 0 and seconds > 0 else None

    def eta_seconds(self) -> float | None:
        """Seconds to the last step at the MD rate so far (None while unknown)."""
        rate = self.md_rate()
        return None if rate is None else max(self.total - self._position, 0) / rate

    def report(self, simulation, state, step: int) -> None:
        position = self.offset + step
        now = self._clock()
        postfix: dict[str, str] = {}
        if self._last is not None and position > self._last[0] and now > self._last[1] \
                and self.thermo is not None:
            ns = (position - self._last[0]) * self.thermo.timestep_ps / 1000.0
            postfix["ns/day"] = f"{ns / ((now - self._last[1]) / 86400.0):.3g}"
        self._last = (position, now)
        if self.thermo is not None:
            values = state_values(state, self.thermo, self.periodic)
            postfix["T"] = f"{values['temperature']:.0f}K"
            if self.periodic:
                postfix["rho"] = f"{values['density']:.3f}"
        self._bar.update(max(position - self._position, 0))
        self._position = position
        eta = self.eta_seconds()
        postfix["ETA"] = "--" if eta is None else _clock_text(eta)
        self._postfix = postfix
        self._show(force=False)

    def _show(self, force: bool) -> None:
        text = ", ".join(f"{key}={value}" if key else value for key, value in self._postfix.items())
        self._bar.set_postfix_str(text, refresh=False)
        now = self._clock()
        if force or now - self._last_refresh >= 1.0:
            self._bar.refresh()
            self._last_refresh = now

    def close(self) -> None:
        self._bar.close()


def _clock_text(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def all_tasks_closed(tasks: Iterable[object]) -> None:
    """Close every task that holds a file or a bar (errors in one do not stop the others)."""
    for task in tasks:
        close = getattr(task, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - closing on the way out of a failure
                pass
