"""The package's native operators (namespace ``mace_lp``), registered with torch at import.

``import openmm_mace_lp`` calls :func:`load`, which loads ``_native/libmace_lp_cpu.so`` (the
operator schemas and CPU kernels) and, with a CUDA build of torch, ``libmace_lp_cuda.so``, with
``torch.ops.load_library``. Exported modules then call ``torch.ops.mace_lp.cell_list`` (see
``neighbors.native_cell_list``); plain openmm-torch runs such a file once these libraries are
loaded into its process (:func:`library_paths`).

The libraries are optional. When one is missing (the package was built without torch, or without
nvcc), was built against another torch (its C++ ABI would not match), or fails to load, one
warning names the cause and the fix, and exports use the TorchScript neighbour list instead.
``OPENMM_MACE_LP_NATIVE=0`` turns the native operators off on purpose, without a warning;
``OPENMM_MACE_LP_NATIVE_DIR`` names another directory holding the libraries and their
``build_info.json`` (e.g. a CMake build of CMakeLists.txt done by hand).
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

NATIVE_DIR = Path(__file__).resolve().parent / "_native"
BUILD_INFO = "build_info.json"
CPU_LIBRARY = "mace_lp_cpu"
CUDA_LIBRARY = "mace_lp_cuda"
CELL_LIST_OPERATOR = "mace_lp::cell_list"
DISABLE_VARIABLE = "OPENMM_MACE_LP_NATIVE"
DIRECTORY_VARIABLE = "OPENMM_MACE_LP_NATIVE_DIR"
REBUILD_HINT = ("reinstall the package with `pip install --no-build-isolation --no-deps -e .` (or without -e) "
                "in this environment so that it builds against torch {torch}, or set OPENMM_MACE_LP_NATIVE=0 "
                "to use the TorchScript list without this warning")


class NativeLibraryWarning(RuntimeWarning):
    """A native library of openmm-mace-lp is missing or unusable; the TorchScript path is used."""


@dataclass
class NativeState:
    """What :func:`load` found: the libraries it loaded and, if any, why one was not."""

    directory: Path
    disabled: bool = False
    loaded: Dict[str, Path] = field(default_factory=dict)
    problem: Optional[str] = None


_state: Optional[NativeState] = None


def library_file(name: str) -> str:
    """The file name of shared library ``name`` on this platform (as CMake writes it)."""
    if sys.platform == "darwin":
        return f"lib{name}.dylib"
    if sys.platform == "win32":
        return f"{name}.dll"
    return f"lib{name}.so"


def disabled_by_environment() -> bool:
    return os.environ.get(DISABLE_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off")


def _read_build_info(directory: Path) -> Optional[dict]:
    try:
        return json.loads((directory / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return None


def _problem(state: NativeState, torch_version: str, cause: str) -> None:
    state.problem = (f"openmm-mace-lp: {cause}; the TorchScript neighbour list is used instead. Fix: "
                     + REBUILD_HINT.format(torch=torch_version))


def _load_into(state: NativeState) -> None:
    import torch

    directory = state.directory
    info = _read_build_info(directory)
    cpu_path = directory / library_file(CPU_LIBRARY)
    if info is None or not cpu_path.is_file():
        reason = info.get("skipped") if info else None
        _problem(state, torch.__version__,
                 f"the native library was not built ({reason})" if reason else
                 f"the native library {cpu_path.name} is not in {directory}")
        return
    built_for = str(info.get("torch_version"))
    if built_for != torch.__version__:
        _problem(state, torch.__version__, f"the native library in {directory} was built against torch {built_for}, "
                                           f"this process runs torch {torch.__version__} (their C++ ABIs differ)")
        return
    wanted = [CPU_LIBRARY]
    cuda_path = directory / library_file(CUDA_LIBRARY)
    if torch.version.cuda is not None and cuda_path.is_file():
        wanted.append(CUDA_LIBRARY)
    for name in wanted:
        path = directory / library_file(name)
        try:
            torch.ops.load_library(str(path))
        except (OSError, RuntimeError) as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            _problem(state, torch.__version__, f"loading {path} failed ({first_line})")
            return
        state.loaded[name] = path
    if CUDA_LIBRARY not in state.loaded and torch.cuda.is_available():
        _problem(state, torch.__version__, "the CUDA kernels of the native library were not built (no CUDA compiler "
                                           "when the package was installed, or OPENMM_MACE_LP_BUILD_CUDA=0)")


def load(directory: Optional[os.PathLike] = None) -> bool:
    """Register the native operators with torch (once per process); True when the CPU library is loaded.

    ``directory`` (default: ``OPENMM_MACE_LP_NATIVE_DIR``, else the package's ``_native``) is
    where the libraries are looked for.
    A missing or unusable library gives one :class:`NativeLibraryWarning` naming the cause and
    the fix, and nothing else changes: the TorchScript neighbour list is used.
    """
    global _state
    if _state is not None:
        return CPU_LIBRARY in _state.loaded
    if directory is None:
        directory = os.environ.get(DIRECTORY_VARIABLE) or NATIVE_DIR
    state = NativeState(Path(directory))
    if disabled_by_environment():
        state.disabled = True
    else:
        _load_into(state)
    _state = state
    if state.problem is not None:
        warnings.warn(state.problem, NativeLibraryWarning, stacklevel=2)
    return CPU_LIBRARY in state.loaded


def state() -> NativeState:
    """What :func:`load` found (loading first if it has not run)."""
    if _state is None:
        load()
    assert _state is not None
    return _state


def available(device_type: str = "cpu") -> bool:
    """Whether ``mace_lp::cell_list`` has a kernel for ``device_type`` ('cpu' or 'cuda') in this process.

    False when ``OPENMM_MACE_LP_NATIVE=0``, even if someone else loaded the libraries.
    """
    if disabled_by_environment():
        return False
    state()
    import torch

    key = {"cpu": "CPU", "cuda": "CUDA"}.get(str(device_type))
    if key is None:
        return False
    if not torch._C._dispatch_has_kernel(CELL_LIST_OPERATOR):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(CELL_LIST_OPERATOR, key)


def library_paths() -> List[Path]:
    """The loaded native libraries, CPU first: what a program running exported modules outside
    this package (plain openmm-torch) must load, e.g. with ``torch.ops.load_library``."""
    return list(state().loaded.values())
