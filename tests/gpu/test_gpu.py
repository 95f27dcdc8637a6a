"""GPU-node tests: CUDA kernels of the policies, cuEquivariance kernels under TorchScript, MD on CUDA.

Skipped on machines without CUDA (CI); run on the GPU node with `pytest -m gpu tests/gpu`.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.gpu import captured

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_native_low_precision_matmul_matches_its_emulation(low):
    """cuBLAS (low operands, fp32 sum, rounded result) equals the CPU emulation; gradients flow."""
    from openmm_mace_lp.linears import policy_matmul
    from openmm_mace_lp.policy import MATMUL_BF16, MATMUL_FP16

    mode = MATMUL_BF16 if low == torch.bfloat16 else MATMUL_FP16
    x = torch.randn(512, 256, device="cuda", requires_grad=True)
    w_low = torch.randn(256, 128, device="cuda").to(low)
    native = policy_matmul(x, w_low.float(), w_low, mode)
    emulated = policy_matmul(x.cpu(), w_low.float().cpu(), w_low.cpu(), mode)
    assert native.dtype == torch.float32
    # summation order (and cuBLAS's split-K reductions) may move the final rounding by an ulp
    ulp = 2.0 ** -7 if low == torch.bfloat16 else 2.0 ** -10
    # and where the fp32 sum cancels, its own order-dependent error (~1e-4 of the largest term
    # for 256 products) exceeds the relative ulp of the small result
    scale = float(emulated.abs().max())
    assert torch.allclose(native.cpu(), emulated, rtol=2 * ulp, atol=1e-4 * scale)
    (grad,) = torch.autograd.grad(native.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("policy_name", ["bf16", "fp16"])
def test_cublas_low_precision_products_accumulate_in_float32(policy_name):
    """The bf16/fp16 rows promise float32 accumulation; torch lets cuBLAS reduce in the low
    format unless told not to (require_fp32_accumulation). With 4096 products per entry, a
    low-precision reduction would move most results off the correctly rounded exact sum."""
    from openmm_mace_lp.linears import policy_matmul
    from openmm_mace_lp.policy import get_policy, require_fp32_accumulation

    policy = get_policy(policy_name)
    require_fp32_accumulation(policy)
    assert not torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    assert not torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
    low = torch.bfloat16 if policy_name == "bf16" else torch.float16
    generator = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(256, 4096, device="cuda", generator=generator).to(low).float()
    w_low = (torch.randn(4096, 64, device="cuda", generator=generator) / 64).to(low)
    native = policy_matmul(x, w_low.float(), w_low, policy.matmul_mode)
    exact = (x.double() @ w_low.double()).to(low).double()  # products summed exactly, rounded once
    assert (native.double() == exact).float().mean() > 0.95


@pytest.mark.parametrize("backend", ["cueq", "cueq-fused", "e3nn"])
@pytest.mark.parametrize("policy", ["fp64", "fp32", "tf32", "bf16", "fp16"])
def test_cuda_module_matches_cpu_float64(backend, policy):
    from openmm_mace_lp.backend import cueq_kernels_available
    from openmm_mace_lp.export import build_force_module
    from tests.plugin.helpers import evaluate, model, rel_error, water_box

    if backend.startswith("cueq") and not cueq_kernels_available():
        pytest.fail("cuequivariance_ops_torch does not import on this GPU machine")
    system = water_box(3, seed=2)
    _, reference = evaluate(system, "fp64", "e3nn", arch_name="full")
    module = build_force_module(model("full"), policy, backend, system.atomic_numbers, periodic=True, device="cuda")
    _, forces = module(torch.tensor(system.positions, device="cuda"), torch.tensor(system.box, device="cuda"))
    error = rel_error(forces.double().cpu().numpy(), reference)
    low, high = {"fp64": (0, 1e-10), "fp32": (0, 1e-5), "tf32": (0.1 * 2**-11, 20 * 2**-11),
                 "bf16": (0.1 * 2**-8, 20 * 2**-8), "fp16": (0.1 * 2**-11, 20 * 2**-11)}[policy]
    assert low <= error <= high, error


@pytest.mark.parametrize("policy", ["fp32", "bf16", "fp16"])
def test_fused_chunks_and_low_precision_weights_on_cuda(policy):
    """cueq-fused in chunks of 97 edges, weights read by the kernel in the policy's format
    (bf16/fp16), against unfused cuEq of the same policy: the same numbers to float32 rounding."""
    from openmm_mace_lp.export import MACEForce, check_elements, prepare_model, script_module
    from openmm_mace_lp.policy import get_policy
    from tests.plugin.helpers import model, rel_error, water_box

    system = water_box(3, seed=2)
    pos, box = torch.tensor(system.positions, device="cuda"), torch.tensor(system.box, device="cuda")
    index = torch.tensor(check_elements(model("full"), system.atomic_numbers))
    results = {}
    for backend in ("cueq", "cueq-fused"):
        prepared, counts = prepare_model(model("full"), get_policy(policy), backend)
        if backend == "cueq-fused":
            assert counts.get("low_precision_tp_weights", 0) == (0 if policy == "fp32" else 2)
            for block in prepared.interactions:
                assert block.conv_tp.method == "uniform_1d" and not block.conv_tp.widen_weights
                block.conv_tp.chunk_edges = 97
        attrs = torch.nn.functional.one_hot(index, num_classes=len(prepared.atomic_numbers))
        force = MACEForce(prepared, attrs, None, len(index), True, torch.float32, "interaction_energy")
        energy, forces = script_module(force.to("cuda"))(pos, box)
        results[backend] = (float(energy), forces.double().cpu().numpy())
    (e_ref, f_ref), (e_fused, f_fused) = results["cueq"], results["cueq-fused"]
    assert abs(e_fused - e_ref) <= 1e-5 * abs(e_ref)
    assert rel_error(f_fused, f_ref) <= 1e-5


def test_md_on_the_cuda_platform(tmp_path_factory):
    import openmm
    import openmm.unit as unit
    from openmmml import MLPotential

    from tests.plugin.helpers import model_file, water_box

    path = model_file(tmp_path_factory.getbasetemp(), "full")
    system = water_box(3, spacing=0.31)
    omm = MLPotential("mace-lp", modelPath=str(path), policy="fp32").createSystem(system.topology, device="cuda")
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
    context = openmm.Context(omm, integrator, openmm.Platform.getPlatformByName("CUDA"))
    context.setPositions(system.positions)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    integrator.step(20)
    state = context.getState(getPositions=True, getEnergy=True)
    assert np.isfinite(state.getPotentialEnergy()._value)
    assert np.all(np.isfinite(state.getPositions(asNumpy=True)._value))


def _padded_module(system, policy="fp32", backend="cueq"):
    from openmm_mace_lp.export import build_force_module
    from openmm_mace_lp.neighbors import plan_capacity
    from tests.plugin.helpers import model

    capacity = plan_capacity(len(system.positions), float(model("full").r_max), system.box * 10.0,
                             system.positions * 10.0)
    return build_force_module(model("full"), policy, backend, system.atomic_numbers, periodic=True,
                              device="cuda", capacity=capacity)


@pytest.mark.parametrize("backend", ["cueq", "cueq-fused"])
@pytest.mark.parametrize("policy", ["fp32", "bf16", "fp16"])
def test_padded_module_captures_in_a_cuda_graph(policy, backend):
    """The fixed-capacity module records into a CUDA graph and replays new positions exactly."""
    from tests.plugin.helpers import water_box

    system = water_box(4, seed=5)
    module = _padded_module(system, policy, backend)
    box = torch.tensor(system.box, device="cuda", dtype=torch.float32)
    static_pos = torch.tensor(system.positions, device="cuda", dtype=torch.float32)
    graph, (energy, forces) = captured(module, static_pos, box)
    moved = system.positions + np.random.default_rng(1).normal(scale=0.01, size=system.positions.shape)
    static_pos.copy_(torch.tensor(moved, device="cuda", dtype=torch.float32))
    graph.replay()
    energy, forces = energy.clone(), forces.clone()  # the module reuses its output tensors
    expected_energy, expected_forces = (t.clone() for t in module(static_pos, box))
    assert torch.isfinite(energy) and float(energy) == pytest.approx(float(expected_energy), rel=1e-6, abs=1e-3)
    assert torch.allclose(forces, expected_forces, rtol=1e-4, atol=1e-3)


def test_cuda_graph_md_matches_the_uncaptured_force(tmp_path_factory):
    """MLPotential on CUDA captures the step by default; its forces equal the dynamic-list ones."""
    import openmm
    import openmm.unit as unit
    from openmmml import MLPotential

    from tests.plugin.helpers import model_file, rel_error, water_box

    path = model_file(tmp_path_factory.getbasetemp(), "full")
    system = water_box(4, seed=6)
    potential = MLPotential("mace-lp", modelPath=str(path), policy="fp32", backend="cueq")
    results = {}
    for graphs in (True, False):
        omm = potential.createSystem(system.topology, device="cuda", cudaGraphs=graphs,
                                     positions=system.positions)
        expected = f'name="useCUDAGraphs" value="{"true" if graphs else "false"}"'
        assert expected in openmm.XmlSerializer.serialize(omm)
        integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
        context = openmm.Context(omm, integrator, openmm.Platform.getPlatformByName("CUDA"), {"Precision": "mixed"})
        context.setPositions(system.positions)
        context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
        integrator.setRandomNumberSeed(3)
        integrator.step(30)  # past openmm-torch's warm-up calls: these steps replay the graph
        # An energy-only evaluation makes openmm-torch capture a second graph (no forces); the
        # force graph must still hand OpenMM current forces afterwards.
        context.getState(getEnergy=True)
        integrator.step(15)
        state = context.getState(getPositions=True, getForces=True, getEnergy=True)
        positions = state.getPositions(asNumpy=True)
        if graphs:
            reference_positions = positions
        context.setPositions(reference_positions)
        state = context.getState(getForces=True, getEnergy=True)
        results[graphs] = (state.getPotentialEnergy()._value, np.asarray(state.getForces(asNumpy=True)._value))
    assert np.isfinite(results[True][0])
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5, abs=1e-2)
    assert rel_error(results[True][1], results[False][1]) <= 1e-5


def test_energy_only_calls_after_capture_are_current(tmp_path_factory):
    """A barostat asks for energies alone at trial positions: with graphs, in either capture
    order, each answer must be the energy at those positions (not the previous call's)."""
    import openmm
    import openmm.unit as unit
    from openmmml import MLPotential

    from tests.plugin.helpers import model_file, water_box

    path = model_file(tmp_path_factory.getbasetemp(), "full")
    system = water_box(4, seed=7)
    rng = np.random.default_rng(2)
    trials = [system.positions + rng.normal(scale=0.005, size=system.positions.shape) for _ in range(4)]
    potential = MLPotential("mace-lp", modelPath=str(path), policy="fp32", backend="cueq")
    energies = {}
    for graphs, energy_first in ((True, True), (True, False), (False, True)):
        omm = potential.createSystem(system.topology, device="cuda", cudaGraphs=graphs, positions=system.positions)
        context = openmm.Context(omm, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("CUDA"),
                                 {"Precision": "mixed"})
        context.setPositions(system.positions)
        for _ in range(12):  # openmm-torch warms up, then captures the first graph
            context.getState(getEnergy=True, getForces=not energy_first)
        for _ in range(12):  # ... and then the other one
            context.getState(getEnergy=True, getForces=energy_first)
        values = []
        for trial in trials:
            context.setPositions(trial)
            values.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        energies[(graphs, energy_first)] = np.array(values)
    reference = energies[(False, True)]
    assert np.ptp(reference) > 1e-3  # the trials differ
    for key in ((True, True), (True, False)):
        np.testing.assert_allclose(energies[key], reference, rtol=1e-6, atol=1e-3)


def test_capacity_growth_recaptures_on_cuda(tmp_path, tmp_path_factory, monkeypatch):
    """A run that must grow its neighbour list mid-way re-exports and re-captures on CUDA."""
    import json

    from openmm_mace_lp import capacity
    from openmm_mace_lp.simulations import run as run_module
    from openmm_mace_lp.simulations.config import load_config
    from openmm_mace_lp.simulations.run import simulate
    from tests.plugin.helpers import model_file

    fired = []

    class ShortOnce:
        def __init__(self, watch):
            self.watch = watch

        def shortfall(self, positions, box):
            if not fired:
                fired.append(True)
                return "forced by the test"
            return self.watch.shortfall(positions, box)

    monkeypatch.setattr(run_module, "capacity_watches",
                        lambda system: [ShortOnce(w) for w in capacity.watches_for(system)])
    path = model_file(tmp_path_factory.getbasetemp(), "full")
    settings = [f'model.path="{path}"', 'model.policy="fp32"', 'model.backend="cueq"', "system.water_molecules=64",
                'platform.name="CUDA"', 'platform.device="cuda"', "run.minimize=false", "run.equilibration_steps=20",
                "run.production_steps=60", "output.report_interval_steps=10", "output.trajectory_interval_steps=10",
                "output.checkpoint_interval_steps=30", "barostat.interval_steps=5", "guards.max_temperature_factor=10.0"]
    run_dir = simulate(load_config(None, settings, ensemble="npt"), tmp_path / "run", quiet=True).run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert fired and manifest["status"] == "completed" and manifest["capacity_growths"] == 1
    rows = (run_dir / "state.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(10, 61, 10))


def test_bench_graph_row_takes_its_force_error_from_the_replay(tmp_path):
    """A CUDA-graph row: forces from a replay of the captured step at the start positions, against
    fp64 eager mace at the positions OpenMM holds (float32, wrapped); memory with torch's reserved
    pool; the trajectory checked finite and inside its capacities; both eager anchors timed."""
    from openmm_mace_lp.bench import BenchSettings, run_bench

    settings = BenchSettings(atoms=[192], policies=["fp32", "fp16"], backends=["cueq-fused"], graphs=[True],
                             dt_fs=1.0, out=tmp_path / "bench.json", architecture="tiny", device="cuda",
                             anchor=False, seconds_per_row=0.5)
    rows = run_bench(settings)["rows"]
    assert [row.get("error") for row in rows] == [None, None]
    fp32, fp16 = rows
    assert fp32["force_rel_err_vs_fp64_eager"] < 1e-5
    assert 0.1 * 2**-11 < fp16["force_rel_err_vs_fp64_eager"] < 20 * 2**-11
    for row in rows:
        assert row["peak_gib"] >= row["peak_allocated_gib"] > 0 and row["device_used_gib"] > 0
        assert 0 < row["end_edges"] <= row["edge_capacity"]
        assert row["eager_mace_ms"] > 0 and row["eager_cueq_mace_ms"] > 0
