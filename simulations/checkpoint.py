"""Checkpoints: OpenMM context checkpoints plus the lengths of the outputs at that moment.

A checkpoint is committed in three atomic steps:

1. the CSV and DCD files are flushed and fsynced, and their lengths taken;
2. ``checkpoints/<phase>-<step>.chk`` (``Context.createCheckpoint``: positions, velocities,
   box, step count, time and, on the Reference platform, the random number generator) is
   written through a temporary file, fsync and rename;
3. ``checkpoint.json`` -- the commit point -- is replaced the same way; it names the new
   file (with its SHA-256) and the output lengths, and keeps the previous records.

A kill between any two of these leaves the previous checkpoint.json valid. ``--resume``
takes the newest record whose file is intact, cuts the CSV and DCD back to the recorded
lengths (rows and frames written after it would otherwise be duplicated) and loads the
context checkpoint, so at most one checkpoint interval of work is lost.

OpenMM checkpoints do not hold the Monte Carlo barostat's adaptive step size and move
counter (``MonteCarloBarostatImpl`` keeps them outside the checkpoint), so a resumed NPT run
would not repeat an uninterrupted one. With ``output.reinitialize_on_checkpoint`` (default
on the Reference platform) the context is rebuilt from the checkpoint right after writing
it, so the uninterrupted run continues from exactly the state a resumed run starts from:
the two are then the same computation, bit for bit on Reference.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from openmm_mace_lp.atomic import atomic_write_bytes, atomic_write_json
from .reporters import check_length, dcd_layout, truncate_dcd, truncate_file

logger = logging.getLogger("openmm_mace_lp.simulations")

SCHEMA = "openmm-mace-lp/checkpoint/1"
CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_DIR = "checkpoints"


@dataclass
class CheckpointRecord:
    phase: str  # "equilibration" or "production"
    step: int  # step within the phase (the context's step count)
    file: str  # relative to the run directory
    sha256: str
    outputs: dict[str, Any] = field(default_factory=dict)  # {csv name: bytes, dcd: {frames, bytes}}
    clock: dict[str, float] = field(default_factory=dict)  # wall seconds spent per phase so far
    created: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CheckpointRecord":
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_records(run_dir: Path) -> list[CheckpointRecord]:
    """All checkpoint records of a run directory, newest first ([] when there are none)."""
    path = Path(run_dir) / CHECKPOINT_JSON
    if not path.is_file():
        return []
    import json

    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is damaged ({error}); it is only ever replaced atomically, so "
                         "something else wrote it. Restore it or start a new run.") from None
    return [CheckpointRecord.from_dict(item) for item in data.get("history", [])]


def load_latest(run_dir: Path) -> tuple[CheckpointRecord, bytes] | None:
    """The newest checkpoint whose file exists and matches its SHA-256, with its bytes."""
    for record in read_records(run_dir):
        path = Path(run_dir) / record.file
        if not path.is_file():
            logger.warning("checkpoint file %s is missing; trying an older one", path)
            continue
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != record.sha256:
            logger.warning("checkpoint file %s does not match its SHA-256; trying an older one", path)
            continue
        return record, data
    return None


def write_checkpoint(run_dir: Path, context, phase: str, step: int, outputs: dict[str, Any],
                     clock: dict[str, float], keep: int) -> CheckpointRecord:
    """Write and commit a checkpoint of ``context`` (see the module docstring)."""
    run_dir = Path(run_dir)
    data = context.createCheckpoint()
    name = f"{CHECKPOINT_DIR}/{phase}-{step:012d}.chk"
    atomic_write_bytes(run_dir / name, data)
    record = CheckpointRecord(phase=phase, step=step, file=name,
                              sha256=hashlib.sha256(data).hexdigest(), outputs=outputs,
                              clock=dict(clock), created=_now())
    history = [record] + [old for old in read_records(run_dir) if old.file != name]
    history = history[:max(keep, 1)]
    atomic_write_json(run_dir / CHECKPOINT_JSON, {
        "schema": SCHEMA, "latest": asdict(record), "history": [asdict(item) for item in history]})
    _prune(run_dir, {item.file for item in history})
    return record


def _prune(run_dir: Path, keep_files: set[str]) -> None:
    directory = run_dir / CHECKPOINT_DIR
    for path in directory.glob("*.chk"):
        if f"{CHECKPOINT_DIR}/{path.name}" not in keep_files:
            try:
                path.unlink()
            except OSError:
                pass


def check_outputs(run_dir: Path, record: CheckpointRecord, output_files: tuple[str, ...]) -> None:
    """Refuse a resume whose outputs are shorter than ``record`` says they were when it was
    written (deleted or truncated outside the run), before any of them is cut back: a refusal
    must leave every file as it found it."""
    run_dir = Path(run_dir)
    for name in output_files:
        recorded = record.outputs.get(name)
        if recorded is None:
            continue
        path = run_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing but the checkpoint at {record.phase} step "
                                    f"{record.step} says it was written; restore it or start a new run.")
        if isinstance(recorded, dict):  # a trajectory: its header must be OpenMM's DCD, its bytes all there
            dcd_layout(path)
            check_length(path, int(recorded["bytes"]))
        else:
            check_length(path, int(recorded))


def restore_outputs(run_dir: Path, record: CheckpointRecord, output_files: tuple[str, ...]) -> None:
    """Cut every output back to its length at ``record``; outputs it did not know yet (e.g. the
    production files when it is an equilibration checkpoint) are removed."""
    run_dir = Path(run_dir)
    check_outputs(run_dir, record, output_files)
    for name in output_files:
        path = run_dir / name
        recorded = record.outputs.get(name)
        if recorded is None:
            if path.exists():
                logger.info("removing %s (written after the checkpoint at %s step %d)", name,
                            record.phase, record.step)
                path.unlink()
            continue
        if isinstance(recorded, dict):  # a trajectory: frames and bytes
            truncate_dcd(path, int(recorded["frames"]))
            if path.stat().st_size != int(recorded["bytes"]):
                raise ValueError(f"{path}: {recorded['frames']} frames should take "
                                 f"{recorded['bytes']} bytes, found {path.stat().st_size}.")
        else:
            truncate_file(path, int(recorded))


class Checkpointer:
    """Reporter task that writes a checkpoint every ``interval`` steps of a phase.

    ``outputs`` returns the synced lengths of the open outputs, ``clock`` the wall time spent,
    ``on_saved`` is told about each new record (the manifest is updated from it).
    """

    include = ("energy",)

    def __init__(self, run_dir: Path, phase: str, interval: int, keep: int,
                 outputs: Callable[[], dict[str, Any]], clock: Callable[[], dict[str, float]],
                 on_saved: Callable[[CheckpointRecord], None], reinitialize: bool) -> None:
        self.run_dir = Path(run_dir)
        self.phase = phase
        self.interval = interval
        self.keep = keep
        self.outputs = outputs
        self.clock = clock
        self.on_saved = on_saved
        self.reinitialize = reinitialize
        self.last_step: int | None = None

    def report(self, simulation, state, step: int) -> None:
        self.save(simulation, step)

    def save(self, simulation, step: int) -> CheckpointRecord | None:
        """Checkpoint now (once per step), then rebuild the context if configured."""
        if self.last_step == step:
            return None
        record = write_checkpoint(self.run_dir, simulation.context, self.phase, step, self.outputs(),
                                  self.clock(), self.keep)
        self.last_step = step
        logger.info("checkpoint: %s step %d -> %s", self.phase, step, record.file)
        self.on_saved(record)
        if self.reinitialize:
            simulation.context.reinitialize(preserveState=True)
        return record
