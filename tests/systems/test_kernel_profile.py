"""benchmarks/kernel_profile.py: kernels sorted into families, and its CPU dry run end to end."""
from __future__ import annotations

import json

import pytest

from tests.benchmark_scripts import load_benchmark

profile = load_benchmark("kernel_profile")


@pytest.mark.parametrize("name, expected", [
    ("void kernelcatcher::equivariance::uniform_1d::kernel<float>(...)", "tensor product (cuEquivariance)"),
    ("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32", "GEMM"),
    ("triton_per_fused_add_mul_silu_0", "Triton-fused"),
    ("void at::native::indexSelectLargeIndex<float, long, unsigned int, 2, 2, -2, true>(...)",
     "index/scatter/gather"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, ...>>", "reduction"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, ...>", "elementwise"),
    ("aten::bmm", "GEMM"), ("aten::sum", "reduction"), ("aten::mul", "elementwise"), ("aten::copy_", "copy/fill"),
    ("cudaLaunchKernel", "other"),
])
def test_kernels_fall_in_their_family(name, expected):
    assert profile.family(name) == expected


def test_cpu_dry_run_tabulates_the_exported_module(tmp_path):
    out = tmp_path / "kp.json"
    assert profile.main(["--device", "cpu", "--architecture", "tiny", "--atoms", "24", "--backend", "e3nn",
                         "--calls", "2", "--top", "4", "-o", str(out)]) == 0
    record = json.loads(out.read_text())
    (size,) = record["sizes"]
    (ours,) = size["engines"]
    assert size["atoms"] == 24 and ours["engine"] == "ours" and len(ours["top"]) == 4
    # the families partition the operators: their sum is the total
    assert sum(ours["families_ms_per_call"].values()) == pytest.approx(ours["total_ms_per_call"])
    assert ours["total_ms_per_call"] > 0 and "| **total** |" in out.with_suffix(".md").read_text()
