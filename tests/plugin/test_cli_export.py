"""`mace-lp policies`, `mace-lp export` and the file's use with plain openmm-torch."""
from __future__ import annotations

import numpy as np
import openmm
import openmm.app as app
import pytest
from openmmml import MLPotential

from openmm_mace_lp.cli import main
from openmm_mace_lp.export import export_to_file, read_metadata
from openmm_mace_lp.policy import POLICIES

from .helpers import model_file, openmm_state, water_box


def _write_pdb(tmp_path, system):
    pdb = tmp_path / "water.pdb"
    with open(pdb, "w") as handle:
        app.PDBFile.writeFile(system.topology, system.positions * 10.0 * openmm.unit.angstrom, handle)
    return pdb


def test_policies_lists_every_policy(capsys):
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    for name, policy in POLICIES.items():
        assert f"| `{name}` |" in out and policy.summary in out and policy.backward in out


def test_policies_prints_the_readme_table(capsys):
    """`mace-lp policies` and the README's "Precision policies" section show the same table."""
    from pathlib import Path

    assert main(["policies"]) == 0
    table = capsys.readouterr().out.strip()
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Precision policies"):]
    section = section[:section.index("\n#", 1)]
    assert len(table.splitlines()) == 2 + len(POLICIES)
    assert table in section


def test_exported_file_runs_in_plain_openmm_torch(tmp_path, tmp_path_factory):
    path = model_file(tmp_path_factory.getbasetemp())
    system = water_box(2)
    pdb = _write_pdb(tmp_path, system)
    output = tmp_path / "water-fp64.pt"
    assert main(["export", str(path), "--topology", str(pdb), "--policy", "fp64", "--backend", "e3nn",
                 "-o", str(output)]) == 0
    meta = read_metadata(output)
    assert meta["policy"] == "fp64" and meta["periodic"] and meta["atomic_numbers"] == system.atomic_numbers

    # Plain openmm-torch, as a user without this package would use it. (A fresh script imports
    # torch before openmm; in this test process openmm came first, so let the plug-in reload
    # openmm-torch's kernels, which is all import_openmmtorch adds.)
    from openmm_mace_lp.potential import import_openmmtorch

    openmmtorch = import_openmmtorch()

    omm = openmm.System()
    for atom in system.topology.atoms():
        omm.addParticle(atom.element.mass)
    omm.setDefaultPeriodicBoxVectors(*system.box)
    force = openmmtorch.TorchForce(str(output))
    force.setOutputsForces(True)
    force.setUsesPeriodicBoundaryConditions(True)
    omm.addForce(force)
    energy, forces = openmm_state(omm, system)
    expected = MLPotential("mace-lp", modelPath=str(path), policy="fp64", backend="e3nn").createSystem(
        system.topology, device="cpu")
    energy_ref, forces_ref = openmm_state(expected, system)
    assert energy == pytest.approx(energy_ref, rel=1e-12)
    assert np.allclose(forces, forces_ref, rtol=0, atol=1e-9 * np.abs(forces_ref).max())


def test_export_cache_is_keyed_by_policy(tmp_path_factory):
    path = model_file(tmp_path_factory.getbasetemp())
    numbers = water_box(1).atomic_numbers
    first = export_to_file(path, "fp32", "e3nn", numbers, periodic=True)
    again = export_to_file(path, "fp32", "e3nn", numbers, periodic=True)
    other = export_to_file(path, "bf16", "e3nn", numbers, periodic=True)
    assert first == again and first.stat().st_mtime_ns == again.stat().st_mtime_ns
    assert other != first and read_metadata(other)["policy"] == "bf16"
    assert not list(first.parent.glob("*.part"))


def test_export_of_missing_topology_fails_clearly(tmp_path, capsys):
    assert main(["export", "x.model", "--topology", str(tmp_path / "none.pdb"), "-o", str(tmp_path / "o.pt")]) == 1
    assert "none.pdb does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


def test_fixed_capacity_export_matches_the_dynamic_one(tmp_path, tmp_path_factory):
    """--fixed-capacity sizes the list from the file's positions; the numbers do not change."""
    import torch

    path = model_file(tmp_path_factory.getbasetemp())
    system = water_box(3)
    pdb = _write_pdb(tmp_path, system)
    outputs = {}
    for name, extra in (("dynamic", []), ("fixed", ["--fixed-capacity", "--margin", "0.2"])):
        outputs[name] = tmp_path / f"{name}.pt"
        assert main(["export", str(path), "--topology", str(pdb), "--policy", "fp64", "--backend", "e3nn",
                     *extra, "-o", str(outputs[name])]) == 0
    assert read_metadata(outputs["dynamic"])["neighbor_capacity"] is None
    capacity = read_metadata(outputs["fixed"])["neighbor_capacity"]
    # a file for plain openmm-torch: no native operator unless --neighbor-list native asks for it
    assert read_metadata(outputs["fixed"])["neighbor_list_impl"] == "torchscript"
    positions = torch.tensor(app.PDBFile(str(pdb)).getPositions(asNumpy=True)._value)
    box = torch.tensor(system.box)
    results = {name: [t.clone() for t in torch.jit.load(str(out))(positions, box)] for name, out in outputs.items()}
    edges = int(torch.jit.load(str(outputs["fixed"])).neighbor_stats(positions, box)[0])
    assert capacity["edge_capacity"] == pytest.approx(1.2 * edges + 32, abs=2)
    assert float(results["fixed"][0]) == pytest.approx(float(results["dynamic"][0]), rel=1e-12)
    assert torch.allclose(results["fixed"][1], results["dynamic"][1], rtol=1e-10, atol=1e-10)


def test_margin_without_fixed_capacity_is_refused(tmp_path, tmp_path_factory, capsys):
    path = model_file(tmp_path_factory.getbasetemp())
    system = water_box(2)
    pdb = _write_pdb(tmp_path, system)
    assert main(["export", str(path), "--topology", str(pdb), "--margin", "0.2", "-o", str(tmp_path / "x.pt")]) == 1
    assert "add --fixed-capacity" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("extra, output, message", [
    (["--fixed-capacity", "--margin", "-1"], "x.pt", "must be a finite fraction"),
    (["--neighbor-list", "native"], "x.pt", "add --fixed-capacity"),
    (["--compiler", "inductor"], "x.pt", "compiles for fixed shapes; add --fixed-capacity"),
    (["--compiler", "inductor", "--fixed-capacity", "--backend", "cueq"], "x.pt", "backend='e3nn' with compiler"),
    ([], ".", "is a directory"),
    ([], "blocker/x.pt", "is a file, not a directory"),
])
def test_bad_export_targets_and_margins_fail_in_one_line(tmp_path, tmp_path_factory, capsys, extra, output, message):
    path = model_file(tmp_path_factory.getbasetemp())
    pdb = _write_pdb(tmp_path, water_box(2))
    (tmp_path / "blocker").write_text("a file")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["export", str(path), "--topology", str(pdb), *extra, "-o", str(tmp_path / output)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_export_cache_key_follows_the_source_that_shapes_the_module(tmp_path, tmp_path_factory, monkeypatch):
    """A code change in any module that shapes the export serves a new file, not the old one."""
    import openmm_mace_lp.export as export

    names = {path.stem for path in export.shaping_source_files()}
    assert {"export", "neighbors", "backend", "fused_conv", "linears", "policy"} <= names
    copies = []
    for source in export.shaping_source_files():
        copies.append(tmp_path / source.name)
        copies[-1].write_bytes(source.read_bytes())
    before = export.source_digest(copies)
    assert before == export.source_digest()
    with open(tmp_path / "linears.py", "a") as handle:
        handle.write("\n# an edit\n")
    assert export.source_digest(copies) != before

    path = model_file(tmp_path_factory.getbasetemp())
    numbers = water_box(1).atomic_numbers
    first = export_to_file(path, "fp32", "e3nn", numbers, periodic=True)
    monkeypatch.setattr(export, "source_digest", lambda files=None: "0" * 64)
    changed = export_to_file(path, "fp32", "e3nn", numbers, periodic=True)
    assert changed != first and read_metadata(changed)["source_sha256"] == "0" * 64


def test_corrupted_cached_export_is_rebuilt(tmp_path_factory, caplog):
    import hashlib

    import torch

    from openmm_mace_lp.export import digest_path

    path = model_file(tmp_path_factory.getbasetemp())
    numbers = water_box(1).atomic_numbers
    cached = export_to_file(path, "fp64", "e3nn", numbers, periodic=False)
    good = cached.read_bytes()
    assert digest_path(cached).read_text().strip() == hashlib.sha256(good).hexdigest()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte, same size
    cached.write_bytes(bytes(damaged))
    with caplog.at_level("WARNING"):
        again = export_to_file(path, "fp64", "e3nn", numbers, periodic=False)
    assert again == cached and "rebuilding" in caplog.text
    assert hashlib.sha256(again.read_bytes()).hexdigest() == digest_path(cached).read_text().strip()
    positions = torch.tensor(water_box(1).positions)
    energy, _ = torch.jit.load(str(again))(positions, None)
    assert torch.isfinite(energy)
