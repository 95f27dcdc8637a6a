"""GPU-node tests of compiler="inductor": the AOTInductor package on CUDA (e3nn backend).

Skipped without CUDA (CI); run on the GPU node with `pytest -m gpu tests/gpu`. The compiled
module must equal the TorchScript module on the same device (same policy and list), replay in a
CUDA graph with new positions, and run inside openmm-torch's captured step. The test
architecture is the small one ("both", max_ell 1): the e3nn MACE-OFF-like one ("full") took
more than a minute to compile on an H200. cuEquivariance backends are refused (CPU test), and
so is CUDA itself unless OPENMM_MACE_LP_CUDA_AOTI=1 (compiled.CUDA_OPT_IN; the CPU test checks
the refusal): every CUDA package crashed on torch 2.11, so these tests run only when asked for.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.gpu import captured

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
# CUDA packages crashed the process on torch 2.11 (compiled.CUDA_OPT_IN): these run only when asked.
opted_in = pytest.mark.skipif(os.environ.get("OPENMM_MACE_LP_CUDA_AOTI") != "1",
                              reason="CUDA AOTInductor packages crash on torch 2.11; set OPENMM_MACE_LP_CUDA_AOTI=1")


def _modules(policy: str, backend: str):
    from openmm_mace_lp.export import build_force_module
    from openmm_mace_lp.neighbors import plan_capacity
    from tests.plugin.helpers import model, water_box

    system = water_box(4, seed=5)
    mace = model("both")
    capacity = plan_capacity(len(system.positions), float(mace.r_max), system.box * 10.0, system.positions * 10.0)
    common = dict(periodic=True, device="cuda", capacity=capacity)
    compiled = build_force_module(mace, policy, backend, system.atomic_numbers, compiler="inductor", **common)
    scripted = build_force_module(mace, policy, backend, system.atomic_numbers, **common)
    return system, compiled, scripted


@opted_in
@pytest.mark.parametrize("policy", ["fp32", "bf16"])
def test_compiled_cuda_module_equals_torchscript_and_replays_in_a_graph(policy):
    system, compiled, scripted = _modules(policy, "e3nn")
    box = torch.tensor(system.box, device="cuda", dtype=torch.float32)
    static_pos = torch.tensor(system.positions, device="cuda", dtype=torch.float32)
    energy, forces = (t.clone() for t in compiled(static_pos, box))
    ts_energy, ts_forces = (t.clone() for t in scripted(static_pos, box))
    tolerance = 2e-5 if policy == "fp32" else 1e-2  # bf16: operand roundings may fall differently
    assert float(energy) == pytest.approx(float(ts_energy), rel=tolerance, abs=1e-3)
    assert float((forces - ts_forces).norm() / ts_forces.norm()) < tolerance
    graph, (out_energy, out_forces) = captured(compiled, static_pos, box)
    moved = system.positions + np.random.default_rng(1).normal(scale=0.01, size=system.positions.shape)
    static_pos.copy_(torch.tensor(moved, device="cuda", dtype=torch.float32))
    graph.replay()
    replayed_energy, replayed_forces = out_energy.clone(), out_forces.clone()
    expected_energy, expected_forces = (t.clone() for t in compiled(static_pos, box))
    assert float(replayed_energy) == pytest.approx(float(expected_energy), rel=1e-6, abs=1e-3)
    assert torch.allclose(replayed_forces, expected_forces, rtol=1e-4, atol=1e-3)
    assert float((replayed_forces - forces).norm()) > 0  # the replay saw the new positions


@opted_in
def test_compiled_force_in_openmm_cuda_graph_md(tmp_path_factory):
    """MLPotential(compiler="inductor") steps on the CUDA platform with a captured graph; its
    forces at the end equal the TorchScript module's at the same positions."""
    import openmm
    import openmm.unit as unit
    from openmmml import MLPotential

    from tests.plugin.helpers import model_file, rel_error, water_box

    path = model_file(tmp_path_factory.getbasetemp(), "both")
    system = water_box(4, seed=6)
    potential = MLPotential("mace-lp", modelPath=str(path), policy="fp32", backend="e3nn")
    results = {}
    for compiler in ("inductor", "torchscript"):
        omm = potential.createSystem(system.topology, device="cuda", cudaGraphs=True, positions=system.positions,
                                     compiler=compiler)
        integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
        context = openmm.Context(omm, integrator, openmm.Platform.getPlatformByName("CUDA"), {"Precision": "mixed"})
        context.setPositions(system.positions)
        context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
        integrator.setRandomNumberSeed(3)
        integrator.step(30)
        context.getState(getEnergy=True)  # an energy-only graph, then steps again
        integrator.step(15)
        if compiler == "inductor":
            reference_positions = context.getState(getPositions=True).getPositions(asNumpy=True)
        context.setPositions(reference_positions)
        state = context.getState(getForces=True, getEnergy=True)
        results[compiler] = (state.getPotentialEnergy()._value, np.asarray(state.getForces(asNumpy=True)._value))
    assert np.isfinite(results["inductor"][0])
    assert results["inductor"][0] == pytest.approx(results["torchscript"][0], rel=1e-5, abs=1e-2)
    assert rel_error(results["inductor"][1], results["torchscript"][1]) <= 2e-5
