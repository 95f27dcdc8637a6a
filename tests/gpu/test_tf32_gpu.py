"""GPU-node tests of mace_lp::tf32_mm on CUDA (TF32 tensor cores for the tf32 policy).

Skipped without CUDA (CI). The CUDA kernel must agree with the CPU emulation to TF32's rounding,
leave the process-wide float32 matmul setting as it found it, and replay in a CUDA graph; the
tf32 exports on CUDA that use it are also checked against float64 CPU by test_gpu.py.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_kernel_agrees_with_the_emulation_and_restores_the_setting():
    import openmm_mace_lp  # noqa: F401  (loads the native library)
    from openmm_mace_lp.linears import round_to_tf32

    before = torch.backends.cuda.matmul.allow_tf32
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(4096, 256, generator=generator)
    weight = round_to_tf32(torch.randn(256, 128, generator=generator))
    emulated = torch.ops.mace_lp.tf32_mm(x, weight)
    on_cuda = torch.ops.mace_lp.tf32_mm(x.cuda(), weight.cuda()).cpu()
    assert torch.backends.cuda.matmul.allow_tf32 == before
    scale = float(emulated.abs().max())
    # cuBLAS may round x to TF32 another way (one TF32 ulp, 2^-10 relative, per operand)
    assert torch.allclose(on_cuda, emulated, rtol=2e-3, atol=2e-3 * scale)
    assert not torch.equal(on_cuda, (x.double() @ weight.double()).float())


def test_cuda_kernel_replays_in_a_graph_with_its_gradient():
    import openmm_mace_lp  # noqa: F401
    from openmm_mace_lp.linears import round_to_tf32

    x = torch.randn(512, 64, device="cuda", requires_grad=True)
    weight = round_to_tf32(torch.randn(64, 32, device="cuda"))
    static_grad = torch.ones(512, 32, device="cuda")

    def step():
        (grad,) = torch.autograd.grad(torch.ops.mace_lp.tf32_mm(x, weight), x, static_grad)
        return grad

    from openmm_mace_lp.bench import warm_up_for_capture

    warm_up_for_capture(step)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured_grad = step()
    static_grad.mul_(2.0)
    graph.replay()
    assert torch.allclose(captured_grad, static_grad @ weight.t(), rtol=1e-5, atol=1e-5)
