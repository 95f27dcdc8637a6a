"""Where an AOTInductor package crashes on CUDA: one case per child process, smallest first.

Why (issue 16): ``compiler="inductor"`` works on the CPU, but on an H200 (torch 2.11) the
package of a cuEquivariance model crashed at its first run in torch's own loader, and the e3nn
package crashed in ``mace_lp::AOTIPackage``. A segmentation fault kills the process, so each
case runs in a child; the table says which of them run, from a two-line function up to the
force module, through torch's loader and through ours, with AOTInductor's own input checks
(``AOTI_RUNTIME_CHECK_INPUTS=1``) so that a wrong shape or dtype is named instead of crashing.
A crash gets a native backtrace when gdb is on the machine.

    python benchmarks/aoti_cuda_probe.py -o build/out/aoti_probe.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

CHILD = "aoti-probe-child"


def _tiny_package(directory: Path, device: str) -> Path:
    import torch

    def energy_forces(positions: torch.Tensor, weight: torch.Tensor):
        positions = positions.detach().requires_grad_(True)
        energy = torch.tanh(positions @ weight).square().sum()
        (grad,) = torch.autograd.grad(energy, positions)
        return energy, -grad

    from torch.fx.experimental.proxy_tensor import make_fx

    inputs = (torch.randn(64, 3, device=device), torch.randn(3, 16, device=device))
    graph = make_fx(energy_forces, tracing_mode="fake")(*inputs)
    exported = torch.export.export(graph, inputs, strict=False)
    path = torch._inductor.aoti_compile_and_package(exported, package_path=str(directory / "tiny.pt2"))
    torch.save(inputs, directory / "tiny_inputs.pt")
    return Path(path)


def _mace_package(directory: Path, backend: str, device: str) -> Path:
    """The test architecture's package, compiled as ``build_force_module`` does, and the inputs
    its neighbour list gives for a 192-atom water box."""
    import torch

    from openmm_mace_lp import compiled
    from openmm_mace_lp.export import MACEForce, check_elements, prepare_model
    from openmm_mace_lp.neighbors import plan_capacity, resolve_neighbor_list_impl
    from openmm_mace_lp.policy import get_policy
    from tests.plugin.helpers import model, water_box

    system = water_box(4, seed=5)
    mace = model("both")
    capacity = plan_capacity(len(system.positions), float(mace.r_max), system.box * 10.0, system.positions * 10.0)
    policy = get_policy("fp32")
    element_index = check_elements(mace, system.atomic_numbers)
    node_attrs = torch.nn.functional.one_hot(torch.tensor(element_index), num_classes=len(mace.atomic_numbers))
    prepared, _ = prepare_model(mace, policy, backend)
    package = compiled.compile_package(prepared, node_attrs, "interaction_energy", capacity.edge_capacity,
                                       torch.float32, torch.device(device))
    path = directory / f"mace_{backend}.pt2"
    path.write_bytes(package)
    force = MACEForce(prepared, node_attrs, None, len(element_index), True, torch.float32, "interaction_energy",
                      capacity, False, resolve_neighbor_list_impl(None, device, True)).to(device)
    pos, cell = force._inputs(torch.tensor(system.positions, dtype=torch.float32, device=device),
                              torch.tensor(system.box, dtype=torch.float32, device=device))
    edges, shifts, _ = force._fixed_list(pos, cell)
    torch.save((pos, cell, edges, shifts), directory / f"mace_{backend}_inputs.pt")
    return path


def _run_torch_loader(package: Path, inputs: Path) -> Dict[str, object]:
    import torch

    loaded = torch._inductor.aoti_load_package(str(package))
    outputs = loaded(*torch.load(inputs))
    _synchronize()
    return {"outputs": [list(t.shape) for t in outputs], "first": float(outputs[0].float().sum())}


def _run_our_class(package: Path, inputs: Path) -> Dict[str, object]:
    import torch

    import openmm_mace_lp  # noqa: F401  (loads the native library)

    holder = torch.classes.mace_lp.AOTIPackage(torch.frombuffer(bytearray(package.read_bytes()), dtype=torch.uint8))
    outputs = holder.run(list(torch.load(inputs)))
    _synchronize()
    return {"outputs": [list(t.shape) for t in outputs], "first": float(outputs[0].float().sum())}


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


STEPS: Dict[str, Callable[[Path, str], Dict[str, object]]] = {
    "compile tiny": lambda d, device: {"package": str(_tiny_package(d, device))},
    "tiny, torch loader": lambda d, device: _run_torch_loader(d / "tiny.pt2", d / "tiny_inputs.pt"),
    "tiny, mace_lp.AOTIPackage": lambda d, device: _run_our_class(d / "tiny.pt2", d / "tiny_inputs.pt"),
    "compile MACE e3nn": lambda d, device: {"package": str(_mace_package(d, "e3nn", device))},
    "MACE e3nn, torch loader": lambda d, device: _run_torch_loader(d / "mace_e3nn.pt2", d / "mace_e3nn_inputs.pt"),
    "MACE e3nn, mace_lp.AOTIPackage": lambda d, device: _run_our_class(d / "mace_e3nn.pt2", d / "mace_e3nn_inputs.pt"),
    # CUDA only: on the CPU cuEquivariance's naive path does not lower.
    "compile MACE cueq": lambda d, device: {"package": str(_mace_package(d, "cueq", device))},
    "MACE cueq, torch loader": lambda d, device: _run_torch_loader(d / "mace_cueq.pt2", d / "mace_cueq_inputs.pt"),
}


def run_child(step: str, directory: Path, device: str) -> int:
    import faulthandler

    faulthandler.enable()
    started = time.perf_counter()
    result = STEPS[step](directory, device)
    result["seconds"] = time.perf_counter() - started
    (directory / "step.json").write_text(json.dumps(result))
    return 0


def run_step(step: str, directory: Path, device: str, timeout_s: float) -> Dict[str, object]:
    """One step in a child; a crash is rerun under gdb (when present) for a native backtrace."""
    env = dict(os.environ, AOTI_RUNTIME_CHECK_INPUTS="1")
    command = [sys.executable, __file__, CHILD, step, str(directory), device]
    (directory / "step.json").unlink(missing_ok=True)
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"step": step, "status": "timeout", "timeout_s": timeout_s}
    if child.returncode == 0:
        return {"step": step, "status": "ok", **json.loads((directory / "step.json").read_text())}
    record = {"step": step, "status": f"exit {child.returncode}", "stderr_tail": child.stderr[-3000:]}
    if child.returncode < 0 and shutil.which("gdb"):
        try:
            traced = subprocess.run(["gdb", "-batch", "-ex", "run", "-ex", "bt 40", "--args", *command],
                                    capture_output=True, text=True, timeout=timeout_s, env=env)
            frames = [line for line in traced.stdout.splitlines() if line.startswith("#")]
            record["gdb_backtrace"] = "\n".join(frames)[-6000:]
        except subprocess.TimeoutExpired:
            record["gdb_backtrace"] = f"gdb did not finish in {timeout_s} s"
    return record


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD]:
        return run_child(argv[1], Path(argv[2]), argv[3])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--timeout-s", type=float, default=150.0)
    parser.add_argument("--work", type=Path, default=Path("build/aoti_probe"))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the same steps")
    parser.add_argument("--only", default="", help="a regular expression: run the steps whose names match")
    args = parser.parse_args(argv)
    import torch

    args.work.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    record = {"card": card, "device": args.device, "torch": torch.__version__, "steps": []}
    record["environment"] = {key: os.environ.get(key, "") for key in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    steps = [name for name in STEPS if (args.device == "cuda" or "cueq" not in name) and re.search(args.only, name)]
    for step in steps:
        record["steps"].append(run_step(step, args.work, args.device, args.timeout_s))
        print(f"{step:34s} {record['steps'][-1]['status']}", flush=True)
        args.output.write_text(json.dumps(record, indent=1))  # after each step: a hung one keeps the rest
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
