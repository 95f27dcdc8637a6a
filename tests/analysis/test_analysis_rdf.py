"""RDFs against independent references: an ideal gas (g = 1), a simple cubic lattice
(peaks at a, a sqrt2, a sqrt3 holding 6, 12 and 8 neighbours), and MDTraj itself at
constant volume."""
from __future__ import annotations

import math

import mdtraj as md
import numpy as np
import pytest

from openmm_mace_lp.analysis import observables as obs


def argon_topology(n_atoms: int) -> md.Topology:
    topology = md.Topology()
    chain = topology.add_chain()
    for _ in range(n_atoms):
        topology.add_atom("Ar", md.element.argon, topology.add_residue("AR", chain))
    return topology


def cubic_trajectory(xyz: np.ndarray, box: np.ndarray) -> md.Trajectory:
    """Frames in cubic boxes of edge ``box[f]`` (nm)."""
    n_frames = len(xyz)
    return md.Trajectory(xyz.astype(np.float32), argon_topology(xyz.shape[1]),
                         unitcell_lengths=np.repeat(np.asarray(box)[:, None], 3, axis=1),
                         unitcell_angles=np.full((n_frames, 3), 90.0))


def all_pairs(n_atoms: int) -> np.ndarray:
    return np.array([(i, j) for i in range(n_atoms) for j in range(i + 1, n_atoms)])


def test_ideal_gas_rdf_is_one_within_noise_in_a_breathing_box(rng):
    """Uniform random positions, box edge varying by +-10 % between frames (NPT-like)."""
    n_atoms, n_frames = 200, 60
    box = 3.0 * (1 + 0.1 * rng.uniform(-1, 1, n_frames))
    xyz = rng.uniform(size=(n_frames, n_atoms, 3)) * box[:, None, None]
    traj = cubic_trajectory(xyz, box)
    rdf = obs.compute_rdf(traj, all_pairs(n_atoms), "Ar-Ar", r_max=1.2, bin_width=0.02)
    # Poisson noise per bin: relative SD 1/sqrt(expected counts over all frames).
    expected = rdf.ideal_counts * n_frames
    usable = expected > 50
    z = (rdf.g[usable] - 1.0) * np.sqrt(expected[usable])
    assert np.all(np.abs(z) < 4.5)
    assert np.mean(rdf.g[usable]) == pytest.approx(1.0, abs=0.01)
    assert np.std(z) == pytest.approx(1.0, abs=0.25)  # the noise is what Poisson predicts


def simple_cubic(n_side: int, a: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return grid * a


def test_simple_cubic_lattice_peaks_and_coordination_numbers():
    a, n_side = 0.3, 8  # box 2.4 nm: half box 1.2 nm > a sqrt3 = 0.52 nm
    xyz = simple_cubic(n_side, a)[None]
    traj = cubic_trajectory(xyz, np.array([a * n_side]))
    n_atoms = xyz.shape[1]
    # Bin width chosen so that no lattice distance sits on a bin edge (float32 positions);
    # r_max below 2a = 0.6 nm.
    rdf = obs.compute_rdf(traj, all_pairs(n_atoms), r_max=0.58, bin_width=0.007)
    # Peaks: the bins holding non-zero g are exactly those containing a, a sqrt2, a sqrt3.
    occupied = rdf.r[rdf.g > 0]
    expected = np.array([a, a * math.sqrt(2), a * math.sqrt(3)])
    assert len(occupied) == 3
    np.testing.assert_allclose(occupied, expected, atol=rdf.bin_width / 2)
    # Normalisation: n(shell) = rho * integral g 4 pi r^2 dr = 6, 12 and 8 neighbours.
    rho = n_atoms / (a * n_side) ** 3
    edges = np.arange(len(rdf.r) + 1) * rdf.bin_width
    shell = 4 / 3 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    neighbours = rho * rdf.g * shell * (n_atoms - 1) / n_atoms
    np.testing.assert_allclose(neighbours[rdf.g > 0], [6, 12, 8], rtol=1e-4)


def test_matches_mdtraj_at_constant_volume(rng):
    n_atoms = 100
    xyz = rng.uniform(size=(20, n_atoms, 3)) * 2.0
    traj = cubic_trajectory(xyz, np.full(20, 2.0))
    pairs = all_pairs(n_atoms)
    ours = obs.compute_rdf(traj, pairs, r_max=1.0, bin_width=0.01)
    r, g = md.compute_rdf(traj, pairs, r_range=(0.0, 1.0), bin_width=0.01)
    np.testing.assert_allclose(ours.r, r, atol=1e-9)
    np.testing.assert_allclose(ours.g, g, rtol=1e-6)


def test_frames_are_weighted_equally_when_the_volume_changes():
    """Frame 1: lattice a in box L. Frame 2: the same lattice scaled x2 (volume x8).

    I(r) = integral g 4 pi r^2 dr over a peak is (neighbours in the shell) / rho per frame.
    Near r = a only frame 1 contributes 6/rho_1; near 2a frame 1 has 6 (next-nearest along
    the axes) and frame 2 has 6/rho_2 = 48/rho_1. Equal frame weights: ratio (6+48)/6 = 9.
    MDTraj's 1/V weights (8/9, 1/9): (8/9*6 + 1/9*48) / (8/9*6) = 2.
    """
    a, n_side = 0.25, 6
    lattice = simple_cubic(n_side, a)
    xyz = np.stack([lattice, 2 * lattice])
    traj = cubic_trajectory(xyz, np.array([a * n_side, 2 * a * n_side]))
    rdf = obs.compute_rdf(traj, all_pairs(len(lattice)), r_max=0.55, bin_width=0.005)
    edges = np.arange(len(rdf.r) + 1) * rdf.bin_width
    shell = 4 / 3 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    near = np.abs(rdf.r - a) < 0.01
    far = np.abs(rdf.r - 2 * a) < 0.01
    ratio = np.sum(rdf.g[far] * shell[far]) / np.sum(rdf.g[near] * shell[near])
    assert ratio == pytest.approx(9.0, rel=1e-4)
    r, g_mdtraj = md.compute_rdf(traj, all_pairs(len(lattice)), r_range=(0, 0.55),
                                 bin_width=0.005)
    ratio_mdtraj = np.sum(g_mdtraj[far] * shell[far]) / np.sum(g_mdtraj[near] * shell[near])
    assert ratio_mdtraj == pytest.approx(2.0, rel=1e-4)


def test_range_is_capped_at_half_the_box():
    xyz = simple_cubic(4, 0.3)[None]
    traj = cubic_trajectory(xyz, np.array([1.2]))
    rdf = obs.compute_rdf(traj, all_pairs(64), r_max=2.0, bin_width=0.01)
    assert rdf.r[-1] < 0.6
    assert obs.max_rdf_range(traj.unitcell_vectors) == pytest.approx(0.6, rel=1e-6)


def test_max_range_of_a_triclinic_cell_uses_the_perpendicular_width():
    box = np.array([[[2.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]])
    # widths: V/|b x c| = 12/(3*sqrt5) = 1.789, V/|c x a| = 2, V/|a x b| = 3
    assert obs.max_rdf_range(box) == pytest.approx(12 / (3 * math.sqrt(5)) / 2)


def test_select_pairs_counts_unique_pairs():
    topology = md.Topology()
    chain = topology.add_chain()
    for _ in range(4):
        residue = topology.add_residue("HOH", chain)
        topology.add_atom("O", md.element.oxygen, residue)
        topology.add_atom("H1", md.element.hydrogen, residue)
        topology.add_atom("H2", md.element.hydrogen, residue)
    assert len(obs.select_pairs(topology, "element O", "element O")) == 4 * 3 // 2
    assert len(obs.select_pairs(topology, "element O", "element H")) == 4 * 8
    assert len(obs.select_pairs(topology, "all", "all")) == 12 * 11 // 2
    assert len(obs.select_pairs(topology, "element O", "element H",
                                exclude_same_residue=True)) == 4 * 6
    with pytest.raises(ValueError, match="matches no atom"):
        obs.select_pairs(topology, "element N", "element O")


def test_peak_refined_by_parabola():
    r = np.arange(0.0, 1.0, 0.01) + 0.005
    g = 3.0 - 50.0 * (r - 0.2837) ** 2
    position, height = obs.rdf_peak(r, g)
    assert position == pytest.approx(0.2837, abs=1e-9)
    assert height == pytest.approx(3.0, abs=1e-9)


def test_peak_search_ignores_single_count_spikes():
    r = np.arange(0.0, 1.0, 0.01) + 0.005
    g = np.exp(-((r - 0.5) / 0.05) ** 2)
    g[1] = 300.0  # one close contact in a tiny shell
    ideal = 100 * r ** 2
    assert obs.rdf_peak(r, g, ideal)[0] == pytest.approx(0.5, abs=0.005)


def test_integrated_absolute_difference():
    r = np.arange(10) * 0.1 + 0.05
    assert obs.integrated_absolute_difference(r, np.ones(10), np.zeros(10)) == pytest.approx(1.0)
    assert obs.integrated_absolute_difference(r, np.ones(10), np.ones(10)) == 0.0
