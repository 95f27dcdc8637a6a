"""``mace-lp profile``: where one energy+force evaluation spends its time, block by block.

The model is the one the plug-in exports (policy and backend applied, ``export.prepare_model``),
run eagerly so that every block can be named: forward hooks open a profiler range per block
(embedding, radial basis, spherical harmonics, each interaction's up-projection, radial MLP,
tensor product, linear and skip, each product, each readout). Each profiler event's *self* time
goes to the innermost block range around it; the backward pass (MACE takes forces as
``-dE/dr`` with autograd, inside the same call) is attributed through autograd's sequence
numbers to the block whose forward op created it. Self times add up, so the table's rows sum to
the profiled total ("outside blocks": input handling, sums between blocks). GPU times are the
kernels' own; on a CPU-only machine the host columns are the only ones filled.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

RANGE_PREFIX = "mace-block::"
BACKWARD_PREFIX = "autograd::engine::evaluate_function:"
OUTSIDE = "outside blocks"
# Per interaction / product / readout, the sub-modules with their own rows (when present). The
# fused backend evaluates the radial MLP inside the tensor product (conv_tp.radial).
INTERACTION_PARTS = ("linear_up", "conv_tp_weights", "conv_tp", "conv_tp.radial", "linear", "skip_tp", "reshape")


@dataclass
class BlockTime:
    forward_host_ms: float = 0.0
    forward_gpu_ms: float = 0.0
    backward_host_ms: float = 0.0
    backward_gpu_ms: float = 0.0

    @property
    def gpu_ms(self) -> float:
        return self.forward_gpu_ms + self.backward_gpu_ms

    @property
    def host_ms(self) -> float:
        return self.forward_host_ms + self.backward_host_ms


def profiled_blocks(model) -> List[str]:
    """Names of the sub-modules that get a row, in the order of the forward pass."""
    names = dict(model.named_modules())
    blocks = [name for name in ("node_embedding", "radial_embedding", "spherical_harmonics") if name in names]
    for i in range(len(model.interactions)):
        blocks.append(f"interactions.{i}")
        blocks += [f"interactions.{i}.{part}" for part in INTERACTION_PARTS if f"interactions.{i}.{part}" in names]
        blocks += [f"products.{i}", f"readouts.{i}"]
    return blocks


def _attach_ranges(model, blocks: List[str]) -> list:
    import torch

    handles = []
    modules = dict(model.named_modules())
    for name in blocks:
        module = modules[name]
        opened: list = []

        def enter(_module, _inputs, label=RANGE_PREFIX + name, opened=opened):
            scope = torch.profiler.record_function(label)
            scope.__enter__()
            opened.append(scope)

        def leave(_module, _inputs, _output, opened=opened):
            opened.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


def _self_device_us(event) -> float:
    return float(getattr(event, "self_device_time_total", 0.0) or 0.0)


def attribute(events) -> Dict[str, BlockTime]:
    """Self times of profiler events, summed per block (see the module docstring)."""
    ranges: Dict[int, List[Tuple[float, float, str]]] = defaultdict(list)
    for event in events:
        if event.name.startswith(RANGE_PREFIX):
            ranges[event.thread].append((event.time_range.start, event.time_range.end, event.name[len(RANGE_PREFIX):]))

    def innermost(event) -> Optional[str]:
        best = None
        for start, end, name in ranges.get(event.thread, ()):
            if start <= event.time_range.start and event.time_range.end <= end:
                if best is None or (end - start) < best[0]:
                    best = (end - start, name)
        return None if best is None else best[1]

    def backward_root(event):
        node = event
        while node is not None:
            if node.name.startswith(BACKWARD_PREFIX):
                return node
            node = node.cpu_parent
        return None

    block_of_sequence: Dict[int, str] = {}
    forward_block: Dict[int, Optional[str]] = {}
    for event in events:
        if event.name.startswith(RANGE_PREFIX) or backward_root(event) is not None:
            continue
        block = innermost(event)
        forward_block[id(event)] = block
        if block is not None and getattr(event, "sequence_nr", -1) >= 0:
            block_of_sequence.setdefault(event.sequence_nr, block)
    times: Dict[str, BlockTime] = defaultdict(BlockTime)
    for event in events:
        if event.name.startswith(RANGE_PREFIX):
            continue
        root = backward_root(event)
        host_ms, gpu_ms = event.self_cpu_time_total / 1000.0, _self_device_us(event) / 1000.0
        if root is None:
            row = times[forward_block.get(id(event)) or OUTSIDE]
            row.forward_host_ms += host_ms
            row.forward_gpu_ms += gpu_ms
        else:
            row = times[block_of_sequence.get(root.sequence_nr, OUTSIDE)]
            row.backward_host_ms += host_ms
            row.backward_gpu_ms += gpu_ms
    return dict(times)


def profile_model(model, data: dict, device: str, repeats: int = 3) -> Dict[str, BlockTime]:
    """Mean per-block times of ``repeats`` energy+force calls (after one warm-up call)."""
    import torch

    from .upstream import quiet_profiler

    quiet_profiler()
    blocks = profiled_blocks(model)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    model(dict(data), compute_force=True)
    handles = _attach_ranges(model, blocks)
    try:
        with torch.profiler.profile(activities=activities) as profile:
            for _ in range(repeats):
                model(dict(data), compute_force=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
    finally:
        for handle in handles:
            handle.remove()
    totals = attribute(profile.events())
    for row in totals.values():
        for key in ("forward_host_ms", "forward_gpu_ms", "backward_host_ms", "backward_gpu_ms"):
            setattr(row, key, getattr(row, key) / repeats)
    order = {name: k for k, name in enumerate(blocks + [OUTSIDE])}
    return dict(sorted(totals.items(), key=lambda item: order.get(item[0], len(order))))


def _table_row(name: str, row: BlockTime, total_gpu: float, total_host: float) -> str:
    gpu_share = f"{row.gpu_ms / total_gpu:.1%}" if total_gpu > 0 else ""
    host_share = f"{row.host_ms / total_host:.1%}" if total_host > 0 else ""
    return (f"| {name} | {row.forward_host_ms:.3f} | {row.forward_gpu_ms:.3f} | {row.backward_host_ms:.3f} | "
            f"{row.backward_gpu_ms:.3f} | {gpu_share} | {host_share} |")


def markdown_table(times: Dict[str, BlockTime], header: str) -> str:
    """One row per block and a total row whose every column is the sum of the column above."""
    total = BlockTime(*(sum(getattr(row, key) for row in times.values())
                        for key in ("forward_host_ms", "forward_gpu_ms", "backward_host_ms", "backward_gpu_ms")))
    lines = [header, "", "| block | forward host ms | forward GPU ms | backward host ms | backward GPU ms | "
             "share of GPU time | share of host time |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [_table_row(name, row, total.gpu_ms, total.host_ms) for name, row in times.items()]
    lines.append(_table_row("**total**", total, total.gpu_ms, total.host_ms))
    return "\n".join(lines) + "\n"


def bar_chart(times: Dict[str, BlockTime], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import atomic_path

    use_gpu = sum(row.gpu_ms for row in times.values()) > 0
    names = list(times)
    forward = [times[n].forward_gpu_ms if use_gpu else times[n].forward_host_ms for n in names]
    backward = [times[n].backward_gpu_ms if use_gpu else times[n].backward_host_ms for n in names]
    figure, axis = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    axis.barh(names, forward, label="forward")
    axis.barh(names, backward, left=forward, label="backward (forces)")
    axis.invert_yaxis()
    axis.set_xlabel(("GPU kernel" if use_gpu else "host") + " time per call (ms)")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


def register(subparsers) -> None:
    parser = subparsers.add_parser("profile", help="per-block time of one energy+force evaluation",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default",
                        help="a MACE .model file, 'default' (embedded water model) or 'mace-off24-medium' "
                             "(that architecture with random weights)")
    parser.add_argument("--atoms", type=int, default=1029, help="water box size (1 g/cm3)")
    parser.add_argument("--policy", default="fp32")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-o", "--output", required=True, help="directory for profile.{json,md,png}")
    parser.set_defaults(func=_run_command)


def _run_command(args) -> int:
    import torch

    from .atomic import atomic_write_text
    from .backend import resolve_backend
    from .bench import card_name, eager_inputs
    from .export import prepare_model
    from .model_files import default_model_path, load_mace_model
    from .policy import get_policy
    from .systems.architectures import MACE_OFF24_MEDIUM, build_mace
    from .systems.builders import load_water_box
    from .upstream import import_mace

    import_mace()
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: use at least 1.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = get_policy(args.policy)
    backend = resolve_backend(args.backend, torch.device(device))
    if args.model == "mace-off24-medium":
        model = build_mace(MACE_OFF24_MEDIUM, seed=0, dtype="float64")
    else:
        model = load_mace_model(default_model_path() if args.model == "default" else args.model)
    prepared, _ = prepare_model(model, policy, backend)
    prepared = prepared.to(device)
    structure = load_water_box(args.atoms)
    numbers = [a.element.atomic_number for a in structure.topology.atoms()]
    data = eager_inputs(prepared, numbers, structure.positions, structure.box, device, policy.model_dtype)
    times = profile_model(prepared, data, device, args.repeats)
    out = Path(args.output)
    header = (f"Card: {card_name(device) if device.startswith('cuda') else 'cpu'}; model {args.model}; "
              f"{len(numbers)} atoms of water; policy {args.policy}; backend {backend}; mean of {args.repeats} "
              f"eager energy+force calls (edges from mace's own neighbour list, not timed)")
    table = markdown_table(times, header)
    record = {"card": card_name(device) if device.startswith("cuda") else "cpu", "model": args.model,
              "atoms": len(numbers), "policy": args.policy, "backend": backend, "repeats": args.repeats,
              "blocks": {name: {**row.__dict__, "gpu_ms": row.gpu_ms, "host_ms": row.host_ms}
                         for name, row in times.items()}}
    atomic_write_text(out / "profile.json", json.dumps(record, indent=1))
    atomic_write_text(out / "profile.md", table)
    bar_chart(times, out / "profile.png", f"{args.model}, {len(numbers)} atoms, {args.policy}/{backend}")
    print(table)
    return 0
