"""Atomic file writes: a reader, or a process killed mid-write, never sees half a file.

Every file the package writes whole (exported modules, downloaded models, run manifests and
checkpoints, reports, figures, data sets) goes through :func:`atomic_path`: it is written to a
temporary file in the target's directory, flushed and fsynced, then renamed over the target,
and the directory is fsynced so the rename survives a power cut. On any error the temporary
file is removed and the target is untouched.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


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


@contextmanager
def atomic_path(path: os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; it replaces ``path`` only on success.

    The temporary name keeps the target's suffix, for writers that choose a format by it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp" + target.suffix)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.close(fd)
        yield Path(tmp_name)
        with open(tmp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    fsync_directory(target.parent)


def atomic_write_bytes(path: os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")
