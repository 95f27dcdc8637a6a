"""Does a water model hold the liquid's density? Three CPU checks of a MACE model against GFN2-xTB.

1. Virial pressure, -tr(stress)/3, of the stored GFN2-xTB labels of the periodic test frames
   against the model's on the same frames, binned by density (static frames: no kinetic term).
2. The model's energy of the 1029-atom water box when its molecules are moved apart or together
   (rigid molecules, centres scaled with the box), fp64 through the exported module.
3. A short NPT run of the 192-atom box on OpenMM's CPU platform (dynamic neighbour list, no CUDA
   graphs), barostat every 5 steps: which way the density goes.
4. Mean signed energy error per config type of the test split, and for periodic frames the
   mean signed virial-pressure error: a model whose errors differ by environment (dense liquid
   against expanded boxes, small clusters or its own MD frames) moves the balance a barostat
   samples even when its RMSEs look fine.
5. One 64-water test box scaled with rigid molecules from 1.0 down to 0.5 g/cm^3: the model's
   energy against GFN2-xTB's, both relative to 1.0 g/cm^3.
6. Close contacts of a water dimer (O-H...O and H...H head-on) against GFN2-xTB: a repulsive
   wall that turns over is a hole MD falls into.

Sections 5 and 6 label with GFN2-xTB on the fly (tblite, about a minute on 2 cores).

    python benchmarks/model_density.py -o benchmarks/results/model_density_2026-11-27_cpu_6019ec71.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.constants import Avogadro as AVOGADRO  # the project's one N_A (CODATA)

from openmm_mace_lp.model_files import load_mace_model

GPA_PER_EV_A3 = 160.21766208
DENSITY_BINS = ((0.80, 0.95), (0.95, 1.05), (1.05, 1.30))
SCALES = (0.94, 0.97, 1.00, 1.03, 1.06, 1.10)
EXPANSION_DENSITIES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
CONTACT_DISTANCES = {"O-H...O": (3.2, 2.8, 2.4, 2.0, 1.7, 1.5, 1.3, 1.1), "H...H": (2.0, 1.6, 1.2, 1.0, 0.8, 0.6, 0.4)}


def pressure_table(model_path: Path, frames_path: Path, max_frames: int) -> list:
    from mace.calculators import MACECalculator

    from openmm_mace_lp.systems.extxyz import read_frames

    periodic = [a for a in read_frames(frames_path) if a.pbc.all() and "REF_stress" in a.info][:max_frames]
    calculator = MACECalculator(models=[load_mace_model(model_path)], device="cpu", default_dtype="float64")
    samples = []
    for atoms in periodic:
        reference = np.asarray(atoms.info["REF_stress"], dtype=float).reshape(-1)
        reference_p = -np.mean(reference[:3]) if reference.size == 6 else -np.trace(reference.reshape(3, 3)) / 3
        probe = atoms.copy()
        probe.calc = calculator
        model_p = -np.mean(probe.get_stress(voigt=True)[:3])
        density = probe.get_masses().sum() / probe.get_volume() * 1.66053906660
        samples.append((density, reference_p * GPA_PER_EV_A3, model_p * GPA_PER_EV_A3))
    samples = np.array(samples)
    rows = []
    for low, high in DENSITY_BINS:
        chosen = samples[(samples[:, 0] >= low) & (samples[:, 0] < high)]
        if len(chosen):
            rows.append({"density_low": low, "density_high": high, "frames": int(len(chosen)),
                         "gfn2_virial_GPa": float(chosen[:, 1].mean()), "model_virial_GPa": float(chosen[:, 2].mean()),
                         "rms_difference_GPa": float(np.sqrt(np.mean((chosen[:, 2] - chosen[:, 1]) ** 2)))})
    return rows


def energy_scan(model_path: Path) -> list:
    import torch

    from openmm_mace_lp.export import build_force_module
    from openmm_mace_lp.systems.builders import load_water_box

    structure = load_water_box(1029)
    numbers = [a.element.atomic_number for a in structure.topology.atoms()]
    module = build_force_module(load_mace_model(model_path), "fp64", "e3nn", numbers, periodic=True)
    molecules = structure.positions.reshape(-1, 3, 3)  # O, H, H
    oxygens = molecules[:, :1, :]
    mass_dalton = 18.01528 * molecules.shape[0]
    rows = []
    for scale in SCALES:
        positions = (oxygens * scale + (molecules - oxygens)).reshape(-1, 3)
        box = structure.box * scale
        energy, _ = module(torch.tensor(positions), torch.tensor(box))
        density = mass_dalton / abs(np.linalg.det(box)) / (AVOGADRO * 1e-21)
        rows.append({"scale": scale, "density_g_cm3": float(density), "energy_kJ_mol": float(energy)})
    return rows


def mean_errors_by_type(model_path: Path, frames_path: Path) -> list:
    from mace.calculators import MACECalculator

    from openmm_mace_lp.systems.extxyz import read_frames

    calculator = MACECalculator(models=[load_mace_model(model_path)], device="cpu", default_dtype="float64")
    errors: dict[str, list] = {}
    pressure_errors: dict[str, list] = {}
    for atoms in read_frames(frames_path):
        kind = atoms.info.get("config_type", "Default")
        if kind == "IsolatedAtom":
            continue
        probe = atoms.copy()
        probe.calc = calculator
        errors.setdefault(kind, []).append(1e3 * (probe.get_potential_energy() - atoms.info["REF_energy"]) / len(atoms))
        if atoms.pbc.all() and "REF_stress" in atoms.info:
            reference = np.asarray(atoms.info["REF_stress"], dtype=float).reshape(-1)[:3]
            model = probe.get_stress(voigt=True)[:3]
            pressure_errors.setdefault(kind, []).append(-GPA_PER_EV_A3 * float(np.mean(model - reference)))
    return [{"config_type": kind, "frames": len(values), "mean_meV_per_atom": float(np.mean(values)),
             "sd_meV_per_atom": float(np.std(values)),
             "mean_pressure_error_GPa": float(np.mean(pressure_errors[kind])) if kind in pressure_errors else None}
            for kind, values in sorted(errors.items())]


def _gfn2_energy(atoms) -> float:
    """GFN2-xTB with the settings that labelled the training data."""
    from openmm_mace_lp.systems.recipes.water_data import Settings, make_calculator

    probe = atoms.copy()
    probe.calc = make_calculator(Settings())
    return float(probe.get_potential_energy())


def _model_energy(calculator, atoms) -> float:
    probe = atoms.copy()
    probe.calc = calculator
    return float(probe.get_potential_energy())


def rigid_expansion_scan(model_path: Path, frames_path: Path) -> list:
    from mace.calculators import MACECalculator

    from openmm_mace_lp.systems.extxyz import read_frames

    box = next(a for a in read_frames(frames_path) if a.info.get("config_type") == "md_periodic" and len(a) == 192)
    calculator = MACECalculator(models=[load_mace_model(model_path)], device="cpu", default_dtype="float64")
    density0 = box.get_masses().sum() / box.get_volume() * 1.66053906660
    molecules = box.get_positions().reshape(-1, 3, 3)
    rows = []
    for density in EXPANSION_DENSITIES:
        scale = (density0 / density) ** (1 / 3)
        probe = box.copy()
        probe.set_positions((molecules[:, :1] * scale + (molecules - molecules[:, :1])).reshape(-1, 3))
        probe.set_cell(box.cell * scale, scale_atoms=False)
        rows.append({"density_g_cm3": density, "gfn2_eV": _gfn2_energy(probe), "model_eV": _model_energy(calculator, probe)})
    for key in ("gfn2_eV", "model_eV"):
        reference = rows[0][key]
        for row in rows:
            row[key.replace("_eV", "_relative_eV")] = row[key] - reference
    return rows


def _dimer(distance: float, contact: str):
    from ase import Atoms

    donor = [[0.0, 0.0, 0.0], [-0.24, 0.93, 0.0], [0.96, 0.0, 0.0]]  # O, H, H (the last H points along +x)
    if contact == "O-H...O":  # the acceptor's O at `distance` from the donor's O
        acceptor = [[distance, 0.0, 0.0], [distance + 0.3, 0.5, 0.7], [distance + 0.3, 0.5, -0.7]]
    else:  # "H...H": the acceptor's H at `distance` from the donor's H, head-on
        acceptor = [[0.96 + distance + 0.96, 0.0, 0.0], [0.96 + distance, 0.0, 0.0], [0.96 + distance + 1.2, 0.93, 0.0]]
    return Atoms("OHHOHH", positions=donor + acceptor)


def close_contact_scan(model_path: Path) -> list:
    from mace.calculators import MACECalculator

    calculator = MACECalculator(models=[load_mace_model(model_path)], device="cpu", default_dtype="float64")
    rows = []
    for contact, distances in CONTACT_DISTANCES.items():
        reference = None
        for distance in distances:
            dimer = _dimer(distance, contact)
            energies = (_gfn2_energy(dimer), _model_energy(calculator, dimer))
            reference = reference or energies
            rows.append({"contact": contact, "distance_A": distance,
                         "gfn2_relative_eV": energies[0] - reference[0], "model_relative_eV": energies[1] - reference[1]})
    return rows


def short_npt(model_path: Path, steps: int, report_every: int) -> list:
    import openmm
    import openmm.unit as unit
    from openmmml import MLPotential

    from openmm_mace_lp.systems.builders import load_water_box

    structure = load_water_box(192)
    system = MLPotential("mace-lp", modelPath=str(model_path), policy="fp64", backend="e3nn").createSystem(
        structure.topology, device="cpu", platform="CPU")
    system.addForce(openmm.MonteCarloBarostat(1.01325 * unit.bar, 300 * unit.kelvin, 5))
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
    integrator.setRandomNumberSeed(1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPeriodicBoxVectors(*structure.box)
    context.setPositions(structure.positions)
    openmm.LocalEnergyMinimizer.minimize(context, 10, 200)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    mass = sum(system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles()))
    rows = []
    for done in range(report_every, steps + 1, report_every):
        integrator.step(report_every)
        state = context.getState(getEnergy=True)
        volume = state.getPeriodicBoxVolume().value_in_unit(unit.nanometer ** 3)
        rows.append({"step": done, "density_g_cm3": mass / volume / (AVOGADRO * 1e-21),
                     "potential_kJ_mol": state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)})
    return rows


def markdown(report: dict) -> str:
    lines = [f"Model `{report['model']}` (SHA-256 {report['model_sha256'][:16]}); CPU (2 cores); {report['test_frames']} (see benchmarks/model_density.py).", "",
             "## 1. Virial pressure of the periodic test frames (static, no kinetic term)", "",
             "| density g/cm3 | frames | GFN2-xTB GPa | model GPa | rms difference GPa |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['density_low']:.2f}-{r['density_high']:.2f} | {r['frames']} | {r['gfn2_virial_GPa']:+.2f} | "
              f"{r['model_virial_GPa']:+.2f} | {r['rms_difference_GPa']:.2f} |" for r in report["pressure"]]
    lines += ["", "## 2. Energy of the 1029-atom box, rigid molecules, centres scaled (fp64)", "",
              "| density g/cm3 | energy kJ/mol |", "| --- | --- |"]
    lines += [f"| {r['density_g_cm3']:.3f} | {r['energy_kJ_mol']:.1f} |" for r in report["energy_scan"]]
    if report["npt"]:
        lines += ["", "## 3. NPT, 192 atoms, CPU platform, 300 K, 1 bar, barostat every 5 steps, 0.5 fs", "",
                  "| step | density g/cm3 | potential kJ/mol |", "| --- | --- | --- |"]
        lines += [f"| {r['step']} | {r['density_g_cm3']:.4f} | {r['potential_kJ_mol']:.1f} |" for r in report["npt"]]
    lines += ["", "## 4. Mean signed error (model - GFN2-xTB) by config type (test split, float64)", "",
              "| config_type | frames | energy mean meV/atom | energy sd meV/atom | virial pressure mean GPa |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['config_type']} | {r['frames']} | {r['mean_meV_per_atom']:+.2f} | {r['sd_meV_per_atom']:.2f} | "
              + (f"{r['mean_pressure_error_GPa']:+.3f} |" if r.get("mean_pressure_error_GPa") is not None else "|")
              for r in report["mean_errors"]]
    lines += ["", "## 5. One 64-water test box, rigid molecules, centres scaled (eV relative to 1.0 g/cm3)", "",
              "| density g/cm3 | GFN2-xTB | model |", "| --- | --- | --- |"]
    lines += [f"| {r['density_g_cm3']:.1f} | {r['gfn2_relative_eV']:+.3f} | {r['model_relative_eV']:+.3f} |"
              for r in report["expansion"]]
    lines += ["", "## 6. Water dimer close contacts (eV relative to the first distance)", "",
              "| contact | distance A | GFN2-xTB | model |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['contact']} | {r['distance_A']:.2f} | {r['gfn2_relative_eV']:+.3f} | {r['model_relative_eV']:+.3f} |"
              for r in report["contacts"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="a MACE .model file or 'default' (embedded water model)")
    parser.add_argument("--frames", default=None, help="extxyz with REF_stress (default: the stored GFN2-xTB test split)")
    parser.add_argument("--max-frames", type=int, default=40)
    parser.add_argument("--npt-steps", type=int, default=400, help="0 skips the NPT run")
    parser.add_argument("-o", "--out", default="benchmarks/results/model_density_2026-11-27_cpu_6019ec71.json")
    args = parser.parse_args(argv)

    import mace  # noqa: F401  (before e3nn)

    from openmm_mace_lp.atomic import atomic_write_text
    from openmm_mace_lp.model_files import default_model_path

    model_path = default_model_path() if args.model == "default" else Path(args.model)
    frames = Path(args.frames) if args.frames else Path(__file__).resolve().parents[1] / "systems/data/water_gfn2_test.extxyz.xz"
    from openmm_mace_lp.model_files import sha256_of

    report = {"card": "cpu", "model": model_path.name, "model_sha256": sha256_of(model_path),
              "test_frames": f"first {args.max_frames} periodic frames of {frames.name}",
              "pressure": pressure_table(model_path, frames, args.max_frames),
              "energy_scan": energy_scan(model_path),
              "npt": short_npt(model_path, args.npt_steps, 50) if args.npt_steps > 0 else [],
              "mean_errors": mean_errors_by_type(model_path, frames),
              "expansion": rigid_expansion_scan(model_path, frames),
              "contacts": close_contact_scan(model_path)}
    out = Path(args.out)
    atomic_write_text(out, json.dumps(report, indent=1))
    atomic_write_text(out.with_suffix(".md"), markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
