"""GPU-node tests of the native neighbour list's CUDA kernels (mace_lp::cell_list).

The CUDA list must equal the CPU kernel's (itself equal to the TorchScript list bit for bit,
tests/plugin/test_native.py): the same edges in the same order and the same stats, also when a
capacity overflows, and shifts to the rounding of the box products. The two devices round the
fractional coordinates differently in the last bit, so the test systems keep every pair clear
of the cutoff and every atom clear of the cell faces by more than that. A CUDA graph of the call
must replay new positions exactly as an eager call computes them.

Skipped on machines without CUDA (CI); run on the GPU node with `pytest -m gpu tests/gpu`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from openmm_mace_lp import native
from openmm_mace_lp.neighbors import NATIVE_LIST, TORCHSCRIPT_LIST, plan_capacity
from tests.plugin.test_native import _triclinic, brute_force_pairs, cutoff_with_margin

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUTOFF = 4.0
FACE_MARGIN = 1e-4  # in cells: far beyond the last-bit differences of the two devices


@pytest.fixture(scope="module", autouse=True)
def _cuda_kernels():
    """The GPU node has nvcc: its install builds the CUDA kernels, so their absence is a failure."""
    if native.disabled_by_environment():
        pytest.skip("OPENMM_MACE_LP_NATIVE=0 turns the native operators off")
    assert native.available("cuda"), native.state().problem


def _clear_of_cell_faces(positions, cell, grid):
    """Move atoms that lie within FACE_MARGIN of a cell face (or the box's) off it."""
    frac = positions @ np.linalg.inv(cell)
    scaled = frac * np.asarray(grid)
    near = np.abs(scaled - np.round(scaled)) < FACE_MARGIN
    frac = frac + near * (10 * FACE_MARGIN / np.asarray(grid))
    return frac @ cell


def _clear_cutoff(positions, cell):
    """A cutoff near CUTOFF with no pair distance (any image, float64) within rounding of it."""
    return cutoff_with_margin(brute_force_pairs(positions, cell, CUTOFF + 0.2)[1], CUTOFF)


def _both_devices(positions, cell, cutoff, grid, stencil, cell_capacity, edge_capacity, dtype):
    def call(device):
        box = None if cell is None else torch.tensor(cell, dtype=dtype, device=device)
        return torch.ops.mace_lp.cell_list(torch.tensor(positions, dtype=dtype, device=device), box, cutoff, list(grid),
                                           stencil.to(device), cell_capacity, edge_capacity)

    return call("cpu"), [t.cpu() for t in call("cuda")]


def _assert_same_list(cpu, cuda, dtype):
    assert torch.equal(cpu[0], cuda[0]), "edges"
    assert torch.equal(cpu[2], cuda[2]), "stats"
    assert cuda[1].dtype == dtype and cuda[1].shape == cpu[1].shape
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(cpu[1], cuda[1], rtol=0, atol=tolerance * float(cpu[1].abs().max())), "shifts"


BOXES = {
    "cubic": lambda rng: np.diag([14.0, 15.0, 16.0]),
    "triclinic": lambda rng: _triclinic(rng, (14.0, 15.0, 16.0)),
    "thinner than the cutoff": lambda rng: _triclinic(rng, (3.1, 3.7, 2.6)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("box_name", list(BOXES))
@pytest.mark.parametrize("overflow", [None, "edges", "cell"])
def test_cuda_list_equals_the_cpu_kernel(box_name, dtype, overflow):
    rng = np.random.default_rng(list(BOXES).index(box_name))
    cell = BOXES[box_name](rng)
    n = 40 if box_name == "thinner than the cutoff" else 400
    positions = rng.uniform(-0.5, 1.5, (n, 3)) @ cell  # unwrapped
    cutoff = _clear_cutoff(positions, cell)
    capacity = plan_capacity(n, cutoff, cell, positions)
    positions = _clear_of_cell_faces(positions, cell, capacity.grid)
    cutoff = _clear_cutoff(positions, cell)
    if overflow == "edges":
        capacity = dataclasses.replace(capacity, edge_capacity=capacity.edge_capacity // 3)
    elif overflow == "cell":
        capacity = dataclasses.replace(capacity, cell_capacity=2)
    grid, stencil, cell_capacity = capacity.list_arguments(n)
    cpu, cuda = _both_devices(positions, cell, cutoff, grid, stencil, cell_capacity, capacity.edge_capacity, dtype)
    _assert_same_list(cpu, cuda, dtype)
    stats = cuda[2].tolist()
    assert stats[2] == 1 and (stats[0] > capacity.edge_capacity) == (overflow == "edges")
    assert (stats[1] > cell_capacity) == (overflow == "cell")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_list_of_a_cluster_equals_the_cpu_kernel(dtype):
    """Non-periodic, as an exported module passes it: one cell holding every atom."""
    rng = np.random.default_rng(8)
    positions = rng.uniform(0, 14, (120, 3))
    positions[:6] += 35.0
    cutoff = _clear_cutoff(positions, None)
    grid, stencil, cell_capacity = plan_capacity(120, cutoff, None, positions).list_arguments(120)
    cpu, cuda = _both_devices(positions, None, cutoff, grid, stencil, cell_capacity, 4000, dtype)
    assert torch.equal(cpu[0], cuda[0]) and torch.equal(cpu[1], cuda[1]) and torch.equal(cpu[2], cuda[2])
    assert int(cuda[2][0]) > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_graph_replay_equals_an_eager_call(dtype):
    """Captured once, replayed for moved atoms and a compressed box: every replay equals an
    eager call on the same inputs, including the overflow it reports."""
    rng = np.random.default_rng(4)
    cell = _triclinic(rng, (15.0, 16.0, 17.0))
    positions = rng.uniform(0, 1, (500, 3)) @ cell
    capacity = plan_capacity(500, CUTOFF, cell, positions, edge_margin=0.02)
    grid, stencil, cell_capacity = capacity.list_arguments(500)
    static_positions = torch.tensor(positions, dtype=dtype, device="cuda")
    static_cell = torch.tensor(cell, dtype=dtype, device="cuda")
    stencil = stencil.cuda()

    def call():
        return torch.ops.mace_lp.cell_list(static_positions, static_cell, CUTOFF, grid, stencil, cell_capacity,
                                           capacity.edge_capacity)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call()
    for step, squeeze in enumerate((1.0, 1.0, 0.97)):  # the last one overflows the edges
        moved = (positions + rng.normal(scale=0.05, size=positions.shape)) * squeeze
        static_positions.copy_(torch.tensor(moved, dtype=dtype))
        static_cell.copy_(torch.tensor(cell * squeeze, dtype=dtype))
        graph.replay()
        replayed = [t.clone() for t in captured]
        eager = call()
        torch.cuda.synchronize()
        for name, a, b in zip(("edges", "shifts", "stats"), replayed, eager):
            assert torch.equal(a, b), f"{name} after move {step}"
        overflowed = int(replayed[2][0]) > capacity.edge_capacity
        assert overflowed == (squeeze < 1.0)


def test_exported_module_on_cuda_native_equals_torchscript():
    """The same module with either list on the GPU (fp64): the same energy and forces."""
    from openmm_mace_lp.export import build_force_module
    from tests.plugin.helpers import model, rel_error, water_box

    system = water_box(4, seed=2)
    capacity = plan_capacity(len(system.positions), float(model().r_max), system.box * 10.0, system.positions * 10.0)
    results = {}
    for impl in (NATIVE_LIST, TORCHSCRIPT_LIST):
        module = build_force_module(model(), "fp64", "e3nn", system.atomic_numbers, periodic=True, device="cuda",
                                    energy_type="energy", capacity=capacity, neighbor_list=impl)
        energy, forces = module(torch.tensor(system.positions, device="cuda"), torch.tensor(system.box, device="cuda"))
        results[impl] = (float(energy), forces.double().cpu().numpy().copy())
    assert np.isfinite(results[NATIVE_LIST][0])
    assert results[NATIVE_LIST][0] == pytest.approx(results[TORCHSCRIPT_LIST][0], rel=1e-12)
    assert rel_error(results[NATIVE_LIST][1], results[TORCHSCRIPT_LIST][1]) <= 1e-12
