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


class _Event:
    def __init__(self, name, parent=None, kernels=(), shapes=""):
        self.name, self.cpu_parent, self.kernels, self.input_shapes = name, parent, list(kernels), shapes


def test_kernels_are_charged_to_the_operator_and_autograd_node_that_launched_them():
    from torch.autograd.profiler_util import Kernel

    backward = _Event("autograd::engine::evaluate_function: SliceBackward0")
    zeros = _Event("aten::zeros", _Event("aten::slice_backward", _Event("SliceBackward0", backward)), shapes="[[8, 4]]")
    fill = _Event("aten::fill_", zeros)
    launches = [_Event("cudaLaunchKernel", fill, [Kernel("void at::native::FillFunctor<float>", 0, 3000.0)])
                for _ in range(4)]
    forward = _Event("cudaMemcpyAsync", _Event("aten::copy_", _Event("forward")),
                     [Kernel("Memcpy DtoD (Device -> Device)", 0, 1000.0)])

    class Profiler:
        def events(self):
            return [backward, zeros, fill, forward, *launches]

    rows = profile.launcher_table(Profiler(), calls=2, top=5)
    # The innermost operator above the runtime call (fill_), under the outermost autograd node.
    assert rows[0] == {"phase": "SliceBackward0", "op": "aten::fill_", "input_shapes": "", "family": "copy/fill",
                       "ms_per_call": pytest.approx(6.0), "launches_per_call": 2.0}
    assert rows[1]["phase"] == "forward" and rows[1]["op"] == "aten::copy_" and rows[1]["ms_per_call"] == 0.5
