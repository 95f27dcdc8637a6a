"""benchmarks/energy_bias.py --own-run: the model's own pressure along its own NPT run.

The kinetic term is checked against the ideal-gas law in SI units, the molecular pressure of a
run's frame against -dE/dV of the model itself when the box and the waters' centres are scaled
with rigid waters (the barostat's move), plus N_molecules kT / V, and a run made by another
model is refused before any evaluation."""

import hashlib
import json

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark
from tests.plugin.helpers import model_file
from tests.systems.test_run_frames import _teacher_frame, _write_run


@pytest.fixture(scope="module")
def energy_bias():
    return load_benchmark("energy_bias")


def test_kinetic_term_is_the_ideal_gas_law(energy_bias):
    # 1000 particles at 300 K in 30000 A^3: N k T / V = 1000 * 1.380649e-23 J/K * 300 K / 3e-26 m^3
    assert energy_bias.kinetic_pressure_bar(1000, 30000.0, 300.0) == pytest.approx(1380.649, rel=1e-6)


@pytest.fixture(scope="module")
def run_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_run")
    model = model_file(root)
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    atoms = _teacher_frame()
    _write_run(root / "model_300K", atoms, copies=3, model=dict(name=model.name, sha256=sha), temperature=300.0)
    manifest = json.loads((root / "model_300K" / "manifest.json").read_text())
    manifest["pressure_bar"] = 1.01325
    (root / "model_300K" / "manifest.json").write_text(json.dumps(manifest))
    return root / "model_300K", model


def test_molecular_pressure_is_minus_dE_dV_of_rigid_waters_plus_the_molecules_kT(energy_bias, run_and_model):
    import mace  # noqa: F401
    from mace.calculators import MACECalculator

    from openmm_mace_lp.model_files import load_mace_model

    run_dir, model = run_and_model
    record = energy_bias.own_run_pressures(model, run_dir, stride=1, skip_fraction=0.0)
    assert record["frames"] == 3 and record["set_pressure_bar"] == pytest.approx(1.01325)

    import mdtraj
    frame = mdtraj.load(str(run_dir / "trajectory.dcd"), top=str(run_dir / "topology.pdb"))[1]
    cell = frame.unitcell_vectors[0].astype(float) * 10
    positions = frame.xyz[0].astype(float) * 10
    symbols = [a.element.symbol for a in frame.topology.atoms]
    offsets = energy_bias.offsets_from_molecule_centres(positions, cell, symbols)
    centres = positions - offsets
    calculator = MACECalculator(models=[load_mace_model(model)], device="cpu", default_dtype="float64")

    def energy(scale):
        import ase
        atoms = ase.Atoms(symbols, positions=scale * centres + offsets, cell=scale * cell, pbc=True)
        atoms.calc = calculator
        return atoms.get_potential_energy()

    h, volume = 1e-4, abs(np.linalg.det(cell))
    minus_dE_dV = -(energy(1 + h) - energy(1 - h)) / (volume * ((1 + h) ** 3 - (1 - h) ** 3)) * 1.602176634e6
    expected = minus_dE_dV + energy_bias.kinetic_pressure_bar(len(symbols) // 3, volume, 300.0)
    assert record["rows"][1]["molecular_pressure_bar"] == pytest.approx(expected, rel=1e-5, abs=0.5)
    values = [r["molecular_pressure_bar"] for r in record["rows"]]
    assert record["summary"]["molecular_pressure_bar"]["mean"] == pytest.approx(np.mean(values))
    assert record["summary"]["molecular_pressure_bar"]["sem"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(3))


def test_a_run_of_another_model_is_refused(energy_bias, run_and_model, tmp_path):
    run_dir, _ = run_and_model
    other = model_file(tmp_path, seed=2)
    with pytest.raises(SystemExit, match="pass the run's own model file"):
        energy_bias.own_run_pressures(other, run_dir)
