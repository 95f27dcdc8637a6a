"""Physical consistency of the exported module (float64, e3nn unless stated)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from .helpers import acetamide, evaluate, water_box


@pytest.mark.parametrize("system_name", ["water", "acetamide"])
def test_forces_are_minus_the_energy_gradient(system_name):
    system = water_box(2, seed=5) if system_name == "water" else acetamide()
    _, forces = evaluate(system)
    rng = np.random.default_rng(0)
    h = 1e-6  # nm
    for atom in rng.choice(len(system.positions), 4, replace=False):
        for axis in range(3):
            plus, minus = system.positions.copy(), system.positions.copy()
            plus[atom, axis] += h
            minus[atom, axis] -= h
            gradient = (evaluate(system, positions=plus)[0] - evaluate(system, positions=minus)[0]) / (2 * h)
            assert abs(-gradient - forces[atom, axis]) <= 1e-6 * np.abs(forces).max()


def test_translation_and_rotation_invariance():
    system = acetamide()
    energy, forces = evaluate(system)
    rotation = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    moved = system.positions @ rotation.T + np.array([1.3, -0.7, 2.2])
    energy_moved, forces_moved = evaluate(system, positions=moved)
    assert energy_moved == pytest.approx(energy, rel=1e-12)
    assert np.allclose(forces_moved, forces @ rotation.T, rtol=0, atol=1e-9 * np.abs(forces).max())


def test_periodic_translation_invariance():
    system = water_box(2, seed=2)
    energy, forces = evaluate(system)
    energy_moved, forces_moved = evaluate(system, positions=system.positions + np.array([0.11, 0.37, -0.5]))
    assert energy_moved == pytest.approx(energy, rel=1e-12)
    assert np.allclose(forces_moved, forces, atol=1e-9 * np.abs(forces).max())


def test_permutation_invariance():
    system = water_box(2, seed=4)
    energy, forces = evaluate(system)
    order = np.random.default_rng(3).permutation(len(system.positions))
    numbers = [system.atomic_numbers[i] for i in order]
    energy_p, forces_p = evaluate(system, positions=system.positions[order], numbers=numbers)
    assert energy_p == pytest.approx(energy, rel=1e-12)
    assert np.allclose(forces_p, forces[order], atol=1e-9 * np.abs(forces).max())


def test_wrapped_and_unwrapped_coordinates_agree():
    system = water_box(2, seed=6)
    energy, forces = evaluate(system)
    rng = np.random.default_rng(1)
    images = rng.integers(-2, 3, size=(len(system.positions), 3))
    shifted = system.positions + images @ system.box
    energy_s, forces_s = evaluate(system, positions=shifted)
    assert energy_s == pytest.approx(energy, rel=1e-12)
    assert np.allclose(forces_s, forces, atol=1e-9 * np.abs(forces).max())


def _replicate(system_positions, numbers, cell, images):
    positions = np.concatenate([system_positions + np.asarray(k) @ cell for k in images])
    return positions, numbers * len(images)


def test_triclinic_cell_equals_its_orthorhombic_supercell():
    """a=(L,0,0), b=(L/2,L,0), c=(L/2,L/2,L); A=a, B=2b-a, C=4c-2b-a is orthorhombic (8 cells)."""
    length = 0.62
    cell = np.array([[length, 0, 0], [length / 2, length, 0], [length / 2, length / 2, length]])
    base = water_box(2, spacing=0.31, seed=7, box=cell)
    base.positions = base.positions @ np.linalg.inv(np.eye(3) * 0.62) @ cell  # fill the triclinic cell
    energy, forces = evaluate(base)
    supercell = np.diag([length, 2 * length, 4 * length])
    images = [(i, j, k) for i in range(1) for j in range(2) for k in range(4)]
    positions, numbers = _replicate(base.positions, base.atomic_numbers, cell, images)
    energy_s, forces_s = evaluate(base, positions=positions, numbers=numbers, box=supercell)
    assert energy_s == pytest.approx(len(images) * energy, rel=1e-11)
    assert np.allclose(forces_s.reshape(len(images), -1, 3), forces[None], atol=1e-9 * np.abs(forces).max())


def test_box_thinner_than_the_cutoff_uses_enough_images():
    """A 0.3 nm cube (cutoff 0.4 nm) must equal 1/8 of its doubled replica."""
    system = water_box(1, spacing=0.3, seed=8)
    energy, forces = evaluate(system)
    images = [(i, j, k) for i in range(2) for j in range(2) for k in range(2)]
    positions, numbers = _replicate(system.positions, system.atomic_numbers, system.box, images)
    energy_s, forces_s = evaluate(system, positions=positions, numbers=numbers, box=2 * system.box)
    assert energy_s == pytest.approx(8 * energy, rel=1e-11)
    assert np.allclose(forces_s[: len(forces)], forces, atol=1e-9 * np.abs(forces).max())
