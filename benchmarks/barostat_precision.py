"""What a precision policy does to the barostat: energy changes of its volume moves against fp64.

OpenMM's MonteCarloBarostat never looks at forces: it scales the box and the molecules' centres
(each water moved rigidly), asks the model for the energy of the scaled configuration and
accepts or rejects on the energy *difference*. A policy whose forces are accurate can still
shift the NPT density if its energy differences are biased (a pressure error the barostat
responds to) or noisy (a random error in every acceptance test). The precision study
(``precision_study_2026-12-01_h200.md``) found bf16's density 1.5 % below fp64's; this script
measures both channels for every policy on committed frames, through the same TorchScript
module OpenMM runs (``openmm_mace_lp.evaluate``; on the CPU the low-precision arithmetic is
emulated exactly, up to summation order):

* ``dE error (kT)``: for each frame and volume change dV/V = +-d, the policy's
  E(scaled) - E(frame) minus fp64's, in kT at ``--temperature``: what enters the acceptance
  test besides the physics (mean: systematic; SD: noise);
* ``pressure error (bar)``: the barostat's pressure from central differences of the policy's
  energies, -(E(+d) - E(-d)) / (2 d V), minus fp64's, per frame (mean +- SEM). With water's
  compressibility (4.5e-5 /bar) a pressure error dP moves the density by about -4.5e-5 dP.

    python benchmarks/barostat_precision.py --policies fp64,fp32,tf32,bf16,fp16 \\
        -o benchmarks/results/barostat_precision_2026-12-01_cpu.json

Frames: the teacher's liquid (``md_periodic``) of the valid and test splits of the embedded
model's data set, 216 waters each (consecutive O, H, H; refused otherwise).
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from energy_bias import BAR_PER_EV_A3, offsets_from_molecule_centres  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "systems" / "data"
KJ_PER_MOL_PER_EV = 96.48533212
BOLTZMANN_KJ_PER_MOL_K = 0.0083144626
WATER_COMPRESSIBILITY_PER_BAR = 4.5e-5  # liquid water, 300 K


def liquid_frames(splits: list[str], prefix: str, max_frames: int) -> list:
    """The md_periodic frames of the given splits (ASE Atoms), at most ``max_frames``."""
    from ase.io import read

    frames = []
    for split in splits:
        path = DATA / f"{prefix}_{split}.extxyz.xz"
        frames += [a for a in read(path, index=":") if a.info.get("config_type") == "md_periodic"]
    if not frames:
        raise ValueError(f"no md_periodic frames in splits {splits} of {prefix}: check --splits/--prefix")
    return frames[:max_frames]


def molecular_scaling(atoms, volume_change: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions and cell (A) after the barostat's move: box and molecular centres scaled so that
    the volume changes by the factor 1 + volume_change, each water moved rigidly."""
    offsets = offsets_from_molecule_centres(atoms.positions, atoms.cell.array, atoms.get_chemical_symbols())
    centres = atoms.positions - offsets  # each atom's water centre (the water made whole)
    scale = (1.0 + volume_change) ** (1.0 / 3.0)
    return centres * scale + offsets, atoms.cell.array * scale


def configurations(atoms, volume_changes: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The frame and its scaled copies: positions [k, n, 3] and boxes [k, 3, 3] in nm."""
    positions, boxes = [atoms.positions], [atoms.cell.array]
    for change in volume_changes:
        p, b = molecular_scaling(atoms, change)
        positions.append(p)
        boxes.append(b)
    return np.asarray(positions) / 10.0, np.asarray(boxes) / 10.0


def energies_by_policy(frames: list, policies: list[str], volume_changes: list[float], backend: str) -> dict:
    """kJ/mol energies [frame, 1 + len(volume_changes)] of every policy."""
    from openmm_mace_lp.evaluate import evaluate_frames

    moved = [configurations(atoms, volume_changes) for atoms in frames]  # the same for every policy
    out = {}
    for policy in policies:
        out[policy] = np.asarray([
            evaluate_frames(None, policy, backend, atoms.numbers.tolist(), positions, boxes)[0]
            for atoms, (positions, boxes) in zip(frames, moved)], dtype=float)
    return out


def summarise(energies: dict, frames: list, step: float, temperature_K: float,
              reference: str = "fp64") -> list[dict]:
    """Per policy: dE errors in kT (mean, SD, max) for the moves +-step, and the pressure error."""
    kT = BOLTZMANN_KJ_PER_MOL_K * temperature_K
    volumes = np.array([a.get_volume() for a in frames])  # A^3
    ref = energies[reference]
    rows = []
    for policy, e in energies.items():
        if policy == reference:
            continue
        moves = (e[:, 1:] - e[:, :1]) - (ref[:, 1:] - ref[:, :1])  # kJ/mol, [frame, move]
        # central difference over the moves +step (column 1) and -step (column 2)
        d_energy = (e[:, 1] - e[:, 2]) - (ref[:, 1] - ref[:, 2])  # kJ/mol
        d_pressure = -d_energy / KJ_PER_MOL_PER_EV / (2.0 * step * volumes) * BAR_PER_EV_A3
        sem = float(d_pressure.std(ddof=1) / np.sqrt(len(d_pressure))) if len(d_pressure) > 1 else float("nan")
        rows.append(dict(policy=policy, frames=len(frames),
                         dE_error_mean_kT=float(moves.mean() / kT), dE_error_sd_kT=float(moves.std(ddof=1) / kT),
                         dE_error_max_kT=float(np.abs(moves).max() / kT),
                         energy_error_sd_kJ_mol=float((e[:, 0] - ref[:, 0]).std(ddof=1)),
                         pressure_error_bar=float(d_pressure.mean()), pressure_error_sem_bar=sem,
                         implied_density_change_percent=float(-100 * WATER_COMPRESSIBILITY_PER_BAR * d_pressure.mean())))
    return rows


def markdown(record: dict) -> str:
    lines = [f"# Precision and the barostat's volume moves ({record['card']}, {record['date']})", "",
             f"Embedded model (SHA-256 {record['model_sha256'][:8]}), backend `{record['backend']}`, "
             f"{record['frames']} teacher liquid frames ({record['atoms']} atoms, splits {record['splits']}); "
             f"molecular-centre volume moves dV/V = +-{record['step']} (waters rigid, as OpenMM's "
             f"MonteCarloBarostat does); kT at {record['temperature_K']} K. Policy minus fp64.", "",
             "| policy | dE error mean (kT) | dE error SD (kT) | dE error max (kT) | energy error SD (kJ/mol) "
             "| barostat pressure error (bar, mean +- SEM) | implied density change (%) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in record["rows"]:
        lines.append(f"| {r['policy']} | {r['dE_error_mean_kT']:+.3g} | {r['dE_error_sd_kT']:.3g} | "
                     f"{r['dE_error_max_kT']:.3g} | {r['energy_error_sd_kJ_mol']:.3g} | "
                     f"{r['pressure_error_bar']:+.1f} +- {r['pressure_error_sem_bar']:.1f} | "
                     f"{r['implied_density_change_percent']:+.2f} |")
    lines += ["", "Implied density change: -4.5e-5 /bar x the pressure error (water's compressibility).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policies", default="fp64,fp32,tf32,bf16,fp16")
    parser.add_argument("--backend", default="e3nn")
    parser.add_argument("--splits", default="valid,test")
    parser.add_argument("--prefix", default="water_amoeba")
    parser.add_argument("--max-frames", type=int, default=12)
    parser.add_argument("--step", type=float, default=0.003, help="volume move dV/V (0.003)")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON path (a .md is written beside it)")
    args = parser.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if "fp64" not in policies or len(policies) < 2:
        parser.error("--policies needs fp64 (the reference) and at least one other policy")
    if not 0 < args.step < 0.1:
        parser.error("--step is a volume fraction between 0 and 0.1, e.g. 0.003")
    from openmm_mace_lp.model_files import default_model_path, sha256_of

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    frames = liquid_frames(splits, args.prefix, args.max_frames)
    energies = energies_by_policy(frames, policies, [args.step, -args.step], args.backend)
    record = dict(card="cpu", date=date.today().isoformat(), model_sha256=sha256_of(default_model_path()),
                  backend=args.backend, splits=",".join(splits), frames=len(frames), atoms=len(frames[0]),
                  step=args.step, temperature_K=args.temperature,
                  rows=summarise(energies, frames, args.step, args.temperature),
                  energies_kJ_mol={p: e.tolist() for p, e in energies.items()})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1))
    args.output.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
