"""All observables of one run directory, with the equilibration transient removed.

The transient is found once per run (on the potential energy, and the density in NPT)
and the same cut is applied to the state CSV and the trajectory, so that every
observable describes the same equilibrated stretch of the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import observables as obs
from .rundir import RunDir, StateSeries, open_run
from .timeseries import SeriesMean, detect_equilibration, mean_estimate
from .uncertainty import Estimate

# name -> (label, unit); the order is the order of tables and plots.
OBSERVABLES: dict[str, tuple[str, str]] = {
    "temperature": ("Temperature", "K"),
    "density": ("Density", "g/cm^3"),
    "volume": ("Box volume", "nm^3"),
    "potential_energy": ("Potential energy", "kJ/mol/atom"),
    "pressure": ("Pressure", "bar"),
    "diffusion": ("Self-diffusion D", obs.DIFFUSION_UNIT),
    "energy_drift": ("NVE energy drift", obs.DRIFT_UNIT),
}
PEAK_POSITION = "rdf_peak_position"
PEAK_HEIGHT = "rdf_peak_height"

WATER_RDF_PAIRS = (
    ("O-O", "water and element O", "water and element O"),
    ("O-H", "water and element O", "water and element H"),
    ("H-H", "water and element H", "water and element H"),
)


def observable_label(name: str) -> tuple[str, str]:
    """(label, unit) of an observable name, including the per-pair RDF peak names."""
    if name in OBSERVABLES:
        return OBSERVABLES[name]
    if name.startswith(PEAK_POSITION + ":"):
        return f"g({name.split(':', 1)[1]}) peak position", "nm"
    if name.startswith(PEAK_HEIGHT + ":"):
        return f"g({name.split(':', 1)[1]}) peak height", ""
    return name, ""


@dataclass
class AnalysisOptions:
    """Knobs of the analysis; the defaults suit water runs of a few hundred frames+."""

    equilibration: str | float = "auto"  # "auto", "none" or a time in ps to discard
    trajectory: bool = True  # False: state-CSV observables only (fast)
    stride: int = 1
    rdf_pairs: tuple[tuple[str, str, str], ...] | None = None  # None: water O/H or all-all
    rdf_r_max_nm: float = 1.0
    rdf_bin_width_nm: float = 0.005
    rdf_blocks: int = 8
    msd_selection: str | None = None  # None: water oxygens, else all atoms
    msd_fit_ps: tuple[float, float] | None = None  # None: 10-50 % of the longest lag
    msd_groups: int = 16
    remove_com: bool = True


@dataclass
class Observable:
    """One scalar observable of a run: estimate plus how it was obtained."""

    name: str
    estimate: Estimate
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return observable_label(self.name)[0]

    @property
    def unit(self) -> str:
        return observable_label(self.name)[1]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "unit": self.unit, **self.estimate.to_dict(),
                **self.details}


@dataclass
class RunAnalysis:
    """Everything the comparison and report need from one run."""

    run: RunDir
    equilibration: dict[str, Any]
    scalars: dict[str, Observable]
    series: dict[str, np.ndarray]  # full state series for plots ("time_ps", ...)
    rdfs: dict[str, obs.RDF] = field(default_factory=dict)
    diffusion: obs.Diffusion | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def speed(self) -> dict[str, Any]:
        manifest = self.run.manifest
        ns_per_day = manifest.get("ns_per_day")
        ns_per_day = float(ns_per_day) if ns_per_day is not None else math.nan
        return {"ns_per_day": ns_per_day, "msteps_per_day": ns_per_day / self.run.timestep_fs,
                "timestep_fs": self.run.timestep_fs, "device": manifest.get("device"),
                "platform": manifest.get("platform"), "backend": manifest.get("backend")}

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        manifest = self.run.manifest
        data: dict[str, Any] = {
            "schema": "openmm-mace-lp/analysis/1",
            "run": {key: manifest.get(key) for key in (
                "arm", "policy", "backend", "seed", "ensemble", "temperature_K",
                "pressure_bar", "timestep_fs", "n_atoms", "steps_completed", "status")},
            "path": str(self.run.path),
            "equilibration": self.equilibration,
            "observables": {name: o.to_dict() for name, o in self.scalars.items()},
            "speed": self.speed,
            "warnings": self.warnings,
        }
        if self.diffusion is not None:
            data["diffusion_fit"] = self.diffusion.to_dict()
        if curves:
            data["rdf"] = {name: rdf.to_dict() for name, rdf in self.rdfs.items()}
            if self.diffusion is not None:
                step = max(1, len(self.diffusion.time_ps) // 200)
                data["msd"] = {"time_ps": self.diffusion.time_ps[::step],
                               "msd_nm2": self.diffusion.msd_nm2[::step]}
        return data


# --------------------------------------------------------------------------------------


def _state_series(state: StateSeries, n_atoms: int) -> dict[str, np.ndarray]:
    """The state columns the analysis uses, energies per atom."""
    series = {"time_ps": state["time_ps"], "step": state["step"],
              "temperature": state["temperature_K"],
              "potential_energy": state["potential_energy_kJ_mol"] / n_atoms,
              "total_energy": state["total_energy_kJ_mol"] / n_atoms}
    for name, column in (("density", "density_g_cm3"), ("volume", "box_volume_nm3"),
                         ("pressure", "pressure_bar")):
        if state.has(column):
            series[name] = state[column]
    return series


def _find_t0(series: dict[str, np.ndarray], ensemble: str,
             setting: str | float) -> dict[str, Any]:
    """Equilibration cut: the latest of the cuts found for the energy (and density)."""
    time = series["time_ps"]
    if setting == "none":
        return {"method": "none", "t0_index": 0, "t0_ps": float(time[0]),
                "discarded_fraction": 0.0, "per_series_t0_ps": {}}
    if setting != "auto":
        t0_ps = float(setting)
        index = int(np.searchsorted(time, t0_ps))
        if index >= len(time) - 1:
            raise ValueError(f"--equilibration {t0_ps} ps discards the whole run "
                             f"(it ends at {time[-1]:.4g} ps); choose a shorter time.")
        return {"method": "fixed", "t0_index": index, "t0_ps": float(time[index]),
                "discarded_fraction": index / len(time), "per_series_t0_ps": {}}
    names = ["potential_energy"] + (["density"] if ensemble == "npt" and "density" in series
                                    else [])
    found = {name: detect_equilibration(series[name]) for name in names}
    index = max(result.t0 for result in found.values())
    return {"method": "max N_eff (Chodera 2016) on " + " and ".join(names),
            "t0_index": int(index), "t0_ps": float(time[index]),
            "discarded_fraction": index / len(time),
            "per_series_t0_ps": {name: float(time[r.t0]) for name, r in found.items()},
            "n_eff": {name: float(r.n_eff) for name, r in found.items()}}


def _series_observable(name: str, values: np.ndarray) -> Observable:
    result: SeriesMean = mean_estimate(values)
    details = result.to_dict()
    for key in ("mean", "sem", "dof", "method"):
        details.pop(key)
    return Observable(name, result.estimate, details)


def state_observables(series: dict[str, np.ndarray], t0: int,
                      ensemble: str) -> dict[str, Observable]:
    """Means of the state-CSV observables after the cut (density/volume only in NPT)."""
    names = ["temperature", "potential_energy"]
    if ensemble == "npt":
        names[1:1] = [n for n in ("density", "volume") if n in series]
    if "pressure" in series:
        names.append("pressure")
    return {name: _series_observable(name, series[name][t0:]) for name in names}


def default_rdf_pairs(topology) -> tuple[tuple[str, str, str], ...]:
    """Water O-O, O-H, H-H when the system holds water; otherwise all atoms."""
    if topology.select("water and element O").size and topology.select("water and element H").size:
        return WATER_RDF_PAIRS
    return (("all-all", "all", "all"),)


def _default_msd_selection(topology) -> str:
    return "water and element O" if topology.select("water and element O").size else "all"


def _masses(topology) -> np.ndarray:
    masses = np.array([atom.element.mass if atom.element is not None else 0.0
                       for atom in topology.atoms], dtype=float)
    return masses if masses.sum() > 0 else np.ones_like(masses)


def unwrap_selection(traj, atoms: np.ndarray, remove_com: bool,
                     atoms_per_chunk: int = 256) -> tuple[np.ndarray, float]:
    """Unwrapped positions of ``atoms``, minus the drift of the system's centre of mass.

    Atoms are unwrapped in chunks (memory stays ~ frames x chunk) while the mass-weighted
    centre of mass of *all* atoms is accumulated: Langevin thermostats let the whole
    system wander, which is not self-diffusion.
    """
    masses = _masses(traj.topology)
    selected = np.empty((traj.n_frames, len(atoms), 3))
    com = np.zeros((traj.n_frames, 3))
    largest = 0.0
    wanted = {int(a): i for i, a in enumerate(atoms)}
    chunks = range(0, traj.n_atoms, atoms_per_chunk) if remove_com else \
        range(0, len(atoms), atoms_per_chunk)
    for start in chunks:
        index = (np.arange(start, min(start + atoms_per_chunk, traj.n_atoms)) if remove_com
                 else atoms[start:start + atoms_per_chunk])
        unwrapped, moved = obs.unwrap(traj.xyz[:, index], traj.unitcell_vectors)
        largest = max(largest, moved)
        if remove_com:
            com += np.einsum("fnk,n->fk", unwrapped, masses[index])
        for column, atom in enumerate(index):
            if int(atom) in wanted:
                selected[:, wanted[int(atom)]] = unwrapped[:, column]
    if remove_com:
        com /= masses.sum()
        selected -= (com - com[0])[:, None, :]
    return selected, largest


def trajectory_observables(run: RunDir, t0_ps: float, t_end_ps: float,
                           options: AnalysisOptions, warnings: list[str]
                           ) -> tuple[dict[str, obs.RDF], obs.Diffusion | None,
                                      dict[str, Observable]]:
    """RDFs, RDF peak of the first pair, MSD and D from frames in [t0_ps, t_end_ps].

    ``t_end_ps`` is the last valid state row: frames written after a run diverged (or
    non-finite frames) are not physics.
    """
    traj = run.load_trajectory(stride=options.stride)
    keep = (traj.time >= t0_ps - 1e-9) & (traj.time <= t_end_ps + 1e-9)
    finite = np.isfinite(traj.xyz).all(axis=(1, 2))
    if traj.unitcell_vectors is not None:
        finite &= np.isfinite(traj.unitcell_vectors).all(axis=(1, 2))
    if not finite.all():
        first_bad = int(np.argmin(finite))
        warnings.append(f"{run.name}: non-finite coordinates from trajectory frame {first_bad} "
                        "on; later frames ignored.")
        keep[first_bad:] = False
    if keep.sum() < 4:
        warnings.append(f"{run.name}: only {int(keep.sum())} trajectory frames after the "
                        f"equilibration cut at {t0_ps:.4g} ps; RDF and MSD skipped.")
        return {}, None, {}
    traj = traj[np.nonzero(keep)[0]]
    scalars: dict[str, Observable] = {}
    rdfs: dict[str, obs.RDF] = {}
    pairs_spec = options.rdf_pairs or default_rdf_pairs(traj.topology)
    if traj.unitcell_vectors is not None:
        limit = obs.max_rdf_range(traj.unitcell_vectors)
        if options.rdf_r_max_nm > limit:
            warnings.append(f"{run.name}: RDF range capped at {limit:.3f} nm (half the "
                            "smallest box width).")
        for name, sel_a, sel_b in pairs_spec:
            pairs = obs.select_pairs(traj.topology, sel_a, sel_b)
            rdfs[name] = obs.compute_rdf(traj, pairs, name, options.rdf_r_max_nm,
                                         options.rdf_bin_width_nm)
        first = rdfs[pairs_spec[0][0]]
        scalars.update(rdf_peak_observables(first, options.rdf_blocks))
        diffusion = _diffusion(traj, options, run, warnings)
    else:
        warnings.append(f"{run.name}: trajectory has no unit cell; RDF and MSD skipped.")
        diffusion = None
    if diffusion is not None:
        scalars["diffusion"] = Observable("diffusion", diffusion.estimate,
                                          {"fit_start_ps": diffusion.fit_start_ps,
                                           "fit_end_ps": diffusion.fit_end_ps})
    return rdfs, diffusion, scalars


def rdf_peak_observables(rdf: obs.RDF, n_blocks: int) -> dict[str, Observable]:
    """Peak position and height of g(r), errors from the spread over frame blocks."""
    position, height = obs.rdf_peak(rdf.r, rdf.g, rdf.ideal_counts)
    blocks = rdf.blocks(n_blocks)
    per_block = np.array([obs.rdf_peak(rdf.r, g, rdf.ideal_counts) for g in blocks])
    n = len(blocks)
    if n > 1:
        sems = np.std(per_block, axis=0, ddof=1) / math.sqrt(n)
        dof, method = n - 1.0, f"spread over {n} blocks of frames"
    else:
        sems, dof, method = np.array([math.nan, math.nan]), math.nan, "single frame"
    return {
        f"{PEAK_POSITION}:{rdf.name}": Observable(f"{PEAK_POSITION}:{rdf.name}",
                                                  Estimate(position, float(sems[0]), dof, method)),
        f"{PEAK_HEIGHT}:{rdf.name}": Observable(f"{PEAK_HEIGHT}:{rdf.name}",
                                                Estimate(height, float(sems[1]), dof, method)),
    }


def _diffusion(traj, options: AnalysisOptions, run: RunDir,
               warnings: list[str]) -> obs.Diffusion | None:
    selection = options.msd_selection or _default_msd_selection(traj.topology)
    atoms = traj.topology.select(selection)
    if atoms.size == 0:
        raise ValueError(f"MSD selection {selection!r} matches no atom in {run.topology_path}.")
    positions, largest = unwrap_selection(traj, atoms, options.remove_com)
    if largest > 0.25:
        warnings.append(f"{run.name}: atoms moved up to {largest:.2f} box lengths between "
                        "frames; unwrapping may be wrong - write frames more often.")
    time = traj.time - traj.time[0]
    try:
        return obs.fit_diffusion(time, obs.msd_per_atom(positions), options.msd_fit_ps,
                                 n_groups=options.msd_groups)
    except ValueError as error:
        warnings.append(f"{run.name}: diffusion skipped: {error}")
        return None


def analyze_run(run_dir: str | Path | RunDir,
                options: AnalysisOptions | None = None) -> RunAnalysis:
    """Analyse one run directory: equilibration cut, state means, RDFs, MSD, drift."""
    options = options or AnalysisOptions()
    run = run_dir if isinstance(run_dir, RunDir) else open_run(run_dir)
    state = run.load_state()
    series = _state_series(state, run.n_atoms)
    if len(series["time_ps"]) < 8:
        raise ValueError(f"{run.path / 'state.csv'} has {len(series['time_ps'])} rows; at "
                         "least 8 are needed for error estimates - let the run report more.")
    equilibration = _find_t0(series, run.ensemble, options.equilibration)
    t0 = equilibration["t0_index"]
    scalars = state_observables(series, t0, run.ensemble)
    warnings = run.warnings
    if run.ensemble == "nve":
        # The total energy of NVE has no transient to cut: drift is fitted to the whole run.
        scalars["energy_drift"] = Observable(
            "energy_drift",
            obs.energy_drift(series["time_ps"], series["total_energy"] * run.n_atoms,
                             run.n_atoms))
    rdfs: dict[str, obs.RDF] = {}
    diffusion = None
    if options.trajectory:
        if run.has_trajectory:
            t_end = math.inf if state.truncated_at_step is None else float(series["time_ps"][-1])
            rdfs, diffusion, traj_scalars = trajectory_observables(
                run, equilibration["t0_ps"], t_end, options, warnings)
            scalars.update(traj_scalars)
        else:
            warnings.append(f"{run.name}: no trajectory.dcd/topology.pdb; RDF and MSD skipped.")
    return RunAnalysis(run, equilibration, scalars, series, rdfs, diffusion, warnings)
