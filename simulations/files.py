"""Atomic file writes: a reader (or a run killed mid-write) never sees half a file.

Every small file of a run directory (manifest, config, checkpoints, state XML, PDB) is
written to a temporary file in the same directory, flushed and fsynced, then renamed over
the target; the directory is fsynced so that the rename itself survives a power cut.
The append-only outputs (state CSV, DCD) cannot be replaced wholesale; they are fsynced
before each checkpoint records their length (see ``checkpoint.py``).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_directory(directory: os.PathLike) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_handle(handle: IO) -> None:
    """Flush Python's buffer and the kernel's page cache of an open file to disk."""
    handle.flush()
    os.fsync(handle.fileno())


def atomic_write_bytes(path: os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            sync_handle(handle)
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    fsync_directory(path.parent)
    return path


def atomic_write_text(path: os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
