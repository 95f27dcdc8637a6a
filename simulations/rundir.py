"""The one owner of a run directory: what it holds, what may be resumed or deleted, who writes it.

``simulate``, ``arms`` and a campaign ask a :class:`RunDirectory` instead of looking at files
themselves, so every rule below holds for all of them:

* **What it is** (:meth:`RunDirectory.kind`): ``missing``, ``empty``, ``ours`` (a run of these
  recipes: a manifest or checkpoint record of our schema, or our lock file beside nothing but
  run files) or ``foreign`` (anything else that is not empty, e.g. ``-o .`` in a project folder).
* **Who writes it** (:meth:`RunDirectory.lock`): one process at a time, through an advisory
  ``fcntl.flock`` on ``.run.lock`` inside the directory, held for the life of a run. The OS
  releases it when the process ends, however it ends (SIGKILL included), so a stale lock never
  needs removing. A second writer fails at once with :class:`RunDirectoryBusy`, naming the pid
  and host that hold it. (A process forked without exec shares the lock with its parent; Dask
  and multiprocessing's "spawn" start fresh interpreters, which do not.)
* **What may be resumed** (:meth:`RunDirectory.start_mode`): the newest checkpoint whose file
  matches its SHA-256. ``--resume`` never deletes anything it cannot restore: with the config
  missing, checkpoint files damaged or the directory not ours it refuses and says what is
  missing and what to do.
* **What may be deleted**: a fresh run removes files only in a directory that holds nothing of
  value. *Nothing of value* means no checkpoint was ever committed there (no
  ``checkpoint.json``): nothing in it can be continued, and its rows and frames are exactly those
  every resume cuts back (they lie after the last checkpoint, of which there is none); the
  restart recomputes them from the config and seed. Such a directory (a run killed before its
  first checkpoint) is started again from step 0 by a fresh run and by ``--resume``; ``run.log``
  and any ``failure-*`` frames stay. Anything else needs ``--overwrite``, which removes the files
  a run writes (by name) and nothing else.
* **Leftovers**: temporary files of atomic writes that a kill left behind are removed at the
  next start, under the lock (never while another process may be writing them).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from . import checkpoint as ckpt
from .manifest import MANIFEST, SCHEMA as MANIFEST_SCHEMA, read_manifest

CONFIG_FILE = "config.toml"
TOPOLOGY_FILE = "topology.pdb"
INITIAL_STATE = "initial_state.xml"
FINAL_STATE = "final_state.xml"
LAST_GOOD_STATE = "last_good_state.xml"  # written when a guard stops a run (see run.py)
LOG_FILE = "run.log"
TRAJECTORY_FILE = "trajectory.dcd"
LOCK_FILE = ".run.lock"
OUTPUT_FILES = ("equilibration.csv", "state.csv", TRAJECTORY_FILE)
# Files a run writes whole; a restart replaces them.
RUN_FILES = (CONFIG_FILE, MANIFEST, TOPOLOGY_FILE, INITIAL_STATE, FINAL_STATE, LAST_GOOD_STATE,
             *OUTPUT_FILES)
# Kept by a restart (evidence and history), removed by --overwrite.
KEPT_ON_RESTART = (LOG_FILE,)
FAILURE_FRAME = re.compile(r"^failure-.+\.(xml|pdb)$")
# openmm_mace_lp.atomic.atomic_path: ".<target>.<8 random chars>.tmp<target suffix>".
TEMPORARY_FILE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp(\.[^.]+)?$")

MISSING, EMPTY, OURS, FOREIGN = "missing", "empty", "ours", "foreign"
FRESH, RESUME = "fresh", "resume"


class RunDirectoryBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


class RunDirectoryError(ValueError):
    """The directory cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class LockHolder:
    pid: int | None
    host: str | None
    since: str | None

    def describe(self) -> str:
        if self.pid is None:
            return "another process"
        where = f" on {self.host}" if self.host else ""
        when = f" since {self.since}" if self.since else ""
        return f"process {self.pid}{where}{when}"


class RunDirectory:
    """A run directory of the simulation recipes (see the module docstring for the rules)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # -- what it holds -------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    def check_is_directory(self) -> None:
        """Fail with one clear sentence when the path exists but is not a directory."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"-o {self.path} is a file, not a directory; give the path of a "
                                    "run directory (it is created if it does not exist).")

    def entries(self) -> list[str]:
        """Names in the directory, except our lock file and our leftover temporary files."""
        if not self.path.is_dir():
            return []
        return sorted(name for name in os.listdir(self.path)
                      if name != LOCK_FILE and not self._is_temporary(name))

    def kind(self) -> str:
        """"missing", "empty", "ours" or "foreign" (non-empty, not a run of ours)."""
        if not self.path.exists():
            return MISSING
        if not self.path.is_dir():
            return FOREIGN
        names = self.entries()
        if not names:
            return EMPTY
        if self._has_our_record():
            return OURS
        if self.lock_path.exists() and all(self._is_run_name(name) for name in names):
            return OURS  # a run that died before writing its manifest
        return FOREIGN

    def _has_our_record(self) -> bool:
        manifest = _read_json(self.path / MANIFEST)
        if isinstance(manifest, dict) and manifest.get("schema") == MANIFEST_SCHEMA:
            return True
        records = _read_json(self.path / ckpt.CHECKPOINT_JSON)
        return isinstance(records, dict) and records.get("schema") == ckpt.SCHEMA

    @staticmethod
    def _is_run_name(name: str) -> bool:
        return (name in RUN_FILES or name in KEPT_ON_RESTART or name in (ckpt.CHECKPOINT_JSON, ckpt.CHECKPOINT_DIR)
                or FAILURE_FRAME.match(name) is not None)

    @classmethod
    def _is_temporary(cls, name: str) -> bool:
        match = TEMPORARY_FILE.match(name)
        return match is not None and (cls._is_run_name(match["target"]) or match["target"].endswith(".chk"))

    def manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.path)

    def status(self) -> str | None:
        """The manifest's status ("running", "paused", "completed", "interrupted", "failed") or None."""
        manifest = self.manifest()
        status = manifest.get("status") if manifest else None
        return None if status is None else str(status)

    def has_config(self) -> bool:
        return self.config_path.is_file()

    def records(self) -> list[ckpt.CheckpointRecord]:
        """Committed checkpoint records, newest first (ValueError when checkpoint.json is damaged)."""
        return ckpt.read_records(self.path)

    def latest_checkpoint(self) -> tuple[ckpt.CheckpointRecord, bytes] | None:
        """The newest checkpoint whose file is intact, with its bytes (None if there is none)."""
        try:
            return ckpt.load_latest(self.path)
        except ValueError:
            return None

    def has_checkpoint(self) -> bool:
        """A usable checkpoint exists: the run can be resumed."""
        return self.latest_checkpoint() is not None

    def holds_results(self) -> bool:
        """Whether a restart would lose something: a checkpoint was committed here (even if its
        files are damaged now), or the run completed."""
        return (self.path / ckpt.CHECKPOINT_JSON).exists() or self.status() == "completed"

    def describe(self) -> str:
        """"a run (status 'paused', checkpoint at production step 400)" for messages."""
        status = self.status() or "unknown"
        try:
            records = self.records()
        except ValueError:
            return f"a run (status {status!r}, checkpoint.json damaged)"
        where = f", checkpoint at {records[0].phase} step {records[0].step}" if records else ", no checkpoint"
        return f"a run (status {status!r}{where})"

    # -- who writes it -------------------------------------------------------------------

    def holder(self) -> LockHolder | None:
        """Who holds the lock now (None: nobody). Probes without waiting."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_holder(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the directory for the life of a run: ``fcntl.flock`` on ``.run.lock``.

        Raises :class:`RunDirectoryBusy` at once if another process (or another open of the lock
        in this one) holds it, unless ``wait``. The OS releases it when the process dies.
        """
        self.check_is_directory()
        if not self.path.is_dir():
            raise RunDirectoryError(f"{self.path} does not exist; create the run directory first.")
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                raise RunDirectoryBusy(
                    f"{self.path} is being written by {holder.describe()}; a second writer would "
                    "duplicate its rows and frames, so this one stops. Wait for that run to end, or "
                    f"stop it{f' (kill {holder.pid} on {holder.host})' if holder.pid else ''} and "
                    "continue with --resume; the lock is released when that process ends, even if "
                    "it is killed.") from None
            _write_holder(fd)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def create(self) -> None:
        """Make the directory (and parents), with one clear sentence if the OS refuses."""
        self.check_is_directory()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise RunDirectoryError(f"-o {self.path}: a parent of it is a file, not a directory; give "
                                    "another run directory path.") from None

    # -- what may be resumed or deleted --------------------------------------------------

    def start_mode(self, *, resume: bool, overwrite: bool, config_given: bool) -> str:
        """FRESH or RESUME for a run asked to start here; RunDirectoryError when neither is allowed.

        Reads the directory only (call it again under :meth:`lock` before acting on it).
        """
        if resume and overwrite:
            raise RunDirectoryError("--resume and --overwrite contradict each other: --resume continues "
                                    f"the run in {self.path}, --overwrite replaces it; choose one.")
        kind = self.kind()
        if not resume:
            return self._fresh_mode(kind, overwrite, config_given)
        if kind in (MISSING, EMPTY):
            if config_given:
                return FRESH  # a job script may always pass --resume: this starts the run
            raise RunDirectoryError(
                f"--resume: {self.path} holds no run ({'it does not exist' if kind == MISSING else 'it is empty'}"
                f"; no {CONFIG_FILE}). Check -o, or pass the config file to start the run there.")
        if kind == FOREIGN:
            raise RunDirectoryError(
                f"--resume: {self.path} is not a run directory of these recipes (it holds "
                f"{_listing(self.entries())} but no {MANIFEST} or {ckpt.CHECKPOINT_JSON}); nothing was "
                "changed. Check -o.")
        if not self.holds_results() and config_given:
            return FRESH  # killed before its first checkpoint: nothing of value to keep
        if not self.has_config():
            raise RunDirectoryError(
                f"--resume: {self.config_path} is missing, so the run in {self.path} cannot be continued "
                "as the same simulation; nothing was deleted. Restore config.toml (the run's resolved "
                "config), or start anew there with --overwrite (deletes the run's outputs) or in a "
                "new -o directory.")
        return self._resume_mode()

    def _fresh_mode(self, kind: str, overwrite: bool, config_given: bool) -> str:
        if not config_given:
            raise RunDirectoryError("a config is needed to start a run (only --resume can use the run "
                                    "directory's own config.toml).")
        if kind in (MISSING, EMPTY) or overwrite:
            return FRESH
        if kind == FOREIGN:
            raise RunDirectoryError(
                f"{self.path} is not empty and is not a run directory of these recipes (it holds "
                f"{_listing(self.entries())}); a run would replace files named like its own. Write "
                "to a new or empty -o directory, or pass --overwrite to replace only the files a run "
                f"writes ({', '.join(RUN_FILES + KEPT_ON_RESTART)}, checkpoints) and keep the rest.")
        if self.holds_results():
            raise RunDirectoryError(
                f"{self.path} already holds {self.describe()}; continue it with --resume, replace it "
                "with --overwrite, or write to a new -o directory.")
        return FRESH  # ours, killed before its first checkpoint: nothing of value to keep

    def _resume_mode(self) -> str:
        try:
            records = self.records()
        except ValueError as error:
            raise RunDirectoryError(f"--resume: {error} Nothing was deleted.") from None
        if self.latest_checkpoint() is not None:
            return RESUME
        if not records:
            return FRESH  # never checkpointed: start again from step 0 (nothing of value)
        problems = "; ".join(self._checkpoint_problem(record) for record in records)
        newest = records[0]
        raise RunDirectoryError(
            f"--resume: none of the {len(records)} checkpoints in {self.path} is usable ({problems}). "
            f"Nothing was deleted: the outputs up to {newest.phase} step {newest.step} are kept. "
            f"Restore {ckpt.CHECKPOINT_DIR}/ from a copy to resume, or start anew with --overwrite "
            "(deletes them) or in a new -o directory.")

    def _checkpoint_problem(self, record: ckpt.CheckpointRecord) -> str:
        path = self.path / record.file
        return f"{record.file} {'does not match its SHA-256' if path.is_file() else 'is missing'}"

    def clear_for_fresh_start(self, overwrite: bool) -> list[str]:
        """Remove what a fresh run replaces (call under :meth:`lock`); the names removed.

        A restart (nothing of value) keeps run.log and failure frames; --overwrite removes them
        too. Files a run does not write are never touched.
        """
        names = list(RUN_FILES) + [ckpt.CHECKPOINT_JSON]
        if overwrite:
            names += list(KEPT_ON_RESTART)
            names += [name for name in self.entries() if FAILURE_FRAME.match(name)]
        removed = [name for name in names if (self.path / name).is_file()]
        for name in removed:
            (self.path / name).unlink()
        checkpoints = self.path / ckpt.CHECKPOINT_DIR
        if checkpoints.is_dir():
            for path in checkpoints.glob("*.chk"):
                path.unlink()
                removed.append(f"{ckpt.CHECKPOINT_DIR}/{path.name}")
        return removed

    def check_outputs(self, record: ckpt.CheckpointRecord) -> None:
        """Refuse outputs shorter than ``record`` knew them (before anything is cut back)."""
        ckpt.check_outputs(self.path, record, OUTPUT_FILES)

    def restore_outputs(self, record: ckpt.CheckpointRecord) -> None:
        """Cut the CSVs and the DCD back to their lengths at ``record`` (rows and frames written
        after it would otherwise be duplicated)."""
        ckpt.restore_outputs(self.path, record, OUTPUT_FILES)

    def temporary_files(self) -> list[Path]:
        """Temporary files of atomic writes (ours) that a killed process left behind."""
        found = []
        for directory in (self.path, self.path / ckpt.CHECKPOINT_DIR):
            if directory.is_dir():
                found += [directory / name for name in sorted(os.listdir(directory)) if self._is_temporary(name)]
        return found

    def clean_temporary_files(self) -> list[Path]:
        """Remove :meth:`temporary_files` (call under :meth:`lock`: a live writer's would go)."""
        removed = []
        for path in self.temporary_files():
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
        return removed


# ----------------------------------------------------------------------------- helpers


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _write_holder(fd: int) -> None:
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    os.ftruncate(fd, 0)
    os.pwrite(fd, (text + "\n").encode(), 0)


def _read_holder(fd: int) -> LockHolder:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        data = {}
    pid = data.get("pid")
    return LockHolder(int(pid) if isinstance(pid, int) else None, data.get("host"), data.get("since"))


def is_disk_full(error: BaseException) -> bool:
    """An OS error that means the disk (or quota) is full: the run can go on once space is freed."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
