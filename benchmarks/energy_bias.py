"""Why a water model is too dense: its energy and pressure errors on its teacher's frames, by kind.

A model that reproduces its teacher's pressure on the teacher's own liquid can still compress
under NPT if it gives the configurations it reaches itself too low an energy: what the barostat
samples is the free energy, so a structure-dependent energy bias of a few meV/atom (a kJ/mol
per molecule and more) moves the density far beyond a 1.5 % target. This script measures both
on the stored data set, float64 eager mace, per (config type, density class): the mean and
spread of the energy error per atom and of the virial-pressure error (model minus teacher,
bar; P = -trace(stress)/3, the kinetic term cancels in the difference).

    python benchmarks/energy_bias.py systems/models/mace-water-amoeba.model OTHER.model \\
        --splits valid,test -o benchmarks/results/energy_bias_2026-12-01_cpu.json

``model_npt_periodic`` frames (``systems/recipes/run_frames.py``) are the model's own NPT
configurations labelled by the teacher; a model whose error there is far below its error on
the teacher's liquid (``md_periodic``) favours its own dense structures.
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
AMU_PER_A3_IN_G_CM3 = 1.66053906660


def frame_kind(info: dict) -> str:
    """The config type, and for a model's own NPT frames which model sampled them: each round of
    active learning adds its model's frames, and a model's error on its own structures (not yet
    learnt) is the number that predicts its density."""
    kind = str(info["config_type"])
    sampler = info.get("sampling_model_sha256")
    return f"{kind} ({str(sampler)[:8]} runs)" if sampler else kind


def model_errors(model_path: Path, frames: list) -> list[dict]:
    """Per frame: config type, density, energy error (meV/atom), virial-pressure error (bar)."""
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
        stress_error = np.asarray(copy.get_stress(voigt=True)) - np.asarray(atoms.info["REF_stress"])
        rows.append(dict(config_type=frame_kind(atoms.info),
                         density_g_cm3=float(atoms.get_masses().sum() / atoms.get_volume() * AMU_PER_A3_IN_G_CM3),
                         energy_error_meV_per_atom=1e3 * energy_error,
                         pressure_error_bar=float(-stress_error[:3].mean() * BAR_PER_EV_A3)))
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean, SD and SEM of both errors per (config type, density class)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        density_class = "dense" if row["density_g_cm3"] >= DENSE_G_CM3 else "liquid"
        groups.setdefault((row["config_type"], density_class), []).append(row)
    out = []
    for (kind, density_class), members in sorted(groups.items()):
        entry = dict(config_type=kind, density_class=density_class, frames=len(members),
                     mean_density_g_cm3=float(np.mean([m["density_g_cm3"] for m in members])))
        for key in ("energy_error_meV_per_atom", "pressure_error_bar"):
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
             "pressure error (bar) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for model in record["models"]:
        for g in model["groups"]:
            e, p = g["energy_error_meV_per_atom"], g["pressure_error_bar"]
            sem = lambda d, f: "" if d["sem"] is None else f" +- {d['sem']:{f}}"  # noqa: E731
            lines.append(f"| {model['sha256'][:8]} | {g['config_type']} | {g['density_class']} | {g['frames']} | "
                         f"{g['mean_density_g_cm3']:.3f} | {e['mean']:+.2f}{sem(e, '.2f')} | "
                         f"{p['mean']:+.0f}{sem(p, '.0f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="MACE model files")
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
