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
from . import support
from .rundir import RunDir, StateSeries, open_run
from .support import Limitation
from .timeseries import (SeriesMean, detect_equilibration, drift_p_value, mean_estimate,
                         statistical_inefficiency)
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

# (name, selection A, selection B, intermolecular only). O-H and H-H leave out the pairs of
# one molecule: their covalent peak (0.096 and 0.15 nm) would dwarf the hydrogen-bond peak.
WATER_RDF_PAIRS = (
    ("O-O", "water and element O", "water and element O", False),
    ("O-H", "water and element O", "water and element H", True),
    ("H-H", "water and element H", "water and element H", True),
)
INTERMOLECULAR_NOTE = "intermolecular"


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
    # (name, sel_a, sel_b[, intermolecular only]); None: water O-O, O-H, H-H or all-all
    rdf_pairs: tuple[tuple, ...] | None = None
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
    limitations: list[Limitation] = field(default_factory=list)

    @property
    def label(self) -> str:
        return observable_label(self.name)[0]

    @property
    def unit(self) -> str:
        return observable_label(self.name)[1]

    @property
    def supported(self) -> bool:
        return not self.limitations

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "unit": self.unit, **self.estimate.to_dict(),
                **self.details, "supported": self.supported,
                "limitations": [item.to_dict() for item in self.limitations]}


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
    # Limitations of the whole run (equilibration, temperature, status): they apply to
    # every observable, and are already included in each Observable's own list.
    run_limitations: list[Limitation] = field(default_factory=list)
    # What the run cannot give at all, by observable name (e.g. D from too few frames).
    missing: dict[str, Limitation] = field(default_factory=dict)
    rdf_limitations: dict[str, list[Limitation]] = field(default_factory=dict)
    water: bool = False  # every residue is water (experimental targets apply)

    @property
    def kept_ps(self) -> float:
        """Production time after the equilibration cut (ps)."""
        time = self.series["time_ps"]
        return float(time[-1] - time[self.equilibration["t0_index"]]) if len(time) else 0.0

    @property
    def production_ps(self) -> float:
        """Production time covered by the state rows (ps)."""
        steps = self.run.manifest.get("steps_completed")
        if steps:
            return float(steps) * self.run.timestep_fs / 1000.0
        return float(self.series["time_ps"][-1])

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
            "not_measured": {name: item.to_dict() for name, item in self.missing.items()},
            "run_limitations": [item.to_dict() for item in self.run_limitations],
            "rdf_limitations": {pair: [item.to_dict() for item in items]
                                for pair, items in self.rdf_limitations.items()},
            "production_ps": self.production_ps,
            "kept_ps": self.kept_ps,
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


def _detection_names(series: dict[str, np.ndarray], ensemble: str) -> list[str]:
    return ["potential_energy"] + (["density"] if ensemble == "npt" and "density" in series
                                   and np.ptp(series["density"]) > 0 else [])


def _find_t0(series: dict[str, np.ndarray], ensemble: str,
             setting: str | float) -> dict[str, Any]:
    """Equilibration cut: the latest of the cuts found for the energy (and density)."""
    time = series["time_ps"]
    n = len(time)
    if setting == "none" or (setting == "auto" and n < 4):
        method = "none" if setting == "none" else f"none ({n} state rows: too few to detect)"
        return {"method": method, "t0_index": 0, "t0_ps": float(time[0]),
                "discarded_fraction": 0.0, "per_series_t0_ps": {}}
    if setting != "auto":
        t0_ps = float(setting)
        index = int(np.searchsorted(time, t0_ps))
        if index >= n - 1:
            raise ValueError(f"--equilibration {t0_ps} ps discards the whole run "
                             f"(it ends at {time[-1]:.4g} ps); choose a shorter time.")
        return {"method": "fixed", "t0_index": index, "t0_ps": float(time[index]),
                "discarded_fraction": index / n, "per_series_t0_ps": {}}
    names = _detection_names(series, ensemble)
    found = {name: detect_equilibration(series[name]) for name in names}
    index = min(max(result.t0 for result in found.values()), n - 2)
    return {"method": "max N_eff (Chodera 2016; pymbar g) on " + " and ".join(names),
            "t0_index": int(index), "t0_ps": float(time[index]),
            "discarded_fraction": index / n,
            "per_series_t0_ps": {name: float(time[r.t0]) for name, r in found.items()},
            "n_eff": {name: float(r.n_eff) for name, r in found.items()},
            "at_search_limit": [name for name, r in found.items() if r.at_limit]}


def _equilibration_limitations(series: dict[str, np.ndarray], ensemble: str,
                               equilibration: dict[str, Any]) -> list[Limitation]:
    """Was a stationary stretch found? Checked on the series the cut was chosen from."""
    t0 = equilibration["t0_index"]
    out: list[Limitation] = []
    at_limit = equilibration.get("at_search_limit", [])
    for name in _detection_names(series, ensemble):
        kept = series[name][t0:]
        n_eff = kept.size / statistical_inefficiency(kept) if kept.size >= 2 else kept.size
        drift = drift_p_value(kept) if kept.size >= 8 else float("nan")
        label = observable_label(name)[0].lower()
        out += support.equilibration_limitations(label, name in at_limit, drift, n_eff)
    return out


def _series_observable(name: str, values: np.ndarray) -> Observable:
    """Mean with SEM (and the samples' SD) of one state series, with its limitations."""
    label = observable_label(name)[0]
    if values.size < 2:
        mean = float(values[0]) if values.size else float("nan")
        return Observable(name, Estimate(mean, float("nan"), float("nan"), "single sample"),
                          {"n_samples": int(values.size), "sd": float("nan")},
                          support.series_limitations(label, None, int(values.size)))
    result: SeriesMean = mean_estimate(values)
    details = result.to_dict()
    for key in ("mean", "sem", "dof", "method"):
        details.pop(key)
    details["sd"] = float(np.std(values, ddof=1))
    limitations = support.series_limitations(label, result, values.size)
    if name in ("density", "volume"):
        limitations = support.constant_limitation(
            label, values, "no barostat move changed the box; this is the starting value, "
            "not a measurement (run longer, or barostat more often).") or limitations
    if name == "temperature" and values.size >= 8:  # energy and density: see the cut
        drift = drift_p_value(values)
        if drift < support.DRIFT_ALPHA:
            limitations.append(Limitation(support.DRIFTING, (
                f"{label} still drifts after the cut (linear trend, p = {drift:.1g}); "
                "the thermostat has not settled it.")))
    return Observable(name, result.estimate, details, limitations)


def state_observables(series: dict[str, np.ndarray], t0: int,
                      ensemble: str) -> dict[str, Observable]:
    """Means of the state-CSV observables after the cut (density/volume only in NPT)."""
    names = ["temperature", "potential_energy"]
    if ensemble == "npt":
        names[1:1] = [n for n in ("density", "volume") if n in series]
    if "pressure" in series:
        names.append("pressure")
    return {name: _series_observable(name, series[name][t0:]) for name in names}


def default_rdf_pairs(topology) -> tuple[tuple[str, str, str, bool], ...]:
    """Water O-O, O-H, H-H (the latter two intermolecular) for water; otherwise all atoms."""
    if topology.select("water and element O").size and topology.select("water and element H").size:
        return WATER_RDF_PAIRS
    return (("all-all", "all", "all", False),)


def _pair_spec(spec: tuple) -> tuple[str, str, str, bool]:
    if len(spec) == 3:
        return spec[0], spec[1], spec[2], False
    if len(spec) == 4:
        return spec[0], spec[1], spec[2], bool(spec[3])
    raise ValueError(f"RDF pair {spec!r}: give (name, selection A, selection B).")


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
                           options: AnalysisOptions, warnings: list[str],
                           missing: dict[str, Limitation] | None = None
                           ) -> tuple[dict[str, obs.RDF], obs.Diffusion | None,
                                      dict[str, Observable]]:
    """RDFs, RDF peak of the first pair, MSD and D from frames in [t0_ps, t_end_ps].

    ``t_end_ps`` is the last valid state row: frames written after a run diverged (or
    non-finite frames) are not physics. What cannot be measured goes into ``missing``.
    """
    missing = {} if missing is None else missing
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
        reason = (f"only {int(keep.sum())} trajectory frame(s) after the equilibration cut at "
                  f"{t0_ps:.4g} ps (at least 4 are needed); write frames more often or run "
                  "longer.")
        warnings.append(f"{run.name}: {reason} RDF and MSD skipped.")
        missing["rdf"] = Limitation(support.NOT_MEASURED, f"g(r): {reason}")
        missing["diffusion"] = Limitation(support.NOT_MEASURED, f"self-diffusion D: {reason}")
        return {}, None, {}
    traj = traj[np.nonzero(keep)[0]]
    scalars: dict[str, Observable] = {}
    rdfs: dict[str, obs.RDF] = {}
    pairs_spec = [_pair_spec(spec) for spec in (options.rdf_pairs
                                                 or default_rdf_pairs(traj.topology))]
    if traj.unitcell_vectors is None:
        warnings.append(f"{run.name}: trajectory has no unit cell; RDF and MSD skipped.")
        for name in ("rdf", "diffusion"):
            missing[name] = Limitation(support.NOT_MEASURED, f"{name}: the trajectory has no "
                                                             "unit cell (non-periodic run).")
        return {}, None, {}
    limit = obs.max_rdf_range(traj.unitcell_vectors)
    if options.rdf_r_max_nm > limit:
        warnings.append(f"{run.name}: RDF range capped at {limit:.3f} nm (half the "
                        "smallest box width).")
    for name, sel_a, sel_b, intermolecular in pairs_spec:
        pairs = obs.select_pairs(traj.topology, sel_a, sel_b,
                                 exclude_same_residue=intermolecular)
        rdfs[name] = obs.compute_rdf(traj, pairs, name, options.rdf_r_max_nm,
                                     options.rdf_bin_width_nm)
        rdfs[name].intermolecular = bool(intermolecular)
    first = rdfs[pairs_spec[0][0]]
    scalars.update(rdf_peak_observables(first, options.rdf_blocks))
    diffusion = _diffusion(traj, options, run, warnings, missing)
    if diffusion is not None:
        scalars["diffusion"] = Observable(
            "diffusion", diffusion.estimate,
            {"fit_start_ps": diffusion.fit_start_ps, "fit_end_ps": diffusion.fit_end_ps,
             "msd_exponent": diffusion.exponent, "msd_slope_ratio": diffusion.slope_ratio},
            support.msd_limitation(diffusion.slope_ratio, diffusion.exponent,
                                   diffusion.fit_start_ps, diffusion.fit_end_ps))
    return rdfs, diffusion, scalars


def rdf_limitations(rdf: obs.RDF) -> list[Limitation]:
    """Enough independent frames? Judged on g at the highest peak, frame by frame."""
    window = np.ones(len(rdf.r), bool) if rdf.ideal_counts is None else rdf.ideal_counts >= 1.0
    if not window.any():
        window[:] = True
    peak = int(np.flatnonzero(window)[np.argmax(rdf.g[window])])
    per_frame = rdf.g_frames[:, peak]
    label = f"g({rdf.name}) at its peak ({rdf.r[peak]:.3f} nm), frame by frame"
    if per_frame.size < 2:
        return support.series_limitations(label, None, int(per_frame.size))
    return [item for item in support.series_limitations(label, mean_estimate(per_frame),
                                                        per_frame.size)
            if item.code == support.FEW_SAMPLES]


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


def _diffusion(traj, options: AnalysisOptions, run: RunDir, warnings: list[str],
               missing: dict[str, Limitation]) -> obs.Diffusion | None:
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
        missing["diffusion"] = Limitation(support.NOT_MEASURED, f"self-diffusion D: {error}")
        return None


def _energy_drift(series: dict[str, np.ndarray], run: RunDir,
                  missing: dict[str, Limitation]) -> Observable | None:
    """NVE: drift of the total energy over the whole run (it has no transient to cut)."""
    label = observable_label("energy_drift")[0]
    if run.ensemble != "nve":
        missing["energy_drift"] = Limitation(support.NOT_MEASURED, (
            f"{label}: a thermostatted ({run.ensemble.upper()}) run conserves no energy; "
            "the trend of its total energy is no conservation test (use an NVE run)."))
        return None
    rows = len(series["time_ps"])
    if rows < 4:
        missing["energy_drift"] = Limitation(support.NOT_MEASURED, (
            f"{label}: {rows} state row(s); a drift needs at least 4."))
        return None
    estimate = obs.energy_drift(series["time_ps"], series["total_energy"] * run.n_atoms,
                                run.n_atoms)
    limitations = []
    if estimate.dof + 1.0 < support.MIN_INDEPENDENT_SAMPLES:
        limitations.append(Limitation(support.FEW_SAMPLES, (
            f"{label}: the residuals about the fitted line hold about {estimate.dof + 1:.1f} "
            f"independent samples (at least {support.MIN_INDEPENDENT_SAMPLES} needed).")))
    return Observable("energy_drift", estimate, {}, limitations)


def _run_limitations(run: RunDir, state: StateSeries, series: dict[str, np.ndarray],
                     equilibration: dict[str, Any],
                     scalars: dict[str, Observable]) -> list[Limitation]:
    """Limitations of the whole run: status, divergence, equilibration, temperature."""
    out: list[Limitation] = []
    status = run.manifest.get("status")
    if status not in (None, "completed"):
        out.append(Limitation(support.RUN_STATUS, f"the run's status is {status!r}, not "
                                                  "'completed': it covers less than planned."))
    if state.truncated_at_step is not None:
        out.append(Limitation(support.RUN_STATUS, (
            f"the run diverged at step {state.truncated_at_step}; only the rows before it are "
            "analysed.")))
    out += _equilibration_limitations(series, run.ensemble, equilibration)
    temperature = scalars.get("temperature")
    if temperature is not None:
        out += support.temperature_limitation(temperature.estimate,
                                              float(run.manifest["temperature_K"]),
                                              run.ensemble)
    return out


def analyze_run(run_dir: str | Path | RunDir,
                options: AnalysisOptions | None = None) -> RunAnalysis:
    """Analyse one run directory: equilibration cut, state means, RDFs, MSD, drift.

    Short runs are analysed too: whatever they cannot support is named (limitations on
    each observable, ``missing`` for what could not be measured at all), never refused.
    """
    options = options or AnalysisOptions()
    run = run_dir if isinstance(run_dir, RunDir) else open_run(run_dir)
    state = run.load_state()
    series = _state_series(state, run.n_atoms)
    equilibration = _find_t0(series, run.ensemble, options.equilibration)
    t0 = equilibration["t0_index"]
    scalars = state_observables(series, t0, run.ensemble)
    warnings = run.warnings
    missing: dict[str, Limitation] = {}
    drift = _energy_drift(series, run, missing)
    if drift is not None:
        scalars["energy_drift"] = drift
    rdfs: dict[str, obs.RDF] = {}
    diffusion = None
    if options.trajectory:
        if run.has_trajectory:
            t_end = math.inf if state.truncated_at_step is None else float(series["time_ps"][-1])
            rdfs, diffusion, traj_scalars = trajectory_observables(
                run, equilibration["t0_ps"], t_end, options, warnings, missing)
            scalars.update(traj_scalars)
        else:
            warnings.append(f"{run.name}: no trajectory.dcd/topology.pdb; RDF and MSD skipped.")
            for name in ("rdf", "diffusion"):
                missing[name] = Limitation(support.NOT_MEASURED,
                                           f"{name}: the run wrote no trajectory.")
    run_limitations = _run_limitations(run, state, series, equilibration, scalars)
    first_pair = next(iter(rdfs.values()), None)
    for name, observable in scalars.items():
        if first_pair is not None and name.startswith((PEAK_POSITION, PEAK_HEIGHT)):
            observable.limitations += rdf_limitations(first_pair)
        observable.limitations += run_limitations
    return RunAnalysis(run, equilibration, scalars, series, rdfs, diffusion, warnings,
                       run_limitations, missing,
                       {pair: rdf_limitations(rdf) + run_limitations
                        for pair, rdf in rdfs.items()}, _is_water(run))


def _is_water(run: RunDir) -> bool:
    """True when the run's topology holds water and nothing else."""
    if not run.topology_path.is_file():
        return False
    import mdtraj as md

    try:
        residues = list(md.load_topology(str(run.topology_path)).residues)
    except Exception:  # noqa: BLE001 - an unreadable topology only loses the water targets
        return False
    return bool(residues) and all(residue.is_water for residue in residues)
