"""Which GPU kernels one MD step spends its time in: our exported module against FastMACE's step.

Why (issue 16): what goes native is chosen by measurement, and the measurement is a kernel
table of one energy+force evaluation, ours and FastMACE's, on the same model file and box. Ours
is the module openmm-torch runs (``export.build_force_module``: policy, backend, fixed-capacity
list, ``--compiler``), called directly with float32 positions as openmm-torch hands them over;
FastMACE's is its own ``Simulation`` in ``mode="compiled"`` (torch.compile without CUDA graphs,
so that the profiler sees every kernel; the kernels are those its graph mode replays), in a child
process because FastMACE patches torch process-wide. Both are profiled over ``--calls``
evaluations (FastMACE: steps) after warm-up, with ``torch.profiler``; each kernel's device time
is summed by name and by family (tensor product, GEMM, Triton-fused, index/scatter, elementwise,
reduction, copy, other) and divided by the number of calls. For our module on CUDA a second
table charges each kernel to the operator that launched it (with its input shapes and the
autograd node it ran under, ``launcher_table``): what in the model asks for the time.

    python benchmarks/kernel_profile.py --atoms 1029 3000 --policy fp32 --fastmace \\
        -o benchmarks/results/kernel_profile_2026-12-02_h200.json

On a machine without CUDA (``--device cpu``) our module's CPU operators are tabulated instead (a
dry run of the script; FastMACE is skipped).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional


FASTMACE_CHILD = "fastmace-child"
WARMUP_CALLS = 5
# Kernel families by name (first match wins), for comparing two engines whose kernels differ.
# CUDA kernel names (e.g. ``void at::native::vectorized_elementwise_kernel<...>``) and, on the CPU,
# operator names (``aten::bmm``) both fall in.
FAMILIES = (
    ("tensor product (cuEquivariance)", r"uniform_1d|segmented|kernelcatcher|tensor_product|cuequivariance"),
    ("GEMM", r"gemm|sm90_xmma|cutlass|cublas|sgemm|matmul|wgmma|aten::(bmm|mm|addmm|linear)$"),
    ("Triton-fused", r"triton"),
    ("index/scatter/gather", r"index|scatter|gather|embedding"),
    ("reduction", r"reduce|aten::(sum|mean|amax|norm)$|softmax"),
    ("copy/fill", r"copy|memcpy|memset|fill|aten::(cat|stack|zeros|empty.*)$|CatArray"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise|"
                    r"aten::(mul|add|sub|div|neg|silu|sigmoid|pow|exp|sqrt|rsqrt|cos|sin|where|clamp|"
                    r"threshold_backward|silu_backward)_?$"),
)
OTHER = "other"


def family(name: str) -> str:
    for label, pattern in FAMILIES:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return label
    return OTHER


@dataclass
class KernelRow:
    name: str
    family: str
    ms_per_call: float
    launches_per_call: float


def _device_time_us(event, cuda: bool) -> float:
    if not cuda:
        return float(event.self_cpu_time_total)
    for attribute in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, attribute):
            return float(getattr(event, attribute))
    return 0.0


def kernel_table(profiler, calls: int, cuda: bool) -> List[KernelRow]:
    """Kernels (CUDA) or operators (CPU) by self time per call, largest first."""
    rows = []
    for event in profiler.key_averages():
        is_kernel = str(getattr(event, "device_type", "")).endswith("CUDA")
        if cuda != is_kernel:
            continue
        micros = _device_time_us(event, cuda)
        if micros <= 0:
            continue
        rows.append(KernelRow(event.key, family(event.key), micros / 1000.0 / calls, event.count / calls))
    return sorted(rows, key=lambda row: row.ms_per_call, reverse=True)


LAUNCH_WRAPPERS = re.compile(r"^(cuda|cu)[A-Z]|^Memcpy|^Memset|^<")


def launcher_table(profiler, calls: int, top: int) -> List[Dict[str, object]]:
    """Device time by the operator that launched it: the innermost aten/mace_lp op above the
    CUDA runtime call, its input shapes, and the autograd node it ran under (or "forward").
    Why: the kernel table says that copies and fills cost time; this says which step of the
    model (a slice's backward, a cat, a zero-initialised scatter) asks for them."""
    totals: Dict[tuple, List[float]] = {}
    for event in profiler.events():
        if not getattr(event, "kernels", None):
            continue
        op, phase, node = None, "forward", event
        while node is not None:
            name = node.name
            if op is None and not LAUNCH_WRAPPERS.search(name) and "::" in name:
                op = node
            if name.startswith("autograd::engine::evaluate_function: "):
                phase = name.split(": ", 1)[1]
            node = node.cpu_parent
        label = op.name if op is not None else event.name
        shapes = str(getattr(op, "input_shapes", "") or "")[:80] if op is not None else ""
        for kernel in event.kernels:
            key = (phase, label, shapes, family(kernel.name))
            entry = totals.setdefault(key, [0.0, 0.0])
            entry[0] += kernel.duration / 1000.0 / calls
            entry[1] += 1.0 / calls
    rows = [{"phase": k[0], "op": k[1], "input_shapes": k[2], "family": k[3], "ms_per_call": v[0],
             "launches_per_call": v[1]} for k, v in totals.items()]
    return sorted(rows, key=lambda row: -row["ms_per_call"])[:top]


def summary(rows: List[KernelRow], top: int) -> Dict[str, object]:
    total = sum(row.ms_per_call for row in rows)
    families: Dict[str, float] = {}
    for row in rows:
        families[row.family] = families.get(row.family, 0.0) + row.ms_per_call
    return {"total_ms_per_call": total, "launches_per_call": sum(row.launches_per_call for row in rows),
            "families_ms_per_call": dict(sorted(families.items(), key=lambda item: -item[1])),
            "top": [row.__dict__ for row in rows[:top]]}


def profile_calls(call, calls: int, cuda: bool):
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    for _ in range(WARMUP_CALLS):
        call()
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.profiler.profile(activities=activities, record_shapes=cuda) as profiler:
        for _ in range(calls):
            call()
        if cuda:
            torch.cuda.synchronize()
    return profiler, (time.perf_counter() - started) * 1000.0 / calls


def our_profile(model_path: str, structure, policy: str, backend: str, compiler: str, device: str, calls: int,
                top: int, neighbor_list: Optional[str] = None) -> Dict[str, object]:
    """The exported module's kernels for one energy+force call."""
    import torch

    from openmm_mace_lp.export import build_force_module
    from openmm_mace_lp.model_files import load_mace_model
    from openmm_mace_lp.neighbors import plan_capacity

    model = load_mace_model(model_path)
    numbers = [atom.element.atomic_number for atom in structure.topology.atoms()]
    capacity = plan_capacity(len(numbers), float(model.r_max), structure.box * 10.0, structure.positions * 10.0)
    module = build_force_module(model, policy, backend, numbers, periodic=True, device=device, capacity=capacity,
                                compiler=compiler, neighbor_list=neighbor_list)
    positions = torch.tensor(structure.positions, dtype=torch.float32, device=device)
    box = torch.tensor(structure.box, dtype=torch.float32, device=device)
    profiler, wall_ms = profile_calls(lambda: module(positions, box), calls, device == "cuda")
    result = {"engine": "ours", "policy": policy, "backend": backend, "compiler": compiler,
              "neighbor_list": neighbor_list or "default",
              "wall_ms_per_call": wall_ms, **summary(kernel_table(profiler, calls, device == "cuda"), top)}
    if device == "cuda":
        result["launchers"] = launcher_table(profiler, calls, 4 * top)
    return result


def fastmace_profile(directory: Path) -> Dict[str, object]:
    """In the child: FastMACE's compiled (graph-free) step, profiled like ours."""
    import fastmace  # before torch: FastMACE switches torch's file locks at import

    from openmm_mace_lp.bench import case_atoms, read_case

    case = read_case(directory)
    settings = json.loads((directory / "profile.json").read_text())
    model = fastmace.load(case.model_path, trusted=True)
    integrator = fastmace.integrators.Langevin(timestep_fs=case.dt_fs, temperature_K=case.temperature_K,
                                               friction_per_fs=case.friction_per_fs)
    simulation = fastmace.Simulation(case_atoms(case), model, integrator=integrator, seed=case.seed, mode="compiled")
    profiler, wall_ms = profile_calls(lambda: simulation.run(steps=1), settings["calls"], True)
    result = {"engine": "fastmace", "fastmace_version": fastmace.__version__, "mode": "compiled",
              "wall_ms_per_call": wall_ms, **summary(kernel_table(profiler, settings["calls"], True), settings["top"])}
    simulation.close()
    return result


def run_fastmace_child(model_path: str, structure, calls: int, top: int, timeout_s: float) -> Dict[str, object]:
    from openmm_mace_lp.bench import BenchSettings, fastmace_case, write_case

    settings = BenchSettings(atoms=[], policies=[], backends=[], graphs=[True], dt_fs=1.0, out=Path("unused"),
                             architecture="", device="cuda", anchor=False, seconds_per_row=1.0)
    with tempfile.TemporaryDirectory(prefix="kernel-profile-fastmace-") as tmp:
        directory = write_case(fastmace_case(model_path, structure, settings), Path(tmp))
        (directory / "profile.json").write_text(json.dumps({"calls": calls, "top": top}))
        child = subprocess.run([sys.executable, __file__, FASTMACE_CHILD, str(directory)], capture_output=True,
                               text=True, timeout=timeout_s)
        if child.returncode != 0:
            return {"engine": "fastmace", "error": (child.stderr or child.stdout)[-2000:]}
        return json.loads((directory / "result.json").read_text())


def markdown(record: dict) -> str:
    lines = [f"Card: {record['card']}; model {record['model']}; {record['calls']} calls profiled after "
             f"{WARMUP_CALLS} warm-up calls; ms are device time per call (CPU: operator self time)", ""]
    for size in record["sizes"]:
        lines.append(f"## {size['atoms']} atoms")
        engines = [e for e in size["engines"] if "error" not in e]
        lines += ["", "| family | " + " | ".join(_engine_label(e) for e in engines) + " |",
                  "| --- |" + " --- |" * len(engines)]
        names = sorted({f for e in engines for f in e["families_ms_per_call"]})
        for name in names:
            lines.append(f"| {name} | " + " | ".join(f"{e['families_ms_per_call'].get(name, 0.0):.3f}" for e in engines)
                         + " |")
        lines.append("| **total** | " + " | ".join(f"**{e['total_ms_per_call']:.3f}** ({e['launches_per_call']:.0f} "
                                                  f"launches)" for e in engines) + " |")
        for engine in engines:
            lines += ["", f"Top kernels, {_engine_label(engine)}:", "", "| ms/call | launches/call | family | kernel |",
                      "| --- | --- | --- | --- |"]
            lines += [f"| {row['ms_per_call']:.3f} | {row['launches_per_call']:.1f} | {row['family']} | "
                      f"`{row['name'][:110]}` |" for row in engine["top"]]
        for engine in engines:
            if engine.get("launchers"):
                lines += ["", f"Device time by launching operator, {_engine_label(engine)}:", "",
                          "| ms/call | launches/call | family | under | operator | input shapes |",
                          "| --- | --- | --- | --- | --- | --- |"]
                lines += [f"| {row['ms_per_call']:.3f} | {row['launches_per_call']:.1f} | {row['family']} | "
                          f"{row['phase']} | `{row['op']}` | `{row['input_shapes']}` |" for row in engine["launchers"]]
        for engine in size["engines"]:
            if "error" in engine:
                lines += ["", f"{engine['engine']}: failed: `{engine['error'].splitlines()[-1][:300]}`"]
        lines.append("")
    return "\n".join(lines)


def _engine_label(engine: dict) -> str:
    if engine["engine"] == "fastmace":
        return f"FastMACE {engine.get('fastmace_version', '')} ({engine.get('mode', '')})"
    listed = engine.get("neighbor_list", "default")
    return f"ours {engine['policy']} {engine['backend']} {engine['compiler']}" + ("" if listed == "default" else
                                                                                  f" {listed} list")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [FASTMACE_CHILD]:
        directory = Path(argv[1])
        (directory / "result.json").write_text(json.dumps(fastmace_profile(directory)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--atoms", type=int, nargs="+", default=[1029, 3000])
    parser.add_argument("--policy", default="fp32")
    parser.add_argument("--backend", default="cueq-fused")
    parser.add_argument("--compilers", default="torchscript", help="ours: torchscript and/or inductor")
    parser.add_argument("--neighbor-lists", default="default", help="ours: default, torchscript and/or native")
    parser.add_argument("--model", default=None, help="a MACE model file or 'default'; without it the "
                        "MACE-OFF24(M) architecture with random weights (as mace-lp bench)")
    parser.add_argument("--architecture", default="mace-off24-medium", choices=["mace-off24-medium", "tiny"])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--fastmace", action="store_true", help="profile FastMACE's step too (CUDA only)")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--fastmace-timeout-s", type=float, default=600.0)
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON path (a .md is written beside it)")
    args = parser.parse_args(argv)
    import torch

    from openmm_mace_lp.bench import card_name, random_bench_model, user_bench_model
    from openmm_mace_lp.systems.builders import load_water_box

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("torch sees no CUDA device here: pass --device cpu for a dry run")
    with tempfile.TemporaryDirectory(prefix="kernel-profile-") as tmp:
        model = user_bench_model(args.model) if args.model else random_bench_model(args.architecture, Path(tmp))
        record = {"card": card_name(args.device), "model": model.label, "calls": args.calls, "sizes": []}
        for atoms in args.atoms:
            structure = load_water_box(atoms)
            engines = [our_profile(model.path, structure, args.policy, args.backend, compiler, args.device,
                                   args.calls, args.top, None if listed == "default" else listed)
                       for compiler in args.compilers.split(",") for listed in args.neighbor_lists.split(",")]
            if args.fastmace and args.device == "cuda":
                engines.append(run_fastmace_child(model.path, structure, args.calls, args.top, args.fastmace_timeout_s))
            record["sizes"].append({"atoms": len(structure.positions), "engines": engines})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1))
    text = markdown(record)
    args.output.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
