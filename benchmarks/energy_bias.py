"""Why a water model is too dense: its energy and pressure errors on its teacher's frames, by kind.

A model that reproduces its teacher's pressure on the teacher's own liquid can still compress
under NPT if it gives the configurations it reaches itself too low an energy: what the barostat
samples is the free energy, so a structure-dependent energy bias of a few meV/atom (a kJ/mol
per molecule and more) moves the density far beyond a 1.5 % target. This script measures both
on the stored data set, float64 eager mace, per (config type, density class): the mean and
spread of the energy error per atom and of the atomic- and molecular-virial pressure errors
(model minus teacher, bar; P = -trace(stress)/3 for the atomic one, the kinetic term cancels in
the difference; the molecular one, what the barostat responds to, is defined below).

    python benchmarks/energy_bias.py systems/models/mace-water-amoeba.model OTHER.model \\
        --splits valid,test -o benchmarks/results/energy_bias_2026-12-01_cpu.json

    # does an NPT run sample its model? the model's own pressure along its own run
    python benchmarks/energy_bias.py MODEL --own-run RUN_DIR --stride 2 -o own_pressure.json

``model_npt_periodic`` frames (``systems/recipes/run_frames.py``) are the model's own NPT
configurations labelled by the teacher; a model whose error there is far below its error on
the teacher's liquid (``md_periodic``) favours its own dense structures.

The atomic-virial pressure is not the one the barostat feels. OpenMM's MonteCarloBarostat
scales the molecules' centres and moves each water rigidly, so the volume derivative it samples
is the *molecular* virial W_mol = sum_m R_m . F_m (F_m the total force on molecule m, R_m its
centre of mass), not the atomic one W_atomic = sum_i r_i . F_i (pair form, minimum image) that
the stress (homogeneous strain of every atom) gives. They differ by the intramolecular term
sum_i F_i . (r_i - R_m(i)): the forces along the O-H bonds and the H-O-H angle times the atoms'
offsets from their centre. Over a potential's own ensemble the correction
-sum_i F_i . (r_i - R_m(i)) / (3V) averages to the difference of the kinetic terms,
(N_atoms - N_molecules) kT / V, so the two pressures agree there as averages; on frames the
potential did not sample itself (the model on the teacher's liquid, the teacher on the model's
NPT frames) the bonds are not where it wants them, and the correction does not cancel between
model and teacher frame by frame. A model that agrees with the teacher's atomic pressure can
still be off in the molecular one, and it is the molecular one that the barostat responds to.
(A check on the data: on the teacher's own md_periodic frames of valid+test the teacher's
correction averages +2773 +- 236 bar against (N_atoms - N_molecules) kT / V = +2772 bar.)
So per frame, for model and teacher alike (potential parts only, eV and A):

    P_atomic = -trace(stress) / 3 = W_atomic / (3V)          (ASE: stress = -W / V)
    P_mol    = P_atomic - sum_i F_i . (r_i - R_m(i)) / (3V)   (= W_mol / (3V))

Derivation: scaling the centres R_m -> (1+e) R_m with rigid molecules is the homogeneous strain
r_i -> (1+e) r_i (dE/de = -W_atomic) plus the extra displacement -e (r_i - R_m(i)) of each atom
(dE/de = +sum_i F_i . (r_i - R_m(i))), and dV/de = 3V, so P_mol = -dE/dV = W_mol / (3V).
The molecular-virial pressure error is dP_mol = dP_atomic - sum_i dF_i . (r_i - R_m(i)) / (3V)
(dF model minus teacher forces); kinetic terms cancel in the difference as for dP_atomic. Waters
are taken as consecutive O, H, H triples (checked; the frames are refused otherwise), each H
unwrapped to the minimum image of its O, masses O 15.999, H 1.008.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "systems" / "data"
PERIODIC_TYPES = ("md_periodic", "strained_periodic", "model_npt_periodic")
DENSE_G_CM3 = 1.04  # the density class boundary: the teacher's liquid is at ~1.00 at 300 K
BAR_PER_EV_A3 = 1.602176634e6
BOLTZMANN_EV_PER_K = 8.617333262e-5
AMU_PER_A3_IN_G_CM3 = 1.66053906660
WATER_MASSES = np.array([15.999, 1.008, 1.008])  # O, H, H (amu)
MAX_OH_ANGSTROM = 1.6  # an unwrapped O-H farther than this is not a water: refuse the frame
ERROR_KEYS = ("energy_error_meV_per_atom", "pressure_error_bar", "molecular_pressure_error_bar")


def frame_kind(info: dict) -> str:
    """The config type, and for a model's own NPT frames which model sampled them: each round of
    active learning adds its model's frames, and a model's error on its own structures (not yet
    learnt) is the number that predicts its density."""
    kind = str(info["config_type"])
    sampler = info.get("sampling_model_sha256")
    return f"{kind} ({str(sampler)[:8]} runs)" if sampler else kind


def offsets_from_molecule_centres(positions, cell, symbols) -> np.ndarray:
    """Each atom's offset r_i - R_m(i) from its water's centre of mass (N x 3, A), the waters
    whole: each H taken at the minimum image of its O. The atoms must be consecutive O, H, H
    triples; anything else is refused (ValueError), as is an H farther than MAX_OH_ANGSTROM
    from its O."""
    symbols = list(symbols)
    if len(symbols) % 3 or symbols != ["O", "H", "H"] * (len(symbols) // 3):
        raise ValueError("molecular virial: the atoms are not consecutive O, H, H waters "
                         f"(first symbols {''.join(symbols[:9])!r}, {len(symbols)} atoms)")
    cell = np.asarray(cell, dtype=float).reshape(3, 3)
    water = np.asarray(positions, dtype=float).reshape(-1, 3, 3)  # molecule, atom (O H H), xyz
    bonds = water[:, 1:] - water[:, :1]  # O -> H
    fractional = bonds @ np.linalg.inv(cell)
    bonds = (fractional - np.round(fractional)) @ cell
    length = np.linalg.norm(bonds, axis=-1)
    if length.max() > MAX_OH_ANGSTROM:
        m = int(np.argmax(length.max(axis=1)))
        raise ValueError(f"molecular virial: water {m} has an O-H of {length.max():.2f} A at the "
                         f"minimum image (more than {MAX_OH_ANGSTROM} A): not whole O, H, H waters")
    whole = np.concatenate([np.zeros_like(water[:, :1]), bonds], axis=1)  # relative to the O
    centre = (WATER_MASSES[None, :, None] * whole).sum(axis=1, keepdims=True) / WATER_MASSES.sum()
    return (whole - centre).reshape(-1, 3)


def molecular_correction_bar(forces, positions, cell, symbols) -> float:
    """-sum_i F_i . (r_i - R_m(i)) / (3V) in bar (forces eV/A, positions A): what the molecular
    pressure adds to the atomic one, P_mol = P_atomic + this (see the module docstring)."""
    offsets = offsets_from_molecule_centres(positions, cell, symbols)
    volume = abs(np.linalg.det(np.asarray(cell, dtype=float).reshape(3, 3)))
    return float(-np.sum(np.asarray(forces, dtype=float) * offsets) / (3 * volume) * BAR_PER_EV_A3)


def pressures_bar(stress_voigt, forces, positions, cell, symbols) -> tuple[float, float]:
    """The potential parts of the atomic- and molecular-virial pressures (bar) of one frame from
    its ASE stress (Voigt, eV/A^3, stress = -W / V) and forces."""
    atomic = float(-np.mean(np.asarray(stress_voigt, dtype=float)[:3]) * BAR_PER_EV_A3)
    return atomic, atomic + molecular_correction_bar(forces, positions, cell, symbols)


def model_errors(model_path: Path, frames: list) -> list[dict]:
    """Per frame: config type, density, energy error (meV/atom), atomic- and molecular-virial
    pressure errors (bar), and the teacher's own two pressures (potential parts, bar)."""
    import mace  # noqa: F401  (before e3nn)
    from mace.calculators import MACECalculator

    from openmm_mace_lp.model_files import load_mace_model

    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    calculator = MACECalculator(models=[load_mace_model(model_path, sha256=digest)], device="cpu",
                                default_dtype="float64")
    rows = []
    for atoms in frames:
        copy = atoms.copy()
        copy.calc = calculator
        energy_error = (copy.get_potential_energy() - float(atoms.info["REF_energy"])) / len(atoms)
        geometry = (atoms.positions, atoms.cell.array, atoms.get_chemical_symbols())
        model_atomic, model_mol = pressures_bar(copy.get_stress(voigt=True), copy.get_forces(), *geometry)
        ref_atomic, ref_mol = pressures_bar(atoms.info["REF_stress"], atoms.arrays["REF_forces"], *geometry)
        rows.append(dict(config_type=frame_kind(atoms.info),
                         density_g_cm3=float(atoms.get_masses().sum() / atoms.get_volume() * AMU_PER_A3_IN_G_CM3),
                         energy_error_meV_per_atom=1e3 * energy_error,
                         pressure_error_bar=model_atomic - ref_atomic,
                         molecular_pressure_error_bar=model_mol - ref_mol,
                         teacher_pressure_bar=ref_atomic, teacher_molecular_pressure_bar=ref_mol))
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean, SD and SEM of each error (those of ERROR_KEYS the rows have) per (config type,
    density class)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        density_class = "dense" if row["density_g_cm3"] >= DENSE_G_CM3 else "liquid"
        groups.setdefault((row["config_type"], density_class), []).append(row)
    out = []
    for (kind, density_class), members in sorted(groups.items()):
        entry = dict(config_type=kind, density_class=density_class, frames=len(members),
                     mean_density_g_cm3=float(np.mean([m["density_g_cm3"] for m in members])))
        for key in (k for k in ERROR_KEYS if all(k in m for m in members)):
            values = np.array([m[key] for m in members])
            entry[key] = dict(mean=float(values.mean()), sd=float(values.std(ddof=1)) if len(values) > 1 else None,
                              sem=float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None)
        out.append(entry)
    return out


def markdown(record: dict) -> str:
    lines = [f"# Energy and pressure errors by kind of frame ({record['card']}, {record['date']})", "",
             f"Model minus teacher, float64 eager mace, splits {', '.join(record['splits'])} of "
             f"`systems/data/water_amoeba_*`; dense = at least {DENSE_G_CM3} g/cm3; +- is the SEM over frames.", "",
             "| model | config type | density class | frames | mean density | energy error (meV/atom) | "
             "atomic-virial pressure error (bar) | molecular-virial pressure error (bar) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model in record["models"]:
        for g in model["groups"]:
            e, p = g["energy_error_meV_per_atom"], g["pressure_error_bar"]
            q = g.get("molecular_pressure_error_bar")
            sem = lambda d, f: "" if d["sem"] is None else f" +- {d['sem']:{f}}"  # noqa: E731
            mol = "" if q is None else f"{q['mean']:+.0f}{sem(q, '.0f')}"
            lines.append(f"| {model['sha256'][:8]} | {g['config_type']} | {g['density_class']} | {g['frames']} | "
                         f"{g['mean_density_g_cm3']:.3f} | {e['mean']:+.2f}{sem(e, '.2f')} | "
                         f"{p['mean']:+.0f}{sem(p, '.0f')} | {mol} |")
    return "\n".join(lines) + "\n"


def kinetic_pressure_bar(particles: int, volume_A3: float, temperature_K: float) -> float:
    """The ideal-gas term N kT / V (bar) of ``particles`` (atoms for the atomic virial, molecules
    for the molecular one) at the thermostat's temperature."""
    return particles * BOLTZMANN_EV_PER_K * temperature_K / volume_A3 * BAR_PER_EV_A3


def own_run_pressures(model_path: Path, run_dir: Path, stride: int = 1, skip_fraction: float = 1 / 3) -> dict:
    """The model's own total pressure along its own NPT run: does the run sample the model?

    Why: a model that compresses under NPT could be wrong, or the simulation could sample
    something else than the model (a barostat that sees the system differently, a TorchForce
    that mishandles the changing box). Over a correct NPT run the barostat's pressure, the
    molecular virial plus N_molecules kT / V, averages to the set pressure within its noise,
    whatever the model's errors; the atomic one (N_atoms kT / V) too, as an average. Frames of
    the run's ``trajectory.dcd`` after the first ``skip_fraction``, every ``stride``-th; the
    temperature is the manifest's (the thermostat's), the model must be the run's own file.
    The SEM treats the frames as independent: space them beyond the pressure's correlation
    time (a few ps is ample for water)."""
    import io

    import ase.io
    import mace  # noqa: F401  (before e3nn)
    from mace.calculators import MACECalculator

    from openmm_mace_lp.model_files import load_mace_model
    from openmm_mace_lp.systems.recipes.run_frames import run_frames

    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    digest = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()
    run_model = (manifest.get("model") or {}).get("sha256")
    if run_model != digest:
        raise SystemExit(f"{run_dir} was run with model {str(run_model)[:8]}, not {model_path} ({digest[:8]}): "
                         f"pass the run's own model file")
    blocks = run_frames(Path(run_dir), stride=1)
    blocks = blocks[int(len(blocks) * skip_fraction)::stride]
    if len(blocks) < 2:
        raise SystemExit(f"{run_dir}: {len(blocks)} frame(s) after the first {skip_fraction:.0%}; "
                         f"a pressure average needs at least 2 (lower --stride)")
    temperature = float(manifest["temperature_K"])
    calculator = MACECalculator(models=[load_mace_model(model_path, sha256=digest)], device="cpu",
                                default_dtype="float64")
    rows = []
    for block in blocks:
        atoms = ase.io.read(io.StringIO(block), format="extxyz")
        atoms.calc = calculator
        volume = atoms.get_volume()
        atomic, molecular = pressures_bar(atoms.get_stress(voigt=True), atoms.get_forces(), atoms.positions,
                                          atoms.cell.array, atoms.get_chemical_symbols())
        rows.append(dict(frame_id=atoms.info["frame_id"], time_ps=float(atoms.info["time_ps"]),
                         density_g_cm3=float(atoms.info["density_g_cm3"]),
                         atomic_pressure_bar=atomic + kinetic_pressure_bar(len(atoms), volume, temperature),
                         molecular_pressure_bar=molecular + kinetic_pressure_bar(len(atoms) // 3, volume, temperature)))
    summary = {}
    for key in ("density_g_cm3", "atomic_pressure_bar", "molecular_pressure_bar"):
        values = np.array([r[key] for r in rows])
        summary[key] = dict(mean=float(values.mean()), sem=float(values.std(ddof=1) / np.sqrt(len(values))))
    return dict(run_dir=str(run_dir), model_sha256=digest, temperature_K=temperature,
                set_pressure_bar=manifest.get("pressure_bar"), frames=len(rows), stride=stride,
                skip_fraction=skip_fraction, summary=summary, rows=rows)


def own_runs_markdown(record: dict) -> str:
    lines = [f"# The model's own pressure along its own NPT runs ({record['card']}, {record['date']})", "",
             "Float64 eager mace on the runs' trajectory frames; molecular = the barostat's pressure "
             "(molecular virial + N_molecules kT/V), atomic = atomic virial + N_atoms kT/V; +- is the "
             "SEM over frames (`benchmarks/energy_bias.py --own-run`).", "",
             "| run | model | frames | mean density (g/cm3) | set pressure (bar) | molecular pressure (bar) | "
             "atomic pressure (bar) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for run in record["runs"]:
        s = run["summary"]
        lines.append(f"| {run['run_dir']} | {run['model_sha256'][:8]} | {run['frames']} | "
                     f"{s['density_g_cm3']['mean']:.4f} | {run['set_pressure_bar']} | "
                     f"{s['molecular_pressure_bar']['mean']:+.0f} +- {s['molecular_pressure_bar']['sem']:.0f} | "
                     f"{s['atomic_pressure_bar']['mean']:+.0f} +- {s['atomic_pressure_bar']['sem']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="MACE model files")
    parser.add_argument("--own-run", type=Path, action="append", default=[], metavar="RUN_DIR",
                        help="instead of the data set: the model's own pressure along this NPT run "
                             "(one model file per --own-run, in order)")
    parser.add_argument("--stride", type=int, default=1, help="with --own-run: every STRIDE-th frame")
    parser.add_argument("--splits", default="valid,test")
    parser.add_argument("--prefix", default="water_amoeba")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON path (a .md is written beside it)")
    args = parser.parse_args(argv)
    from openmm_mace_lp.analysis.atomic import write_json, write_text
    from openmm_mace_lp.systems.extxyz import read_frames

    splits = [s for s in args.splits.split(",") if s]
    for model in args.models:
        if not model.is_file():
            raise SystemExit(f"{model}: no such model file")
    if args.own_run:
        if len(args.own_run) != len(args.models):
            raise SystemExit(f"{len(args.own_run)} --own-run for {len(args.models)} model file(s): give each "
                             f"run its own model, in order")
        record = dict(schema="openmm-mace-lp/own-run-pressure/1", date=date.today().isoformat(), card="cpu",
                      runs=[own_run_pressures(m, r, stride=args.stride) for m, r in zip(args.models, args.own_run)])
        write_json(args.output, record)
        write_text(args.output.with_suffix(".md"), own_runs_markdown(record))
        print(own_runs_markdown(record))
        return 0
    frames = [a for split in splits for a in read_frames(DATA / f"{args.prefix}_{split}.extxyz.xz")
              if a.info.get("config_type") in PERIODIC_TYPES]
    record = dict(schema="openmm-mace-lp/energy-bias/1", date=date.today().isoformat(), card="cpu",
                  splits=splits, dense_from_g_cm3=DENSE_G_CM3, models=[])
    for model in args.models:
        rows = model_errors(model, frames)
        record["models"].append(dict(file=model.name, sha256=hashlib.sha256(model.read_bytes()).hexdigest(),
                                     groups=summarise(rows), frames=rows))
        print(f"{model}: {len(rows)} frames", file=sys.stderr, flush=True)
    write_json(args.output, record)
    write_text(args.output.with_suffix(".md"), markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
