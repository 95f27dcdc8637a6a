"""How the barostat sees a MACE System: atoms or molecules (``barostat.scale_molecules``).

OpenMM's MonteCarloBarostat scales molecule centres, and finds molecules through bonded forces
and constraints. A System holding only a TorchForce has none, so each volume trial scales every
atom and stretches every O-H bond. ``scale_molecules = true`` adds the topology's bonds with
zero force constants. This runs the same NPT water twice (once each way, same seed, a state row
at every barostat trial) and measures, from the volume series, the barostat's acceptance, the
size of its accepted moves, and the density's statistical inefficiency (autocorrelation time).

    python benchmarks/barostat_molecules.py run -o build/barostat --production-ps 20 --max-minutes 8
    python benchmarks/barostat_molecules.py summarize build/barostat --card "NVIDIA H200" \\
        -o benchmarks/results/barostat_molecules_2026-12-01_h200.json
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WATER_343 = ROOT / "systems" / "structures" / "water_343.pdb"
BAROSTAT_INTERVAL = 25


def acceptance(volumes: np.ndarray) -> tuple[float, float]:
    """Fraction of trials that changed the volume, and the median |dV/V| of those that did,
    from a volume series sampled once per trial."""
    volumes = np.asarray(volumes, dtype=float)
    if volumes.size < 2:
        raise ValueError("need at least two volumes, one per barostat trial")
    relative = np.abs(np.diff(volumes)) / volumes[:-1]
    moved = relative > 1e-12
    return float(moved.mean()), float(np.median(relative[moved])) if moved.any() else 0.0


def config_text(scale_molecules: bool, production_ps: float, model: str, platform: str) -> str:
    return f"""ensemble = "npt"
[model]
path = "{model}"
policy = "fp32"
[system]
pdb = "{WATER_343}"
[integrator]
timestep_fs = 1.0
temperature_K = 300.0
[barostat]
pressure_bar = 1.01325
interval_steps = {BAROSTAT_INTERVAL}
scale_molecules = {str(scale_molecules).lower()}
[run]
seed = 7
equilibration_steps = 5000
production_steps = {round(production_ps * 1000)}
[output]
report_interval_steps = {BAROSTAT_INTERVAL}
trajectory_interval_steps = {round(production_ps * 1000)}
checkpoint_interval_steps = 5000
[platform]
name = "{platform}"
"""


def run(out: Path, production_ps: float, model: str, platform: str, max_minutes: float | None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    processes = []
    for scale in (True, False):
        name = "molecules" if scale else "atoms"
        config = out / f"{name}.toml"
        config.write_text(config_text(scale, production_ps, model, platform))
        command = [sys.executable, "-m", "openmm_mace_lp.cli", "simulate", "npt", str(config), "-o",
                   str(out / name), "--quiet"]
        if (out / name / "config.toml").exists():
            command.append("--resume")
        if max_minutes is not None:
            command += ["--max-minutes", str(max_minutes)]
        processes.append(subprocess.Popen(command, stdout=open(out / f"{name}.log", "a"), stderr=subprocess.STDOUT))
    return sum(p.wait() != 0 for p in processes)


def summarize(out: Path, card: str, result: Path) -> dict:
    from openmm_mace_lp.analysis.atomic import write_json, write_text
    from openmm_mace_lp.analysis.rundir import open_run
    from openmm_mace_lp.analysis.timeseries import statistical_inefficiency

    rows = {}
    for name in ("molecules", "atoms"):
        run_dir = open_run(out / name)
        state = run_dir.load_state()
        volume = np.asarray(state["box_volume_nm3"], dtype=float)
        density = np.asarray(state["density_g_cm3"], dtype=float)
        half = len(volume) // 5  # skip the first fifth (the box settles from its start)
        accepted, step = acceptance(volume[half:])
        g = statistical_inefficiency(density[half:])
        rows[name] = {"acceptance": accepted, "median_accepted_dV_over_V": step,
                      "density_statistical_inefficiency_trials": g,
                      "density_autocorrelation_ps": (g - 1) / 2 * BAROSTAT_INTERVAL * 1e-3,
                      "density_mean_g_cm3": float(density[half:].mean()),
                      "trials": int(len(volume) - half - 1)}
    better = min(rows, key=lambda k: rows[k]["density_autocorrelation_ps"])
    summary = {"card": card, "atoms": 1029, "barostat_interval_steps": BAROSTAT_INTERVAL, "runs": rows,
               "shorter_density_autocorrelation": better}
    table = ["| barostat scales | acceptance | median accepted dV/V | density autocorrelation (ps) | trials |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        table.append(f"| {name} | {r['acceptance']:.2f} | {r['median_accepted_dV_over_V']:.2e} | "
                     f"{r['density_autocorrelation_ps']:.2f} | {r['trials']} |")
    summary["markdown_table"] = "\n".join(table)
    write_json(result, summary)
    write_text(result.with_suffix(".md"), f"# Barostat: molecules or atoms, 1029-atom water, embedded model ({card})\n\n"
               + summary["markdown_table"] + "\n")
    print(summary["markdown_table"])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("-o", "--out", type=Path, required=True)
    r.add_argument("--production-ps", type=float, default=20.0)
    r.add_argument("--model", default="default")
    r.add_argument("--platform", default="CUDA")
    r.add_argument("--max-minutes", type=float, default=None)
    s = sub.add_parser("summarize")
    s.add_argument("out", type=Path)
    s.add_argument("--card", required=True)
    s.add_argument("-o", "--result", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        return 1 if run(args.out, args.production_ps, args.model, args.platform, args.max_minutes) else 0
    summarize(args.out, args.card, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
