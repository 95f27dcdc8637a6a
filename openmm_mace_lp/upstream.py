"""Upstream imports made once, quietly, and without weakening ``torch.load`` for the process.

``import mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the whole process (mace-torch
0.3.16), after which every ``torch.load`` without an explicit ``weights_only`` unpickles
arbitrary code, also in a user's own script. e3nn needs unpickling only for its own
constants file (a tuple holding ``slice`` objects) while it is imported. :func:`import_mace`
imports mace and e3nn with that one global allowed, then puts the variable back as it was;
every load of a MACE file in this package passes ``weights_only`` itself (``model_files``).

The same imports print messages that look like problems and are not: e3nn's torch.load
warning, TorchScript's warning about instance-level annotations (raised for mace's and e3nn's
modules when they are scripted), ``simtk.openmm``'s deprecation notice (openmm-torch 1.5
imports ``simtk.openmm``), kineto's ``gpuGetDeviceCount failed`` on machines without a GPU, and
MDTraj's ``dcdplugin)`` lines (its C reader prints them on every DCD it opens). The filters
here silence exactly those and nothing else.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from contextlib import contextmanager, nullcontext
from typing import Iterator, Optional

WEIGHTS_ONLY_VARIABLE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"

# (message regex, category, module regex) of the known-harmless upstream warnings.
HARMLESS_WARNINGS = (
    (r"Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected", UserWarning, r"e3nn\."),
    (r"You are using `torch\.load` with `weights_only=False`", FutureWarning, r"e3nn\."),
    (r"The TorchScript type system doesn't support instance-level annotations", UserWarning, r"torch\.jit"),
)
SIMTK_NOTICE = "importing 'simtk.openmm' is deprecated"
DCD_PLUGIN_PREFIX = b"dcdplugin) "

_IMPORT_LOCK = threading.Lock()


def install_warning_filters() -> None:
    """Ignore the upstream warnings listed in ``HARMLESS_WARNINGS`` (and only those)."""
    for message, category, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def _restore_variable(previous: Optional[str]) -> None:
    if previous is None:
        os.environ.pop(WEIGHTS_ONLY_VARIABLE, None)
    else:
        os.environ[WEIGHTS_ONLY_VARIABLE] = previous


def import_mace():
    """Import mace and the e3nn modules it uses; leave ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` as found.

    Idempotent and cheap after the first call. Later imports of other mace modules are
    no-ops for the variable, except ``mace.calculators`` (mace's ASE calculator), which sets
    it again when a script imports it.
    """
    with _IMPORT_LOCK:
        if "e3nn.o3" in sys.modules and "mace.modules" in sys.modules and "mace.tools" in sys.modules:
            return sys.modules["mace"]
        import torch

        previous = os.environ.get(WEIGHTS_ONLY_VARIABLE)
        with warnings.catch_warnings():
            install_warning_filters()
            # e3nn's constants file holds slices; allowing that one global lets e3nn load it
            # with weights_only=True, so the variable mace sets is not needed at all.
            allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
            with allow([slice]) if allow is not None else nullcontext():
                try:
                    import mace

                    _restore_variable(previous)
                    import e3nn.nn  # noqa: F401
                    import e3nn.o3  # noqa: F401
                    import e3nn.util.jit  # noqa: F401
                    import mace.data  # noqa: F401
                    import mace.modules  # noqa: F401
                    import mace.tools  # noqa: F401
                finally:
                    _restore_variable(previous)
        return mace


@contextmanager
def mace_load_switch() -> Iterator[None]:
    """Turn mace's process-wide ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` on for one call only.

    mace's own loaders (its ASE calculator, openmm-ml 1.8's ``MLPotential("mace")``) call
    ``torch.load`` without ``weights_only`` and rely on it. Use it around such a call on a file
    you trust; torch's warning about the variable is silenced inside.
    """
    previous = os.environ.get(WEIGHTS_ONLY_VARIABLE)
    os.environ[WEIGHTS_ONLY_VARIABLE] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected")
            yield
    finally:
        _restore_variable(previous)


class _DropSimtkNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return SIMTK_NOTICE not in record.getMessage()


@contextmanager
def quiet_simtk_notice() -> Iterator[None]:
    """Drop simtk's deprecation notice (a root-logger warning) while openmm-torch is imported."""
    root = logging.getLogger()
    drop = _DropSimtkNotice()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def quiet_profiler() -> None:
    """On a machine without a GPU, keep kineto from logging ``gpuGetDeviceCount failed``.

    Kineto reads ``KINETO_LOG_LEVEL`` when the first profile starts; a value the user set
    is kept, and machines with a GPU keep kineto's own default.
    """
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")


def _flush_c_stdout() -> None:
    """Flush the C library's stdout buffer (where MDTraj's C reader writes)."""
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


RELAY_DRAIN_SECONDS = 2.0  # how long the end of a command waits for the filter to pass on its output


@contextmanager
def without_dcd_plugin_lines(fd: int = 1) -> Iterator[None]:
    """Drop the lines MDTraj's DCD reader prints (``dcdplugin) ...``) from file descriptor ``fd``.

    The reader is C code writing to the process's stdout, so the filter works on the file
    descriptor: it is pointed at a pipe whose reader thread passes every other byte on, as
    soon as it arrives (partial lines too, e.g. progress output).
    """
    sys.stdout.flush()
    _flush_c_stdout()
    try:
        original = os.dup(fd)
    except OSError:  # no such descriptor (e.g. a daemon): nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    relay = threading.Thread(target=_relay_without_dcd_lines, args=(read_end, original), daemon=True)
    relay.start()
    try:
        yield
    finally:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        _flush_c_stdout()
        os.dup2(original, fd)  # closes our write end; the relay sees EOF unless a child holds one
        # A child process started inside (multiprocessing's resource tracker under Dask, a
        # worker) inherits the pipe and keeps it open until it exits, which may be after us:
        # waiting for EOF would hang the command at its end. Everything we wrote is in the pipe
        # by now, so wait only until the relay has drained it; a relay still running then keeps
        # both of its descriptors (closing them could hand their numbers to another file).
        relay.join(timeout=RELAY_DRAIN_SECONDS)
        if not relay.is_alive():
            os.close(read_end)
            os.close(original)


def _relay_without_dcd_lines(read_end: int, target: int) -> None:
    """Copy ``read_end`` to ``target`` without the dcdplugin lines, until EOF.

    It keeps reading after ``target`` fails (e.g. a closed pipe downstream), so that a writer
    never blocks on a full pipe."""
    pending = b""
    broken = False
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        if broken:
            continue
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not line.startswith(DCD_PLUGIN_PREFIX))
        # A partial line goes on at once unless it may still become a dcdplugin line.
        if pending and not (DCD_PLUGIN_PREFIX.startswith(pending) or pending.startswith(DCD_PLUGIN_PREFIX)):
            out += pending
            pending = b""
        broken = not _write_all(target, out)
    if pending and not broken and not pending.startswith(DCD_PLUGIN_PREFIX):
        _write_all(target, pending)


def _write_all(fd: int, data: bytes) -> bool:
    """Write all of ``data``; False if the descriptor no longer takes it."""
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except OSError:
        return False
    return True
