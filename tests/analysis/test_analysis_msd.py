"""MSD, unwrapping and diffusion against random walks made with a known D."""
from __future__ import annotations

import numpy as np
import pytest

from openmm_mace_lp.analysis import observables as obs

D_NM2_PS = 2.3e-3  # 2.3e-9 m^2/s
DT_PS = 0.05


def random_walk(rng, n_frames: int, n_atoms: int, d: float = D_NM2_PS, dt: float = DT_PS):
    steps = rng.normal(scale=np.sqrt(2 * d * dt), size=(n_frames, n_atoms, 3))
    steps[0] = rng.uniform(0, 2.0, size=(n_atoms, 3))  # start anywhere in a 2 nm box
    return np.cumsum(steps, axis=0)


def test_fft_msd_equals_the_direct_double_sum(rng):
    x = random_walk(rng, 40, 3)
    direct = np.array([[np.mean(np.sum((x[lag:, i] - x[:len(x) - lag, i]) ** 2, axis=-1))
                        for i in range(3)] for lag in range(40)])
    np.testing.assert_allclose(obs.msd_per_atom(x, atoms_per_chunk=2), direct, atol=1e-12)


def test_random_walk_gives_back_its_diffusion_coefficient(rng):
    x = random_walk(rng, 400, 256)
    result = obs.fit_diffusion(np.arange(400) * DT_PS, obs.msd_per_atom(x))
    truth = D_NM2_PS * 1000  # in 1e-9 m^2/s
    assert abs(result.estimate.mean - truth) < 3 * result.estimate.sem
    assert result.estimate.sem < 0.05 * truth  # and the test is not vacuous
    assert result.estimate.dof == 15


def test_diffusion_error_bar_is_calibrated(rng):
    """z = (D - D_true) / SEM over 40 independent walks: mean ~0, SD ~1 (t with 15 dof:
    1.07)."""
    truth = D_NM2_PS * 1000
    z = []
    for _ in range(40):
        x = random_walk(rng, 150, 128)
        result = obs.fit_diffusion(np.arange(150) * DT_PS, obs.msd_per_atom(x))
        z.append((result.estimate.mean - truth) / result.estimate.sem)
    assert abs(np.mean(z)) < 0.6
    assert 0.7 < np.std(z) < 1.5


def test_unwrap_recovers_a_walk_wrapped_into_a_fixed_box(rng):
    box = 1.5
    x = random_walk(rng, 300, 50, d=5e-2)  # ~0.1 nm per frame: many boundary crossings
    wrapped = x - box * np.floor(x / box)
    boxes = np.repeat(np.eye(3)[None] * box, 300, axis=0)
    unwrapped, largest = obs.unwrap(wrapped, boxes)
    np.testing.assert_allclose(unwrapped - unwrapped[0], x - x[0], atol=1e-9)
    assert largest < 0.5
    assert np.ptp(wrapped) <= box and np.ptp(x) > 2 * box  # the walk did leave the box


def breathing_box_walk(rng, n_frames: int, n_atoms: int, mean_box: float, amplitude: float):
    """Barostat-like: each step scales the wrapped positions with the box (which drifts
    slowly, AR(1) with phi = 0.99), adds a diffusive displacement, and wraps into the new
    box. The scaling term is bounded, so the MSD grows as 6 D t."""
    from synthetic_runs import ar1_stationary

    box = mean_box * (1 + ar1_stationary(rng, n_frames, 0.99, amplitude))
    wrapped = np.empty((n_frames, n_atoms, 3))
    wrapped[0] = rng.uniform(size=(n_atoms, 3)) * box[0]
    steps = rng.normal(scale=np.sqrt(2 * D_NM2_PS * DT_PS), size=(n_frames, n_atoms, 3))
    for k in range(1, n_frames):
        moved = wrapped[k - 1] * (box[k] / box[k - 1]) + steps[k]
        wrapped[k] = moved - box[k] * np.floor(moved / box[k])
    return wrapped, box[:, None, None] * np.eye(3)[None]


def test_unwrap_in_a_breathing_box_keeps_the_diffusion_coefficient(rng):
    """Box edge fluctuating by 2 % (NPT-like): D comes back; the wrapped coordinates (with
    their box-length jumps) give nonsense (checked, so the test can fail)."""
    n_frames = 400
    wrapped, boxes = breathing_box_walk(rng, n_frames, 256, 1.2, 0.02)
    time = np.arange(n_frames) * DT_PS
    truth = D_NM2_PS * 1000
    unwrapped, largest = obs.unwrap(wrapped, boxes)
    assert largest < 0.2
    result = obs.fit_diffusion(time, obs.msd_per_atom(unwrapped)).estimate
    assert abs(result.mean - truth) < 3 * result.sem + 0.02 * truth
    not_unwrapped = obs.fit_diffusion(time, obs.msd_per_atom(wrapped)).estimate.mean
    assert abs(not_unwrapped - truth) > 0.5 * truth


def test_unwrap_in_a_triclinic_cell(rng):
    cell = np.array([[2.0, 0.0, 0.0], [0.7, 1.9, 0.0], [0.4, 0.5, 1.8]])  # rows: a, b, c
    x = random_walk(rng, 200, 40, d=2e-2)
    fractional = x @ np.linalg.inv(cell)
    wrapped = (fractional - np.floor(fractional)) @ cell
    unwrapped, _ = obs.unwrap(wrapped, np.repeat(cell[None], 200, axis=0))
    np.testing.assert_allclose(unwrapped - unwrapped[0], x - x[0], atol=1e-9)


def test_fit_window_too_short_is_an_error_with_a_fix():
    with pytest.raises(ValueError, match="write trajectory frames more often"):
        obs.fit_diffusion(np.arange(4) * 0.1, np.zeros((4, 10)))


def test_energy_drift_recovers_slope_and_honest_error(rng):
    """E(t) = E0 + k t + AR(1) noise: slope back within its error; and the error is not
    the naive least-squares one (correlated residuals)."""
    from synthetic_runs import ar1_stationary

    n_atoms, slope_per_ps = 300, 0.9  # 3 kJ/mol/atom/ns
    t = np.arange(5000) * 0.01
    z = []
    for _ in range(20):
        energy = -1e4 + slope_per_ps * t + ar1_stationary(rng, len(t), 0.95, sigma=2.0)
        drift = obs.energy_drift(t, energy, n_atoms)
        z.append((drift.mean - slope_per_ps * 1000 / n_atoms) / drift.sem)
    assert abs(np.mean(z)) < 0.8
    assert 0.6 < np.std(z) < 1.6


def test_centre_of_mass_drift_is_removed(rng):
    """All atoms share one drifting offset (a wandering system): no self-diffusion."""
    import mdtraj as md

    from openmm_mace_lp.analysis.analyze import unwrap_selection

    n_frames, n_atoms, box = 100, 30, 3.0
    topology = md.Topology()
    chain = topology.add_chain()
    for _ in range(n_atoms):
        topology.add_atom("Ar", md.element.argon, topology.add_residue("AR", chain))
    start = rng.uniform(0, box, (n_atoms, 3))
    drift = np.cumsum(rng.normal(scale=0.05, size=(n_frames, 1, 3)), axis=0)
    xyz = (start + drift) % box
    traj = md.Trajectory(xyz, topology, unitcell_lengths=np.full((n_frames, 3), box),
                         unitcell_angles=np.full((n_frames, 3), 90.0))
    atoms = np.arange(0, n_atoms, 2)
    corrected, _ = unwrap_selection(traj, atoms, remove_com=True, atoms_per_chunk=7)
    assert np.max(np.abs(corrected - corrected[0])) < 1e-5  # float32 trajectory
    raw, _ = unwrap_selection(traj, atoms, remove_com=False, atoms_per_chunk=7)
    np.testing.assert_allclose(raw - raw[0], np.repeat(drift - drift[0], len(atoms), 1),
                               atol=1e-5)
