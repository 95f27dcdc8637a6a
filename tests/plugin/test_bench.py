"""`mace-lp bench --smoke`: the harness's CPU dry run writes every column the GPU run needs."""
from __future__ import annotations

import json

from openmm_mace_lp.cli import main


def test_bench_smoke_run_writes_rows_with_anchor_and_force_error(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--atoms", "192", "--policies", "fp32,bf16", "--backends", "e3nn",
                 "--seconds", "0.2", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"card", "driver", "versions", "rows"} <= set(report)
    anchor, fp32, bf16 = report["rows"]
    assert anchor["backend"] == "openmm-ml-1.8" and "error" not in anchor
    for row in (fp32, bf16):
        assert {"atoms", "backend", "policy", "ms_per_step", "ns_per_day", "anchor_ms_per_step",
                "speedup_vs_anchor", "first_call_s", "peak_gib"} <= set(row)
        assert row["atoms"] == 192 and row["speedup_vs_anchor"] == anchor["ms_per_step"] / row["ms_per_step"]
    # Forces against mace's eager float64 model at the same positions: fp32 agrees to roundoff,
    # bf16 linears differ by about their unit roundoff (2**-8).
    assert fp32["force_rel_err_vs_fp64_eager"] < 1e-5
    assert 1e-4 < bf16["force_rel_err_vs_fp64_eager"] < 20 * 2**-8
    assert "| 192 | e3nn | bf16 |" in out.with_suffix(".md").read_text()


def test_bench_finds_the_module_behind_a_system(tmp_path_factory):
    """The GPU columns profile the very file the TorchForce runs, as the plug-in recorded it."""
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
