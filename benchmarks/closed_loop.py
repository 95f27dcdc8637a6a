"""Closed loop: the embedded model's NPT water against its teacher's own NPT water.

The teacher (AMOEBA water, ``model.kind = "amoeba"``) and the model it taught (the embedded
MACE model, fp32 policy, the plug-in's CUDA path) run the same recipe through
``mace-lp simulate``: the same 343-water box, 1 fs, LangevinMiddle, MonteCarloBarostat at
1.01325 bar, at each temperature. Both are analysed by the project's analysis layer (density
with its SEM from the statistical inefficiency, the O-O RDF's first peak, the oxygen
self-diffusion coefficient), and compared against the issue's targets.

    # on the GPU node: start (or continue) every run; pause at a checkpoint after M minutes
    python benchmarks/closed_loop.py run -o build/closed_loop --who teacher,model --max-minutes 8
    # anywhere: analyse and write the result files
    python benchmarks/closed_loop.py summarize build/closed_loop --card "NVIDIA H200" \\
        -o benchmarks/results/closed_loop_2026-12-01_h200.json

Each run directory is ``<dir>/<who>_<T>K``; ``run`` resumes the ones that have a checkpoint
and starts the others, as one process each (concurrently on the one GPU).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WATER_343 = ROOT / "systems" / "structures" / "water_343.pdb"
WHO = ("teacher", "model")
# Production (ps) per temperature: the issue asks for >= 100 ps at 300 K; 260 K and 350 K
# check the temperature dependence of the density.
PRODUCTION_PS = {300.0: 100.0, 260.0: 30.0, 350.0: 30.0}
EQUILIBRATION_PS = 10.0
TIMESTEP_FS = 1.0
# Targets of the issue: density within 1.5 % at 300 K and 2 % at 260/350 K; O-O first peak
# position within 0.05 A and height within 10 %; D within 30 %.
DENSITY_TOLERANCE = {300.0: 0.015, 260.0: 0.02, 350.0: 0.02}
PEAK_POSITION_TOLERANCE_NM = 0.005
PEAK_HEIGHT_TOLERANCE = 0.10
DIFFUSION_TOLERANCE = 0.30


@dataclass(frozen=True)
class Point:
    who: str
    temperature_K: float

    @property
    def name(self) -> str:
        return f"{self.who}_{self.temperature_K:g}K"


def config_text(point: Point, production_ps: float, model: str, platform: str,
                equilibration_ps: float = EQUILIBRATION_PS) -> str:
    """The recipe's TOML for one run (teacher and model differ only in [model])."""
    steps_per_ps = round(1000.0 / TIMESTEP_FS)
    trajectory_interval = 500 if point.temperature_K == 300.0 else 1000
    if point.who == "teacher":
        model_section = '[model]\nkind = "amoeba"\n'
    else:
        model_section = f'[model]\nkind = "mace"\npath = "{model}"\npolicy = "fp32"\nbackend = "auto"\n'
    return f"""ensemble = "npt"
{model_section}
[system]
pdb = "{WATER_343}"

[integrator]
timestep_fs = {TIMESTEP_FS}
temperature_K = {point.temperature_K}
friction_per_ps = 1.0

[barostat]
pressure_bar = 1.01325
interval_steps = 25

[run]
seed = 1
minimize = true
equilibration_steps = {round(equilibration_ps * steps_per_ps)}
production_steps = {round(production_ps * steps_per_ps)}

[output]
report_interval_steps = 100
trajectory_interval_steps = {trajectory_interval}
checkpoint_interval_steps = 5000
keep_checkpoints = 1

[platform]
name = "{platform}"
"""


def run_points(out: Path, points: list[Point], model: str, platform: str, max_minutes: float | None,
               equilibration_ps: float = EQUILIBRATION_PS) -> int:
    """Start or resume every point as its own ``mace-lp simulate`` process; wait for all."""
    out.mkdir(parents=True, exist_ok=True)
    processes = []
    for point in points:
        config = out / f"{point.name}.toml"
        config.write_text(config_text(point, PRODUCTION_PS[point.temperature_K], model, platform, equilibration_ps))
        run_dir = out / point.name
        command = [sys.executable, "-m", "openmm_mace_lp.cli", "simulate", "npt", str(config), "-o", str(run_dir),
                   "--quiet"]
        if (run_dir / "config.toml").exists():
            command.append("--resume")
        if max_minutes is not None:
            command += ["--max-minutes", str(max_minutes)]
        log = open(out / f"{point.name}.log", "a")
        processes.append((point, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(2)  # stagger the exports and context creations
    failed = 0
    for point, process, log in processes:
        code = process.wait()
        log.close()
        print(f"{point.name}: exit {code}", flush=True)
        failed += code != 0
    return failed


def _estimate(analysis, name: str) -> tuple[float, float]:
    observable = analysis.scalars.get(name)
    if observable is None:
        return math.nan, math.nan
    return float(observable.estimate.mean), float(observable.estimate.sem)


def analyse_point(run_dir: Path) -> dict:
    """Density, O-O first peak and D of one run, through the analysis layer."""
    from openmm_mace_lp.analysis.analyze import analyze_run

    analysis = analyze_run(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    density, density_sem = _estimate(analysis, "density")
    peak_r = next((k for k in analysis.scalars if k.startswith("rdf_peak_position") and k.endswith("O-O")), None)
    peak_g = next((k for k in analysis.scalars if k.startswith("rdf_peak_height") and k.endswith("O-O")), None)
    result = {
        "density_g_cm3": density, "density_sem": density_sem,
        "temperature_K": _estimate(analysis, "temperature")[0],
        "production_ps": float(analysis.series["time_ps"][-1] - analysis.series["time_ps"][0]),
        "equilibration_cut_ps": float(analysis.equilibration.get("t0_ps", math.nan)),
        "ns_per_day": analysis.speed["ns_per_day"],
        "warnings": list(analysis.warnings),
        # a failed run (a guard, an overflowing neighbour list) is reported with what it made
        "status": manifest.get("status"),
        "failure": run_failure(manifest),
    }
    if peak_r and peak_g:
        result["oo_peak_r_nm"], result["oo_peak_r_sem"] = _estimate(analysis, peak_r)
        result["oo_peak_g"], result["oo_peak_g_sem"] = _estimate(analysis, peak_g)
    if analysis.diffusion is not None:
        result["diffusion"] = float(analysis.diffusion.estimate.mean)
        result["diffusion_sem"] = float(analysis.diffusion.estimate.sem)
    result["density_series"] = {"time_ps": analysis.series["time_ps"].tolist(),
                                "density_g_cm3": analysis.series["density"].tolist()}
    return result


def run_failure(manifest: dict) -> str | None:
    """What stopped a failed run: the first sentence of its error's last line (None if it did not fail)."""
    if manifest.get("status") != "failed":
        return None
    failure = manifest.get("failure") or {}
    text = failure.get("message") if isinstance(failure, dict) else str(failure)
    return (text or "failed").strip().splitlines()[-1].split("; ")[0].split(". ")[0]


def status_note(point: dict) -> str:
    """', failed: ...' or ', paused' after a run's production length; '' when completed."""
    if point.get("status") == "failed":
        return f", failed: {point.get('failure')}"
    if point.get("status") not in (None, "completed"):
        return f", {point['status']}"
    return ""


def compare(teacher: dict, model: dict, temperature_K: float) -> dict:
    """Each target as measured: the relative or absolute difference and whether it holds."""
    checks = {}
    rel = model["density_g_cm3"] / teacher["density_g_cm3"] - 1.0
    checks["density"] = {"relative_difference": rel, "tolerance": DENSITY_TOLERANCE[temperature_K],
                         "met": abs(rel) <= DENSITY_TOLERANCE[temperature_K]}
    if temperature_K == 300.0 and "oo_peak_r_nm" in teacher and "oo_peak_r_nm" in model:
        dr = model["oo_peak_r_nm"] - teacher["oo_peak_r_nm"]
        checks["oo_peak_position"] = {"difference_A": 10 * dr, "tolerance_A": 10 * PEAK_POSITION_TOLERANCE_NM,
                                      "met": abs(dr) <= PEAK_POSITION_TOLERANCE_NM}
        dg = model["oo_peak_g"] / teacher["oo_peak_g"] - 1.0
        checks["oo_peak_height"] = {"relative_difference": dg, "tolerance": PEAK_HEIGHT_TOLERANCE,
                                    "met": abs(dg) <= PEAK_HEIGHT_TOLERANCE}
    if temperature_K == 300.0 and "diffusion" in teacher and "diffusion" in model:
        dd = model["diffusion"] / teacher["diffusion"] - 1.0
        checks["diffusion"] = {"relative_difference": dd, "tolerance": DIFFUSION_TOLERANCE,
                               "met": abs(dd) <= DIFFUSION_TOLERANCE}
    return checks


def markdown(summary: dict) -> str:
    """The result table a person reads (density with its SEM, both sides)."""
    rows = ["| T (K) | teacher density (g/cm3, +- SEM) | model density (g/cm3, +- SEM) | difference | target | met |",
            "| --- | --- | --- | --- | --- | --- |"]
    for t in summary["temperatures"]:
        tr, mo = t["teacher"], t["model"]
        teacher = f"{tr['density_g_cm3']:.4f} +- {tr['density_sem']:.4f} ({tr['production_ps']:.0f} ps)"
        if mo is None:
            run = t.get("model_run")
            made = "not run yet" if run is None else f"no production{status_note(run)}"
            rows.append(f"| {t['temperature_K']:g} | {teacher} | {made} | | "
                        f"{100 * DENSITY_TOLERANCE[t['temperature_K']]:.1f} % | |")
            continue
        ch = t["checks"]["density"]
        rows.append(f"| {t['temperature_K']:g} | {teacher} | "
                    f"{mo['density_g_cm3']:.4f} +- {mo['density_sem']:.4f} ({mo['production_ps']:.0f} ps{status_note(mo)}) | "
                    f"{100 * ch['relative_difference']:+.2f} % "
                    f"| {100 * ch['tolerance']:.1f} % | {'yes' if ch['met'] else 'no'} |")
    at300 = next((t for t in summary["temperatures"] if t["temperature_K"] == 300.0), None)
    if at300 and at300["model"] is None:
        tr = at300["teacher"]
        rows += ["", "| 300 K, teacher | value (+- SEM) |", "| --- | --- |"]
        if "oo_peak_r_nm" in tr:
            rows.append(f"| O-O first peak r (A) | {10 * tr['oo_peak_r_nm']:.3f} +- {10 * tr['oo_peak_r_sem']:.3f} |")
            rows.append(f"| O-O first peak g | {tr['oo_peak_g']:.3f} +- {tr['oo_peak_g_sem']:.3f} |")
        if "diffusion" in tr:
            rows.append(f"| D_O (1e-9 m2/s) | {tr['diffusion']:.3f} +- {tr['diffusion_sem']:.3f} |")
    elif at300:
        rows += ["", "| 300 K | teacher | model | difference | target | met |", "| --- | --- | --- | --- | --- | --- |"]
        tr, mo, ch = at300["teacher"], at300["model"], at300["checks"]
        if "oo_peak_position" in ch:
            rows.append(f"| O-O first peak r (A, +- SEM) | {10 * tr['oo_peak_r_nm']:.3f} +- {10 * tr['oo_peak_r_sem']:.3f} | "
                        f"{10 * mo['oo_peak_r_nm']:.3f} +- {10 * mo['oo_peak_r_sem']:.3f} | "
                        f"{ch['oo_peak_position']['difference_A']:+.3f} A | 0.05 A | {'yes' if ch['oo_peak_position']['met'] else 'no'} |")
            rows.append(f"| O-O first peak g (+- SEM) | {tr['oo_peak_g']:.3f} +- {tr['oo_peak_g_sem']:.3f} | "
                        f"{mo['oo_peak_g']:.3f} +- {mo['oo_peak_g_sem']:.3f} | "
                        f"{100 * ch['oo_peak_height']['relative_difference']:+.1f} % | 10 % | {'yes' if ch['oo_peak_height']['met'] else 'no'} |")
        if "diffusion" in ch:
            rows.append(f"| D_O (1e-9 m2/s, +- SEM) | {tr['diffusion']:.3f} +- {tr['diffusion_sem']:.3f} | "
                        f"{mo['diffusion']:.3f} +- {mo['diffusion_sem']:.3f} | "
                        f"{100 * ch['diffusion']['relative_difference']:+.1f} % | 30 % | {'yes' if ch['diffusion']['met'] else 'no'} |")
    return "\n".join(rows)


def plot_density(summary: dict, path: Path) -> None:
    """Density against time, teacher and model, one panel per temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = summary["temperatures"]
    fig, axes = plt.subplots(1, len(temps), figsize=(4.2 * len(temps), 3.4), squeeze=False)
    for ax, t in zip(axes[0], temps):
        for who, colour in (("teacher", "black"), ("model", "tab:blue")):
            if t[who] is None:
                continue
            series = t[who]["density_series"]
            ax.plot(series["time_ps"], series["density_g_cm3"], color=colour, lw=0.8,
                    label=f"{who} {t[who]['density_g_cm3']:.4f} +- {t[who]['density_sem']:.4f} (SEM)")
        ax.set_title(f"{t['temperature_K']:g} K, 1.01325 bar")
        ax.set_xlabel("time (ps)")
        ax.set_ylabel("density (g/cm3)")
        ax.legend(fontsize=7)
    sha = (summary.get("model") or {}).get("sha256", "")
    fig.suptitle(f"AMOEBA teacher vs MACE model {sha[:8]}, 343 waters ({summary['card']})", fontsize=9)
    fig.tight_layout()
    from openmm_mace_lp.analysis.atomic import save_figure

    save_figure(fig, path)
    plt.close(fig)


def _has_production(run_dir: Path) -> bool:
    """A run with production rows in its state.csv (a model run paused before production has none)."""
    state = run_dir / "state.csv"
    return state.exists() and len(state.read_text().splitlines()) > 2


def _stored_teacher(path: Path | None) -> dict[float, dict]:
    """The teacher's analysed runs from an earlier result file (so the model's runs can be
    compared with them without the teacher's run directories)."""
    if path is None:
        return {}
    data = json.loads(path.read_text())
    return {float(t["temperature_K"]): t["teacher"] for t in data["temperatures"] if t.get("teacher")}


def summarize(out: Path, card: str, result: Path, teacher_results: Path | None = None) -> dict:
    """Analyse every run and write JSON, Markdown and the density plot. Temperatures whose
    model runs have not reached production are reported with the teacher alone."""
    from openmm_mace_lp.analysis.atomic import write_json, write_text

    stored = _stored_teacher(teacher_results)
    temps = []
    for temperature in sorted(PRODUCTION_PS):
        entry: dict = {"temperature_K": temperature, "teacher": stored.get(temperature), "model": None, "checks": {}}
        for who in WHO:
            run_dir = out / Point(who, temperature).name
            if entry[who] is None and _has_production(run_dir):
                entry[who] = analyse_point(run_dir)
            elif who == "model" and (run_dir / "manifest.json").is_file():
                manifest = json.loads((run_dir / "manifest.json").read_text())
                entry["model_run"] = {"status": manifest.get("status"), "failure": run_failure(manifest)}
        if entry["teacher"] is None:
            continue
        if entry["model"] is not None:
            entry["checks"] = compare(entry["teacher"], entry["model"], temperature)
        temps.append(entry)
    if not temps:
        raise SystemExit(f"no teacher run with production rows under {out}")
    at300 = next((t for t in temps if t["temperature_K"] == 300.0), temps[0])
    model_at300 = at300["model"] or {}
    model_dir = out / Point("model", at300["temperature_K"]).name
    manifest = json.loads((model_dir / "manifest.json").read_text()) if (model_dir / "manifest.json").exists() else {}
    productions = [at300["teacher"]["production_ps"]] + ([model_at300["production_ps"]] if model_at300 else [])
    summary = {
        "card": card,
        "atoms": 1029,
        "temperature_K": at300["temperature_K"],
        "pressure_bar": 1.01325,
        "teacher_density_g_cm3": at300["teacher"]["density_g_cm3"],
        "teacher_density_sem": at300["teacher"]["density_sem"],
        "model_density_g_cm3": model_at300.get("density_g_cm3"),
        "model_density_sem": model_at300.get("density_sem"),
        "production_ps": min(productions),
        "model": manifest.get("model"),
        "teacher": "AMOEBA water (amoeba2018.xml), PME 0.8 nm, extrapolated polarisation",
        "timestep_fs": TIMESTEP_FS,
        "temperatures": temps,
        "model_runs_complete": len(temps) == len(PRODUCTION_PS) and all(
            t["model"] is not None and t["model"].get("status") == "completed" for t in temps),
        "all_targets_met": bool(temps) and all(t["checks"] and all(c["met"] for c in t["checks"].values())
                                               for t in temps),
        "sem_note": "SEM from the statistical inefficiency of each run's series after the detected "
                    "equilibration; RDF peak SEM from frame blocks; D from the MSD fit",
    }
    summary["markdown_table"] = markdown(summary)
    write_json(result, summary)
    sha = (summary["model"] or {}).get("sha256", "")
    named = f"model {sha[:8]}" if sha else "model"
    write_text(result.with_suffix(".md"), f"# Closed loop: MACE {named} vs its AMOEBA teacher, NPT water ({card})\n\n"
               + summary["markdown_table"] + "\n\n![density](" + result.with_suffix(".png").name + ")\n")
    plot_density(summary, result.with_suffix(".png"))
    print(summary["markdown_table"])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start or continue the runs")
    run.add_argument("-o", "--out", type=Path, required=True)
    run.add_argument("--who", default="teacher,model", help="teacher, model or both (comma-separated)")
    run.add_argument("--temperatures", default="300,260,350")
    run.add_argument("--model", default="default", help="MACE model file (default: the embedded model)")
    run.add_argument("--platform", default="CUDA")
    run.add_argument("--max-minutes", type=float, default=None)
    run.add_argument("--equilibration-ps", type=float, default=EQUILIBRATION_PS,
                     help="equilibration before the trajectory starts; active learning samples with ~1 ps so "
                          "that the frames show the model's way from the teacher's density to its own")
    summ = sub.add_parser("summarize", help="analyse the runs and write the result files")
    summ.add_argument("out", type=Path)
    summ.add_argument("--card", required=True, help='the GPU the runs used, e.g. "NVIDIA H200"')
    summ.add_argument("-o", "--result", type=Path, required=True)
    summ.add_argument("--teacher-results", type=Path, default=None,
                      help="a closed_loop_*.json whose teacher runs to use instead of <dir>/teacher_*")
    args = parser.parse_args(argv)
    if args.command == "run":
        temperatures = [float(t) for t in args.temperatures.split(",")]
        unknown = [t for t in temperatures if t not in PRODUCTION_PS]
        if unknown:
            parser.error(f"--temperatures: {unknown} not in {sorted(PRODUCTION_PS)}")
        points = [Point(who, t) for who in args.who.split(",") for t in temperatures]
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        return 1 if run_points(args.out, points, args.model, args.platform, args.max_minutes,
                              args.equilibration_ps) else 0
    summarize(args.out, args.card, args.result, args.teacher_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
