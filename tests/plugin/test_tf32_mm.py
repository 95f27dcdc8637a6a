"""mace_lp::tf32_mm, the tf32 policy's GEMM (native/tf32_mm.cpp), on the CPU.

Its CPU kernel must be the policy's emulation value for value (linears.round_to_tf32, then a
float32 GEMM), forward and backward, so that CUDA exports that use it (TF32 tensor cores) keep
the policy's definition; the export must choose it only for tf32 on CUDA.
"""
from __future__ import annotations

import pytest
import torch

from openmm_mace_lp import native
from openmm_mace_lp.linears import (TF32_EMULATED, TF32_NATIVE, PolicyDense, resolve_tf32_impl, round_to_tf32,
                                    use_native_tf32)
from openmm_mace_lp.policy import MATMUL_BF16, MATMUL_TF32


@pytest.fixture(scope="module", autouse=True)
def _native_library():
    if native.disabled_by_environment():
        pytest.skip("OPENMM_MACE_LP_NATIVE=0 turns the native operators off")
    assert native.available("cpu"), native.state().problem


def test_cpu_kernel_is_the_emulation_forward_and_backward():
    generator = torch.Generator().manual_seed(4)
    x = (torch.randn(257, 48, generator=generator) * 10.0 ** torch.randint(-3, 4, (257, 1), generator=generator))
    x.requires_grad_(True)
    weight = round_to_tf32(torch.randn(48, 19, generator=generator))
    native_out = torch.ops.mace_lp.tf32_mm(x, weight)
    emulated_x = x.detach().clone().requires_grad_(True)
    emulated_out = torch.mm(round_to_tf32(emulated_x), weight)
    assert torch.equal(native_out, emulated_out)
    grad = torch.randn(257, 19, generator=generator)
    (native_grad,) = torch.autograd.grad(native_out, x, grad)
    (emulated_grad,) = torch.autograd.grad(emulated_out, emulated_x, grad)
    assert torch.equal(native_grad, emulated_grad)
    # TF32 really is coarser than float32: the rounding changed the product
    assert not torch.equal(native_out, x.detach() @ weight)


def test_meta_kernel_gives_the_shape_and_bad_operands_are_named():
    out = torch.ops.mace_lp.tf32_mm(torch.empty(5, 3, device="meta"), torch.empty(3, 7, device="meta"))
    assert out.shape == (5, 7) and out.device.type == "meta"
    with pytest.raises(RuntimeError, match=r"expected x \[n, k\] and weight \[k, m\]"):
        torch.ops.mace_lp.tf32_mm(torch.ones(5, 3), torch.ones(4, 7))
    with pytest.raises(RuntimeError, match="TF32 is a float32 format"):
        torch.ops.mace_lp.tf32_mm(torch.ones(5, 3, dtype=torch.float64), torch.ones(3, 7, dtype=torch.float64))


def test_scripted_native_layer_equals_the_emulated_one():
    weight = torch.randn(24, 12, generator=torch.Generator().manual_seed(5))
    emulated = PolicyDense(weight, MATMUL_TF32, torch.float32)
    routed = PolicyDense(weight, MATMUL_TF32, torch.float32)
    low = PolicyDense(weight, MATMUL_BF16, torch.float32)
    holder = torch.nn.ModuleList([routed, low])
    assert use_native_tf32(holder) == 1 and routed.native_tf32 and not low.native_tf32
    x = torch.randn(40, 24)
    assert torch.equal(torch.jit.script(routed)(x), torch.jit.script(emulated)(x))


def test_only_tf32_on_cuda_takes_the_native_gemm():
    assert resolve_tf32_impl(MATMUL_TF32, "cuda") == TF32_NATIVE
    assert resolve_tf32_impl(MATMUL_TF32, "cpu") == TF32_EMULATED
    assert resolve_tf32_impl(MATMUL_BF16, "cuda") == "" == resolve_tf32_impl(MATMUL_BF16, "cuda", TF32_NATIVE)
    assert resolve_tf32_impl(MATMUL_TF32, "cuda", TF32_EMULATED) == TF32_EMULATED
    with pytest.raises(ValueError, match="tf32_impl='tensor-cores': use 'native', 'emulated' or None"):
        resolve_tf32_impl(MATMUL_TF32, "cuda", "tensor-cores")


def test_a_tf32_model_through_the_native_gemm_equals_its_emulation():
    """The whole exported module, every dense layer routed through mace_lp::tf32_mm (as on CUDA),
    gives the emulated module's energy and forces on the CPU, bit for bit."""
    from openmm_mace_lp.export import build_force_module

    from .helpers import model, water_box

    system = water_box(2)
    pos = torch.tensor(system.positions, dtype=torch.float32)
    box = torch.tensor(system.box, dtype=torch.float32)
    results = {}
    for impl in (TF32_NATIVE, TF32_EMULATED):
        module = build_force_module(model("both"), "tf32", "e3nn", system.atomic_numbers, periodic=True,
                                    tf32_impl=impl)
        assert ("mace_lp::tf32_mm" in str(module.inlined_graph)) == (impl == TF32_NATIVE)
        results[impl] = [t.detach().clone() for t in module(pos, box)]
    assert all(torch.equal(a, b) for a, b in zip(results[TF32_NATIVE], results[TF32_EMULATED]))


def test_exports_for_plain_openmm_torch_keep_the_emulation(tmp_path, monkeypatch):
    from openmm_mace_lp.export import export_to_file, read_metadata

    from .helpers import model_file, water_box

    monkeypatch.setenv("OPENMM_MACE_LP_CACHE", str(tmp_path / "cache"))
    system = water_box(2)
    path = export_to_file(model_file(tmp_path), "tf32", "e3nn", system.atomic_numbers, periodic=True,
                          tf32_impl=TF32_EMULATED)
    assert read_metadata(path)["tf32_impl"] == TF32_EMULATED
    assert read_metadata(export_to_file(model_file(tmp_path), "fp32", "e3nn", system.atomic_numbers,
                                        periodic=True))["tf32_impl"] == ""
