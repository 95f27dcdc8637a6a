"""Stop a run that has gone wrong before it writes garbage or overwrites a good checkpoint.

Checked on every report step, before anything is written for that step: non-finite energy,
forces or positions, and a temperature far from the target. A failure writes the offending
frame (``failure-<phase>-step<N>.xml`` with everything the State holds, plus a PDB when the
positions are finite) and raises :class:`GuardError`; the run stops with the last good
checkpoint untouched, because the checkpoint task runs after the guard in the same step.
"""
from __future__ import annotations

from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import numpy as np

from openmm_mace_lp.atomic import atomic_write_text
from .reporters import Thermo


class GuardError(RuntimeError):
    """The simulation produced a state that must not be continued from."""

    def __init__(self, message: str, *, phase: str, step: int, reason: str,
                 frame_files: list[Path]) -> None:
        super().__init__(message)
        self.phase = phase
        self.step = step
        self.reason = reason
        self.frame_files = frame_files


@dataclass(frozen=True)
class GuardLimits:
    target_K: float
    max_temperature_factor: float
    min_temperature_factor: float  # 0 disables the low-temperature check
    check_forces: bool


def find_problem(state, thermo: Thermo, limits: GuardLimits, check_low_temperature: bool) -> str | None:
    """A sentence describing what is wrong with ``state``, or None if it may be continued."""
    from openmm import unit

    if limits.check_forces:
        try:
            forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        except Exception:  # noqa: BLE001 - State without forces
            forces = None
        if forces is not None:
            bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(forces)), axis=1))
            if bad.size:
                return f"non-finite forces on {bad.size} atom(s) (first: atom {int(bad[0])})"
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    if not np.isfinite(energy):
        return f"the potential energy is {energy}"
    try:
        positions = np.asarray(state.getPositions(asNumpy=True)._value)
    except Exception:  # noqa: BLE001 - State without positions
        positions = None
    if positions is not None and not np.all(np.isfinite(positions)):
        return "non-finite positions"
    kinetic = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
    temperature = thermo.temperature(kinetic)
    if not np.isfinite(temperature):
        return f"the temperature is {temperature}"
    high = limits.max_temperature_factor * limits.target_K
    if temperature > high:
        return (f"the temperature {temperature:.1f} K exceeds {limits.max_temperature_factor:g} x "
                f"the target {limits.target_K:g} K (guards.max_temperature_factor)")
    low = limits.min_temperature_factor * limits.target_K
    if check_low_temperature and limits.min_temperature_factor > 0 and temperature < low:
        return (f"the temperature {temperature:.1f} K is below {limits.min_temperature_factor:g} x "
                f"the target {limits.target_K:g} K (guards.min_temperature_factor)")
    return None


class Guard:
    """Reporter task: raises :class:`GuardError` on a bad state (see module docstring).

    Its interval is 0: it runs on every step at which any other task reports, so no CSV row,
    frame or checkpoint is ever written from a state it has not checked.
    """

    interval = 0

    def __init__(self, run_dir: Path, phase: str, thermo: Thermo, limits: GuardLimits,
                 topology, check_low_temperature: bool) -> None:
        self.run_dir = Path(run_dir)
        self.phase = phase
        self.thermo = thermo
        self.limits = limits
        self.topology = topology
        self.check_low_temperature = check_low_temperature
        self.include = ("energy", "positions", "velocities") + (("forces",) if limits.check_forces else ())

    def report(self, simulation, state, step: int) -> None:
        problem = find_problem(state, self.thermo, self.limits, self.check_low_temperature)
        if problem is not None:
            raise guard_failure(self.run_dir, self.phase, step, problem, state, self.topology)


def guard_failure(run_dir: Path, phase: str, step: int, problem: str, state, topology) -> GuardError:
    """Write the offending frame and build the error (the caller raises it)."""
    files = write_offending_frame(run_dir, phase, step, state, topology)
    shown = ", ".join(str(path) for path in files)
    message = (f"guard stopped the run at {phase} step {step}: {problem}. "
               f"Offending frame written to {shown}.")
    return GuardError(message, phase=phase, step=step, reason=problem, frame_files=files)


def write_offending_frame(run_dir: Path, phase: str, step: int, state, topology) -> list[Path]:
    """State XML (always) and PDB (when the positions are finite) of a bad step."""
    import openmm
    from openmm.app import PDBFile

    stem = Path(run_dir) / f"failure-{phase}-step{step}"
    files = [atomic_write_text(stem.with_suffix(".xml"), openmm.XmlSerializer.serialize(state))]
    try:
        positions = state.getPositions(asNumpy=True)
    except Exception:  # noqa: BLE001
        return files
    if np.all(np.isfinite(np.asarray(positions._value))):
        text = StringIO()
        if topology.getPeriodicBoxVectors() is not None:
            topology.setPeriodicBoxVectors(state.getPeriodicBoxVectors())
        PDBFile.writeFile(topology, positions, text, keepIds=True)
        files.append(atomic_write_text(stem.with_suffix(".pdb"), text.getvalue()))
    return files
