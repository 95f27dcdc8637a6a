"""`mace-lp bench --smoke`: the harness's CPU dry run writes every column the GPU run needs."""
from __future__ import annotations

import json

from openmm_mace_lp.cli import main


def test_bench_smoke_run_writes_rows_with_anchor_and_force_error(tmp_path):
    from openmm_mace_lp.bench import BenchSettings

    out = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--atoms", "192", "--policies", "fp64,fp32,bf16", "--backends", "e3nn",
                 "--seconds", "0.2", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"card", "driver", "versions", "rows"} <= set(report)
    anchor, fp64, fp32, bf16 = report["rows"]
    assert anchor["backend"] == "openmm-ml-1.8" and "error" not in anchor
    assert anchor["steps_timed"] >= 10 and anchor["blocks_timed"] >= 3  # --smoke's short anchor
    assert BenchSettings([], [], [], [], 1.0, tmp_path, "tiny", "cuda", True, 3.0).anchor_min_steps >= 100
    for row in (anchor, fp64, fp32, bf16):
        assert {"atoms", "backend", "policy", "ms_per_step", "ms_per_step_spread", "ns_per_day", "first_call_s",
                "peak_gib", "peak_allocated_gib", "device_used_gib", "end_energy_kJ_mol"} <= set(row)
        # Both eager anchors are timed (on the CPU, cuEquivariance runs its naive path).
        assert row["eager_mace_ms"] > 0 and row["eager_cueq_mace_ms"] > 0
    for row in (fp64, fp32, bf16):
        assert row["atoms"] == 192 and row["speedup_vs_anchor"] == anchor["ms_per_step"] / row["ms_per_step"]
    # Forces against mace's eager float64 model at the positions OpenMM holds (on the CPU
    # platform: float64): fp64 agrees to float64 roundoff, which a reference at positions
    # rounded otherwise (float32) would not; fp32 to float32 roundoff; bf16 linears differ by
    # about their unit roundoff (2**-8).
    assert fp64["force_rel_err_vs_fp64_eager"] < 1e-10
    assert fp32["force_rel_err_vs_fp64_eager"] < 1e-5
    assert 1e-4 < bf16["force_rel_err_vs_fp64_eager"] < 20 * 2**-8
    table = out.with_suffix(".md").read_text()
    assert "| 192 | e3nn | bf16 |" in table and "eager mace ms (e3nn / cuEq)" in table


def test_a_trajectory_that_leaves_the_capacities_fails_its_row(tmp_path_factory):
    """The timing of a run that went non-finite (a capacity overflowed: NaN forces) is not
    reported as a speed."""
    import dataclasses

    import numpy as np
    import openmm
    import openmm.unit as unit
    import pytest

    from openmm_mace_lp.bench import end_of_trajectory
    from openmm_mace_lp.export import export_to_file
    from openmm_mace_lp.neighbors import plan_capacity

    from .helpers import model, model_file, torchforce_system, water_box

    system = water_box(2)
    fitting = plan_capacity(len(system.positions), float(model().r_max), system.box * 10.0, system.positions * 10.0)
    path = export_to_file(model_file(tmp_path_factory.getbasetemp()), "fp32", "e3nn", system.atomic_numbers,
                          periodic=True, capacity=dataclasses.replace(fitting, edge_capacity=fitting.edge_capacity // 3))
    omm = torchforce_system(path, system)
    integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    context = openmm.Context(omm, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(system.positions)
    integrator.step(1)
    with pytest.raises(RuntimeError, match="non-finite"):
        end_of_trajectory(context, omm)
    assert not np.isfinite(context.getState(getEnergy=True).getPotentialEnergy()._value)


def test_bench_finds_the_module_behind_a_system(tmp_path_factory):
    """The GPU columns profile the very file the TorchForce runs, read from the force itself."""
    from openmmml import MLPotential

    from openmm_mace_lp.bench import exported_module_path
    from openmm_mace_lp.export import read_metadata

    from .helpers import model_file, water_box

    system = water_box(2)
    omm = MLPotential("mace-lp", modelPath=str(model_file(tmp_path_factory.getbasetemp())), policy="bf16",
                      backend="e3nn").createSystem(system.topology, device="cpu", fixedNeighborList=True,
                                                   positions=system.positions)
    meta = read_metadata(exported_module_path(omm))
    assert meta["policy"] == "bf16" and meta["neighbor_capacity"]["edge_capacity"] > 0


def test_bench_checks_a_tiled_box_against_the_small_boxs_reference(tmp_path):
    """A box above ``tile_above_atoms`` is 2x2x2 copies of a small one; its fp32 forces agree with
    the small box's eager fp64 forces, tiled, to roundoff (a wrong tiling order would not)."""
    from pathlib import Path

    from openmm_mace_lp.bench import BenchSettings, run_bench

    settings = BenchSettings(atoms=[400], policies=["fp32"], backends=["e3nn"], graphs=[False], dt_fs=1.0,
                             out=Path(tmp_path) / "bench.json", architecture="tiny", device="cpu", anchor=False,
                             seconds_per_row=0.2, tile_above_atoms=100)
    (row,) = run_bench(settings)["rows"]
    assert "error" not in row, row.get("error")
    assert row["atoms"] == 8 * row["reference_tiled_from_atoms"] == 408
    assert row["force_rel_err_vs_fp64_eager"] < 1e-5
    assert "(tiled 51)" in (Path(tmp_path) / "bench.md").read_text()
