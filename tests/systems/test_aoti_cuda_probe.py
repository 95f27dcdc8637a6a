"""benchmarks/aoti_cuda_probe.py: its CPU dry run end to end, and a failing step recorded, not fatal."""
from __future__ import annotations

import json

import pytest

from openmm_mace_lp import native
from tests.benchmark_scripts import load_benchmark

probe = load_benchmark("aoti_cuda_probe")


@pytest.mark.skipif(not native.available("cpu"), reason="needs the native library (mace_lp::AOTIPackage)")
def test_cpu_dry_run_runs_the_smallest_package_through_both_loaders(tmp_path):
    out = tmp_path / "probe.json"
    assert probe.main(["--device", "cpu", "--only", "tiny", "--timeout-s", "300", "--work", str(tmp_path / "work"),
                       "-o", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [step["step"] for step in record["steps"]] == ["compile tiny", "tiny, torch loader",
                                                          "tiny, mace_lp.AOTIPackage"]
    assert [step["status"] for step in record["steps"]] == ["ok"] * 3
    torch_loader, ours = record["steps"][1], record["steps"][2]
    assert torch_loader["outputs"] == ours["outputs"] == [[], [64, 3]]  # energy, forces
    assert ours["first"] == pytest.approx(torch_loader["first"], rel=1e-6)  # one package, one input


def test_a_failing_step_is_recorded_with_its_error_and_the_rest_go_on(tmp_path):
    out = tmp_path / "probe.json"
    # Without "compile tiny" first there is no package to load: the child fails, the parent records it.
    assert probe.main(["--device", "cpu", "--only", "^tiny, torch", "--work", str(tmp_path / "work"),
                       "-o", str(out)]) == 0
    (step,) = json.loads(out.read_text())["steps"]
    assert step["step"] == "tiny, torch loader" and step["status"] == "exit 1"
    assert "tiny.pt2" in step["stderr_tail"] and "gdb_backtrace" not in step
