"""setuptools entry for the native operators; everything else is in pyproject.toml.

build_native.BuildNative builds CMakeLists.txt (mace_lp_cpu, and mace_lp_cuda where nvcc is
found) against the torch of the build environment, so install with ``--no-build-isolation``.
"""
import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_native import BuildNative, NativeLibraries  # noqa: E402

setup(ext_modules=[NativeLibraries()], cmdclass={"build_ext": BuildNative})
