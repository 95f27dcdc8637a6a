"""`mace-lp bench --smoke`: the harness's CPU dry run writes every column the GPU run needs."""
from __future__ import annotations

import json

import numpy as np

from openmm_mace_lp.cli import main


def test_bench_smoke_run_writes_rows_with_anchor_and_force_error(tmp_path):
    from openmm_mace_lp.bench import BenchSettings

    out = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--atoms", "81", "--policies", "fp64,fp32,bf16", "--backends", "e3nn",
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
        assert row["atoms"] == 81 and row["speedup_vs_anchor"] == anchor["ms_per_step"] / row["ms_per_step"]
    # Forces against mace's eager float64 model at the positions OpenMM holds (on the CPU
    # platform: float64): fp64 agrees to float64 roundoff, which a reference at positions
    # rounded otherwise (float32) would not; fp32 to float32 roundoff; bf16 linears differ by
    # about their unit roundoff (2**-8).
    assert fp64["force_rel_err_vs_fp64_eager"] < 1e-10
    assert fp32["force_rel_err_vs_fp64_eager"] < 1e-5
    assert 1e-4 < bf16["force_rel_err_vs_fp64_eager"] < 20 * 2**-8
    table = out.with_suffix(".md").read_text()
    assert "| 81 | e3nn | bf16 |" in table and "eager mace ms (e3nn / cuEq)" in table


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


def test_bench_times_the_embedded_model_and_says_why_fastmace_is_missing(tmp_path):
    """``--model default``: every row names the embedded model file and its SHA-256 (hashed here
    independently), and so does the table's header. Without FastMACE (not installed here, or
    not timed on the CPU) the FastMACE columns are None and carry the reason, which the table shows.
    ``--neighbor-lists torchscript,native``: a row per (fixed-capacity) list, named by the list its export used."""
    import hashlib

    from openmm_mace_lp.model_files import default_model_path

    path = default_model_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--model", "default", "--atoms", "81", "--policies", "fp32", "--backends",
                 "e3nn", "--no-anchor", "--neighbor-lists", "torchscript,native", "--seconds", "0.05",
                 "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    row, native_row = report["rows"]
    assert "error" not in row and "error" not in native_row, (row.get("error"), native_row.get("error"))
    # One row per neighbour list, named by the list its export used; both are the fixed-capacity
    # list, and the native CPU one gives the TorchScript one's edges in its order, so the forces
    # (and their error) are the same bits.
    assert (row["neighbor_list"], native_row["neighbor_list"]) == ("torchscript", "native")
    assert native_row["force_rel_err_vs_fp64_eager"] == row["force_rel_err_vs_fp64_eager"]
    assert row["model"] == path.name and row["model_sha256"] == digest
    assert report["model_file"] == {"name": path.name, "sha256": digest}
    # The embedded model at fp32 against its own float64 evaluation.
    assert row["force_rel_err_vs_fp64_eager"] < 1e-4
    reason = report["fastmace"]["reason"]
    assert report["fastmace"]["version"] is None and isinstance(reason, str) and reason
    assert row["fastmace_ms_per_step"] is None and row["speedup_vs_fastmace"] is None
    assert row["fastmace_reason"] == reason
    table = out.with_suffix(".md").read_text()
    assert f"{path.name} (SHA-256 {digest[:8]})" in table
    assert f"FastMACE: not measured ({reason})" in table
    assert f"| n/a: {reason[:20]}" in table
    assert "| 81 | e3nn (native list) | fp32 |" in table and "| 81 | e3nn | fp32 |" in table


def test_fastmace_availability_names_why_it_cannot_run():
    """Skipped on request; a Python that cannot import fastmace (isolated, no site-packages) says so."""
    import sys

    from openmm_mace_lp.bench import fastmace_availability

    assert fastmace_availability(False, "cuda") == (None, "not requested (--no-fastmace)")
    version, reason = fastmace_availability(None, "cuda", python=(sys.executable, "-I", "-S"))
    assert version is None and reason == "not installed (ModuleNotFoundError: No module named 'fastmace')"


def _timed_row(atoms: int, backend: str, ms: float, **extra) -> dict:
    return {"atoms": atoms, "backend": backend, "policy": "fp32", "cuda_graphs": True, "ms_per_step": ms,
            "ns_per_day": 86.4 / ms, "force_rel_err_vs_fp64_eager": 3e-6, "first_call_s": 10.0, "peak_gib": 1.0,
            **extra}


def test_join_fastmace_by_atoms_against_a_hand_worked_example():
    """FastMACE 4.0 ms at 1029 atoms: our 5.0 ms row is 4.0 / 5.0 = 0.8x, our 3.2 ms row 1.25x.
    FastMACE failed at 3000 atoms: our row there says so. Nothing at 8232 atoms: the run-level
    reason, else 'not measured'. The anchor, FastMACE's own and failed rows get no columns."""
    from openmm_mace_lp.bench import join_fastmace, markdown_table

    rows = [_timed_row(1029, "fastmace", 4.0), _timed_row(1029, "openmm-ml-1.8", 80.0),
            _timed_row(1029, "cueq-fused", 5.0), _timed_row(1029, "cueq-fused", 3.2, policy="bf16"),
            {"atoms": 1029, "backend": "cueq", "policy": "fp16", "error": "Traceback\nValueError: bad"},
            {"atoms": 3000, "backend": "fastmace", "policy": "fp32", "error": "Traceback\nRuntimeError: out of memory"},
            _timed_row(3000, "cueq-fused", 16.0), _timed_row(8232, "cueq-fused", 60.0)]
    join_fastmace(rows)
    fastmace, anchor, fp32, bf16, failed, _, at_3000, at_8232 = rows
    assert fp32["fastmace_ms_per_step"] == 4.0 and abs(fp32["speedup_vs_fastmace"] - 0.8) < 1e-12
    assert bf16["fastmace_ms_per_step"] == 4.0 and abs(bf16["speedup_vs_fastmace"] - 1.25) < 1e-12
    assert fp32["fastmace_reason"] is None
    assert at_3000["speedup_vs_fastmace"] is None and at_3000["fastmace_ms_per_step"] is None
    assert at_3000["fastmace_reason"] == "failed: RuntimeError: out of memory"
    assert at_8232["fastmace_reason"] == "not measured at this size" and at_8232["speedup_vs_fastmace"] is None
    for untouched in (fastmace, anchor, failed):
        assert "speedup_vs_fastmace" not in untouched
    join_fastmace(rows, "not installed (ModuleNotFoundError: No module named 'fastmace')")
    assert at_8232["fastmace_reason"].startswith("not installed") and at_3000["fastmace_reason"].startswith("failed")
    report = {"card": "test card", "driver": "13.0", "model": "m.model (SHA-256 01234567)", "integrator": "i",
              "dt_fs": 1.0, "cueq_kernels": True, "fastmace": {"version": "1.0.0", "reason": None}, "rows": rows}
    lines = markdown_table(report).splitlines()
    assert lines[2].startswith("FastMACE 1.0.0")
    table = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[4:]]
    assert table[0][10:12] == ["FastMACE ms/step", "speed-up vs FastMACE"]
    assert len({len(row) for row in table}) == 1  # every row has every column
    cells = {(row[0], row[1], row[2]): row for row in table[2:]}
    assert cells[("1029", "cueq-fused", "fp32")][4] == "5.00" and cells[("1029", "cueq-fused", "fp32")][10:12] == [
        "4.00", "0.80"]
    assert cells[("1029", "cueq-fused", "bf16")][10:12] == ["4.00", "1.25"]
    assert cells[("3000", "cueq-fused", "fp32")][10] == "n/a: failed: RuntimeError: out of memory"
    assert cells[("1029", "fastmace", "fp32")][4] == "4.00"


def test_fastmace_gets_the_box_masses_and_thermostat_of_our_rows(tmp_path_factory):
    """The inputs written for FastMACE's process, read back as it reads them: the box, positions
    and elements our rows' OpenMM Context gets, the masses of the plug-in's System, velocities at
    the thermostat's temperature without drift, the same timestep, temperature and friction."""
    import openmm.unit as unit
    from openmmml import MLPotential

    from openmm_mace_lp.bench import (BenchSettings, bench_structure, case_atoms, fastmace_case, read_case,
                                      write_case)

    from .helpers import model_file

    path = str(model_file(tmp_path_factory.getbasetemp()))
    settings = BenchSettings([192], ["fp32"], ["e3nn"], [False], 2.0, tmp_path_factory.mktemp("b") / "b.json", "tiny",
                             "cpu", False, 0.7, temperature_K=310.0, friction_per_ps=2.0)
    structure, _, _ = bench_structure(192, settings)
    case = read_case(write_case(fastmace_case(path, structure, settings), tmp_path_factory.mktemp("case")))
    atoms = case_atoms(case)
    np.testing.assert_allclose(atoms.positions / 10.0, structure.positions, rtol=1e-15, atol=0)
    np.testing.assert_allclose(atoms.cell.array / 10.0, structure.box, rtol=1e-15, atol=0)
    assert atoms.pbc.all() and list(atoms.numbers) == [a.element.atomic_number for a in structure.topology.atoms()]
    system = MLPotential("mace-lp", modelPath=path, policy="fp32", backend="e3nn").createSystem(
        structure.topology, device="cpu", positions=structure.positions)
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())]
    np.testing.assert_array_equal(atoms.get_masses(), masses)
    assert np.abs(atoms.get_momenta().sum(axis=0)).max() < 1e-10
    # 192 atoms: the kinetic temperature of one draw is within ~4 sigma (sqrt(2/573) = 6 %) of 310 K.
    assert abs(atoms.get_temperature() - 310.0) < 0.25 * 310.0
    assert (case.model_path, case.dt_fs, case.temperature_K, case.friction_per_fs, case.seconds) == (
        path, 2.0, 310.0, 0.002, 0.7)


def test_fastmace_forces_are_compared_in_its_units_at_its_positions(tmp_path_factory):
    """FastMACE reports eV/A at the positions its state holds: mace's own float64 forces in eV/A
    at wrapped positions agree with the reference to roundoff; moved atoms or another atom
    order are refused, not compared."""
    import dataclasses

    import pytest
    import torch

    from openmm_mace_lp.bench import (BenchSettings, References, bench_structure, eager_inputs, fastmace_case,
                                      fastmace_force_error)
    from openmm_mace_lp.model_files import load_mace_model

    from .helpers import model_file

    path = str(model_file(tmp_path_factory.getbasetemp()))
    settings = BenchSettings([81], ["fp32"], ["e3nn"], [False], 1.0, tmp_path_factory.mktemp("b") / "b.json", "tiny",
                             "cpu", False, 0.2)
    structure, base, copies = bench_structure(81, settings)
    case = fastmace_case(path, structure, settings)
    wrapped = case.positions_A.copy()
    wrapped[::2] += case.cell_A[0]  # one box vector away: the same periodic structure
    model = load_mace_model(path).double()
    data = eager_inputs(model, case.numbers, wrapped / 10.0, structure.box, "cpu", torch.float64)
    forces_eV_A = model(data, compute_force=True)["forces"].detach().numpy()
    first = {"positions_A": wrapped, "species": case.numbers.copy(), "forces_eV_A": forces_eV_A}
    references = References(path, base, copies, "cpu")
    assert fastmace_force_error(first, case, references) < 1e-12
    with pytest.raises(RuntimeError, match="not the box's"):
        fastmace_force_error({**first, "positions_A": wrapped + 0.01}, case, references)
    swapped = dataclasses.replace(case, numbers=case.numbers[::-1].copy())
    with pytest.raises(RuntimeError, match="species"):
        fastmace_force_error(first, swapped, references)


def test_bench_refuses_a_bad_model_before_writing_anything(tmp_path, capsys):
    """A missing file, a folder, a model without water's elements, or a misspelt neighbour list:
    one line that names the problem and the fix, and no results file."""
    import dataclasses

    from openmm_mace_lp.systems.architectures import TINY, build_mace, save_model

    carbon_only = tmp_path / "ch.model"
    save_model(build_mace(dataclasses.replace(TINY, elements=(1, 6)), seed=0), carbon_only)
    out = tmp_path / "bench.json"
    for model, message in ((tmp_path / "missing.model", "no such file"), (tmp_path, "not a regular file"),
                           (carbon_only, "has no element(s) [8]")):
        assert main(["bench", "--smoke", "--model", str(model), "--atoms", "81", "-o", str(out)]) == 1
        assert message in capsys.readouterr().err
    assert main(["bench", "--smoke", "--neighbor-lists", "natve", "--atoms", "81", "-o", str(out)]) == 1
    assert "'natve' is not one; use default, native and/or torchscript" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".md").exists()

