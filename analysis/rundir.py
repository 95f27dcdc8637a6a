"""Read the run directories that the simulation recipes write, with errors a person can act on.

A run directory holds ``manifest.json``, ``state.csv``, ``topology.pdb`` and
``trajectory.dcd`` (schema ``openmm-mace-lp/run/1``); an arms directory holds one run
directory per arm (``fp64-seed1/``, ``bf16-seed2/``, ...).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

SCHEMA = "openmm-mace-lp/run/1"
MANIFEST = "manifest.json"
STATE_CSV = "state.csv"
TOPOLOGY = "topology.pdb"
TRAJECTORY = "trajectory.dcd"

STATE_COLUMNS = (
    "step",
    "time_ps",
    "potential_energy_kJ_mol",
    "kinetic_energy_kJ_mol",
    "total_energy_kJ_mol",
    "temperature_K",
    "box_volume_nm3",
    "density_g_cm3",
    "speed_ns_day",
)
# Columns that may be empty (non-periodic runs, or speed not yet known on the first rows).
OPTIONAL_VALUE_COLUMNS = ("box_volume_nm3", "density_g_cm3", "speed_ns_day")
REQUIRED_MANIFEST_KEYS = (
    "arm", "policy", "ensemble", "temperature_K", "timestep_fs", "n_atoms",
    "report_interval_steps", "trajectory_interval_steps",
)


@dataclass
class StateSeries:
    """The state CSV as float columns, truncated before the first non-finite energy.

    Each step appears once: later rows of a repeated step (two writers, or a resume that did
    not cut back to its checkpoint) are left out and listed in ``duplicated_steps``; report
    steps with no row are listed as (first, last) ranges in ``missing_steps``.
    """

    columns: dict[str, np.ndarray]
    truncated_at_step: int | None = None  # first step with a non-finite energy, if any
    duplicated_steps: list[int] = field(default_factory=list)
    missing_steps: list[tuple[int, int]] = field(default_factory=list)
    interval: int | None = None  # report interval the missing-step check used

    @property
    def n_missing_steps(self) -> int:
        if not self.interval:
            return 0
        return sum((last - first) // self.interval + 1 for first, last in self.missing_steps)

    def step_problems(self, file_name: str = STATE_CSV) -> list[str]:
        """Sentences on duplicated and missing steps (empty when every step is there once)."""
        problems = []
        if self.duplicated_steps:
            shown = ", ".join(str(step) for step in self.duplicated_steps[:3])
            more = ", ..." if len(self.duplicated_steps) > 3 else ""
            problems.append(
                f"{len(self.duplicated_steps)} step(s) appear more than once in {file_name} ({shown}{more}): "
                "two processes wrote this run, or a resume did not cut the rows written after its "
                "checkpoint; only the first row of each step is analysed.")
        if self.missing_steps:
            ranges = ", ".join(f"{first}" if first == last else f"{first}-{last}"
                               for first, last in self.missing_steps[:3])
            more = ", ..." if len(self.missing_steps) > 3 else ""
            problems.append(
                f"{file_name} lacks the rows of {self.n_missing_steps} report step(s) (every "
                f"{self.interval} steps; missing {ranges}{more}): data of this run were lost; "
                "statistics treat the rows around the gap as consecutive.")
        return problems

    @property
    def n_rows(self) -> int:
        return len(self.columns["step"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def has(self, name: str) -> bool:
        """True when the column exists and holds finite values in every row."""
        values = self.columns.get(name)
        return values is not None and len(values) > 0 and bool(np.all(np.isfinite(values)))


@dataclass
class RunDir:
    """One run directory: its manifest plus paths; data are loaded on demand."""

    path: Path
    manifest: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.manifest.get("arm") or self.path.name)

    @property
    def policy(self) -> str:
        return str(self.manifest["policy"])

    @property
    def seed(self) -> int | None:
        return self.manifest.get("seed")

    @property
    def ensemble(self) -> str:
        return str(self.manifest["ensemble"]).lower()

    @property
    def n_atoms(self) -> int:
        return int(self.manifest["n_atoms"])

    @property
    def timestep_fs(self) -> float:
        return float(self.manifest["timestep_fs"])

    @property
    def trajectory_path(self) -> Path:
        return self.path / TRAJECTORY

    @property
    def topology_path(self) -> Path:
        return self.path / TOPOLOGY

    @property
    def has_trajectory(self) -> bool:
        return self.trajectory_path.is_file() and self.topology_path.is_file()

    def frame_interval_ps(self) -> float:
        """Time between trajectory frames (ps)."""
        return self.timestep_fs * int(self.manifest["trajectory_interval_steps"]) / 1000.0

    def load_state(self) -> StateSeries:
        """Read ``state.csv`` (see :func:`read_state_csv`)."""
        interval = self.manifest.get("report_interval_steps")
        state = read_state_csv(self.path / STATE_CSV, int(interval) if interval else None)
        self.warnings += [f"{self.name}: {problem}" for problem in state.step_problems()]
        if state.truncated_at_step is not None:
            self.warnings.append(
                f"{self.name}: non-finite energies from step {state.truncated_at_step} on "
                "(the run diverged); only the rows before it are analysed.")
        return state

    def load_trajectory(self, stride: int = 1, atom_indices: np.ndarray | None = None):
        """Load ``trajectory.dcd`` with ``topology.pdb`` through MDTraj.

        Frame ``k`` (0-based, before striding) is taken to be at step
        ``(k + 1) * trajectory_interval_steps``: OpenMM's DCDReporter writes its first
        frame after one interval, never at step 0. ``traj.time`` is set in ps accordingly.
        """
        import mdtraj as md

        for path in (self.topology_path, self.trajectory_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: the run directory {self.path} has no trajectory; "
                    "rerun the simulation with trajectory output, or skip trajectory "
                    "observables (RDF, MSD).")
        try:
            traj = md.load_dcd(str(self.trajectory_path), top=str(self.topology_path),
                               stride=stride, atom_indices=atom_indices)
        except Exception as error:  # mdtraj raises many types for broken files
            raise ValueError(
                f"could not read {self.trajectory_path} with topology {self.topology_path}: "
                f"{error}. Check that the DCD matches the topology (same atom count) and was "
                "not cut off mid-frame.") from error
        if traj.n_frames == 0:
            raise ValueError(f"{self.trajectory_path} holds no frames; let the run write at "
                             "least a few trajectory frames before analysing it.")
        interval = int(self.manifest["trajectory_interval_steps"])
        frames = np.arange(traj.n_frames) * stride
        traj.time = (frames + 1) * interval * self.timestep_fs / 1000.0
        self._check_frame_count(traj.n_frames * stride, stride)
        return traj

    def _check_frame_count(self, n_frames_read: int, stride: int) -> None:
        interval = int(self.manifest["trajectory_interval_steps"])
        completed = int(self.manifest.get("steps_completed") or 0)
        expected = completed // interval if interval > 0 else 0
        if expected and abs(n_frames_read - expected) > stride:
            why = ("frames are duplicated (two writers?) or were written after the last checkpoint"
                   if n_frames_read > expected else "frames are missing")
            self.warnings.append(
                f"{self.name}: trajectory has about {n_frames_read} frames, the manifest implies "
                f"{expected} (steps_completed={completed}, interval={interval}): {why}; frame "
                "times assume the first frame at one interval.")


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``manifest.json`` of a run directory."""
    path = Path(run_dir) / MANIFEST
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist.")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {run_dir} is not a run directory written by the simulation "
            "recipes (expected manifest.json, state.csv, topology.pdb, trajectory.dcd).")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the run may have been "
                         "interrupted while writing it - rerun or fix the file.") from error
    if manifest.get("schema") != SCHEMA:
        raise ValueError(f"{path} has schema {manifest.get('schema')!r}, this analysis reads "
                         f"{SCHEMA!r}; update openmm-mace-lp or rewrite the manifest.")
    missing = [key for key in REQUIRED_MANIFEST_KEYS if manifest.get(key) is None]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; the simulation recipe must "
                         "write these keys.")
    return manifest


def open_run(run_dir: str | Path) -> RunDir:
    """Open a run directory (reads only the manifest)."""
    run = RunDir(path=Path(run_dir), manifest=read_manifest(run_dir))
    status = run.manifest.get("status")
    if status not in (None, "completed"):
        run.warnings.append(f"{run.name}: status is {status!r}, not 'completed'.")
    return run


def _parse_float(text: str) -> float:
    text = text.strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_state_csv(path: str | Path, interval: int | None = None) -> StateSeries:
    """Read ``state.csv`` into float columns.

    Later rows of a step that appeared before are dropped and the step is listed in
    ``duplicated_steps``; report steps without a row (every ``interval`` steps from the first
    report at one interval; inferred from the most common step difference when not given) are
    listed in ``missing_steps``. Rows from the first non-finite potential or total energy on
    are dropped: they mean the run diverged, and one NaN would poison every statistic.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run wrote no state CSV; check the "
                                "simulation's reporters.")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty; the run has not reported yet.")
        header = [name.strip().lstrip("#").strip().strip('"') for name in header]
        missing = [name for name in STATE_COLUMNS if name not in header]
        if missing:
            raise ValueError(f"{path} lacks columns {', '.join(missing)}; expected the header "
                             f"{','.join(STATE_COLUMNS)}.")
        rows = [row for row in reader if row and any(cell.strip() for cell in row)]
    if not rows:
        raise ValueError(f"{path} has a header but no rows; let the run report before "
                         "analysing it.")
    # A row cut off mid-write (running simulation) is dropped.
    rows = [row for row in rows if len(row) >= len(header)]
    table = np.array([[_parse_float(cell) for cell in row[:len(header)]] for row in rows])
    columns = {name: table[:, i] for i, name in enumerate(header)}
    keep, duplicated = _first_row_of_each_step(columns["step"])
    columns = {name: values[keep] for name, values in columns.items()}
    interval = interval or _common_interval(columns["step"])
    missing = _missing_steps(columns["step"], interval)
    bad = ~(np.isfinite(columns["potential_energy_kJ_mol"])
            & np.isfinite(columns["total_energy_kJ_mol"]))
    truncated = None
    if bad.any():
        first = int(np.argmax(bad))
        truncated = int(columns["step"][first]) if np.isfinite(columns["step"][first]) else first
        columns = {name: values[:first] for name, values in columns.items()}
    if len(columns["step"]) == 0:
        raise ValueError(f"{path}: the first row already has non-finite energies; the run "
                         "diverged immediately and has nothing to analyse.")
    return StateSeries(columns=columns, truncated_at_step=truncated, duplicated_steps=duplicated,
                       missing_steps=missing, interval=interval)


def _first_row_of_each_step(steps: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Indices of the rows to keep (file order, first row of each step; rows without a step
    number stay) and the steps that appeared more than once."""
    finite = np.flatnonzero(np.isfinite(steps))
    values, first, counts = np.unique(steps[finite], return_index=True, return_counts=True)
    keep = np.sort(np.concatenate([finite[first], np.flatnonzero(~np.isfinite(steps))]))
    return keep, [int(step) for step in values[counts > 1]]


def _common_interval(steps: np.ndarray) -> int | None:
    """The most common positive difference between consecutive steps (None with < 2 rows)."""
    ordered = np.unique(steps[np.isfinite(steps)])
    gaps = np.diff(ordered)
    gaps = gaps[gaps > 0]
    if gaps.size == 0:
        return None
    values, counts = np.unique(gaps, return_counts=True)
    return int(values[np.argmax(counts)])


def _missing_steps(steps: np.ndarray, interval: int | None) -> list[tuple[int, int]]:
    """(first, last) of each run of report steps with no row. Reports start at one interval
    (never at step 0), so when the steps are multiples of the interval a late first row is
    a gap too."""
    if not interval or interval <= 0:
        return []
    ordered = [int(step) for step in np.unique(steps[np.isfinite(steps)])]
    if not ordered:
        return []
    points = ([0] if ordered[0] % interval == 0 else []) + ordered
    missing = []
    for before, after in zip(points[:-1], points[1:]):
        if after - before > interval:
            missing.append((before + interval, after - interval))
    return missing


def find_runs(arms_dirs: str | Path | Sequence[str | Path]) -> list[RunDir]:
    """All run directories directly under ``arms_dirs`` (sub-directories with a manifest).

    Several directories are one set of arms, e.g. the seeds of a study run in separate
    campaign directories (one seed per time-limited job); an arm (policy and seed) that two of
    them hold is refused, since it would be counted as two seeds.
    """
    directories = [Path(arms_dirs)] if isinstance(arms_dirs, (str, Path)) else [Path(d) for d in arms_dirs]
    runs: list[RunDir] = []
    first_seen: dict[tuple[str, Any], RunDir] = {}
    for arms_dir in directories:
        if not arms_dir.is_dir():
            raise FileNotFoundError(f"arms directory {arms_dir} does not exist.")
        found = [open_run(child) for child in sorted(arms_dir.iterdir())
                 if child.is_dir() and (child / MANIFEST).is_file()]
        if not found:
            raise FileNotFoundError(
                f"no run directories (sub-directories with {MANIFEST}) under {arms_dir}; pass the "
                "folder that holds fp64-seed1/, bf16-seed1/, ... ")
        for run in found:
            other = first_seen.setdefault((run.policy, run.seed), run)
            if other.path.parent != run.path.parent:
                raise ValueError(f"arm {run.policy} seed {run.seed} is in {other.path} and in {run.path}: "
                                 "each arm may be passed once; leave one of the directories out.")
        runs += found
    return runs


def group_by_policy(runs: list[RunDir]) -> dict[str, list[RunDir]]:
    """Group runs by precision policy, seeds sorted; policies keep first-seen order."""
    groups: dict[str, list[RunDir]] = {}
    for run in runs:
        groups.setdefault(run.policy, []).append(run)
    for members in groups.values():
        members.sort(key=lambda run: (run.seed is None, run.seed or 0, run.name))
    return groups
