"""Builds the native operators (CMakeLists.txt) into ``openmm_mace_lp/_native`` during the package build.

setup.py's ``build_ext`` runs CMake with the torch of the build environment: its include and
library directories and C++ ABI are passed as cache variables (``find_package(Torch)`` is not
used, see CMakeLists.txt). For ``pip install .`` the libraries go into the wheel's package
directory, for ``pip install -e .`` into the source tree. ``OPENMM_MACE_LP_BUILD_CUDA=0`` skips
the CUDA kernels.

The native library is optional: when torch cannot be imported (an isolated build), CMake is
missing or the build fails, one line says why, ``_native/build_info.json`` records it, and the
install goes on; ``openmm_mace_lp.native`` then warns once and the TorchScript neighbour list is
used. Libraries are replaced by renaming, so processes that have the old ones loaded keep them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from setuptools import Extension
from setuptools.command.build_ext import build_ext

SOURCE_DIR = Path(__file__).resolve().parent
NATIVE_PACKAGE = "openmm_mace_lp._native"
BUILD_INFO = "build_info.json"
LIBRARY_NAMES = ("mace_lp_cpu", "mace_lp_cuda")
CUDA_VARIABLE = "OPENMM_MACE_LP_BUILD_CUDA"
PREFIX = "openmm-mace-lp native library:"

# Printed by a Python that has torch: what CMake needs to build against it.
TORCH_QUERY = """
import json, torch
from torch.utils import cpp_extension
print(json.dumps({"version": torch.__version__, "cuda": torch.version.cuda,
                  "include_dirs": cpp_extension.include_paths(), "library_dirs": cpp_extension.library_paths(),
                  "cxx11_abi": int(torch._C._GLIBCXX_USE_CXX11_ABI)}))
"""


class NativeBuildSkipped(Exception):
    """The native libraries cannot be built here; the message says why (one line)."""


def library_file(name: str) -> str:
    """The file CMake writes for shared library ``name`` on this platform."""
    if sys.platform == "darwin":
        return f"lib{name}.dylib"
    if sys.platform == "win32":
        return f"{name}.dll"
    return f"lib{name}.so"


def torch_configuration() -> Dict[str, object]:
    """Version, CUDA version, include and library directories and C++ ABI of the build environment's torch."""
    query = subprocess.run([sys.executable, "-c", TORCH_QUERY], capture_output=True, text=True)
    if query.returncode != 0:
        last = (query.stderr.strip().splitlines() or ["no output"])[-1]
        raise NativeBuildSkipped(f"torch is not importable in the build environment ({last}); install with "
                                 f"`pip install --no-build-isolation ...` into an environment that has torch")
    return json.loads(query.stdout.strip().splitlines()[-1])


def build_cuda_requested() -> bool:
    return os.environ.get(CUDA_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def run_logged(command: List[str], log: Path) -> None:
    """Run ``command``, appending its output to ``log``; a failure names its last error line and the log."""
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
    if status != 0:
        lines = log.read_text(errors="replace").splitlines()
        errors = [line.strip() for line in lines if "error" in line.lower()]
        raise NativeBuildSkipped(f"`{command[0]} {command[1]}` failed ({errors[-1] if errors else 'exit ' + str(status)}); "
                                 f"full output in {log}")


def compile_libraries(build_dir: Path, torch_config: Dict[str, object], cuda: bool) -> List[Path]:
    """Configure and build CMakeLists.txt in ``build_dir``; the shared libraries it wrote."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise NativeBuildSkipped("cmake is not on PATH (install CMake >= 3.18, e.g. `pip install cmake`)")
    build_dir.mkdir(parents=True, exist_ok=True)
    output_dir = build_dir / "lib"
    shutil.rmtree(output_dir, ignore_errors=True)
    log = build_dir / "build.log"
    log.write_text("")
    configure = [cmake, "-S", str(SOURCE_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 "-DTORCH_INCLUDE_DIRS=" + ";".join(torch_config["include_dirs"]),
                 "-DTORCH_LIBRARY_DIRS=" + ";".join(torch_config["library_dirs"]),
                 f"-DTORCH_CXX11_ABI={torch_config['cxx11_abi']}", f"-DMACE_LP_OUTPUT_DIR={output_dir}",
                 f"-DMACE_LP_BUILD_CUDA={'ON' if cuda else 'OFF'}"]
    if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]
    run_logged(configure, log)
    run_logged([cmake, "--build", str(build_dir), "--parallel", str(os.cpu_count() or 1)], log)
    return [output_dir / library_file(name) for name in LIBRARY_NAMES if (output_dir / library_file(name)).exists()]


def replace_file(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` by renaming a finished copy (a loaded library stays intact)."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def install_libraries(build_dir: Path, target_dir: Path) -> List[Path]:
    """Build the libraries and put them with ``build_info.json`` into ``target_dir``; returns what is there.

    Never raises for a build problem: it prints one line, records it and removes libraries left
    from an earlier build (they may be built against another torch).
    """
    target_dir.mkdir(parents=True, exist_ok=True)
    info: Dict[str, object] = {"libraries": []}
    built: List[Path] = []
    try:
        torch_config = torch_configuration()
        info.update(torch_version=torch_config["version"], torch_cuda=torch_config["cuda"],
                    cxx11_abi=torch_config["cxx11_abi"], cuda_requested=build_cuda_requested())
        built = compile_libraries(build_dir, torch_config, bool(info["cuda_requested"]))
        info["libraries"] = [path.name for path in built]
        print(f"{PREFIX} built {', '.join(info['libraries'])} against torch {torch_config['version']}", file=sys.stderr)
    except NativeBuildSkipped as problem:
        info["skipped"] = str(problem)
        print(f"{PREFIX} skipped: {problem}; the TorchScript neighbour list will be used", file=sys.stderr)
    for name in LIBRARY_NAMES:
        stale = target_dir / library_file(name)
        if stale.exists() and stale.name not in info["libraries"]:
            stale.unlink()
    for path in built:
        replace_file(path, target_dir / path.name)
    partial = target_dir / f".{BUILD_INFO}.partial"
    partial.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(partial, target_dir / BUILD_INFO)
    return [target_dir / path.name for path in built] + [target_dir / BUILD_INFO]


class NativeLibraries(Extension):
    """Stands for the CMake-built libraries in build_ext (setuptools builds nothing from it itself)."""

    def __init__(self) -> None:
        super().__init__(f"{NATIVE_PACKAGE}.libraries", sources=[], optional=True)


class BuildNative(build_ext):
    """build_ext that builds ``NativeLibraries`` with CMake, in place for editable installs."""

    def run(self) -> None:
        # setuptools clears ``inplace`` while it builds; editable installs set one of these.
        self._native_in_source = bool(self.inplace or getattr(self, "editable_mode", False))
        self._native_outputs: List[Path] = []
        super().run()

    def native_target_dir(self) -> Path:
        if self._native_in_source:
            package_dir = self.get_finalized_command("build_py").get_package_dir("openmm_mace_lp")
            return Path(package_dir).resolve() / "_native"
        return Path(self.build_lib) / "openmm_mace_lp" / "_native"

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, NativeLibraries):
            super().build_extension(ext)
            return
        self._native_outputs = install_libraries(Path(self.build_temp).resolve() / "native", self.native_target_dir())

    def copy_extensions_to_source(self) -> None:
        """Editable installs build the libraries in the source tree already."""
        others = [ext for ext in self.extensions if not isinstance(ext, NativeLibraries)]
        if others:
            native, self.extensions = self.extensions, others
            try:
                super().copy_extensions_to_source()
            finally:
                self.extensions = native

    def get_outputs(self) -> List[str]:
        outputs = [str(path) for path in getattr(self, "_native_outputs", [])]
        others = [ext for ext in self.extensions if not isinstance(ext, NativeLibraries)]
        return outputs + [self.get_ext_fullpath(ext.name) for ext in others]

    def get_output_mapping(self) -> Dict[str, str]:
        return {}

