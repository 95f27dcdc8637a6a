"""Synthetic run directories in the format of the simulation recipes (schema run/1).

Water-like molecules whose oxygens random-walk with a known diffusion coefficient in a
box that breathes as in NPT (positions scale with the box, as a barostat does), and a
state CSV whose columns are AR(1) noise around known means with an initial transient.
Used to test the analysis end to end without running MD.
"""
from __future__ import annotations

import json
from pathlib import Path

import mdtraj as md
import numpy as np
from scipy.constants import Avogadro as AVOGADRO  # the project's one N_A (CODATA)
from scipy.signal import lfilter

WATER_MASS = 18.01528  # g/mol
O_H = 0.09572  # nm
HOH = np.deg2rad(104.52)
D_TRUE_NM2_PS = 2.3e-3  # 2.3e-9 m^2/s


def water_topology(n_waters: int) -> md.Topology:
    topology = md.Topology()
    chain = topology.add_chain()
    for _ in range(n_waters):
        residue = topology.add_residue("HOH", chain)
        oxygen = topology.add_atom("O", md.element.oxygen, residue)
        h1 = topology.add_atom("H1", md.element.hydrogen, residue)
        h2 = topology.add_atom("H2", md.element.hydrogen, residue)
        topology.add_bond(oxygen, h1)
        topology.add_bond(oxygen, h2)
    return topology


def ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    """Stationary AR(1) series with marginal standard deviation ``sigma``."""
    noise = rng.normal(scale=sigma * np.sqrt(1.0 - phi ** 2), size=n + 200)
    x = lfilter([1.0], [1.0, -phi], noise)[200:]
    return x


def ar1_stationary(rng: np.random.Generator, n: int, phi: float, sigma: float = 1.0,
                   size: int | None = None) -> np.ndarray:
    """Stationary AR(1) with marginal SD ``sigma``; ``size`` rows of independent series."""
    shape = (size, n) if size else (n,)
    noise = rng.normal(scale=sigma * np.sqrt(1 - phi ** 2), size=shape)
    start = rng.normal(scale=sigma, size=shape[:-1] + (1,))
    # Start from the stationary distribution: x_0 ~ N(0, sigma^2), x_t = phi x_{t-1} + e_t.
    x = np.empty(shape)
    x[..., 0] = start[..., 0]
    filtered, _ = lfilter([1.0], [1.0, -phi], noise[..., 1:], axis=-1,
                          zi=phi * start)
    x[..., 1:] = filtered
    return x


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)


def make_run_dir(path: str | Path, policy: str = "fp64", seed: int = 1, *,
                 n_side: int = 5, n_frames: int = 120, n_rows: int = 600,
                 ensemble: str = "npt", timestep_fs: float = 1.0,
                 report_interval: int = 10, trajectory_interval: int = 50,
                 density: float = 1.0, temperature: float = 300.0,
                 potential_per_atom: float = -40.0, drift_per_atom_ns: float = 0.0,
                 diffusion_nm2_ps: float = D_TRUE_NM2_PS, ns_per_day: float = 10.0,
                 o_h_nm: float = O_H, transient: bool = True, status: str = "completed",
                 rng_seed: int | None = None, manifest_extra: dict | None = None) -> Path:
    """Write a run directory with ``n_side**3`` waters; returns its path."""
    rng = np.random.default_rng(rng_seed if rng_seed is not None else seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    n_waters = n_side ** 3
    n_atoms = 3 * n_waters
    mass_g = n_waters * WATER_MASS / AVOGADRO
    volume0 = mass_g / density / 1e-21  # nm^3
    n_steps = n_rows * report_interval

    # --- state CSV on the report grid ---------------------------------------------------
    steps = report_interval * np.arange(1, n_rows + 1)
    time_ps = steps * timestep_fs / 1000.0
    decay = np.exp(-time_ps / (0.05 * time_ps[-1])) if transient else 0.0
    volume = volume0 * (1.0 + ar1(rng, n_rows, 0.95, 0.01) - 0.03 * decay)
    if ensemble != "npt":
        volume = np.full(n_rows, volume0)
    temperature_k = temperature + ar1(rng, n_rows, 0.9, 5.0) + 40.0 * decay
    potential = n_atoms * (potential_per_atom + ar1(rng, n_rows, 0.9, 0.05) + 1.0 * decay)
    kinetic = 0.5 * (2 * n_waters * 3 - 3) * 0.00831446 * temperature_k
    total = potential + kinetic
    if ensemble == "nve":
        total = (n_atoms * potential_per_atom + n_atoms * drift_per_atom_ns * time_ps / 1000.0
                 + ar1(rng, n_rows, 0.9, 0.5))
        potential = total - kinetic
    density_series = mass_g / (volume * 1e-21)
    header = ("step,time_ps,potential_energy_kJ_mol,kinetic_energy_kJ_mol,total_energy_kJ_mol,"
              "temperature_K,box_volume_nm3,density_g_cm3,speed_ns_day")
    rows = [header]
    for i in range(n_rows):
        rows.append(f"{steps[i]},{time_ps[i]:.6f},{potential[i]:.6f},{kinetic[i]:.6f},"
                    f"{total[i]:.6f},{temperature_k[i]:.6f},{volume[i]:.8f},"
                    f"{density_series[i]:.8f},{ns_per_day:.4f}")
    (path / "state.csv").write_text("\n".join(rows) + "\n")

    # --- trajectory: frames at multiples of trajectory_interval -------------------------
    frame_steps = trajectory_interval * np.arange(1, n_frames + 1)
    box = np.cbrt(np.interp(frame_steps, steps, volume))
    grid = (np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1)
            .reshape(-1, 3) + 0.5) / n_side
    frame_dt = trajectory_interval * timestep_fs / 1000.0
    step_sigma = np.sqrt(2.0 * diffusion_nm2_ps * frame_dt) / np.cbrt(volume0)
    fractional = grid + rng.normal(scale=0.02, size=grid.shape) + np.cumsum(
        rng.normal(scale=step_sigma, size=(n_frames, n_waters, 3)), axis=0)
    fractional -= np.floor(fractional)  # molecules wrapped into the box by their oxygen
    oxygens = fractional * box[:, None, None]
    local = np.array([[0.0, 0.0, 0.0],
                      [o_h_nm, 0.0, 0.0],
                      [o_h_nm * np.cos(HOH), o_h_nm * np.sin(HOH), 0.0]])
    rotations = _random_rotations(rng, n_frames * n_waters).reshape(n_frames, n_waters, 3, 3)
    xyz = oxygens[:, :, None, :] + np.einsum("fwij,aj->fwai", rotations, local)
    xyz = xyz.reshape(n_frames, n_atoms, 3).astype(np.float32)
    traj = md.Trajectory(xyz, water_topology(n_waters),
                         unitcell_lengths=np.repeat(box[:, None], 3, axis=1),
                         unitcell_angles=np.full((n_frames, 3), 90.0))
    traj[0].save_pdb(str(path / "topology.pdb"))
    traj.save_dcd(str(path / "trajectory.dcd"))

    manifest = {
        "schema": "openmm-mace-lp/run/1", "arm": f"{policy}-seed{seed}", "policy": policy,
        "backend": "cueq", "seed": seed, "ensemble": ensemble, "temperature_K": temperature,
        "pressure_bar": 1.0 if ensemble == "npt" else None, "timestep_fs": timestep_fs,
        "n_atoms": n_atoms, "steps_completed": n_steps, "report_interval_steps": report_interval,
        "trajectory_interval_steps": trajectory_interval, "wall_time_s": 100.0,
        "ns_per_day": ns_per_day, "device": "cpu", "platform": "CPU",
        "model": {"path": "model.model", "sha256": "0" * 64}, "versions": {},
        "status": status, **(manifest_extra or {}),
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


def make_arms_dir(root: str | Path, arms: dict[str, dict] | None = None,
                  seeds: int = 2, **common) -> Path:
    """An arms directory: ``{policy: overrides}`` x ``seeds`` run directories."""
    root = Path(root)
    arms = arms if arms is not None else {"fp64": {"ns_per_day": 10.0},
                                          "fp32": {"ns_per_day": 20.0},
                                          "bf16": {"ns_per_day": 25.0, "density": 1.03}}
    for index, (policy, overrides) in enumerate(arms.items()):
        for seed in range(1, seeds + 1):
            make_run_dir(root / f"{policy}-seed{seed}", policy, seed,
                         rng_seed=1000 * index + seed, **{**common, **overrides})
    return root
