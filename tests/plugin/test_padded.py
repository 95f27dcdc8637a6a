"""The fixed-capacity (CUDA-graph capturable) neighbour list and force module, on the CPU.

Its edges must be exactly the dynamic cell list's (itself checked against matscipy), its padding
must change nothing, and an exceeded capacity must poison the output instead of dropping pairs:
+inf energy (a barostat rejects the trial) and NaN forces.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from openmm_mace_lp.export import build_force_module
from openmm_mace_lp.neighbors import (CANDIDATES_PER_CHUNK, NeighborCapacity, neighbor_list, padded_neighbor_list,
                                      plan_capacity)

from .helpers import acetamide, eager_reference, model, model_file, rel_error, torchforce_system, water_box

CUTOFF = 4.0


def _triclinic(rng, lengths):
    a, b, c = lengths
    return np.array([[a, 0, 0], [rng.uniform(-a / 2, a / 2), b, 0],
                     [rng.uniform(-a / 2, a / 2), rng.uniform(-b / 2, b / 2), c]])


def _padded(positions, cell, capacity: NeighborCapacity):
    cell_t = None if cell is None else torch.tensor(cell)
    grid, stencil, cell_capacity = capacity.list_arguments(len(positions))
    return torch.jit.script(padded_neighbor_list)(
        torch.tensor(positions), cell_t, CUTOFF, grid, stencil, cell_capacity, capacity.edge_capacity,
        CANDIDATES_PER_CHUNK)


def _pairs(positions, edges, shifts):
    vectors = positions[edges[1].numpy()] - positions[edges[0].numpy()] + shifts.numpy()
    return sorted((int(a), int(b), *np.round(v, 8)) for a, b, v in zip(edges[0], edges[1], vectors))


@pytest.mark.parametrize("lengths", [(12.0, 13.0, 14.0), (9.0, 5.0, 11.0), (3.1, 3.7, 2.6), (22.0, 21.0, 23.0)])
def test_padded_edges_equal_the_dynamic_list(lengths):
    rng = np.random.default_rng(7)
    cell = _triclinic(rng, lengths)
    n = 600 if lengths[0] > 20 else 40
    positions = rng.uniform(-0.5, 1.5, (n, 3)) @ cell
    capacity = plan_capacity(n, CUTOFF, cell, positions)
    edges, shifts, stats = _padded(positions, cell, capacity)
    needed = int(stats[0])
    reference_edges, reference_shifts = neighbor_list(torch.tensor(positions), torch.tensor(cell), CUTOFF)
    assert needed == reference_edges.shape[1] <= capacity.edge_capacity
    assert int(stats[1]) <= capacity.cell_capacity and int(stats[2]) == 1
    assert _pairs(positions, edges[:, :needed], shifts[:needed]) == _pairs(positions, reference_edges, reference_shifts)
    # Padding: self-pairs spread over the atoms, longer than the cutoff.
    assert edges.shape[1] == capacity.edge_capacity > needed
    assert torch.equal(edges[0, needed:], edges[1, needed:])
    assert torch.equal(edges[0, needed:], torch.arange(needed, capacity.edge_capacity) % n)
    assert torch.allclose(shifts[needed:], torch.tensor([2.0 * CUTOFF, 0.0, 0.0], dtype=shifts.dtype))


def test_padded_non_periodic_equals_the_dynamic_list():
    rng = np.random.default_rng(3)
    positions = rng.uniform(0, 15, (70, 3))
    capacity = plan_capacity(70, CUTOFF, None, positions)
    edges, shifts, stats = _padded(positions, None, capacity)
    reference_edges, reference_shifts = neighbor_list(torch.tensor(positions), None, CUTOFF)
    needed = int(stats[0])
    assert needed == reference_edges.shape[1]
    assert _pairs(positions, edges[:, :needed], shifts[:needed]) == _pairs(positions, reference_edges, reference_shifts)


def test_capacity_estimate_from_density_covers_a_water_box():
    """Without positions the edge capacity comes from the mean density with a 25% margin."""
    system = water_box(4)
    box, positions = system.box * 10.0, system.positions * 10.0
    estimated = plan_capacity(len(positions), CUTOFF, box)
    counted = plan_capacity(len(positions), CUTOFF, box, positions)
    needed = neighbor_list(torch.tensor(positions), torch.tensor(box), CUTOFF)[0].shape[1]
    assert needed < counted.edge_capacity <= 1.1 * needed + 33
    assert needed < estimated.edge_capacity < 1.6 * needed
    assert estimated.grid == counted.grid


def _module(capacity, system, policy="fp64", backend="e3nn"):
    return build_force_module(model(), policy, backend, system.atomic_numbers, periodic=system.box is not None,
                              energy_type="energy", capacity=capacity)


def _call(module, system, positions=None, box=None):
    pos = torch.tensor(system.positions if positions is None else positions)
    box = system.box if box is None else box
    cell = None if box is None else torch.tensor(box)
    energy, forces = module(pos, cell)
    return float(energy), forces.double().numpy().copy()  # the next call reuses the tensors


def _capacity(system, **kwargs):
    box = None if system.box is None else system.box * 10.0
    return plan_capacity(len(system.positions), float(model().r_max), box, system.positions * 10.0, **kwargs)


@pytest.mark.parametrize("backend", ["e3nn", "cueq"])
@pytest.mark.parametrize("system_name", ["water", "acetamide"])
def test_padded_module_matches_eager_mace(tmp_path_factory, backend, system_name):
    """Padding edges add exactly nothing: fp64 against mace's own calculator, both backends."""
    system = water_box(3) if system_name == "water" else acetamide()
    reference_energy, reference_forces = eager_reference(model_file(tmp_path_factory.getbasetemp()), system)
    energy, forces = _call(_module(_capacity(system), system, backend=backend), system)
    assert rel_error(forces, reference_forces) <= 1e-10
    assert abs(energy - reference_energy) <= 1e-10 * abs(reference_energy)


@pytest.mark.parametrize("policy", ["fp32", "bf16"])
def test_padding_is_exact_in_low_precision(policy):
    """bf16 linears on padded edges see zeros: the result equals the unpadded module's."""
    system = water_box(3)
    padded = _call(_module(_capacity(system, edge_margin=0.5), system, policy), system)
    dynamic = _call(_module(None, system, policy), system)
    assert padded[0] == pytest.approx(dynamic[0], rel=1e-6)
    assert rel_error(padded[1], dynamic[1]) <= 1e-5


def test_edge_overflow_poisons_energy_and_forces():
    system = water_box(3)
    fitting = _capacity(system)
    module = _module(dataclasses.replace(fitting, edge_capacity=fitting.edge_capacity // 2), system)
    energy, forces = _call(module, system)
    assert energy == np.inf and np.isnan(forces).all()
    needed, capacity, _, _, grid_ok = module.neighbor_stats(torch.tensor(system.positions), torch.tensor(system.box)).tolist()
    assert needed > capacity == fitting.edge_capacity // 2 and grid_ok == 1


def test_cell_overflow_poisons_energy_and_forces():
    system = water_box(4)
    fitting = _capacity(system)
    assert len(fitting.grid) == 3
    module = _module(dataclasses.replace(fitting, cell_capacity=2), system)
    energy, forces = _call(module, system)
    assert energy == np.inf and np.isnan(forces).all()
    stats = module.neighbor_stats(torch.tensor(system.positions), torch.tensor(system.box)).tolist()
    assert stats[2] > stats[3] == 2


def test_box_shrinking_past_the_grid_margin_poisons_the_output():
    """The grid allows 10% shrinkage per box vector; a box 20% smaller no longer fits it."""
    system = water_box(4, spacing=0.45)
    capacity = _capacity(system, edge_margin=3.0)  # room for the denser box: only the grid fails
    assert max(capacity.grid) > 1
    module = _module(capacity, system)
    shrunk = 0.8
    energy, forces = _call(module, system, positions=system.positions * shrunk, box=system.box * shrunk)
    assert energy == np.inf and np.isnan(forces).all()
    stats = module.neighbor_stats(torch.tensor(system.positions * shrunk), torch.tensor(system.box * shrunk)).tolist()
    assert stats[4] == 0
    fine = _call(module, system, positions=system.positions * 0.95, box=system.box * 0.95)
    assert np.isfinite(fine[0])


def test_graph_modules_reuse_their_output_tensors():
    """openmm-torch keeps the outputs of the last captured graph: both its graphs (with and
    without forces) must therefore write the same tensors, and each call the current values."""
    system = water_box(3)
    module = _module(_capacity(system), system)
    first_energy, first_forces = module(torch.tensor(system.positions), torch.tensor(system.box))
    first = (float(first_energy), first_forces.clone())
    moved = system.positions * 1.01
    second_energy, second_forces = module(torch.tensor(moved), torch.tensor(system.box * 1.01))
    assert second_energy.data_ptr() == first_energy.data_ptr()
    assert second_forces.data_ptr() == first_forces.data_ptr()
    assert float(first_energy) != first[0] and not torch.equal(first_forces, first[1])
    assert float(second_energy) == pytest.approx(_call(_module(None, system), system, moved, system.box * 1.01)[0],
                                                 rel=1e-12)


def test_result_does_not_depend_on_grid_or_capacity():
    """Edges are put in a canonical order: a force re-sized mid-run (another grid, more slots)
    gives the same energy and forces to the last bit."""
    system = water_box(4, spacing=0.45)
    fine = _capacity(system)
    coarse = plan_capacity(len(system.positions), float(model().r_max), system.box * 10.0,
                           system.positions * 10.0, edge_margin=0.7, box_margin=1.0)
    assert fine.grid != coarse.grid and fine.edge_capacity != coarse.edge_capacity
    first = _call(_module(fine, system), system)
    second = _call(_module(coarse, system), system)
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])


def test_fixed_capacity_npt_rejects_overflowing_compressions(tmp_path_factory):
    """A Monte Carlo barostat trial that overflows the fixed capacity must be rejected: OpenMM
    accepts a trial whose energy is NaN (`w > 0` is false) and the next step would be NaN; +inf
    it rejects. With no spare edge slot, almost every compression overflows."""
    import openmm
    import openmm.unit as unit

    from openmm_mace_lp.export import export_to_file

    system = water_box(3, spacing=0.31, seed=4)
    exact = _capacity(system, edge_margin=0.0)
    needed = int(neighbor_list(torch.tensor(system.positions * 10.0), torch.tensor(system.box * 10.0),
                               float(model().r_max))[0].shape[1])
    capacity = dataclasses.replace(exact, edge_capacity=needed)  # full: no compression fits
    path = export_to_file(model_file(tmp_path_factory.getbasetemp()), "fp64", "e3nn", system.atomic_numbers,
                          periodic=True, capacity=capacity)
    module = torch.jit.load(str(path))
    squeezed = 0.999
    energy, forces = module(torch.tensor(system.positions * squeezed), torch.tensor(system.box * squeezed))
    assert float(energy) == np.inf and torch.isnan(forces).all()  # a 0.1% compression overflows

    omm = torchforce_system(path, system)
    barostat = openmm.MonteCarloBarostat(1.0 * unit.bar, 300 * unit.kelvin, 1)
    barostat.setRandomNumberSeed(7)
    omm.addForce(barostat)
    # Atoms at rest and a vanishing time step: only the barostat changes the edges (thermal
    # motion could overflow a full list by itself).
    integrator = openmm.VerletIntegrator(1e-9 * unit.femtosecond)
    context = openmm.Context(omm, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(system.positions)
    volumes = []
    for _ in range(12):
        integrator.step(1)  # one barostat trial per step: about half are compressions
        state = context.getState(getPositions=True, getEnergy=True)
        volumes.append(state.getPeriodicBoxVolume().value_in_unit(unit.nanometer**3))
        assert np.isfinite(state.getPotentialEnergy()._value)
        assert np.isfinite(state.getPositions(asNumpy=True)._value).all()
    positions = state.getPositions(asNumpy=True)._value
    box = state.getPeriodicBoxVectors(asNumpy=True)._value
    edges, edge_capacity, *_ = module.neighbor_stats(torch.tensor(positions), torch.tensor(box)).tolist()
    assert edges <= edge_capacity
    assert min(volumes) >= float(np.linalg.det(system.box)) * squeezed ** 3  # no large compression got in


@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("system_name", ["water", "acetamide"])
def test_non_finite_coordinates_give_non_finite_results(kind, fixed, system_name):
    """A NaN or infinite coordinate must not make its atom silently drop out: the energy and
    every force are NaN, with the data-sized and the fixed-capacity list, periodic or not."""
    from .helpers import evaluate

    system = water_box(3) if system_name == "water" else acetamide()
    value = np.nan if kind == "nan" else np.inf

    def energy_and_forces(**inputs):
        if fixed:
            return _call(_module(_capacity(system), system), system, **inputs)
        return evaluate(system, **inputs)

    bad = system.positions.copy()
    bad[4, 1] = value
    energy, forces = energy_and_forces(positions=bad)
    assert np.isnan(energy) and np.isnan(forces).all()
    if system.box is not None:
        box = system.box.copy()
        box[2, 2] = value
        energy, forces = energy_and_forces(box=box)
        assert np.isnan(energy) and np.isnan(forces).all()


def test_capacity_watch_is_found_in_the_system_itself(tmp_path_factory):
    """The watch comes from the System's TorchForce, not from Python state on the System object:
    the System a Context hands back (a new wrapper, no attributes) still has it."""
    import openmm
    from openmmml import MLPotential

    from openmm_mace_lp.capacity import EXPORTS_ATTRIBUTE, watches_for
    from openmm_mace_lp.export import read_metadata

    system = water_box(3, seed=8)
    potential = MLPotential("mace-lp", modelPath=str(model_file(tmp_path_factory.getbasetemp())), policy="fp64",
                            backend="e3nn")
    omm = potential.createSystem(system.topology, device="cpu", fixedNeighborList=True, positions=system.positions)
    context = openmm.Context(omm, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    handed_back = context.getSystem()
    assert not hasattr(handed_back, EXPORTS_ATTRIBUTE)
    (watch,) = watches_for(handed_back)
    use = watch.use(system.positions, system.box)
    # Edges counted by brute force with the minimum image (the box is wider than two cutoffs).
    cutoff = float(model().r_max) / 10.0
    assert np.diag(system.box).min() > 2 * cutoff
    delta = system.positions[None, :, :] - system.positions[:, None, :]
    delta -= np.round(delta / np.diag(system.box)) * np.diag(system.box)
    distances = np.linalg.norm(delta, axis=-1)
    assert use.edges == int(((distances < cutoff) & (distances > 0)).sum())
    (record,) = getattr(omm, EXPORTS_ATTRIBUTE)
    assert use.edge_capacity == read_metadata(record["path"])["neighbor_capacity"]["edge_capacity"]
    assert watch.shortfall(system.positions, system.box) is None
    dynamic = potential.createSystem(system.topology, device="cpu")
    assert watches_for(dynamic) == []
