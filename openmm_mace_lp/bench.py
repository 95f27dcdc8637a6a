"""``mace-lp bench``: MD speed of every backend x policy through OpenMM, against anchors in the same run.

For each water box (1 g/cm3) and each backend x policy x CUDA-graph setting it builds the force
through ``MLPotential("mace-lp", ...)`` on OpenMM's CUDA platform (mixed precision) and records:

- ``ms_per_step`` / ``ns_per_day``: LangevinMiddle MD steps (median of timed blocks;
  ``ms_per_step_spread`` is their interquartile range over the median). The timed trajectory
  must end finite and, for a fixed-capacity list, within its capacities (``end_edges`` of
  ``edge_capacity``), or the row is recorded as failed;
- ``gpu_kernel_ms``: the summed GPU kernel time of one energy+force call of the same exported
  module (torch profiler), i.e. what the step would cost with no host overhead at all;
- ``module_replay_ms``: that module captured in a CUDA graph by us in Python and replayed (the
  "own capture" alternative to openmm-torch's ``useCUDAGraphs``; TorchScript itself cannot
  capture, so inside OpenMM only openmm-torch's capture is available);
- ``peak_gib``: the most memory torch held during the row (``max_memory_reserved``: tensors, the
  allocator's cache and openmm-torch's CUDA-graph pool), ``peak_allocated_gib`` (tensors alone)
  and ``device_used_gib`` (the whole card in use at the end of the timed steps, OpenMM's own
  buffers included);
- ``first_call_s`` (export + context + openmm-torch's warm-up and capture);
- ``force_rel_err_vs_fp64_eager``: the forces of a call made after the timed steps (with CUDA
  graphs: a replay of the captured step) at the starting positions, against mace-torch's eager
  float64 model at the positions OpenMM holds (its state, wrapped into the box and, on the CUDA
  platform, rounded to float32 as the TorchForce receives them). A box above ~3300 atoms is
  built as k x k x k copies of a box of at most 3000 atoms, and the small box's reference forces,
  tiled, are the reference by periodicity (then only to the float32 rounding of the copies);
- the anchors measured in the same run: openmm-ml 1.8's ``MLPotential("mace")`` (PythonForce) with
  the same model (``anchor_ms_per_step``, ``speedup_vs_anchor``; timed over at least
  ``anchor_min_steps`` steps), mace-torch's eager fp32 model call without neighbour list
  (``eager_mace_ms``) and the same model converted to cuEquivariance, eager
  (``eager_cueq_mace_ms``).

The model is the MACE-OFF24(M) architecture with seeded random weights (``systems``); speed does
not depend on the weights. Rows are written after each measurement, so a cut-off run keeps them.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

DEFAULT_POLICIES = ("fp64", "fp32", "tf32", "bf16", "fp16")


@dataclass
class BenchSettings:
    atoms: List[int]
    policies: List[str]
    backends: List[str]
    graphs: List[bool]
    dt_fs: float
    out: Path
    architecture: str
    device: str
    anchor: bool
    seconds_per_row: float
    # The openmm-ml anchor (e3nn, ~6 MB/atom) only up to this size.
    reference_max_atoms: int = 10000
    # Bigger boxes are tiled copies of a box of at most this size, whose fp64 eager reference
    # (e3nn, ~12 MB/atom: 10k atoms do not fit an 80 GB card), tiled, checks them.
    tile_above_atoms: int = 3000
    # The anchor (85-250 ms/step on an H200) is timed over at least this many steps, in at
    # least ``min_blocks`` blocks, so that its median is stable.
    anchor_min_steps: int = 100
    min_blocks: int = 10
    # Calls per eager-anchor timing (median).
    eager_repeats: int = 10


def card_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke run)"


def eager_inputs(model, numbers, positions_nm: np.ndarray, box_nm: np.ndarray, device: str, dtype):
    """mace-torch's own input dictionary (matscipy neighbour list) for a periodic structure, at
    exactly these positions (float64; round them first to compare with a float32 input)."""
    import torch

    from .upstream import import_mace

    import_mace()
    from mace.data.neighborhood import get_neighborhood
    from mace.tools import atomic_numbers_to_indices, to_one_hot, utils

    table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    attrs = to_one_hot(torch.tensor(atomic_numbers_to_indices(numbers, z_table=table)).unsqueeze(-1), len(table))
    pos = np.asarray(positions_nm, dtype=np.float64) * 10.0
    cell = np.asarray(box_nm, dtype=np.float64) * 10.0
    edges, shifts, _, _ = get_neighborhood(pos, float(model.r_max), [True] * 3, cell)
    return {
        "positions": torch.tensor(pos, device=device, dtype=dtype),
        "node_attrs": attrs.to(device=device, dtype=dtype),
        "edge_index": torch.tensor(edges, dtype=torch.long, device=device),
        "shifts": torch.tensor(shifts, device=device, dtype=dtype),
        "batch": torch.zeros(len(numbers), dtype=torch.long, device=device),
        "ptr": torch.tensor([0, len(numbers)], device=device),
        "cell": torch.tensor(cell, device=device, dtype=dtype),
    }


def eager_reference(model_path: str, numbers, positions_nm, box_nm, device: str, copies: int = 1,
                    float32_positions: bool = True) -> Dict[str, object]:
    """fp64 eager forces (kJ/mol/nm) at ``positions_nm``, rounded to float32 first when the force
    under test receives float32 positions.

    ``copies`` > 1: the structure is the base of a box tiled that many times per axis
    (``tile_periodic``); the forces are tiled to match."""
    import torch

    from .export import EV_TO_KJ_PER_MOL
    from .model_files import load_mace_model

    # Load on the CPU, then move: e3nn rebuilds some constants on unpickling (on the CPU).
    model = load_mace_model(model_path).to(device).double()
    positions_nm = np.asarray(positions_nm, dtype=np.float64)
    if float32_positions:
        positions_nm = positions_nm.astype(np.float32).astype(np.float64)
    data = eager_inputs(model, numbers, positions_nm, box_nm, device, torch.float64)
    forces = model(data, compute_force=True)["forces"].detach().cpu().numpy() * EV_TO_KJ_PER_MOL * 10.0
    if copies > 1:
        return {"forces": np.tile(forces, (copies**3, 1)), "tiled_from_atoms": len(numbers)}
    return {"forces": forces}


def eager_timings(model_path: str, numbers, positions_nm, box_nm, device: str, repeats: int = 10) -> Dict[str, object]:
    """The eager anchors: mace-torch's fp32 model call (neighbour list excluded) as trained (e3nn)
    and converted to cuEquivariance by mace's converter, in ms; and the cuEq model's force error
    against the e3nn model at float64."""
    import torch

    from .backend import convert_to_cueq
    from .model_files import load_mace_model

    source = load_mace_model(model_path)
    model = copy.deepcopy(source).to(device).float()
    data = eager_inputs(model, numbers, np.asarray(positions_nm, dtype=np.float64), box_nm, device, torch.float32)
    result: Dict[str, object] = {"eager_ms": median_ms(lambda: model(dict(data), compute_force=True), device, repeats)}
    reference = model(dict(data), compute_force=True)["forces"].detach().double().cpu().numpy()
    del model
    try:
        cueq = convert_to_cueq(copy.deepcopy(source).float()).to(device)
    except Exception as error:  # noqa: BLE001 - the anchor is optional: record why it is missing
        result.update(eager_cueq_ms=float("nan"), eager_cueq_error=f"{type(error).__name__}: {error}"[:300])
        return result
    forces = cueq(dict(data), compute_force=True)["forces"].detach().double().cpu().numpy()
    result.update(eager_cueq_ms=median_ms(lambda: cueq(dict(data), compute_force=True), device, repeats),
                  eager_cueq_vs_e3nn_fp32_rel_diff=force_error(forces, {"forces": reference}))
    return result


def median_ms(call: Callable[[], object], device: str, repeats: int = 20) -> float:
    import torch

    call()
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def time_md_steps(context, integrator, seconds: float, min_steps: int = 0, min_blocks: int = 3) -> Dict[str, float]:
    """Median ms/step over blocks of steps, each ended by a positions read (a device sync).

    At least ``min_blocks`` blocks and ``min_steps`` steps, else as many as fit ``seconds``."""
    integrator.step(5)
    context.getState(getPositions=True)
    start = time.perf_counter()
    integrator.step(5)
    context.getState(getPositions=True)
    per_step = (time.perf_counter() - start) / 5
    block = max(5, min(200, int(0.5 / max(per_step, 1e-5))))
    n_blocks = max(min_blocks, int(seconds / (per_step * block)) + 1, -(-min_steps // block))
    samples = []
    for _ in range(n_blocks):
        start = time.perf_counter()
        integrator.step(block)
        context.getState(getPositions=True)
        samples.append((time.perf_counter() - start) / block * 1000)
    median = statistics.median(samples)
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [median, median, median]
    return {"ms_per_step": median, "steps_timed": n_blocks * block, "blocks_timed": n_blocks,
            "ms_per_step_spread": (quartiles[2] - quartiles[0]) / median}


def end_of_trajectory(context, system) -> Dict[str, object]:
    """Where the timed steps ended: finite, and inside the fixed capacities (else an error).

    An overflowing step has NaN forces, which make the positions NaN from then on, so a
    finite end shows that no step overflowed; the capacities are checked at the end as well.
    """
    import openmm.unit as unit

    from .capacity import watches_for

    state = context.getState(getPositions=True, getEnergy=True)
    positions = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    if not (np.isfinite(positions).all() and np.isfinite(energy)):
        raise RuntimeError("the timed trajectory went non-finite (energy %r): its timing is not of a valid run"
                           % energy)
    box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer))
    result: Dict[str, object] = {"end_energy_kJ_mol": energy}
    for watch in watches_for(system):
        use = watch.use(positions, box if system.usesPeriodicBoundaryConditions() else None)
        if use.exceeded:
            raise RuntimeError(f"the timed trajectory ended outside the neighbour-list capacities ({use}): "
                               "its timing is not of a valid run")
        result.update(end_edges=use.edges, edge_capacity=use.edge_capacity)
    return result


def run_md(system, structure, settings: BenchSettings, started: float, min_steps: int = 0) -> Dict[str, object]:
    """First-call time (12 calls: openmm-torch warms up 10, then captures), ms/step, the end of
    the trajectory, memory, and the forces of a call after the timed steps at the start positions
    (a replay of the captured step) with the positions OpenMM holds then."""
    import openmm
    import openmm.unit as unit
    import torch

    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, settings.dt_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(1)
    if settings.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        platform, properties = openmm.Platform.getPlatformByName("CUDA"), {"Precision": "mixed"}
    else:
        platform, properties = openmm.Platform.getPlatformByName("CPU"), {}
    context = openmm.Context(system, integrator, platform, properties)
    context.setPeriodicBoxVectors(*structure.box)
    context.setPositions(structure.positions)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    integrator.step(12)
    context.getState(getPositions=True)
    first_call_s = time.perf_counter() - started
    result: Dict[str, object] = {"first_call_s": first_call_s}
    result.update(time_md_steps(context, integrator, settings.seconds_per_row, min_steps, settings.min_blocks))
    result.update(end_of_trajectory(context, system))
    if settings.device == "cuda":
        free, total = torch.cuda.mem_get_info()
        result.update(peak_gib=torch.cuda.max_memory_reserved() / 2**30,
                      peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                      device_used_gib=(total - free) / 2**30)
    else:
        result.update(peak_gib=float("nan"), peak_allocated_gib=float("nan"), device_used_gib=float("nan"))
    context.setPeriodicBoxVectors(*structure.box)
    context.setPositions(structure.positions)
    state = context.getState(getForces=True, getEnergy=True, getPositions=True, enforcePeriodicBox=True)
    result["forces"] = np.asarray(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    result["held_positions_nm"] = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    result["energy_kJ_mol"] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    del context, integrator
    return result


def exported_module_path(system) -> str:
    """The module file behind the row's TorchForce, read from the force itself."""
    from .capacity import torch_forces

    (force,) = list(torch_forces(system))
    return force.getFile()


def module_timings(module_path: str, structure, device: str) -> Dict[str, float]:
    """Summed GPU kernel time of one call (profiler) and CUDA-graph replay time of the module."""
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()  # what the OpenMM context left cached
    module = torch.jit.load(module_path, map_location=device)
    pos = torch.tensor(structure.positions, device=device, dtype=torch.float32)
    box = torch.tensor(structure.box, device=device, dtype=torch.float32)
    if device != "cuda":
        return {"gpu_kernel_ms": float("nan"), "module_replay_ms": float("nan")}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            module(pos, box)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    calls = 5
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        for _ in range(calls):
            module(pos, box)
        torch.cuda.synchronize()
    kernel_us = sum(event.self_device_time_total for event in profile.key_averages())
    result = {"gpu_kernel_ms": kernel_us / calls / 1000.0, "module_replay_ms": float("nan")}
    if bool(module.padded):
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                module(pos, box)
            result["module_replay_ms"] = median_ms(graph.replay, device)
            del graph
        except torch.cuda.OutOfMemoryError:
            # A captured graph allocates from its own pool on top of the memory the uncaptured
            # calls left cached: the biggest boxes fit without the capture only.
            result["module_replay_ms"] = float("nan")
    stats = module.neighbor_stats(pos, box).tolist()
    result.update(edges=int(stats[0]), edge_capacity=int(stats[1]))
    del module
    torch.cuda.empty_cache()
    return result


def force_error(forces: np.ndarray, reference: Optional[Dict[str, object]]) -> float:
    if reference is None:
        return float("nan")
    expected = reference["forces"]
    return float(np.linalg.norm(forces - expected) / np.linalg.norm(expected))


class References:
    """The fp64 eager reference of one box, at the positions OpenMM holds in each row, and the
    eager anchors' times (once per box).

    Rows of one box start from the same positions, so OpenMM holds the same ones and the
    reference is computed once per distinct array (per platform rounding)."""

    def __init__(self, model_path: str, base, copies: int, device: str, repeats: int = 10) -> None:
        self.model_path, self.base, self.copies, self.device, self.repeats = model_path, base, copies, device, repeats
        self.numbers = [a.element.atomic_number for a in base.topology.atoms()]
        self._computed: Dict[bytes, Dict[str, object]] = {}
        self.timings: Dict[str, object] = {}
        self.failed = False  # the first computation failed (recorded as such): rows go without

    def first(self) -> Dict[str, object]:
        """The reference at the box's own positions and the anchors' times; a failure is
        remembered, then re-raised."""
        try:
            reference = self.at(None)
            if self.copies == 1:
                self.timings = eager_timings(self.model_path, self.numbers, self.base.positions, self.base.box,
                                             self.device, self.repeats)
            return {**reference, **self.timings}
        except Exception:
            self.failed = True
            raise

    def at(self, held_positions_nm: Optional[np.ndarray]) -> Optional[Dict[str, object]]:
        """The reference at the positions a row's force saw (tiled boxes: at the base box's)."""
        if self.failed:
            return None
        float32 = self.device == "cuda"  # OpenMM's CUDA platform hands the TorchForce float32
        positions = self.base.positions if self.copies > 1 or held_positions_nm is None else held_positions_nm
        positions = np.asarray(positions, dtype=np.float64)
        key = (positions.astype(np.float32) if float32 else positions).tobytes()
        if key not in self._computed:
            self._computed[key] = eager_reference(self.model_path, self.numbers, positions, self.base.box,
                                                  self.device, self.copies, float32)
        return {**self._computed[key], **self.timings}


def _eager_columns(reference: Optional[Dict[str, object]]) -> Dict[str, float]:
    """The eager anchors' times of a box (NaN without a reference)."""
    reference = reference or {}
    return {"eager_mace_ms": reference.get("eager_ms", float("nan")),
            "eager_cueq_mace_ms": reference.get("eager_cueq_ms", float("nan"))}


def bench_row(settings: BenchSettings, model_path: str, structure, backend: str, policy: str, graphs: bool,
              references: References, anchor: Optional[Dict[str, object]]) -> Dict[str, object]:
    from openmmml import MLPotential

    numbers = [a.element.atomic_number for a in structure.topology.atoms()]
    row: Dict[str, object] = {"atoms": len(numbers), "backend": backend, "policy": policy, "cuda_graphs": graphs}
    started = time.perf_counter()
    potential = MLPotential("mace-lp", modelPath=model_path, policy=policy, backend=backend)
    system = potential.createSystem(structure.topology, device=settings.device, cudaGraphs=graphs,
                                    positions=structure.positions)
    result = run_md(system, structure, settings, started)
    forces = result.pop("forces")
    reference = references.at(result.pop("held_positions_nm"))
    row.update(result)
    row["force_rel_err_vs_fp64_eager"] = force_error(forces, reference)
    row["ns_per_day"] = settings.dt_fs * 1e-6 * 86400 / (row["ms_per_step"] / 1000)
    if settings.device == "cuda":
        row.update(module_timings(exported_module_path(system), structure, settings.device))
    row.update(_eager_columns(reference))
    if reference is not None and "tiled_from_atoms" in reference:
        row["reference_tiled_from_atoms"] = reference["tiled_from_atoms"]
    if anchor is not None:
        row["anchor_ms_per_step"] = anchor["ms_per_step"]
        row["speedup_vs_anchor"] = anchor["ms_per_step"] / row["ms_per_step"]
    return row


def anchor_row(settings: BenchSettings, model_path: str, structure, references: References) -> Dict[str, object]:
    """openmm-ml 1.8's own MACE (PythonForce, matscipy on the CPU), single precision."""
    from openmmml import MLPotential

    from .upstream import mace_load_switch

    started = time.perf_counter()
    # openmm-ml 1.8 unpickles modelPath with a bare torch.load, which needs mace's process-wide
    # switch; this file was written by the benchmark itself a moment ago.
    with mace_load_switch():
        system = MLPotential("mace", modelPath=model_path).createSystem(structure.topology, precision="single")
    result = run_md(system, structure, settings, started, min_steps=settings.anchor_min_steps)
    forces = result.pop("forces")
    reference = references.at(result.pop("held_positions_nm"))
    return {"atoms": structure.positions.shape[0], "backend": "openmm-ml-1.8", "policy": "single",
            "cuda_graphs": False, **result, **_eager_columns(reference),
            "ns_per_day": settings.dt_fs * 1e-6 * 86400 / (result["ms_per_step"] / 1000),
            "force_rel_err_vs_fp64_eager": force_error(forces, reference)}


def run_bench(settings: BenchSettings) -> dict:
    import openmm
    import torch

    from .backend import cueq_kernels_available
    from .export import library_versions
    from .systems.architectures import MACE_OFF24_MEDIUM, TINY, build_mace, save_model
    from .systems.builders import load_water_box, tiled_water_box
    from .upstream import import_mace

    import_mace()
    workdir = Path(tempfile.mkdtemp(prefix="mace-lp-bench-"))
    # A fresh export cache: first_call_s includes the export, as for a new user.
    os.environ["OPENMM_MACE_LP_CACHE"] = str(workdir / "cache")
    architecture = {"mace-off24-medium": MACE_OFF24_MEDIUM, "tiny": TINY}[settings.architecture]
    model_path = str(workdir / f"{settings.architecture}-random.model")
    save_model(build_mace(architecture, seed=0, dtype="float64"), model_path)
    report = {"card": card_name(settings.device), "driver": torch.version.cuda,
              "versions": {**library_versions(), "openmm": openmm.__version__},
              "cueq_kernels": cueq_kernels_available(),
              "model": f"{settings.architecture} architecture, random weights (seed 0)",
              "dt_fs": settings.dt_fs,
              "integrator": "LangevinMiddle 300 K, OpenMM CUDA platform, mixed precision", "rows": []}
    for n_atoms in settings.atoms:
        # Boxes too big for the eager float64 reference are copies of a small box, whose
        # reference, tiled, is exact for them (periodicity).
        if n_atoms > settings.tile_above_atoms * 1.1:
            structure, base, copies = tiled_water_box(n_atoms, settings.tile_above_atoms)
        else:
            structure = base = load_water_box(n_atoms)
            copies = 1
        numbers = [a.element.atomic_number for a in structure.topology.atoms()]
        references = References(model_path, base, copies, settings.device, settings.eager_repeats)
        _recorded(report, settings, lambda: {"atoms": len(numbers), "backend": "eager-mace-fp64", **references.first()},
                  {"atoms": len(numbers), "backend": "eager-mace-fp64"}, keep=False)
        anchor = None
        if settings.anchor and len(numbers) <= settings.reference_max_atoms:
            anchor = _recorded(report, settings, lambda: anchor_row(settings, model_path, structure, references),
                               {"atoms": len(numbers), "backend": "openmm-ml-1.8", "policy": "single"})
        for backend in settings.backends:
            for policy in settings.policies:
                for graphs in settings.graphs:
                    _recorded(report, settings,
                              lambda: bench_row(settings, model_path, structure, backend, policy, graphs, references,
                                                anchor),
                              {"atoms": len(numbers), "backend": backend, "policy": policy, "cuda_graphs": graphs})
    return report


def _recorded(report: dict, settings: BenchSettings, measure: Callable[[], dict], label: dict,
              keep: bool = True) -> Optional[dict]:
    """Run one measurement; record its row (or its error) and rewrite the results.

    ``keep=False``: a successful result is returned but not tabulated (the eager reference).
    """
    import torch

    try:
        row = measure()
    except Exception:  # noqa: BLE001 - one failed row must not lose the others
        row = {**label, "error": traceback.format_exc()[-3000:]}
    if settings.device == "cuda":
        # Memory cached by one measurement (e.g. the eager reference) must not crowd the next.
        torch.cuda.empty_cache()
    if not keep and "error" not in row:
        return row
    report["rows"].append(row)
    print(format_row(row), flush=True)
    write_report(report, settings.out)
    return None if "error" in row else row


def format_row(row: dict) -> str:
    head = f"[{row['atoms']} atoms] {row['backend']:13s} {row.get('policy', ''):6s} graphs={row.get('cuda_graphs', '')!s:5s}"
    if "error" in row:
        return f"{head} FAILED\n{row['error']}"
    return (f"{head} {row['ms_per_step']:8.2f} ms/step  kernels {row.get('gpu_kernel_ms', float('nan')):7.2f} ms  "
            f"x{row.get('speedup_vs_anchor', 1.0):5.2f}  err {row['force_rel_err_vs_fp64_eager']:.1e}  "
            f"first {row['first_call_s']:.1f} s  peak {row['peak_gib']:.2f} GiB")


def write_report(report: dict, out: Path) -> str:
    from .atomic import atomic_write_text

    table = markdown_table(report)
    atomic_write_text(out, json.dumps(report, indent=1))
    atomic_write_text(out.with_suffix(".md"), table)
    return table


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return format(value, fmt)


def _tiled(row: dict) -> str:
    base = row.get("reference_tiled_from_atoms")
    return "" if base is None else f" (tiled {base})"


def _eager_cells(row: dict) -> str:
    e3nn, cueq = _cell(row, "eager_mace_ms", ".2f"), _cell(row, "eager_cueq_mace_ms", ".2f")
    return f"{e3nn} / {cueq}" if e3nn or cueq else ""


def markdown_table(report: dict) -> str:
    lines = [f"Card: {report['card']} (CUDA {report['driver']}); {report['model']}; {report['integrator']}, "
             f"{report['dt_fs']} fs; cuEq kernels: {report['cueq_kernels']}", "",
             *([report["note"], ""] if report.get("note") else []),
             "| atoms | backend | policy | CUDA graph | ms/step | ns/day | GPU kernel ms | own-capture replay ms | "
             "step / kernel | speed-up vs anchor | eager mace ms (e3nn / cuEq) | force rel. err vs fp64 eager | "
             "first call s | peak GiB (torch reserved) | MiB/atom |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['atoms']} | {row['backend']} | {row.get('policy', '')} | "
                         f"{row.get('cuda_graphs', '')} | failed: {row['error'].strip().splitlines()[-1][:80]} "
                         "| | | | | | | | | | |")
            continue
        ratio = row["ms_per_step"] / row["gpu_kernel_ms"] if row.get("gpu_kernel_ms") else None
        mb_per_atom = row["peak_gib"] * 1024 / row["atoms"] if row.get("peak_gib") == row.get("peak_gib") else None
        lines.append(
            f"| {row['atoms']} | {row['backend']} | {row['policy']} | {'yes' if row.get('cuda_graphs') else 'no'} | "
            f"{row['ms_per_step']:.2f} | {row['ns_per_day']:.3f} | {_cell(row, 'gpu_kernel_ms', '.2f')} | "
            f"{_cell(row, 'module_replay_ms', '.2f')} | {'' if ratio is None else format(ratio, '.2f')} | "
            f"{_cell(row, 'speedup_vs_anchor', '.2f')} | {_eager_cells(row)} | "
            f"{row['force_rel_err_vs_fp64_eager']:.2e}{_tiled(row)} | "
            f"{row['first_call_s']:.1f} | {row['peak_gib']:.2f} | {'' if mb_per_atom is None else format(mb_per_atom, '.2f')} |")
    return "\n".join(lines) + "\n"


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="MD speed per backend x policy against openmm-ml 1.8, on the GPU",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, nargs="+", default=[1029, 3000, 10000, 30000])
    parser.add_argument("--policies", default=",".join(DEFAULT_POLICIES))
    parser.add_argument("--backends", default="cueq-fused,cueq",
                        help="comma-separated: cueq-fused (what auto picks), cueq, e3nn")
    parser.add_argument("--graphs", default="on,off", help="CUDA-graph settings to measure: on, off or on,off")
    parser.add_argument("--dt-fs", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed MD seconds per row")
    parser.add_argument("--no-anchor", action="store_true", help="skip openmm-ml 1.8's MACE")
    parser.add_argument("--architecture", default="mace-off24-medium", choices=["mace-off24-medium", "tiny"])
    parser.add_argument("-o", "--out", default="benchmarks/results/bench.json")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU dry run with the tiny model (checks the harness; the numbers mean nothing)")
    parser.set_defaults(func=_run_command)


def _run_command(args) -> int:
    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("mace-lp bench measures the CUDA platform and torch sees no GPU here; "
                           "use --smoke for a CPU dry run of the harness.")
    graphs = {"on": [True], "off": [False], "on,off": [True, False], "off,on": [False, True]}.get(args.graphs)
    if graphs is None:
        raise ValueError(f"--graphs {args.graphs!r}: use on, off or on,off.")
    if device == "cpu":
        graphs = [False]  # CUDA graphs need CUDA
    settings = BenchSettings(atoms=args.atoms, policies=args.policies.split(","), backends=args.backends.split(","),
                             graphs=graphs, dt_fs=args.dt_fs, out=Path(args.out),
                             architecture="tiny" if args.smoke else args.architecture, device=device,
                             anchor=not args.no_anchor, seconds_per_row=0.5 if args.smoke else args.seconds)
    if args.smoke:  # the harness, not the numbers: a short anchor
        settings.anchor_min_steps, settings.min_blocks, settings.eager_repeats = 10, 3, 2
    print(write_report(run_bench(settings), settings.out))
    return 0
