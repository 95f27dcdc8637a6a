"""The native neighbour list (mace_lp::cell_list, CPU kernel) and its loader.

The operator must equal the TorchScript list (neighbors.cell_list, fixed capacities) bit for bit:
edges, shifts and stats, also when a capacity overflows, since exported modules switch between
the two. The pairs it finds are checked against a brute-force float64 search over lattice
images. The loader must stay quiet when turned off and warn once, then fall back, when the
library is missing or was built against another torch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from openmm_mace_lp import native
from openmm_mace_lp.neighbors import (CANDIDATES_PER_CHUNK, NATIVE_LIST, TORCHSCRIPT_LIST, cell_list, native_cell_list,
                                      plan_capacity, resolve_neighbor_list_impl)

NEAR_CUTOFF = 4.0
scripted_cell_list = torch.jit.script(cell_list)


@pytest.fixture(scope="module", autouse=True)
def _native_library():
    """CI builds the CPU library: its absence is a failure here, unless turned off on purpose."""
    if native.disabled_by_environment():
        pytest.skip("OPENMM_MACE_LP_NATIVE=0 turns the native operators off")
    assert native.available("cpu"), native.state().problem


def _triclinic(rng, lengths):
    """A random cell in OpenMM's reduced form (rows a, b, c)."""
    a, b, c = lengths
    return np.array([[a, 0, 0], [rng.uniform(-a / 2, a / 2), b, 0],
                     [rng.uniform(-a / 2, a / 2), rng.uniform(-b / 2, b / 2), c]])


def brute_force_pairs(positions, cell, cutoff):
    """{(i, j, image along a, b, c)} of every ordered pair closer than ``cutoff``, float64, O(N^2)
    over all lattice images that can be that close; and all the distances examined."""
    positions = np.asarray(positions, dtype=np.float64)
    if cell is None:
        lattice = np.zeros((3, 3))
        images = np.zeros((1, 3), dtype=int)
    else:
        lattice = np.asarray(cell, dtype=np.float64)
        widths = abs(np.linalg.det(lattice)) / np.linalg.norm(np.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]]), axis=1)
        reach = np.ceil(cutoff / widths).astype(int) + 1
        axes = [np.arange(-r, r + 1) for r in reach]
        images = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    pairs, distances = set(), []
    for i in range(len(positions)):
        delta = positions - positions[i]  # r_j - r_i
        base = np.zeros_like(delta, dtype=int) if cell is None else -np.round(delta @ np.linalg.inv(lattice)).astype(int)
        shifts = base[:, None, :] + images[None, :, :]  # [j, image, 3]: around each pair's nearest image
        lengths = np.linalg.norm(delta[:, None, :] + shifts @ lattice, axis=-1)
        for j, k in zip(*np.nonzero(lengths < cutoff)):
            if not (i == j and not shifts[j, k].any()):
                pairs.add((i, int(j), *map(int, shifts[j, k])))
        distances.append(lengths.ravel())
    return pairs, np.concatenate(distances)


def cutoff_with_margin(distances, near=NEAR_CUTOFF):
    """A cutoff near ``near`` in the middle of the widest gap between pair distances, so that no
    pair sits within rounding of it (the float32 list and the float64 reference then agree)."""
    window = np.sort(distances[(distances > near - 0.2) & (distances < near + 0.2)])
    if len(window) < 2:
        return near
    gaps = np.diff(window)
    widest = int(np.argmax(gaps))
    return float(window[widest] + gaps[widest] / 2)


def _pairs_of(edges, shifts, stats, positions, cell):
    """{(i, j, image)} of the real edges of a fixed-capacity list."""
    needed = int(stats[0])
    edges = edges[:, :needed].numpy()
    if cell is None:
        images = np.zeros((needed, 3), dtype=int)
    else:
        images = np.round(shifts[:needed].double().numpy() @ np.linalg.inv(cell)).astype(int)
    return {(int(i), int(j), *map(int, image)) for i, j, image in zip(edges[0], edges[1], images)}


def _both(positions, cell, cutoff, grid, stencil, cell_capacity, edge_capacity, dtype):
    args = (torch.tensor(positions, dtype=dtype), None if cell is None else torch.tensor(cell, dtype=dtype), cutoff,
            list(grid), stencil, cell_capacity, edge_capacity)
    return scripted_cell_list(*args, CANDIDATES_PER_CHUNK), torch.ops.mace_lp.cell_list(*args)


def _assert_identical(reference, ours):
    for name, expected, found in zip(("edges", "shifts", "stats"), reference, ours):
        assert found.dtype == expected.dtype and found.shape == expected.shape, name
        assert torch.equal(found, expected), name


BOXES = {
    "cubic": lambda rng: np.diag([12.0, 13.0, 14.0]),
    "triclinic": lambda rng: _triclinic(rng, (12.0, 13.0, 14.0)),
    "flat triclinic": lambda rng: _triclinic(rng, (9.0, 5.0, 11.0)),
    "thinner than the cutoff": lambda rng: _triclinic(rng, (3.1, 3.7, 2.6)),  # images +-2 along c
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("box_name", list(BOXES))
def test_periodic_list_equals_torchscript_and_brute_force(box_name, dtype):
    rng = np.random.default_rng(list(BOXES).index(box_name))
    cell = BOXES[box_name](rng)
    n = 30 if box_name == "thinner than the cutoff" else 90
    positions = rng.uniform(-0.5, 1.5, (n, 3)) @ cell  # unwrapped: some atoms outside the box
    reference_pairs, distances = brute_force_pairs(positions, cell, NEAR_CUTOFF + 0.2)
    cutoff = cutoff_with_margin(distances)
    reference_pairs, _ = brute_force_pairs(positions, cell, cutoff)
    capacity = plan_capacity(n, cutoff, cell, positions)
    grid, stencil, cell_capacity = capacity.list_arguments(n)
    reference, ours = _both(positions, cell, cutoff, grid, stencil, cell_capacity, capacity.edge_capacity, dtype)
    _assert_identical(reference, ours)
    edges, shifts, stats = ours
    assert int(stats[0]) == len(reference_pairs) < capacity.edge_capacity and int(stats[2]) == 1
    assert _pairs_of(edges, shifts, stats, positions, cell) == reference_pairs
    # Unwrapped positions: pos[j] - pos[i] + shift is the pair vector itself.
    needed = int(stats[0])
    pos = torch.tensor(positions, dtype=torch.float64)
    vectors = pos[edges[1, :needed]] - pos[edges[0, :needed]] + shifts[:needed].double()
    assert float(vectors.norm(dim=1).max()) < cutoff
    # Padding: self-pairs spread over the atoms, a shift longer than the cutoff.
    assert torch.equal(edges[0, needed:], torch.arange(needed, capacity.edge_capacity) % n)
    assert torch.equal(edges[0, needed:], edges[1, needed:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["one cell", "grid"])
def test_non_periodic_cluster_equals_torchscript_and_brute_force(layout, dtype):
    rng = np.random.default_rng(5)
    positions = rng.uniform(0, 13, (70, 3))
    positions[:5] += 30.0  # a far-away group: empty cells in between
    reference_pairs, distances = brute_force_pairs(positions, None, NEAR_CUTOFF + 0.2)
    cutoff = cutoff_with_margin(distances)
    reference_pairs, _ = brute_force_pairs(positions, None, cutoff)
    if layout == "one cell":  # what an exported non-periodic module passes
        grid, stencil, cell_capacity = plan_capacity(70, cutoff, None, positions).list_arguments(70)
    else:
        grid = [4, 4, 4]  # cells of ~11 A over the bounding box
        stencil = torch.tensor([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
        cell_capacity = 40
    reference, ours = _both(positions, None, cutoff, grid, stencil, cell_capacity, 3000, dtype)
    _assert_identical(reference, ours)
    assert int(ours[2][1]) <= cell_capacity
    assert _pairs_of(*ours, positions, None) == reference_pairs and len(reference_pairs) > 0
    assert not ours[1][: int(ours[2][0])].any()  # no shifts without a box (padding has its own)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("overflow", ["edges", "cell"])
def test_overflow_is_reported_and_stored_like_torchscript(overflow, dtype):
    """Which edges an overflowing list keeps is defined (the first in scan order, then sorted),
    and stats tell how much room was missing: both as in the TorchScript list."""
    rng = np.random.default_rng(11)
    cell = _triclinic(rng, (14.0, 13.0, 15.0))
    positions = rng.uniform(0, 1, (150, 3)) @ cell
    fitting = plan_capacity(150, NEAR_CUTOFF, cell, positions)
    if overflow == "edges":
        capacity = dataclasses.replace(fitting, edge_capacity=fitting.edge_capacity // 3)
    else:
        capacity = dataclasses.replace(fitting, cell_capacity=2)
    grid, stencil, cell_capacity = capacity.list_arguments(150)
    reference, ours = _both(positions, cell, NEAR_CUTOFF, grid, stencil, cell_capacity, capacity.edge_capacity, dtype)
    _assert_identical(reference, ours)
    stats = ours[2].tolist()
    needed_pairs, _ = brute_force_pairs(positions, cell, NEAR_CUTOFF)
    if overflow == "edges":
        assert stats[0] == len(needed_pairs) > capacity.edge_capacity
    else:
        assert stats[1] > 2 and stats[0] < len(needed_pairs)  # atoms past the cell's room are not seen


def test_bad_arguments_name_the_problem():
    positions = torch.zeros((4, 3))
    stencil = torch.zeros((1, 3), dtype=torch.long)
    with pytest.raises(RuntimeError, match="cell must have the dtype and device of positions"):
        torch.ops.mace_lp.cell_list(positions, torch.eye(3, dtype=torch.float64), 4.0, [1, 1, 1], stencil, 4, 10)
    with pytest.raises(RuntimeError, match="stencil must be int64"):
        torch.ops.mace_lp.cell_list(positions, None, 4.0, [1, 1, 1], stencil.int(), 4, 10)
    with pytest.raises(RuntimeError, match="edge_capacity must be >= 1"):
        torch.ops.mace_lp.cell_list(positions, None, 4.0, [1, 1, 1], stencil, 4, 0)
    with pytest.raises(RuntimeError, match="grid must give the cells along each of the 3 box vectors"):
        torch.ops.mace_lp.cell_list(positions, None, 4.0, [1, 1], stencil, 4, 10)


def test_scripted_function_calls_the_operator():
    rng = np.random.default_rng(2)
    cell = np.diag([10.0, 11.0, 12.0])
    positions = torch.tensor(rng.uniform(0, 1, (40, 3)) @ cell)
    capacity = plan_capacity(40, NEAR_CUTOFF, cell, positions.numpy())
    grid, stencil, cell_capacity = capacity.list_arguments(40)
    scripted = torch.jit.script(native_cell_list)
    assert "mace_lp::cell_list" in str(scripted.graph)
    args = (positions, torch.tensor(cell), NEAR_CUTOFF, grid, stencil, cell_capacity, capacity.edge_capacity)
    _assert_identical(scripted_cell_list(*args, CANDIDATES_PER_CHUNK), scripted(*args))


# --- the exported module ---------------------------------------------------------------------

@pytest.mark.parametrize("system_name", ["water", "acetamide"])
def test_exported_module_with_native_list_equals_the_torchscript_one(system_name):
    """Same edges in the same order: the same energy and forces to the last bit (fp64)."""
    from openmm_mace_lp.export import build_force_module

    from .helpers import acetamide, model, water_box

    system = water_box(3) if system_name == "water" else acetamide()
    periodic = system.box is not None
    r_max = float(model().r_max)
    capacity = plan_capacity(len(system.positions), r_max, None if not periodic else system.box * 10.0,
                             system.positions * 10.0)
    results = {}
    for impl in (NATIVE_LIST, TORCHSCRIPT_LIST):
        module = build_force_module(model(), "fp64", "e3nn", system.atomic_numbers, periodic=periodic,
                                    energy_type="energy", capacity=capacity, neighbor_list=impl)
        assert module.neighbor_list_impl == impl
        assert ("mace_lp::cell_list" in str(module._fixed_list.inlined_graph)) == (impl == NATIVE_LIST)
        box = torch.tensor(system.box) if periodic else None
        energy, forces = module(torch.tensor(system.positions), box)
        results[impl] = (float(energy), forces.clone(), module.neighbor_stats(torch.tensor(system.positions), box))
    assert np.isfinite(results[NATIVE_LIST][0])
    assert results[NATIVE_LIST][0] == results[TORCHSCRIPT_LIST][0]
    assert torch.equal(results[NATIVE_LIST][1], results[TORCHSCRIPT_LIST][1])
    assert torch.equal(results[NATIVE_LIST][2], results[TORCHSCRIPT_LIST][2])


def test_export_cache_key_and_metadata_record_the_choice(tmp_path_factory):
    from openmm_mace_lp.export import export_to_file, read_metadata

    from .helpers import model, model_file, water_box

    system = water_box(2)
    capacity = plan_capacity(len(system.positions), float(model().r_max), system.box * 10.0, system.positions * 10.0)
    path = model_file(tmp_path_factory.getbasetemp())
    chosen = export_to_file(path, "fp64", "e3nn", system.atomic_numbers, periodic=True, capacity=capacity)
    native_file = export_to_file(path, "fp64", "e3nn", system.atomic_numbers, periodic=True, capacity=capacity,
                                 neighbor_list=NATIVE_LIST)
    torchscript_file = export_to_file(path, "fp64", "e3nn", system.atomic_numbers, periodic=True, capacity=capacity,
                                      neighbor_list=TORCHSCRIPT_LIST)
    assert chosen == native_file != torchscript_file  # the library is loaded: native by default
    assert read_metadata(native_file)["neighbor_list_impl"] == NATIVE_LIST
    assert read_metadata(torchscript_file)["neighbor_list_impl"] == TORCHSCRIPT_LIST
    dynamic = export_to_file(path, "fp64", "e3nn", system.atomic_numbers, periodic=True)
    assert read_metadata(dynamic)["neighbor_list_impl"] == TORCHSCRIPT_LIST  # the data-sized list is TorchScript
    with pytest.raises(ValueError, match="fixed capacities"):
        export_to_file(path, "fp64", "e3nn", system.atomic_numbers, periodic=True, neighbor_list=NATIVE_LIST)
    with pytest.raises(ValueError, match="Unknown neighbour list implementation"):
        resolve_neighbor_list_impl("cuda-graph", "cpu", True)


# --- the loader ------------------------------------------------------------------------------

def _python(code: str, **environment: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if not name.startswith("OPENMM_MACE_LP_NATIVE")}
    env.update(OMP_NUM_THREADS="1", **environment)
    return subprocess.run([sys.executable, "-W", "default", "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_turned_off_loads_nothing_and_says_nothing():
    result = _python("""
        import torch, openmm_mace_lp
        from openmm_mace_lp import native
        from openmm_mace_lp.neighbors import resolve_neighbor_list_impl
        print(native.available("cpu"), torch._C._dispatch_has_kernel("mace_lp::cell_list"),
              resolve_neighbor_list_impl(None, "cpu", True))
        """, OPENMM_MACE_LP_NATIVE="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "torchscript"]
    assert "openmm-mace-lp:" not in result.stderr and "NativeLibraryWarning" not in result.stderr


def test_missing_library_warns_once_and_falls_back(tmp_path):
    result = _python("""
        import numpy as np, torch, openmm_mace_lp
        from openmm_mace_lp import native
        from openmm_mace_lp.neighbors import padded_neighbor_list, plan_capacity, resolve_neighbor_list_impl
        assert not torch._C._dispatch_has_kernel("mace_lp::cell_list")
        print(resolve_neighbor_list_impl(None, "cpu", True))
        try:
            resolve_neighbor_list_impl("native", "cpu", True)
        except RuntimeError as error:
            print("refused:", "is not in" in str(error))
        rng = np.random.default_rng(0)
        positions = rng.uniform(0, 9, (30, 3))
        capacity = plan_capacity(30, 4.0, np.eye(3) * 9, positions)
        grid, stencil, cell_capacity = capacity.list_arguments(30)
        stats = torch.jit.script(padded_neighbor_list)(torch.tensor(positions), torch.eye(3).double() * 9, 4.0, grid,
                                                       stencil, cell_capacity, capacity.edge_capacity, 4000000)[2]
        print(int(stats[0]) > 0)
        """, OPENMM_MACE_LP_NATIVE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["torchscript", "refused:", "True", "True"]
    warnings = [line for line in result.stderr.splitlines() if "NativeLibraryWarning" in line]
    assert len(warnings) == 1, result.stderr
    assert f"libmace_lp_cpu.so is not in {tmp_path}" in warnings[0] and "--no-build-isolation" in warnings[0]


def test_library_built_for_another_torch_is_not_loaded(tmp_path):
    """Loading a library built against another torch could crash the process: the recorded
    version decides first."""
    for name in (native.library_file(native.CPU_LIBRARY), native.library_file(native.CUDA_LIBRARY)):
        (tmp_path / name).write_bytes(b"not a library")
    (tmp_path / native.BUILD_INFO).write_text(json.dumps({"libraries": [], "torch_version": "1.13.0"}))
    state = native.NativeState(tmp_path)
    native._load_into(state)
    assert state.loaded == {}
    assert "built against torch 1.13.0" in state.problem and torch.__version__ in state.problem
    assert "\n" not in state.problem


def test_create_system_takes_the_neighbor_list_choice(tmp_path_factory):
    """``createSystem(neighborList=...)`` reaches the export: on the CPU the fixed list is native
    by default and TorchScript when asked for, and the metadata of the file the TorchForce runs says so."""
    from openmmml import MLPotential

    from openmm_mace_lp.bench import exported_module_path
    from openmm_mace_lp.export import read_metadata

    from .helpers import model_file, water_box

    system = water_box(2)
    path = model_file(tmp_path_factory.getbasetemp())
    used = {}
    for choice in (None, TORCHSCRIPT_LIST):
        omm = MLPotential("mace-lp", modelPath=str(path), policy="fp64", backend="e3nn").createSystem(
            system.topology, device="cpu", fixedNeighborList=True, positions=system.positions, neighborList=choice)
        used[choice] = read_metadata(exported_module_path(omm))["neighbor_list_impl"]
    assert used == {None: NATIVE_LIST, TORCHSCRIPT_LIST: TORCHSCRIPT_LIST}


def test_default_list_is_native_wherever_the_library_has_the_device_kernel(monkeypatch):
    """The default follows the loaded kernels: native on CUDA where the library has its CUDA
    kernel (measured faster in a captured step), TorchScript where it has none; the data-sized
    list stays TorchScript."""
    from openmm_mace_lp import native

    for has_cuda_kernel, expected in ((True, NATIVE_LIST), (False, TORCHSCRIPT_LIST)):
        monkeypatch.setattr(native, "available", lambda device_type="cpu", flag=has_cuda_kernel:
                            flag if device_type == "cuda" else True)
        assert resolve_neighbor_list_impl(None, "cuda", True) == expected
        assert resolve_neighbor_list_impl(None, "cuda", False) == TORCHSCRIPT_LIST
        assert resolve_neighbor_list_impl(TORCHSCRIPT_LIST, "cuda", True) == TORCHSCRIPT_LIST
