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

- ``neighbor_list``: the list the row's export built (``--neighbor-lists``: ``default`` is the
  export's choice for the device, ``native`` this package's ``mace_lp::cell_list``, ``torchscript``
  the TorchScript cell list; a named list is always the fixed-capacity one, so the two are timed
  like for like). The native CUDA kernel becomes the CUDA default only once a row shows it no
  slower.
- ``compiler``: how the model runs inside the exported module (``--compilers``): ``torchscript``,
  or ``inductor``, its energy and forces compiled ahead of time by AOTInductor (``compiled.py``;
  ``first_call_s`` then includes the compile, unless the export was already in the cache).
- FastMACE's own NVT MD (``--fastmace``, on by default when ``import fastmace`` works and the run
  is on a CUDA device; ``--no-fastmace`` skips it; ``--smoke --fastmace`` runs its CPU plan as a
  dry run of the harness) on the same model file and the same box: its
  default plan (float32, its CUDA-graph/compiled path), the same timestep, temperature and friction
  (its ``Langevin``), timed like our rows (``time_blocks``: warm-up excluded, at least as many
  seconds and blocks). Its row (backend ``fastmace``) has ``ms_per_step``, ``fastmace_setup_s``
  (``fastmace.load`` + ``Simulation`` build, torch.compile and capture included, + the same 12
  first steps as ``first_call_s``), ``peak_gib`` / ``peak_allocated_gib`` (torch's maxima in its
  process) and ``force_rel_err_vs_fp64_eager`` (its forces at step 0 against mace-torch's eager
  float64 model at the positions its state holds). It runs in a child process that returns JSON:
  FastMACE patches MACE functions and torch settings process-wide (``fastmace._patches``), which
  must not reach our rows or the eager reference, its memory peak is then its own, and a crash of
  its compile or capture loses no row of ours. Each of our rows gets ``fastmace_ms_per_step`` and
  ``speedup_vs_fastmace`` (FastMACE ms / our ms) at the same atoms; where FastMACE is missing,
  skipped or failed they are None and ``fastmace_reason`` says why (``join_fastmace``).

The model is the MACE-OFF24(M) architecture with seeded random weights (``systems``), saved with
``torch.save`` as mace does, so that every engine reads the same file; speed does not depend on
the weights. ``--model PATH`` or ``--model default`` (the embedded water model) times that file
instead. Every row names the file and its SHA-256 (``model``, ``model_sha256``), the tables' header
its name and hash prefix. Rows are written after each measurement, so a cut-off run keeps them.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .compiled import COMPILERS, INDUCTOR, TORCHSCRIPT

DEFAULT_POLICIES = ("fp64", "fp32", "tf32", "bf16", "fp16")
ANCHOR_BACKEND = "openmm-ml-1.8"
FASTMACE_BACKEND = "fastmace"
# The sub-command of ``python -m openmm_mace_lp.bench`` that runs one FastMACE case in a child.
FASTMACE_CHILD_COMMAND = "fastmace-case"
# Steps of the first call: openmm-torch warms up 10 calls, then captures (FastMACE gets as many).
FIRST_CALL_STEPS = 12
# How many hex digits of a model's SHA-256 the tables show.
HASH_PREFIX = 8


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
    # A MACE model file (or "default": the embedded water model); None: the random-weight
    # ``architecture``.
    model: Optional[str] = None
    # FastMACE in the same run: True (asked for), None (when it imports and the device is CUDA),
    # False (skipped).
    fastmace: Optional[bool] = False
    # One FastMACE case (setup 70-95 s on an H200 for MACE-OFF24(M), then the timed steps).
    fastmace_timeout_s: float = 900.0
    # Neighbour lists to time ("native", "torchscript", None: the export's default for the
    # device): the native CUDA kernel becomes the default only once it is measured no slower.
    neighbor_lists: List[Optional[str]] = field(default_factory=lambda: [None])
    # How the model runs inside the exported module: "torchscript", or "inductor" (AOTInductor,
    # compiled.py; fixed-capacity list, so such rows build the fixed list even without graphs).
    compilers: List[str] = field(default_factory=lambda: [TORCHSCRIPT])
    # Both engines' thermostat: LangevinMiddle (OpenMM) and FastMACE's Langevin.
    temperature_K: float = 300.0
    friction_per_ps: float = 1.0


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


def time_blocks(advance: Callable[[int], object], seconds: float, min_steps: int = 0,
                min_blocks: int = 3) -> Dict[str, float]:
    """Median ms/step over blocks of ``advance(steps)``, which must return only once its steps are
    done (a device sync). Every engine is timed by this one function.

    10 warm-up steps (5 of them size the blocks) are excluded; then at least ``min_blocks`` blocks
    and ``min_steps`` steps, else as many as fit ``seconds``."""
    advance(5)
    start = time.perf_counter()
    advance(5)
    per_step = (time.perf_counter() - start) / 5
    block = max(5, min(200, int(0.5 / max(per_step, 1e-5))))
    n_blocks = max(min_blocks, int(seconds / (per_step * block)) + 1, -(-min_steps // block))
    samples = []
    for _ in range(n_blocks):
        start = time.perf_counter()
        advance(block)
        samples.append((time.perf_counter() - start) / block * 1000)
    median = statistics.median(samples)
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [median, median, median]
    return {"ms_per_step": median, "steps_timed": n_blocks * block, "blocks_timed": n_blocks,
            "ms_per_step_spread": (quartiles[2] - quartiles[0]) / median}


def time_md_steps(context, integrator, seconds: float, min_steps: int = 0, min_blocks: int = 3) -> Dict[str, float]:
    """``time_blocks`` of OpenMM steps, each block ended by a positions read (a device sync)."""
    def advance(steps: int) -> None:
        integrator.step(steps)
        context.getState(getPositions=True)

    return time_blocks(advance, seconds, min_steps, min_blocks)


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

    integrator = openmm.LangevinMiddleIntegrator(settings.temperature_K * unit.kelvin,
                                                 settings.friction_per_ps / unit.picosecond,
                                                 settings.dt_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(1)
    if settings.device == "cuda":
        # Reserved memory counts the allocator's cache: without emptying it, a row's peak would
        # include what the eager references and earlier rows of this process left cached (the
        # 1029-atom fp32 row of bench_2026-12-01_h200_fastmace.md read 7.87 GiB that way).
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        platform, properties = openmm.Platform.getPlatformByName("CUDA"), {"Precision": "mixed"}
    else:
        platform, properties = openmm.Platform.getPlatformByName("CPU"), {}
    context = openmm.Context(system, integrator, platform, properties)
    context.setPeriodicBoxVectors(*structure.box)
    context.setPositions(structure.positions)
    context.setVelocitiesToTemperature(settings.temperature_K * unit.kelvin, 1)
    integrator.step(FIRST_CALL_STEPS)
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


def warm_up_for_capture(call: Callable[[], object], calls: int = 3) -> None:
    """``calls`` calls on a side stream, as a CUDA-graph capture needs before it (TorchScript's
    profiling runs happen here too, not inside the capture)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(calls):
            call()
    torch.cuda.current_stream().wait_stream(stream)


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
    warm_up_for_capture(lambda: module(pos, box))
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

    def at(self, held_positions_nm: Optional[np.ndarray], float32: Optional[bool] = None) -> Optional[Dict[str, object]]:
        """The reference at the positions a row's force saw (tiled boxes: at the base box's).

        ``float32``: whether that force received them rounded to float32; None: as OpenMM's
        platform hands them to the TorchForce (CUDA: float32)."""
        if self.failed:
            return None
        if float32 is None:
            float32 = self.device == "cuda"
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


def row_neighbor_list(choice: Optional[str], device: str, graphs: bool) -> str:
    """The list a row's export uses. A named list is the fixed-capacity one even without CUDA
    graphs (the native list has only that form), so that the two are timed like for like."""
    from .neighbors import resolve_neighbor_list_impl

    return resolve_neighbor_list_impl(choice, device, graphs or choice is not None)


def bench_row(settings: BenchSettings, model_path: str, structure, backend: str, policy: str, graphs: bool,
              references: References, anchor: Optional[Dict[str, object]],
              neighbor_list: Optional[str] = None, compiler: str = TORCHSCRIPT) -> Dict[str, object]:
    from openmmml import MLPotential

    numbers = [a.element.atomic_number for a in structure.topology.atoms()]
    fixed = neighbor_list is not None or compiler != TORCHSCRIPT
    row: Dict[str, object] = {"atoms": len(numbers), "backend": backend, "policy": policy, "cuda_graphs": graphs,
                              "neighbor_list": row_neighbor_list(neighbor_list, settings.device, graphs or fixed),
                              "compiler": compiler}
    started = time.perf_counter()
    potential = MLPotential("mace-lp", modelPath=model_path, policy=policy, backend=backend)
    system = potential.createSystem(structure.topology, device=settings.device, cudaGraphs=graphs,
                                    positions=structure.positions, neighborList=neighbor_list,
                                    fixedNeighborList=True if fixed else None, compiler=compiler)
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
    return {"atoms": structure.positions.shape[0], "backend": ANCHOR_BACKEND, "policy": "single",
            "cuda_graphs": False, **result, **_eager_columns(reference),
            "ns_per_day": settings.dt_fs * 1e-6 * 86400 / (result["ms_per_step"] / 1000),
            "force_rel_err_vs_fp64_eager": force_error(forces, reference)}


@dataclass(frozen=True)
class BenchModel:
    """The model file every engine of a run reads, and how rows and tables name it."""

    path: str
    sha256: str
    description: str  # what the table header says besides the label

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def label(self) -> str:
        return f"{self.name} (SHA-256 {self.sha256[:HASH_PREFIX]})"


# The elements of the benchmark's boxes (water).
WATER_ELEMENTS = (1, 8)


def user_bench_model(spec: str) -> BenchModel:
    """``--model``: a MACE model file, or ``default`` (the embedded water model), checked before
    anything is measured or written: it must load as a MACE model and know H and O."""
    from .model_files import default_model_path, load_mace_model, sha256_of

    path = default_model_path() if spec == "default" else Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--model {spec}: no such file; pass a MACE .model file, or 'default' for the "
                                "embedded water model.")
    if not path.is_file():
        raise ValueError(f"--model {spec} is not a regular file; pass the .model file itself, or 'default'.")
    try:
        model = load_mace_model(path)
    except ValueError as error:
        raise ValueError(f"--model {spec}: {error}") from None
    missing = sorted(set(WATER_ELEMENTS) - {int(z) for z in model.atomic_numbers})
    if missing:
        raise ValueError(f"--model {spec} has no element(s) {missing} (it knows {sorted(map(int, model.atomic_numbers))}); "
                         "the benchmark times water boxes, so pass a model trained with H and O.")
    kind = "embedded water model" if spec == "default" else "given model"
    return BenchModel(str(path.resolve()), sha256_of(path), kind)


def random_bench_model(architecture: str, directory: Path) -> BenchModel:
    """The ``architecture`` with seeded random weights, saved as mace saves a model (the whole
    module, ``torch.save``) so that our plug-in, openmm-ml and FastMACE read the same file."""
    import dataclasses

    from .model_files import sha256_of
    from .systems.architectures import MACE_OFF24_MEDIUM, TINY, build_mace, save_model

    # "tiny" (the --smoke harness check) has max_ell 1: cuEquivariance's naive CPU path, which the
    # eager cuEq reference runs on a CPU, takes ~60 s to build the max_ell 3 symmetric contraction.
    arch = {"mace-off24-medium": MACE_OFF24_MEDIUM, "tiny": dataclasses.replace(TINY, max_ell=1)}[architecture]
    path = directory / f"{architecture}-random.model"
    save_model(build_mace(arch, seed=0, dtype="float64"), path)
    return BenchModel(str(path), sha256_of(path), f"{architecture} architecture, random weights (seed 0)")


def bench_structure(n_atoms: int, settings: BenchSettings):
    """(box, base box, copies per axis) that every engine of one atoms size runs: a water box at
    1 g/cm3; above ``tile_above_atoms`` copies of a small box, whose reference, tiled, is exact
    for them (periodicity)."""
    from .systems.builders import load_water_box, tiled_water_box

    if n_atoms > settings.tile_above_atoms * 1.1:
        return tiled_water_box(n_atoms, settings.tile_above_atoms)
    structure = load_water_box(n_atoms)
    return structure, structure, 1


# ----------------------------------------------------------------------------- FastMACE


def fastmace_availability(requested: Optional[bool], device: str,
                          python: Sequence[str] = (sys.executable,)) -> Tuple[Optional[str], Optional[str]]:
    """(FastMACE's version, None) when it is to run in this benchmark, else (None, why not).

    ``requested``: True (asked for: also on the CPU, FastMACE's CPU plan, a dry run of the harness),
    None (when it imports and the device is CUDA), False (skipped).

    The import is tried in a child (``python``): importing FastMACE switches torch's file locks
    for the whole process, which the parent must not get."""
    if requested is False:
        return None, "not requested (--no-fastmace)"
    try:
        probe = subprocess.run([*python, "-c", "import sys, fastmace; sys.stdout.write(fastmace.__version__)"],
                               capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"not importable ({type(error).__name__}: {error})"[:200]
    if probe.returncode != 0:
        lines = [line for line in probe.stderr.strip().splitlines() if line.strip()]
        return None, f"not installed ({lines[-1].strip() if lines else f'exit code {probe.returncode}'})"[:200]
    if device != "cuda" and requested is not True:
        return None, (f"fastmace {probe.stdout.strip()} is timed on CUDA devices only (this run: {device}; "
                      "--fastmace runs its CPU plan as a dry run)")
    return probe.stdout.strip(), None


@dataclass
class FastMACECase:
    """What FastMACE's NVT run gets: our row's box in ASE units and the run's settings."""

    model_path: str
    numbers: np.ndarray  # (N,) atomic numbers
    positions_A: np.ndarray  # (N, 3)
    cell_A: np.ndarray  # (3, 3), rows are the box vectors
    masses_amu: np.ndarray  # (N,) the element masses OpenMM's System uses
    velocities: np.ndarray  # (N, 3) ASE units, Maxwell-Boltzmann at temperature_K, no drift
    dt_fs: float
    temperature_K: float
    friction_per_fs: float
    seconds: float
    min_blocks: int
    seed: int = 1


_CASE_ARRAYS = ("numbers", "positions_A", "cell_A", "masses_amu", "velocities")


def fastmace_case(model_path: str, structure, settings: BenchSettings, seed: int = 1) -> FastMACECase:
    """FastMACE's inputs for the box our rows run (``structure``, nm), with the same masses,
    timestep, temperature and friction, and velocities drawn at the same temperature."""
    import openmm.unit as unit
    from ase import Atoms
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms_list = list(structure.topology.atoms())
    masses = np.array([a.element.mass.value_in_unit(unit.dalton) for a in atoms_list])
    atoms = Atoms(numbers=[a.element.atomic_number for a in atoms_list],
                  positions=np.asarray(structure.positions, dtype=np.float64) * 10.0,
                  cell=np.asarray(structure.box, dtype=np.float64) * 10.0, pbc=True, masses=masses)
    MaxwellBoltzmannDistribution(atoms, temperature_K=settings.temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)  # OpenMM's setVelocitiesToTemperature removes the drift too
    return FastMACECase(model_path=str(model_path), numbers=atoms.numbers.copy(), positions_A=atoms.positions.copy(),
                        cell_A=atoms.cell.array.copy(), masses_amu=masses, velocities=atoms.get_velocities(),
                        dt_fs=settings.dt_fs, temperature_K=settings.temperature_K,
                        friction_per_fs=settings.friction_per_ps / 1000.0, seconds=settings.seconds_per_row,
                        min_blocks=settings.min_blocks, seed=seed)


def case_atoms(case: FastMACECase):
    """The ASE ``Atoms`` FastMACE runs (periodic, our masses and velocities)."""
    from ase import Atoms

    atoms = Atoms(numbers=case.numbers, positions=case.positions_A, cell=case.cell_A, pbc=True,
                  masses=case.masses_amu)
    atoms.set_velocities(case.velocities)
    return atoms


def write_case(case: FastMACECase, directory: Path) -> Path:
    """The case as the child reads it: arrays in ``case.npz``, the rest in ``case.json``."""
    from .atomic import atomic_path, atomic_write_text

    directory.mkdir(parents=True, exist_ok=True)
    values = asdict(case)
    with atomic_path(directory / "case.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **{name: values.pop(name) for name in _CASE_ARRAYS})
    atomic_write_text(directory / "case.json", json.dumps(values, indent=1))
    return directory


def read_case(directory: Path) -> FastMACECase:
    with np.load(directory / "case.npz") as arrays:
        values = {name: arrays[name] for name in _CASE_ARRAYS}
    values.update(json.loads((directory / "case.json").read_text()))
    unknown = set(values) - {f.name for f in fields(FastMACECase)}
    if unknown:
        raise ValueError(f"{directory}: case fields {sorted(unknown)} are not FastMACECase's (written by another "
                         "version of openmm-mace-lp); rerun mace-lp bench.")
    return FastMACECase(**values)


def fastmace_md(case: FastMACECase) -> Tuple[Dict[str, object], Dict[str, np.ndarray]]:
    """FastMACE's own NVT MD of ``case`` through its public API (``fastmace.load``, ``Simulation``,
    ``integrators.Langevin``; its default plan: float32, CUDA graphs), timed by ``time_blocks``.

    Returns the row's numbers and the step-0 state (positions, species, forces in eV/A). Meant to
    run in its own process (``run_fastmace``)."""
    import fastmace  # before torch: FastMACE switches torch's file locks at import

    import torch

    started = time.perf_counter()
    model = fastmace.load(case.model_path, trusted=True)
    integrator = fastmace.integrators.Langevin(timestep_fs=case.dt_fs, temperature_K=case.temperature_K,
                                               friction_per_fs=case.friction_per_fs)
    simulation = fastmace.Simulation(case_atoms(case), model, integrator=integrator, seed=case.seed)
    first = simulation.committed()  # step 0: the forces at the start positions
    simulation.run(steps=FIRST_CALL_STEPS)
    setup_s = time.perf_counter() - started

    cuda = torch.cuda.is_available()

    def advance(steps: int) -> None:
        simulation.run(steps=steps)  # ends with a read of the energy (a sync)
        if cuda:
            torch.cuda.synchronize()

    timing = time_blocks(advance, case.seconds, 0, case.min_blocks)
    end = simulation.committed()
    if not (np.isfinite(end.positions).all() and np.isfinite(end.energy)):
        raise RuntimeError(f"FastMACE's timed trajectory went non-finite (energy {end.energy!r} eV): its timing is "
                           "not of a valid run")
    from .export import EV_TO_KJ_PER_MOL

    memory = {"peak_gib": float("nan"), "peak_allocated_gib": float("nan"), "device_used_gib": float("nan")}
    if cuda:  # this process is FastMACE's alone: torch's maxima are its own
        free, total = torch.cuda.mem_get_info()
        memory = {"peak_gib": torch.cuda.max_memory_reserved() / 2**30,
                  "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                  "device_used_gib": (total - free) / 2**30}
    plan = simulation.plan
    own = getattr(simulation.report, "measured", None)
    result = {"fastmace_version": fastmace.__version__, **timing, "fastmace_setup_s": setup_s,
              "end_energy_kJ_mol": float(end.energy) * EV_TO_KJ_PER_MOL, **memory,
              "fastmace_plan": {"tier": str(getattr(plan, "tier", "")),
                                "backend": str(getattr(getattr(plan, "engine", None), "backend", "")),
                                "precision": str(getattr(getattr(plan, "precision", None), "dtype", ""))},
              # FastMACE's own steady-state window, a cross-check of ms_per_step.
              "fastmace_own_ms_per_step": None if not own else float(own["seconds_per_step"]) * 1000.0,
              "fastmace_summary": simulation.report.text()}
    simulation.close()
    return result, {"positions_A": np.asarray(first.positions), "species": np.asarray(first.species),
                    "forces_eV_A": np.asarray(first.forces)}


def _fastmace_child(directory: Path) -> int:
    """``python -m openmm_mace_lp.bench fastmace-case DIR``: run the case, write its results."""
    from .atomic import atomic_path, atomic_write_text

    result, first = fastmace_md(read_case(directory))
    with atomic_path(directory / "first_forces.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **first)
    atomic_write_text(directory / "result.json", json.dumps(result, indent=1))
    return 0


def run_fastmace(case: FastMACECase, directory: Path, timeout_s: float,
                 python: Sequence[str] = (sys.executable,)) -> Tuple[Dict[str, object], Dict[str, np.ndarray]]:
    """``fastmace_md`` in a child process (its log in ``DIR/fastmace.log``); its results read back."""
    write_case(case, directory)
    log = directory / "fastmace.log"
    try:
        with open(log, "w") as handle:
            completed = subprocess.run([*python, "-m", "openmm_mace_lp.bench", FASTMACE_CHILD_COMMAND, str(directory)],
                                       stdout=handle, stderr=subprocess.STDOUT, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"FastMACE did not finish within {timeout_s:g} s (setup and timed steps); "
                           f"its log: {log}") from None
    if completed.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-30:]
        raise RuntimeError(f"FastMACE's process exited with code {completed.returncode}; its log ends:\n"
                           + "\n".join(tail))
    result = json.loads((directory / "result.json").read_text())
    with np.load(directory / "first_forces.npz") as arrays:
        first = {name: arrays[name] for name in arrays.files}
    return result, first


def fastmace_force_error(first: Dict[str, np.ndarray], case: FastMACECase, references: References) -> float:
    """FastMACE's step-0 forces against the fp64 eager reference at the positions its state held
    (float64, as given). They must be our atoms in our order (tiled boxes: the base box's
    reference, tiled, holds only then)."""
    from .export import EV_TO_KJ_PER_MOL

    if not np.array_equal(np.asarray(first["species"]), case.numbers):
        raise RuntimeError("FastMACE's committed species are not the box's atoms in order: its forces cannot be "
                           "compared atom by atom")
    shift = np.asarray(first["positions_A"]) - case.positions_A
    fractional = shift @ np.linalg.inv(case.cell_A)
    if np.abs((fractional - np.round(fractional)) @ case.cell_A).max() > 1e-6:
        raise RuntimeError("FastMACE's step-0 positions are not the box's (beyond a lattice shift): its forces "
                           "cannot be compared with the reference")
    reference = references.at(np.asarray(first["positions_A"], dtype=np.float64) / 10.0, float32=False)
    forces = np.asarray(first["forces_eV_A"], dtype=np.float64) * EV_TO_KJ_PER_MOL * 10.0
    return force_error(forces, reference)


def fastmace_row(settings: BenchSettings, model: BenchModel, structure, references: References,
                 anchor: Optional[Dict[str, object]], directory: Path) -> Dict[str, object]:
    """FastMACE's row for one box (same model file, box, timestep, temperature and friction)."""
    case = fastmace_case(model.path, structure, settings)
    result, first = run_fastmace(case, directory, settings.fastmace_timeout_s)
    row: Dict[str, object] = {"atoms": len(case.numbers), "backend": FASTMACE_BACKEND, "policy": "fp32",
                              "cuda_graphs": True, **result, "first_call_s": result["fastmace_setup_s"],
                              **_eager_columns(references.at(None)),
                              "ns_per_day": settings.dt_fs * 1e-6 * 86400 / (result["ms_per_step"] / 1000),
                              "force_rel_err_vs_fp64_eager": fastmace_force_error(first, case, references)}
    if anchor is not None:
        row["anchor_ms_per_step"] = anchor["ms_per_step"]
        row["speedup_vs_anchor"] = anchor["ms_per_step"] / row["ms_per_step"]
    return row


def _failure_reason(row: dict) -> str:
    lines = [line.strip() for line in str(row["error"]).strip().splitlines() if line.strip()]
    return f"failed: {lines[-1] if lines else 'no message'}"[:200]


def join_fastmace(rows: List[dict], unavailable: Optional[str] = None) -> None:
    """Give each of our rows FastMACE's ms/step at the same atoms and the speed-up over it
    (FastMACE ms / our ms), or None and ``fastmace_reason``: FastMACE's failure at that size,
    else ``unavailable`` (why FastMACE did not run at all), else that it was not measured."""
    measured: Dict[int, dict] = {}
    for row in rows:
        if row.get("backend") == FASTMACE_BACKEND:
            measured[row["atoms"]] = row
    for row in rows:
        if row.get("backend") in (FASTMACE_BACKEND, ANCHOR_BACKEND) or "error" in row:
            continue
        theirs = measured.get(row["atoms"])
        if theirs is not None and "error" not in theirs:
            row.update(fastmace_ms_per_step=theirs["ms_per_step"],
                       speedup_vs_fastmace=theirs["ms_per_step"] / row["ms_per_step"], fastmace_reason=None)
            continue
        reason = (_failure_reason(theirs) if theirs is not None
                  else unavailable or "not measured at this size")
        row.update(fastmace_ms_per_step=None, speedup_vs_fastmace=None, fastmace_reason=reason)


def run_bench(settings: BenchSettings) -> dict:
    import openmm
    import torch

    from .backend import cueq_kernels_available
    from .export import library_versions
    from .upstream import import_mace

    import_mace()
    # A given model is checked before anything is created or measured.
    model = user_bench_model(settings.model) if settings.model is not None else None
    fastmace_version, fastmace_reason = fastmace_availability(settings.fastmace, settings.device)
    if settings.fastmace is True and fastmace_reason is not None:
        print(f"FastMACE was asked for and cannot run: {fastmace_reason}", file=sys.stderr, flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="mace-lp-bench-"))
    # A fresh export cache: first_call_s includes the export, as for a new user.
    os.environ["OPENMM_MACE_LP_CACHE"] = str(workdir / "cache")
    if model is None:
        model = random_bench_model(settings.architecture, workdir)
    report = {"card": card_name(settings.device), "driver": torch.version.cuda,
              "versions": {**library_versions(), "openmm": openmm.__version__},
              "cueq_kernels": cueq_kernels_available(),
              "model": f"{model.description}: {model.label}",
              "model_file": {"name": model.name, "sha256": model.sha256},
              "fastmace": {"version": fastmace_version, "reason": fastmace_reason},
              "dt_fs": settings.dt_fs,
              "integrator": f"LangevinMiddle {settings.temperature_K:g} K, friction {settings.friction_per_ps:g}/ps, "
                            "OpenMM CUDA platform, mixed precision", "rows": []}
    model_path = model.path
    for n_atoms in settings.atoms:
        structure, base, copies = bench_structure(n_atoms, settings)
        numbers = [a.element.atomic_number for a in structure.topology.atoms()]
        references = References(model_path, base, copies, settings.device, settings.eager_repeats)
        _recorded(report, settings, lambda: {"atoms": len(numbers), "backend": "eager-mace-fp64", **references.first()},
                  {"atoms": len(numbers), "backend": "eager-mace-fp64"}, keep=False)
        anchor = None
        if settings.anchor and len(numbers) <= settings.reference_max_atoms:
            anchor = _recorded(report, settings, lambda: anchor_row(settings, model_path, structure, references),
                               {"atoms": len(numbers), "backend": ANCHOR_BACKEND, "policy": "single"})
        if fastmace_version is not None:
            _recorded(report, settings,
                      lambda: fastmace_row(settings, model, structure, references, anchor,
                                           workdir / f"fastmace-{len(numbers)}"),
                      {"atoms": len(numbers), "backend": FASTMACE_BACKEND, "policy": "fp32", "cuda_graphs": True})
        for backend in settings.backends:
            for policy in settings.policies:
                for graphs in settings.graphs:
                    for neighbor_list in settings.neighbor_lists:
                        for compiler in settings.compilers:
                            _recorded(report, settings,
                                      lambda: bench_row(settings, model_path, structure, backend, policy, graphs,
                                                        references, anchor, neighbor_list, compiler),
                                      {"atoms": len(numbers), "backend": backend, "policy": policy,
                                       "cuda_graphs": graphs, "neighbor_list": neighbor_list or "default",
                                       "compiler": compiler})
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
    model = report.get("model_file") or {}
    row = {**row, "model": model.get("name"), "model_sha256": model.get("sha256")}
    report["rows"].append(row)
    join_fastmace(report["rows"], (report.get("fastmace") or {}).get("reason"))
    print(format_row(row), flush=True)
    write_report(report, settings.out)
    return None if "error" in row else row


def format_row(row: dict) -> str:
    head = (f"[{row['atoms']} atoms] {_backend_cell(row):13s} {row.get('policy', ''):6s} "
            f"graphs={row.get('cuda_graphs', '')!s:5s}")
    if "error" in row:
        return f"{head} FAILED\n{row['error']}"
    versus = "" if row.get("speedup_vs_fastmace") is None else f"  x{row['speedup_vs_fastmace']:5.2f} vs FastMACE"
    return (f"{head} {row['ms_per_step']:8.2f} ms/step  kernels {row.get('gpu_kernel_ms', float('nan')):7.2f} ms  "
            f"x{row.get('speedup_vs_anchor', 1.0):5.2f}{versus}  err {row['force_rel_err_vs_fp64_eager']:.1e}  "
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


def _backend_cell(row: dict) -> str:
    """The backend, and the neighbour list where it is this package's native operator."""
    notes = [note for note, shown in (("native list", row.get("neighbor_list") == "native"),
                                      (INDUCTOR, row.get("compiler") == INDUCTOR)) if shown]
    return f"{row['backend']} ({', '.join(notes)})" if notes else str(row["backend"])


def _eager_cells(row: dict) -> str:
    e3nn, cueq = _cell(row, "eager_mace_ms", ".2f"), _cell(row, "eager_cueq_mace_ms", ".2f")
    return f"{e3nn} / {cueq}" if e3nn or cueq else ""


# Longest reason a FastMACE cell shows (the JSON and the header keep it whole).
REASON_CELL_CHARS = 64

TABLE_COLUMNS = ("atoms", "backend", "policy", "CUDA graph", "ms/step", "ns/day", "GPU kernel ms",
                 "own-capture replay ms", "step / kernel", "speed-up vs anchor", "FastMACE ms/step",
                 "speed-up vs FastMACE", "eager mace ms (e3nn / cuEq)", "force rel. err vs fp64 eager",
                 "first call s", "peak GiB (torch reserved)", "MiB/atom")


def _fastmace_cells(row: dict) -> str:
    """FastMACE's ms/step and our speed-up over it; where there is none, why (shortened)."""
    if row.get("backend") in (FASTMACE_BACKEND, ANCHOR_BACKEND):
        return " | "
    if row.get("fastmace_ms_per_step") is not None:
        return f"{row['fastmace_ms_per_step']:.2f} | {row['speedup_vs_fastmace']:.2f}"
    reason = str(row.get("fastmace_reason") or "not measured")
    reason = reason if len(reason) <= REASON_CELL_CHARS else reason[:REASON_CELL_CHARS - 3] + "..."
    return f"n/a: {reason.replace('|', '/')} | "


def _fastmace_note(report: dict) -> str:
    fastmace = report.get("fastmace") or {}
    if not fastmace.get("version"):
        return f"FastMACE: not measured ({fastmace.get('reason') or 'not requested'})."
    plans = [row["fastmace_plan"] for row in report["rows"]
             if row.get("backend") == FASTMACE_BACKEND and row.get("fastmace_plan")]
    plan = ", ".join(f"{key} {value}" for key, value in plans[0].items()) if plans else "no row yet"
    return (f"FastMACE {fastmace['version']}, its default plan ({plan}), on the same model file and boxes (row "
            "`fastmace`; its first call s is its setup: load, build, compile, capture, 12 steps).")


def markdown_table(report: dict) -> str:
    lines = [f"Card: {report['card']} (CUDA {report['driver']}); {report['model']}; {report['integrator']}, "
             f"{report['dt_fs']} fs; cuEq kernels: {report['cueq_kernels']}", "",
             *([report["note"], ""] if report.get("note") else []),
             _fastmace_note(report), "",
             "| " + " | ".join(TABLE_COLUMNS) + " |",
             "|" + " --- |" * len(TABLE_COLUMNS)]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['atoms']} | {_backend_cell(row)} | {row.get('policy', '')} | "
                         f"{row.get('cuda_graphs', '')} | failed: {row['error'].strip().splitlines()[-1][:80]} |"
                         + " |" * (len(TABLE_COLUMNS) - 5))
            continue
        ratio = row["ms_per_step"] / row["gpu_kernel_ms"] if row.get("gpu_kernel_ms") else None
        mb_per_atom = row["peak_gib"] * 1024 / row["atoms"] if row.get("peak_gib") == row.get("peak_gib") else None
        lines.append(
            f"| {row['atoms']} | {_backend_cell(row)} | {row['policy']} | {'yes' if row.get('cuda_graphs') else 'no'} | "
            f"{row['ms_per_step']:.2f} | {row['ns_per_day']:.3f} | {_cell(row, 'gpu_kernel_ms', '.2f')} | "
            f"{_cell(row, 'module_replay_ms', '.2f')} | {'' if ratio is None else format(ratio, '.2f')} | "
            f"{_cell(row, 'speedup_vs_anchor', '.2f')} | {_fastmace_cells(row)} | {_eager_cells(row)} | "
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
    parser.add_argument("--neighbor-lists", default="default",
                        help="comma-separated: default (the export's choice for the device), native (this "
                             "package's mace_lp::cell_list, fixed capacity), torchscript")
    parser.add_argument("--compilers", default=TORCHSCRIPT,
                        help="how the model runs in the exported module: torchscript and/or inductor (AOTInductor)")
    parser.add_argument("--dt-fs", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed MD seconds per row")
    parser.add_argument("--no-anchor", action="store_true", help="skip openmm-ml 1.8's MACE")
    parser.add_argument("--architecture", default="mace-off24-medium", choices=["mace-off24-medium", "tiny"],
                        help="the random-weight model timed when --model is not given")
    parser.add_argument("--model", metavar="PATH|default",
                        help="time this MACE model file ('default': the embedded water model) instead of the "
                             "random-weight --architecture")
    parser.add_argument("--fastmace", action=argparse.BooleanOptionalAction, default=None,
                        help="also time FastMACE's own NVT MD on the same model file and boxes (default: on when "
                             "'import fastmace' works and the run is on a CUDA device; --fastmace with --smoke runs "
                             "FastMACE's CPU plan, a dry run of this harness)")
    parser.add_argument("-o", "--out", default="benchmarks/results/bench.json")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU dry run with the tiny model, or --model's (checks the harness; the numbers mean nothing)")
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
    from .neighbors import NEIGHBOR_LIST_IMPLS

    neighbor_lists = [None if name == "default" else name for name in args.neighbor_lists.split(",")]
    unknown = [name for name in neighbor_lists if name is not None and name not in NEIGHBOR_LIST_IMPLS]
    if unknown:
        raise ValueError(f"--neighbor-lists {args.neighbor_lists!r}: {unknown[0]!r} is not one; use default, "
                         f"{' and/or '.join(NEIGHBOR_LIST_IMPLS)}, comma-separated.")
    compilers = args.compilers.split(",")
    if any(name not in COMPILERS for name in compilers):
        raise ValueError(f"--compilers {args.compilers!r}: use {' and/or '.join(COMPILERS)}, comma-separated.")
    settings = BenchSettings(atoms=args.atoms, policies=args.policies.split(","), backends=args.backends.split(","),
                             graphs=graphs, dt_fs=args.dt_fs, out=Path(args.out),
                             architecture="tiny" if args.smoke else args.architecture, device=device,
                             anchor=not args.no_anchor, seconds_per_row=min(0.5, args.seconds) if args.smoke else args.seconds,
                             model=args.model, fastmace=args.fastmace, neighbor_lists=neighbor_lists,
                             compilers=compilers)
    if args.smoke:  # the harness, not the numbers: a short anchor
        settings.anchor_min_steps, settings.min_blocks, settings.eager_repeats = 10, 3, 2
    print(write_report(run_bench(settings), settings.out))
    return 0


if __name__ == "__main__":
    # The FastMACE child of ``run_fastmace``: python -m openmm_mace_lp.bench fastmace-case DIR
    if len(sys.argv) != 3 or sys.argv[1] != FASTMACE_CHILD_COMMAND:
        sys.exit(f"usage: python -m openmm_mace_lp.bench {FASTMACE_CHILD_COMMAND} DIR (run by mace-lp bench)")
    sys.exit(_fastmace_child(Path(sys.argv[2])))
