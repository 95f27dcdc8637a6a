"""benchmarks/barostat_precision.py: the barostat's volume move and the pressure from energy
differences, against geometry worked out by hand and an energy error linear in the volume
(whose pressure error is known exactly)."""
import numpy as np
import pytest
from ase import Atoms

from tests.benchmark_scripts import load_benchmark

CELL = np.diag([7.0, 7.5, 8.0])
MASSES = np.array([15.999, 1.008, 1.008])


@pytest.fixture(scope="module")
def bp():
    return load_benchmark("barostat_precision")


def two_waters() -> Atoms:
    """Two waters, the second across the x face of the box (its H atoms wrapped to the far side)."""
    whole = np.array([[1.0, 1.0, 1.0], [1.9, 1.2, 1.1], [0.8, 1.9, 0.7],
                      [0.2, 4.0, 5.0], [-0.6, 4.4, 5.2], [0.5, 4.6, 4.4]])
    fractional = whole @ np.linalg.inv(CELL)
    return Atoms("OH2OH2", positions=(fractional - np.floor(fractional)) @ CELL, cell=CELL, pbc=True)


def whole_waters(positions, cell) -> np.ndarray:
    water = positions.reshape(-1, 3, 3)
    bonds = water[:, 1:] - water[:, :1]
    fractional = bonds @ np.linalg.inv(cell)
    return np.concatenate([water[:, :1], water[:, :1] + (fractional - np.round(fractional)) @ cell], axis=1)


def test_the_volume_move_scales_box_and_centres_and_keeps_each_water_rigid(bp):
    atoms = two_waters()
    positions, cell = bp.molecular_scaling(atoms, 0.01)
    assert abs(np.linalg.det(cell)) / atoms.get_volume() == pytest.approx(1.01, rel=1e-12)
    before, after = whole_waters(atoms.positions, atoms.cell.array), whole_waters(positions, cell)
    # internal geometry: every intramolecular vector unchanged
    np.testing.assert_allclose(after - after[:, :1], before - before[:, :1], atol=1e-12)
    centre = lambda w: (MASSES[None, :, None] * w).sum(axis=1) / MASSES.sum()  # noqa: E731
    np.testing.assert_allclose(centre(after), 1.01 ** (1 / 3) * centre(before), atol=1e-12)


def test_configurations_hold_the_frame_first_in_nm(bp):
    atoms = two_waters()
    positions, boxes = bp.configurations(atoms, [0.003, -0.003])
    assert positions.shape == (3, 6, 3) and boxes.shape == (3, 3, 3)
    np.testing.assert_allclose(positions[0], atoms.positions / 10.0)
    np.testing.assert_allclose([abs(np.linalg.det(b)) for b in boxes] / np.linalg.det(CELL / 10.0),
                               [1.0, 1.003, 0.997], rtol=1e-12)


def test_an_energy_error_linear_in_the_volume_is_a_known_pressure_error(bp):
    # policy = fp64 + a * V: its barostat pressure is off by -a (P = -dE/dV), the same on every
    # frame; each move's energy change is off by a * V * dV/V
    frames = [Atoms("OH2", positions=np.zeros((3, 3)), cell=np.diag([s, s, s]), pbc=True) for s in (9.0, 10.0, 11.0)]
    step, a = 0.003, 0.02  # kJ/mol per A^3
    volumes = np.array([f.get_volume() for f in frames])
    configuration_volumes = volumes[:, None] * np.array([1.0, 1 + step, 1 - step])[None, :]
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(3, 3)) * 50.0
    energies = {"fp64": reference, "bf16": reference + a * configuration_volumes}
    (row,) = bp.summarise(energies, frames, step, 300.0)
    expected_bar = -a / bp.KJ_PER_MOL_PER_EV * bp.BAR_PER_EV_A3
    assert row["policy"] == "bf16" and row["frames"] == 3
    assert row["pressure_error_bar"] == pytest.approx(expected_bar, rel=1e-9)
    assert row["pressure_error_sem_bar"] == pytest.approx(0.0, abs=1e-6)
    kT = bp.BOLTZMANN_KJ_PER_MOL_K * 300.0
    moves = a * volumes[:, None] * np.array([step, -step])[None, :] / kT
    assert row["dE_error_mean_kT"] == pytest.approx(moves.mean(), abs=1e-9)
    assert row["dE_error_sd_kT"] == pytest.approx(moves.std(ddof=1), rel=1e-9)
    assert row["implied_density_change_percent"] == pytest.approx(-100 * 4.5e-5 * expected_bar, rel=1e-9)
