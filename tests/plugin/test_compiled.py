"""compiler="inductor": MACE's energy and forces compiled ahead of time, run from TorchScript.

The compiled module must give the TorchScript module's energy and forces (same policy, same
fixed-capacity list) and float64 eager mace's within the fp32 policy's error, also from a saved
file in plain openmm-torch (the package travels inside the file), and keep the guards of
``MACEForce`` (non-finite positions poison the result). One compile (CPU, ~1 min on 2 cores)
serves every test here.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openmm_mace_lp import native
from openmm_mace_lp.compiled import backend_request, check_compiler
from openmm_mace_lp.export import build_force_module
from openmm_mace_lp.neighbors import NeighborCapacity, plan_capacity

from .helpers import eager_reference, model, model_file, openmm_state, rel_error, torchforce_system, water_box


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """(system, capacity, compiled module, TorchScript module): fp32, one periodic water box.

    The compiled one comes through the public API, ``createSystem(compiler="inductor")`` with
    neither a backend nor ``fixedNeighborList``: the export must pick e3nn and the fixed list
    itself. The TorchScript one is built for the same capacities."""
    from openmmml import MLPotential

    from openmm_mace_lp.bench import exported_module_path
    from openmm_mace_lp.export import read_metadata

    if native.disabled_by_environment():
        pytest.skip("OPENMM_MACE_LP_NATIVE=0 turns the native library (mace_lp::AOTIPackage) off")
    assert native.available("cpu"), native.state().problem
    system = water_box(2)
    potential = MLPotential("mace-lp", modelPath=str(model_file(tmp_path_factory.getbasetemp())), policy="fp32")
    path = exported_module_path(potential.createSystem(system.topology, device="cpu", positions=system.positions,
                                                       compiler="inductor"))
    metadata = read_metadata(path)
    assert (metadata["compiler"], metadata["backend"]) == ("inductor", "e3nn")
    assert metadata["neighbor_capacity"] is not None
    capacity = NeighborCapacity(**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in metadata["neighbor_capacity"].items()})
    scripted = build_force_module(model("both"), "fp32", "e3nn", system.atomic_numbers, periodic=True,
                                  capacity=capacity)
    return system, capacity, torch.jit.load(path), scripted


def _call(module, system, positions=None):
    pos = torch.tensor(system.positions if positions is None else positions, dtype=torch.float64)
    energy, forces = module(pos, torch.tensor(system.box, dtype=torch.float64))
    return float(energy), forces.detach().double().numpy().copy()


def test_compiled_equals_torchscript_and_eager_float64(modules, tmp_path):
    system, _, compiled, scripted = modules
    energy, forces = _call(compiled, system)
    ts_energy, ts_forces = _call(scripted, system)
    # Same float32 arithmetic, fused in another order: agreement to float32 rounding.
    assert rel_error(forces, ts_forces) < 2e-6
    assert abs(energy - ts_energy) < 2e-6 * abs(ts_energy) + 1e-4
    # The independent reference: mace's own calculator in float64 (its energy includes the E0s).
    reference_energy, reference_forces = eager_reference(model_file(tmp_path), system)
    assert rel_error(forces, reference_forces) < 1e-4
    assert abs(energy + e0_sum(system) - reference_energy) < 1e-5 * abs(reference_energy) + 1e-3


def e0_sum(system) -> float:
    """The model's isolated-atom energies summed over the system, kJ/mol."""
    from openmm_mace_lp.export import EV_TO_KJ_PER_MOL

    mace = model("both")
    table = [int(z) for z in mace.atomic_numbers]
    e0 = mace.atomic_energies_fn.atomic_energies.detach().double().numpy().reshape(-1)
    return float(sum(e0[table.index(z)] for z in system.atomic_numbers)) * EV_TO_KJ_PER_MOL


def test_saved_file_runs_in_plain_openmm_torch_without_the_package_file(modules, tmp_path):
    system, _, compiled, scripted = modules
    path = tmp_path / "compiled.pt"
    torch.jit.save(compiled, str(path))
    energy, forces = openmm_state(torchforce_system(path, system), system)
    direct_energy, direct_forces = _call(compiled, system)
    assert abs(energy - direct_energy) < 1e-6 * abs(direct_energy) + 1e-5
    assert rel_error(forces, direct_forces) < 1e-6


def test_moved_atoms_change_the_result_as_in_torchscript(modules):
    """The package reads its inputs on every call (nothing of the first call's values is baked in)."""
    system, _, compiled, scripted = modules
    moved = system.positions + np.random.default_rng(3).normal(0.0, 0.002, system.positions.shape)
    energy, forces = _call(compiled, system, moved)
    ts_energy, ts_forces = _call(scripted, system, moved)
    assert rel_error(forces, ts_forces) < 2e-6 and abs(energy - ts_energy) < 2e-6 * abs(ts_energy) + 1e-4
    assert rel_error(forces, _call(compiled, system)[1]) > 1e-3


def test_non_finite_positions_poison_the_compiled_result(modules):
    system, _, compiled, _ = modules
    bad = system.positions.copy()
    bad[1, 2] = np.nan
    energy, forces = _call(compiled, system, bad)
    assert math.isnan(energy) and np.isnan(forces).all()


def test_compiler_choices_are_checked_with_the_fix():
    with pytest.raises(ValueError, match="fixed-capacity neighbour list, which it implies"):
        check_compiler("inductor", fixed_capacity=False)
    with pytest.raises(ValueError, match="'torchscript', 'inductor'"):
        check_compiler("aot", fixed_capacity=True)
    check_compiler("torchscript", fixed_capacity=False)
    assert backend_request("inductor", "auto") == "e3nn" and backend_request("torchscript", "auto") == "auto"
    assert backend_request("inductor", "cueq") == "cueq"  # refused later, by name


@pytest.mark.parametrize("backend", ["cueq", "cueq-fused"])
def test_cuequivariance_backends_are_refused_before_any_compile(backend):
    """Their packages crash at the first run (compiled.COMPILED_BACKENDS): refused with the fix."""
    system = water_box(2)
    mace = model("both")
    capacity = plan_capacity(len(system.positions), float(mace.r_max), system.box * 10.0, system.positions * 10.0)
    with pytest.raises(ValueError, match="backend='e3nn' with compiler='inductor'"):
        build_force_module(mace, "fp32", backend, system.atomic_numbers, periodic=True, capacity=capacity,
                           compiler="inductor")


def test_without_the_native_library_the_compiled_path_says_how_to_get_it(monkeypatch):
    from openmm_mace_lp.compiled import CompilerUnavailable, require_package_class

    monkeypatch.setenv("OPENMM_MACE_LP_NATIVE", "0")
    with pytest.raises(CompilerUnavailable, match="OPENMM_MACE_LP_NATIVE=0 turns it off.*compiler='torchscript'"):
        require_package_class()


def test_cuda_compiles_are_refused_unless_asked_for(monkeypatch):
    """Every CUDA package crashed on torch 2.11 (compiled.CUDA_OPT_IN): refused by name, with the fix,
    before any export work; the CPU is unaffected, and the variable lets a tester through."""
    from openmm_mace_lp.compiled import CUDA_OPT_IN, check_compiled_device

    monkeypatch.delenv(CUDA_OPT_IN, raising=False)
    system = water_box(2)
    mace = model("both")
    capacity = plan_capacity(len(system.positions), float(mace.r_max), system.box * 10.0, system.positions * 10.0)
    with pytest.raises(ValueError, match="refused on CUDA.*compiler='torchscript' on CUDA.*OPENMM_MACE_LP_CUDA_AOTI=1"):
        build_force_module(mace, "fp32", "e3nn", system.atomic_numbers, periodic=True, device="cuda",
                           capacity=capacity, compiler="inductor")
    check_compiled_device("inductor", "cpu")
    check_compiled_device("torchscript", "cuda")
    monkeypatch.setenv(CUDA_OPT_IN, "1")
    check_compiled_device("inductor", "cuda")


def test_a_config_names_the_device_it_refuses_a_compiled_model_on(monkeypatch):
    from openmm_mace_lp.simulations.config import _check_compiler_device

    monkeypatch.delenv("OPENMM_MACE_LP_CUDA_AOTI", raising=False)
    with pytest.raises(ValueError, match="model.compiler = 'inductor' with platform.device = 'cuda:1': .*refused"):
        _check_compiler_device("inductor", "cuda:1")
    _check_compiler_device("inductor", "cpu")
