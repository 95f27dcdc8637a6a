"""A short, human summary of a run directory (what ``mace-lp run`` prints at the end).

Deliberately simple statistics (means, a straight-line drift); the analysis layer
(``mace-lp analyze``) does equilibration detection and error bars.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

KJ_PER_MOL_PER_ATOM_PER_NS = "kJ/mol/atom/ns"


def read_state_table(path: Path) -> dict[str, np.ndarray]:
    """state.csv as float columns (empty cells -> NaN)."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [row for row in reader if len(row) == len(header)]
    table = np.array([[float(cell) if cell else math.nan for cell in row] for row in rows], float)
    table = table.reshape(len(rows), len(header))
    return {name: table[:, i] for i, name in enumerate(header)}


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """Key numbers of a run: speed, mean temperature and density, energy drift, files."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "status": manifest.get("status"), "arm": manifest.get("arm"),
        "ensemble": manifest.get("ensemble"), "n_atoms": manifest.get("n_atoms"),
        "steps_completed": manifest.get("steps_completed"), "ns_per_day": manifest.get("ns_per_day"),
        "wall_time_s": manifest.get("wall_time_s"), "device": manifest.get("device"),
        "platform": manifest.get("platform"), "policy": manifest.get("policy"),
    }
    state_path = run_dir / "state.csv"
    if state_path.is_file():
        table = read_state_table(state_path)
        if len(table["step"]):
            summary.update(_state_statistics(table, int(manifest.get("n_atoms") or 1)))
    summary["files"] = sorted(p.name for p in run_dir.iterdir() if p.is_file())
    return summary


def _state_statistics(table: dict[str, np.ndarray], n_atoms: int) -> dict[str, Any]:
    time_ps = table["time_ps"]
    stats: dict[str, Any] = {
        "simulated_ps": float(time_ps[-1]),
        "temperature_mean_K": float(np.mean(table["temperature_K"])),
        "temperature_std_K": float(np.std(table["temperature_K"])),
        "potential_energy_mean_kJ_mol": float(np.mean(table["potential_energy_kJ_mol"])),
    }
    density = table["density_g_cm3"]
    if np.all(np.isfinite(density)):
        stats["density_mean_g_cm3"] = float(np.mean(density))
        stats["volume_first_last_nm3"] = [float(table["box_volume_nm3"][0]), float(table["box_volume_nm3"][-1])]
    total = table["total_energy_kJ_mol"]
    if len(time_ps) >= 2 and np.ptp(time_ps) > 0 and np.all(np.isfinite(total)):
        slope_per_ps = np.polyfit(time_ps, total, 1)[0]
        stats["energy_drift_kJ_mol_atom_ns"] = float(slope_per_ps * 1000.0 / n_atoms)
    return stats


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    def num(key: str, fmt: str = ".4g") -> str:
        value = summary.get(key)
        return "n/a" if value is None else format(value, fmt)

    lines = [f"run {summary['run_dir']}: {summary.get('status')} ({summary.get('arm')}, "
             f"{str(summary.get('ensemble')).upper()}, {summary.get('n_atoms')} atoms, "
             f"{summary.get('platform')} on {summary.get('device')})"]
    lines.append(f"  {num('steps_completed', 'd')} production steps = {num('simulated_ps', '.3f')} ps in "
                 f"{num('wall_time_s', '.1f')} s: {num('ns_per_day', '.3g')} ns/day")
    if "temperature_mean_K" in summary:
        lines.append(f"  temperature {summary['temperature_mean_K']:.1f} +- {summary['temperature_std_K']:.1f} K"
                     + (f", density {summary['density_mean_g_cm3']:.4f} g/cm3"
                        if "density_mean_g_cm3" in summary else ""))
    if "energy_drift_kJ_mol_atom_ns" in summary:
        label = "energy drift" if summary.get("ensemble") == "nve" else \
            "total-energy trend (thermostatted, not a conservation test)"
        lines.append(f"  {label}: {summary['energy_drift_kJ_mol_atom_ns']:.4g} {KJ_PER_MOL_PER_ATOM_PER_NS}")
    lines.append(f"  files: {', '.join(summary.get('files', []))}")
    return "\n".join(lines)
