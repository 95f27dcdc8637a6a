"""Export stage, compiled variant: MACE's energy and forces as one AOTInductor package.

Why: run by TorchScript's graph executor, MACE's radial basis, radial MLP, spherical harmonics,
gathers, scatters and the backward pass that gives the forces are each their own small kernels;
FastMACE (issue 16's benchmark) is ahead of us mainly because Inductor fuses them. openmm-torch
runs TorchScript from C++, so Inductor's code has to be compiled *ahead of time* and called
from the TorchScript module: ``mace_lp::AOTIPackage`` (native/aoti_package.cpp) does that, on
the current CUDA stream, so the package's kernels are captured in openmm-torch's CUDA graph.

The data path is: prepared model (policy and backend applied, ``export.prepare_model``) ->
``energy_forces_function`` (positions, cell, edges, shifts -> energy, ``-dE/dpositions``) ->
``make_fx`` with fake tensors traces forward *and* backward into one aten graph (no value of
the inputs is read, so nothing data-dependent is baked in; the shapes are those of the
fixed-capacity neighbour list) -> ``torch.export`` -> ``aoti_compile_and_package`` -> the
package's bytes inside ``CompiledMACE``, which stands in for the model in ``export.MACEForce``.
The exported TorchScript file therefore holds the compiled code and is cached like every other
export: a second process loads it in seconds.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

TORCHSCRIPT = "torchscript"
INDUCTOR = "inductor"
COMPILERS = (TORCHSCRIPT, INDUCTOR)
# Backends whose packages are known to run. cuEquivariance's kernel is a Python custom op
# (``cuequivariance::uniform_1d``, torch.library.custom_op), which a package calls through
# AOTInductor's proxy executor: with torch 2.11 and cuequivariance 0.13 on an H200 (2026-12-01)
# such a package compiled (58 s for the test architecture) and then crashed the process with a
# segmentation fault on its first run, in torch's own loader (``aoti_load_package``) as in ours;
# on the CPU, cuEquivariance's naive path does not lower (Inductor: 'Constant' has no 'data').
COMPILED_BACKENDS = ("e3nn",)
# On CUDA every AOTInductor package crashed at its first run on the stack measured (one H200,
# torch 2.11.0+cu130, 2026-12-01, benchmarks/results/aoti_probe_2026-12-01_h200.md): even the
# package of a two-line function (tanh of a small GEMM, its energy and gradient) segfaults in
# torch's own ``aoti_load_package``, so the crash is neither cuEquivariance's nor
# ``mace_lp::AOTIPackage``'s. CUDA compiles are refused unless this variable is "1" (to re-test
# on another torch; a crash then kills the process).
CUDA_OPT_IN = "OPENMM_MACE_LP_CUDA_AOTI"


class CompilerUnavailable(RuntimeError):
    """The Inductor path cannot be used here; the message says why and what to do."""


def check_compiler(compiler: str, fixed_capacity: bool) -> None:
    """Refuse a compiler choice the export cannot honour, with the fix."""
    if compiler not in COMPILERS:
        raise ValueError(f"compiler={compiler!r} is not one; use one of {', '.join(map(repr, COMPILERS))}.")
    if compiler == INDUCTOR and not fixed_capacity:
        raise ValueError("compiler='inductor' compiles for fixed shapes: it needs the fixed-capacity neighbour "
                         "list, which it implies; leave fixedNeighborList unset (or True), or use "
                         "compiler='torchscript' for the data-sized list.")


def backend_request(compiler: str, backend: str) -> str:
    """The backend to resolve for this compiler: "auto" means the first of ``COMPILED_BACKENDS``
    for compiled code (on CUDA it would otherwise pick cuEquivariance, which is refused)."""
    return COMPILED_BACKENDS[0] if compiler == INDUCTOR and backend == "auto" else backend


def check_compiled_backend(compiler: str, backend: str) -> None:
    """Refuse a backend whose compiled package is known not to run (``COMPILED_BACKENDS``)."""
    if compiler == INDUCTOR and backend not in COMPILED_BACKENDS:
        raise ValueError(f"compiler='inductor' runs with backend {' or '.join(map(repr, COMPILED_BACKENDS))} only: "
                         f"a package with cuEquivariance's kernels ({backend!r}) crashes at its first run (torch "
                         f"2.11, cuequivariance 0.13; see openmm_mace_lp/compiled.py). Pass backend='e3nn' with "
                         f"compiler='inductor', or keep compiler='torchscript'.")


def check_compiled_device(compiler: str, device_type: str) -> None:
    """Refuse a compiled export for CUDA (see ``CUDA_OPT_IN``), with the fix."""
    if compiler == INDUCTOR and device_type == "cuda" and os.environ.get(CUDA_OPT_IN) != "1":
        raise ValueError(f"compiler='inductor' is refused on CUDA: AOTInductor packages crashed the process at their "
                         f"first run on CUDA with torch 2.11 (even a two-line function's, in torch's own loader; "
                         f"see openmm_mace_lp/compiled.py). Use compiler='torchscript' on CUDA (the default; "
                         f"the compiled path runs on the CPU), or set {CUDA_OPT_IN}=1 to re-test it on another "
                         f"torch.")


def require_package_class() -> None:
    """The TorchScript class that runs a package comes from this package's native library."""
    from . import native

    if not native.available("cpu"):
        state = native.state()
        cause = "OPENMM_MACE_LP_NATIVE=0 turns it off" if native.disabled_by_environment() else (
            state.problem or "it was not built")
        raise CompilerUnavailable(
            f"compiler='inductor' needs the native library (mace_lp::AOTIPackage), which is not loaded: {cause}. "
            f"Unset OPENMM_MACE_LP_NATIVE, or reinstall the package where CMake and a C++ compiler are found "
            f"(pip install -e .), or use compiler='torchscript'.")


def energy_forces_function(model: torch.nn.Module, node_attrs: torch.Tensor,
                           energy_type: str) -> Callable[..., Tuple[torch.Tensor, torch.Tensor]]:
    """(positions A, cell A, edge_index, shifts A) -> (energy eV, forces eV/A) of one structure.

    The per-structure constants (elements, batch of one) are closed over, so the compiled
    graph takes only what changes from step to step.
    """
    n = node_attrs.shape[0]
    device = node_attrs.device
    constants = {
        "node_attrs": node_attrs,
        "batch": torch.zeros(n, dtype=torch.long, device=device),
        "ptr": torch.tensor([0, n], dtype=torch.long, device=device),
        "head": torch.zeros(1, dtype=torch.long, device=device),
    }

    def energy_forces(positions: torch.Tensor, cell: torch.Tensor, edge_index: torch.Tensor,
                      shifts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        positions = positions.detach().requires_grad_(True)
        data = {"positions": positions, "cell": cell, "edge_index": edge_index, "shifts": shifts, **constants}
        out = model(data, training=False, compute_force=True)
        return out[energy_type].sum(), out["forces"]

    return energy_forces


def example_inputs(num_atoms: int, edge_capacity: int, dtype: torch.dtype,
                   device: torch.device) -> Tuple[torch.Tensor, ...]:
    """Inputs of the shapes, dtypes and device the package will be called with (values unused)."""
    return (torch.zeros(num_atoms, 3, dtype=dtype, device=device),
            torch.eye(3, dtype=dtype, device=device),
            torch.zeros(2, edge_capacity, dtype=torch.long, device=device),
            torch.zeros(edge_capacity, 3, dtype=dtype, device=device))


@contextlib.contextmanager
def exact_float32_matmuls() -> Iterator[None]:
    """fp32 means fp32 in the compiled code too: Inductor reads these flags when it compiles."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        torch.set_float32_matmul_precision(precision)


def trace_energy_forces(function: Callable, inputs: Tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """One aten graph of the forward pass and of the backward pass that gives the forces."""
    from torch.fx.experimental.proxy_tensor import make_fx

    # The model's parameters are real tensors closed over; only the inputs are fake.
    return make_fx(function, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)


def compile_package(model: torch.nn.Module, node_attrs: torch.Tensor, energy_type: str, edge_capacity: int,
                    dtype: torch.dtype, device: torch.device) -> bytes:
    """The AOTInductor package (.pt2 bytes) of ``energy_forces_function`` for these shapes."""
    started = time.perf_counter()
    inputs = example_inputs(node_attrs.shape[0], edge_capacity, dtype, device)
    function = energy_forces_function(model.to(device), node_attrs.to(device=device, dtype=dtype), energy_type)
    with exact_float32_matmuls():
        graph = trace_energy_forces(function, inputs)
        traced = time.perf_counter()
        exported = torch.export.export(graph, inputs, strict=False)
        with tempfile.TemporaryDirectory(prefix="mace-lp-aoti-") as directory:
            path = torch._inductor.aoti_compile_and_package(exported, package_path=str(Path(directory) / "model.pt2"))
            package = Path(path).read_bytes()
    logger.info("compiled energy and forces with AOTInductor: %d atoms, %d edge slots, %s on %s; traced in "
                "%.1f s, compiled in %.1f s, %.1f MB", node_attrs.shape[0], edge_capacity, dtype, device.type,
                traced - started, time.perf_counter() - traced, len(package) / 1e6)
    return package


class CompiledMACE(torch.nn.Module):
    """Stands in for the prepared MACE model in ``MACEForce``: ``(data) -> {energy_type, "forces"}``.

    Only the four inputs that change during a run are passed on; the rest of ``data`` (elements,
    batch) was fixed when the package was compiled.
    """

    def __init__(self, package: bytes, energy_type: str, r_max: float) -> None:
        super().__init__()
        require_package_class()
        data = torch.frombuffer(bytearray(package), dtype=torch.uint8)
        self.package = torch.classes.mace_lp.AOTIPackage(data)
        self.energy_type = energy_type
        self.r_max = r_max

    def forward(self, data: Dict[str, torch.Tensor], training: bool = False,
                compute_force: bool = True) -> Dict[str, Optional[torch.Tensor]]:
        outputs = self.package.run([data["positions"].contiguous(), data["cell"].contiguous(),
                                    data["edge_index"].contiguous(), data["shifts"].contiguous()])
        result: Dict[str, Optional[torch.Tensor]] = {"forces": outputs[1]}
        result[self.energy_type] = outputs[0]
        return result


def compiled_model(model: torch.nn.Module, node_attrs: torch.Tensor, energy_type: str, edge_capacity: int,
                   dtype: torch.dtype, device: torch.device) -> CompiledMACE:
    """The prepared model compiled for one structure's shapes, ready to go into ``MACEForce``."""
    require_package_class()
    package = compile_package(model, node_attrs, energy_type, edge_capacity, dtype, device)
    return CompiledMACE(package, energy_type, float(model.r_max))
