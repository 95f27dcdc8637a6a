"""The summary of a run directory that ``mace-lp run`` prints at the end: what was measured
(mean ± SEM, labelled), and what the run is too short to say.

The numbers come from the analysis layer (``openmm_mace_lp.analysis``: equilibration cut,
correlated-data SEMs, the checks of what the data can support), so the summary never
claims more than ``mace-lp analyze`` would. A run too short for any statistic still gets a
summary: its speed, its length, and the list of what it cannot support.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

REPORT_DIR = "report"


def _run_facts(run_dir: Path) -> dict[str, Any]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    steps = manifest.get("steps_completed")
    timestep = manifest.get("timestep_fs")
    return {
        "run_dir": str(run_dir), "status": manifest.get("status"), "arm": manifest.get("arm"),
        "ensemble": manifest.get("ensemble"), "n_atoms": manifest.get("n_atoms"),
        "steps_completed": steps, "ns_per_day": manifest.get("ns_per_day"),
        "wall_time_s": manifest.get("wall_time_s"), "device": manifest.get("device"),
        "platform": manifest.get("platform"), "policy": manifest.get("policy"),
        "temperature_target_K": manifest.get("temperature_K"),
        "simulated_ps": steps * timestep / 1000.0 if steps and timestep else None,
    }


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _measured(analysis) -> dict[str, dict[str, Any]]:
    out = {}
    for name, observable in analysis.scalars.items():
        e = observable.estimate
        out[name] = {"label": observable.label, "unit": observable.unit,
                     "mean": _finite(e.mean), "sem": _finite(e.sem),
                     "sd": _finite(observable.details.get("sd", math.nan)),
                     "supported": observable.supported}
    return out


def _headline_mean(analysis, name: str) -> tuple[float | None, float | None]:
    """Mean and SEM of one observable, None where it was not measured (e.g. a box that
    no barostat move changed holds the starting density, not a measured one)."""
    from openmm_mace_lp.analysis.support import NOT_MEASURED

    observable = analysis.scalars.get(name)
    if observable is None or any(item.code == NOT_MEASURED for item in observable.limitations):
        return None, None
    return _finite(observable.estimate.mean), _finite(observable.estimate.sem)


def _too_short(analysis) -> list[str]:
    """Every reason the run cannot support a number, each once (run-wide ones first)."""
    messages = [item.message for item in analysis.run_limitations]
    for observable in analysis.scalars.values():
        messages += [item.message for item in observable.limitations]
    for items in analysis.rdf_limitations.values():
        messages += [item.message for item in items]
    messages += [item.message for item in analysis.missing.values()]
    return list(dict.fromkeys(messages))


def summarize(run_dir: str | Path, analysis=None) -> dict[str, Any]:
    """Key facts of a run, its measured means with SEM, and what it cannot support
    (``analysis``: the run's analysis when the caller has made it already)."""
    from openmm_mace_lp.analysis.analyze import analyze_run

    run_dir = Path(run_dir)
    summary = _run_facts(run_dir)
    try:
        analysis = analysis or analyze_run(run_dir)
    except (ValueError, FileNotFoundError) as error:
        summary["analysis_error"] = str(error)
    else:
        eq = analysis.equilibration
        summary.update({
            "simulated_ps": analysis.production_ps, "kept_ps": analysis.kept_ps,
            "equilibration_cut_ps": eq["t0_ps"], "equilibration_method": eq["method"],
            "measured": _measured(analysis), "too_short_to_say": _too_short(analysis),
            "warnings": list(analysis.warnings)})
        for name, unit in (("temperature", "K"), ("density", "g_cm3")):
            mean, sem = _headline_mean(analysis, name)
            summary[f"{name}_mean_{unit}"], summary[f"{name}_sem_{unit}"] = mean, sem
    report = run_dir / REPORT_DIR / "report.md"
    summary["report"] = str(report) if report.is_file() else None
    summary["files"] = sorted(p.name for p in run_dir.iterdir() if p.is_file())
    return summary


def _number(value: float | None, sem: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if sem is None:
        return f"{value:.6g} {unit} (no error estimate)".replace("  ", " ")
    digits = max(0, 1 - math.floor(math.log10(sem))) if sem > 0 else 4
    return f"{value:.{digits}f} ± {sem:.{digits}f} {unit} (SEM)".replace("  ", " ")


def format_summary(summary: dict[str, Any]) -> str:
    """Lines for the terminal: facts, measured means with labelled SEM, what is too short."""
    def num(key: str, fmt: str = ".4g") -> str:
        value = summary.get(key)
        return "n/a" if value is None else format(value, fmt)

    lines = [f"run {summary['run_dir']}: {summary.get('status')} ({summary.get('arm')}, "
             f"{str(summary.get('ensemble')).upper()}, {summary.get('n_atoms')} atoms, "
             f"{summary.get('platform')} on {summary.get('device')})",
             f"  {num('steps_completed', 'd')} production steps = {num('simulated_ps', '.4g')} ps "
             f"in {num('wall_time_s', '.1f')} s: {num('ns_per_day', '.3g')} ns/day"]
    if "analysis_error" in summary:
        lines.append(f"  nothing measured: {summary['analysis_error']}")
    measured = summary.get("measured") or {}
    if measured:
        lines.append(f"  measured after the equilibration cut at "
                     f"{summary['equilibration_cut_ps']:.4g} ps ({summary['kept_ps']:.4g} ps "
                     "kept), mean ± SEM; SD is the spread of the samples:")
        for item in measured.values():
            sd = f"; SD {item['sd']:.3g}" if item.get("sd") is not None else ""
            flag = "" if item["supported"] else "  [not supported: see below]"
            label = item["label"][:1].lower() + item["label"][1:]
            lines.append(f"    {label:<28} "
                         f"{_number(item['mean'], item['sem'], item['unit'])}{sd}{flag}")
    too_short = summary.get("too_short_to_say") or []
    if too_short:
        lines.append("  what this run is too short (or too unsettled) to say:")
        lines += [f"    - {message}" for message in too_short]
    elif measured:
        lines.append("  every number above is supported by the data.")
    if summary.get("report"):
        lines.append(f"  report with plots: {summary['report']}")
    lines.append(f"  files: {', '.join(summary.get('files', []))}")
    return "\n".join(lines)
