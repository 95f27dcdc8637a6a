"""GPU-node tests: CUDA kernels of the policies, cuEquivariance kernels under TorchScript, MD on CUDA.

Skipped on machines without CUDA (CI); run on the GPU node with `pytest -m gpu tests/gpu`.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

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
    assert torch.allclose(native.cpu(), emulated, rtol=2 * ulp, atol=0)
    (grad,) = torch.autograd.grad(native.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["cueq", "e3nn"])
@pytest.mark.parametrize("policy", ["fp64", "fp32", "tf32", "bf16"])
def test_cuda_module_matches_cpu_float64(backend, policy):
    from openmm_mace_lp.backend import cueq_kernels_available
    from openmm_mace_lp.export import build_force_module
    from tests.plugin.helpers import evaluate, model, rel_error, water_box

    if backend == "cueq" and not cueq_kernels_available():
        pytest.fail("cuequivariance_ops_torch does not import on this GPU machine")
    system = water_box(3, seed=2)
    _, reference = evaluate(system, "fp64", "e3nn", arch_name="full")
    module = build_force_module(model("full"), policy, backend, system.atomic_numbers, periodic=True, device="cuda")
    _, forces = module(torch.tensor(system.positions, device="cuda"), torch.tensor(system.box, device="cuda"))
    error = rel_error(forces.double().cpu().numpy(), reference)
    low, high = {"fp64": (0, 1e-10), "fp32": (0, 1e-5), "tf32": (0.1 * 2**-11, 20 * 2**-11),
                 "bf16": (0.1 * 2**-8, 20 * 2**-8)}[policy]
    assert low <= error <= high, error


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
