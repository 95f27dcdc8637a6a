"""PNG figures of a comparison and of a single run (matplotlib, Agg backend).

Colours are fixed per policy so that every figure reads the same way; the reference is
always black. Every difference panel states its unit, every noise band is centred on zero
(what noise alone would give), and every "±" says whether it is an SD or an SEM.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from .analyze import RunAnalysis, observable_label
from .atomic import save_figure
from .compare import Comparison, rdf_window
from .uncertainty import t_critical

POLICY_COLOURS = {"fp64": "black", "fp32": "tab:blue", "tf32": "tab:green",
                  "bf16": "tab:orange", "fp16": "tab:red"}
VERDICT_COLOURS = {"equivalent": "tab:green", "different": "tab:red",
                   "inconclusive": "tab:gray"}
EXTRA_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
SEED_STYLES = ("-", "--", ":", "-.")
TIMESERIES = ("temperature", "density", "potential_energy", "total_energy")
MAX_POINTS = 300
NOISE_LEVEL = 0.95  # half-width of the noise bands: the 95 % two-sided t value x SEM


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def experimental_water_density(temperature_k: float) -> float:
    """Density of liquid water at 1 atm (g/cm^3), Kell, J. Chem. Eng. Data 20, 97 (1975).

    Valid 0-150 °C; NaN outside. Drawn as the target on density plots of water.
    """
    t = temperature_k - 273.15
    if not 0.0 <= t <= 150.0:
        return math.nan
    numerator = (999.83952 + 16.945176 * t - 7.9870401e-3 * t ** 2 - 46.170461e-6 * t ** 3
                 + 105.56302e-9 * t ** 4 - 280.54253e-12 * t ** 5)
    return numerator / (1.0 + 16.879850e-3 * t) / 1000.0


def teacher_density(manifest: dict) -> tuple[float, float, str] | None:
    """(density, SEM, teacher) of the run's model's teacher at the run's temperature, or None.

    A model trained on a force field (the embedded AMOEBA model) is judged against its teacher,
    not experiment; ``systems/recipes/train_water.py --card-only --closed-loop`` stores the
    teacher's own NPT densities in the errors JSON beside the model file. Looked up beside the
    file the run used and beside the packaged default model, and used only if that JSON names
    the same SHA-256 as the run's manifest and a temperature within 1 K of the run's.
    """
    model = manifest.get("model") or {}
    sha = model.get("sha256")
    if not sha or "temperature_K" not in manifest:
        return None
    candidates = [Path(model["path"])] if model.get("path") else []
    try:
        from openmm_mace_lp.model_files import default_model_path

        candidates.append(default_model_path())
    except FileNotFoundError:
        pass
    temperature = float(manifest["temperature_K"])
    for path in candidates:
        try:
            record = json.loads(path.with_suffix(".test_errors.json").read_text())
        except (OSError, ValueError):
            continue
        if record.get("model_sha256") != sha:
            continue
        for row in record.get("teacher_densities", []):
            if abs(float(row["temperature_K"]) - temperature) <= 1.0:
                return float(row["density_g_cm3"]), float(row.get("sem", 0.0)), str(record.get("teacher", "teacher"))
    return None


def series_label(name: str) -> tuple[str, str]:
    if name == "total_energy":
        return "Total energy", "kJ/mol/atom"
    return observable_label(name)


def policy_colour(comparison: Comparison, policy: str) -> str:
    if policy == comparison.reference:
        return "black"
    if policy in POLICY_COLOURS:
        return POLICY_COLOURS[policy]
    others = [p for p in comparison.policies if p not in POLICY_COLOURS]
    return EXTRA_COLOURS[others.index(policy) % len(EXTRA_COLOURS)] if policy in others \
        else "tab:gray"


def block_smooth(time: np.ndarray, values: np.ndarray,
                 max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Average consecutive samples so that at most ``max_points`` remain (readability)."""
    size = max(1, len(values) // max_points)
    n = (len(values) // size) * size
    if n == 0:
        return time, values
    return (time[:n].reshape(-1, size).mean(axis=1), values[:n].reshape(-1, size).mean(axis=1))


def _mean_curve(runs, name: str, grid: np.ndarray) -> np.ndarray:
    """Seed average of a smoothed series on a common time grid (NaN outside a run)."""
    curves = []
    for run in runs:
        if name not in run.series:
            continue
        t, v = block_smooth(run.series["time_ps"], run.series[name])
        curves.append(np.interp(grid, t, v, left=np.nan, right=np.nan))
    if not curves:
        return np.full_like(grid, np.nan)
    with warnings.catch_warnings():  # grid points past the end of every run stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(curves, axis=0)


def _targets(ax, name: str, run: RunAnalysis) -> None:
    """Thermostat setpoint on T(t); experimental water density, and the model's teacher's own
    density where its card records one (``teacher_density``), on rho(t)."""
    manifest = run.run.manifest
    if name == "temperature" and run.run.ensemble != "nve":
        ax.axhline(float(manifest["temperature_K"]), color="tab:purple", lw=1.2, ls="--",
                   label=f"target {float(manifest['temperature_K']):g} K")
    if name == "density" and run.water:
        rho = experimental_water_density(float(manifest["temperature_K"]))
        if math.isfinite(rho):
            ax.axhline(rho, color="tab:purple", lw=1.2, ls="--",
                       label=f"water, experiment {rho:.4f} g/cm³ (Kell 1975)")
        teacher = teacher_density(manifest)
        if teacher is not None:
            rho, sem, name_of_teacher = teacher
            ax.axhline(rho, color="tab:brown", lw=1.2, ls=":",
                       label=f"the model's teacher ({name_of_teacher}) {rho:.4f} ± {sem:.4f} g/cm³ (SEM)")


def plot_timeseries(comparison: Comparison, name: str, path: Path) -> Path:
    """Top: every run (smoothed) with its target and cut; bottom: seed-mean difference to
    the reference with the noise band (centred on zero) and the margin."""
    plt = _pyplot()
    label, unit = series_label(name)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    reference = comparison.policies[comparison.reference]
    ref_t, _ = block_smooth(reference.runs[0].series["time_ps"],
                            reference.runs[0].series["time_ps"])
    ref_curve = _mean_curve(reference.runs, name, ref_t)
    for policy, summary in comparison.policies.items():
        colour = policy_colour(comparison, policy)
        for i, run in enumerate(summary.runs):
            if name not in run.series:
                continue
            t, v = block_smooth(run.series["time_ps"], run.series[name])
            top.plot(t, v, SEED_STYLES[i % len(SEED_STYLES)], color=colour, lw=1,
                     label=policy if i == 0 else None)
            top.axvline(run.equilibration["t0_ps"], color=colour, lw=0.6, alpha=0.4)
        if policy == comparison.reference:
            continue
        delta = _mean_curve(summary.runs, name, ref_t) - ref_curve
        bottom.plot(ref_t, delta, color=colour, lw=1, label=policy)
    _targets(top, name, reference.runs[0])
    verdicts = [comparison.verdict(p, name) for p in comparison.arms]
    verdicts = [v for v in verdicts if v is not None and math.isfinite(v.sigma)]
    if verdicts:
        sigma = max(v.sigma for v in verdicts)
        half = t_critical(NOISE_LEVEL, min(v.dof for v in verdicts)) * sigma
        bottom.axhspan(-half, half, color="gray", alpha=0.25,
                       label=f"noise: ±{100 * NOISE_LEVEL:g}% t × SEM of the difference")
        margin = verdicts[0].margin
        for sign in (-1, 1):
            bottom.axhline(sign * margin, color="tab:purple", lw=1, ls="--",
                           label=f"margin ±{margin:.3g} {unit}" if sign > 0 else None)
    bottom.axhline(0.0, color="black", lw=0.8)
    top.set_ylabel(f"{label} ({unit})")
    top.set_title(f"{label}: runs (thin vertical lines: equilibration cut)")
    top.legend(fontsize=8, ncol=3)
    bottom.set_ylabel(f"Δ{label.split()[0].lower()} vs {comparison.reference} ({unit})")
    bottom.set_xlabel("time (ps)")
    bottom.set_title("Seed-mean difference (the verdict uses the means after the cut)",
                     fontsize=9)
    if comparison.arms:
        bottom.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def _rdf_title(pair: str, intermolecular: bool) -> str:
    return f"g_{pair}(r)" + (" (intermolecular pairs only)" if intermolecular else "")


def plot_rdf(comparison: Comparison, pair: str, path: Path) -> Path:
    """RDF overlay (top) and difference to the reference (bottom, noise band on zero)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    reference = comparison.policies[comparison.reference]
    r_ref, g_ref = reference.rdf_r[pair], reference.rdf_g[pair]
    intermolecular = reference.runs[0].rdfs[pair].intermolecular
    window = rdf_window(reference.runs, pair, len(g_ref))
    spans = []
    for policy, summary in comparison.policies.items():
        if pair not in summary.rdf_g:
            continue
        colour = policy_colour(comparison, policy)
        r, g = summary.rdf_r[pair], summary.rdf_g[pair]
        top.plot(r, g, color=colour, lw=1.2, label=policy)
        if policy == comparison.reference:
            continue
        n = min(len(g), len(g_ref))
        result = comparison.rdf.get(policy, {}).get(pair)
        note = f" (IAD {result.iad:.2g} nm, floor {result.noise_floor:.2g} nm)" if result else ""
        bottom.plot(r[:n], g[:n] - g_ref[:n], color=colour, lw=1, label=policy + note)
        noise = np.sqrt(summary.rdf_sem[pair][:n] ** 2 + reference.rdf_sem[pair][:n] ** 2)
        band = 1.96 * np.nan_to_num(noise)
        bottom.fill_between(r[:n], -band, band, color=colour, alpha=0.15, lw=0)
        spans += [np.max(np.abs(g[:n] - g_ref[:n])[window], initial=0.0),
                  np.max(band[window], initial=0.0)]
    if window.start > 0:
        bottom.axvspan(0.0, r_ref[window.start], color="gray", alpha=0.1, lw=0)
    limit = 1.15 * max(spans, default=0.0)
    if limit > 0 and np.isfinite(limit):
        bottom.set_ylim(-limit, limit)
    bottom.axhline(0.0, color="black", lw=0.8)
    top.set_ylabel(f"g_{pair}(r) (dimensionless)")
    top.set_title("Radial distribution function " + _rdf_title(pair, intermolecular))
    top.legend(fontsize=8)
    bottom.set_ylabel(f"Δg vs {comparison.reference} (dimensionless)")
    bottom.set_xlabel("r (nm)")
    bottom.set_title("Bands: ±1.96 × per-bin SEM of the difference (noise alone); grey: r "
                     "range left out of the IAD", fontsize=9)
    bottom.legend(fontsize=7)
    return save_figure(fig, path)


def _msd_axes(plt):
    fig, (linear, loglog) = plt.subplots(1, 2, figsize=(11, 4.5))
    return fig, linear, loglog


def _plot_msd_run(linear, loglog, run: RunAnalysis, colour: str, style: str,
                  label: str | None) -> None:
    fit = run.diffusion
    t, msd = fit.time_ps, fit.msd_nm2
    step = max(1, len(t) // MAX_POINTS)
    linear.plot(t[::step], msd[::step], style, color=colour, lw=1, label=label)
    window = np.array([fit.fit_start_ps, fit.fit_end_ps])
    slope = fit.estimate.mean * 6.0 / 1000.0  # back to nm^2/ps
    linear.plot(window, fit.intercept_nm2 + slope * window, color=colour, lw=3, alpha=0.35)
    linear.axvspan(*window, color=colour, alpha=0.06, lw=0)
    positive = (t > 0) & (msd > 0)
    loglog.loglog(t[positive][::step], msd[positive][::step], style, color=colour, lw=1)
    loglog.axvspan(*window, color=colour, alpha=0.06, lw=0)


def _regime_text(run: RunAnalysis) -> str:
    observable = run.scalars.get("diffusion")
    regime = "diffusive" if observable and not any(
        item.code == "msd_not_diffusive" for item in observable.limitations) else "NOT diffusive"
    return (f"{regime} (late/early slope {run.diffusion.slope_ratio:.2f}, log-log "
            f"{run.diffusion.exponent:.2f})")


def _finish_msd(fig, linear, loglog, reference_t: np.ndarray, reference_msd: np.ndarray):
    positive = (reference_t > 0) & (reference_msd > 0)
    if positive.any():
        t0, m0 = reference_t[positive][0], reference_msd[positive][0]
        span = reference_t[positive]
        loglog.loglog(span, m0 * span / t0, color="tab:purple", lw=0.8, ls="--",
                      label="slope 1 (diffusive)")
        loglog.loglog(span, m0 * (span / t0) ** 2, color="tab:purple", lw=0.8, ls=":",
                      label="slope 2 (ballistic)")
    linear.set_xlabel("lag time (ps)")
    linear.set_ylabel("MSD (nm²)")
    linear.set_title("MSD; shaded: fit window for D (thick: the fit)")
    linear.legend(fontsize=7, loc="lower right")
    loglog.set_xlabel("lag time (ps)")
    loglog.set_ylabel("MSD (nm²)")
    loglog.set_title("log-log: D needs slope 1 in the fit window")
    loglog.legend(fontsize=7)
    return fig


def plot_msd(comparison: Comparison, path: Path) -> Path:
    """MSD of every run with its fit window and regime; legend gives D ± SEM."""
    plt = _pyplot()
    fig, linear, loglog = _msd_axes(plt)
    reference_curve = None
    for policy, summary in comparison.policies.items():
        colour = policy_colour(comparison, policy)
        estimate = summary.estimates.get("diffusion")
        for i, run in enumerate(summary.runs):
            if run.diffusion is None:
                continue
            if reference_curve is None:
                reference_curve = (run.diffusion.time_ps, run.diffusion.msd_nm2)
            label = None
            if i == 0:
                label = policy + (f": D = {estimate.mean:.3g} ± {estimate.sem:.2g} (SEM) "
                                  f"{observable_label('diffusion')[1]}" if estimate else "")
            label = (label + "; " if label else f"{policy}: ") + _regime_text(run) \
                if i == 0 else None
            _plot_msd_run(linear, loglog, run, colour, SEED_STYLES[i % len(SEED_STYLES)], label)
    if reference_curve is not None:
        _finish_msd(fig, linear, loglog, *reference_curve)
    return save_figure(fig, path)


def verdict_positions(comparison: Comparison, policy: str) -> list[tuple[str, float, float, float, str]]:
    """(title, delta/M, low/M, high/M, verdict) per verdict column; +-1 is the margin."""
    from .tables import observable_title

    out = []
    for column in comparison.verdict_columns():
        v = comparison.verdict(policy, column)
        if v is None or not v.margin > 0:
            continue
        low = v.ci_low / v.margin if math.isfinite(v.ci_low) else v.delta / v.margin
        high = v.ci_high / v.margin if math.isfinite(v.ci_high) else v.delta / v.margin
        out.append((observable_title(column), v.delta / v.margin, low, high, v.verdict))
    return out


def plot_verdicts(comparison: Comparison, path: Path) -> Path:
    """One panel per arm: Δ/margin with its (1 - 2 alpha) interval; inside ±1 = equivalent."""
    plt = _pyplot()
    arms = comparison.arms or [comparison.reference]
    n_rows = max(1, len(comparison.verdict_columns()))
    fig, axes = plt.subplots(1, len(arms), figsize=(3.6 * len(arms) + 2, 0.4 * n_rows + 2),
                             sharey=True, squeeze=False)
    level = f"{100 * (1 - 2 * comparison.alpha):g}%"
    for ax, policy in zip(axes[0], arms):
        rows = verdict_positions(comparison, policy) if comparison.arms else []
        for i, (title, centre, low, high, verdict) in enumerate(rows):
            colour = VERDICT_COLOURS[verdict]
            ax.plot([low, high], [i, i], color=colour, lw=3, alpha=0.7)
            ax.plot([centre], [i], "o", color=colour)
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
        for x in (-1.0, 1.0):
            ax.axvline(x, color="black", lw=1, ls="--")
        ax.axvline(0.0, color="black", lw=0.6)
        ax.set_xscale("symlog", linthresh=2.0)
        ax.set_title(policy)
        ax.set_xlabel("Δ / margin (RDF: IAD / margin)")
        ax.invert_yaxis()
    fig.suptitle(f"Verdicts vs {comparison.reference}: dot = difference, bar = {level} "
                 "interval; green equivalent, red different, grey inconclusive", fontsize=9)
    return save_figure(fig, path)


def make_figures(comparison: Comparison, directory: str | Path) -> dict[str, Path]:
    """Write every figure of the comparison report; returns {figure name: path}."""
    directory = Path(directory)
    figures: dict[str, Path] = {"verdicts": plot_verdicts(comparison, directory / "verdicts.png")}
    reference_runs = comparison.policies[comparison.reference].runs
    for name in TIMESERIES:
        if name == "total_energy" and reference_runs[0].run.ensemble != "nve":
            continue
        if all(name in run.series for run in reference_runs):
            figures[f"timeseries_{name}"] = plot_timeseries(
                comparison, name, directory / f"timeseries_{name}.png")
    for pair in comparison.rdf_pairs():
        figures[f"rdf_{pair}"] = plot_rdf(comparison, pair, directory / f"rdf_{_safe(pair)}.png")
    if any(run.diffusion is not None for s in comparison.policies.values() for run in s.runs):
        figures["msd"] = plot_msd(comparison, directory / "msd.png")
    return figures


def _safe(name: str) -> str:
    return name.replace("/", "_").replace(" ", "_")


# --------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------


def plot_run_series(analysis: RunAnalysis, name: str, path: Path) -> Path:
    """One state series over time: raw samples, smoothed curve, target, cut, mean ± SEM."""
    plt = _pyplot()
    label, unit = series_label(name)
    time, values = analysis.series["time_ps"], analysis.series[name]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(time, values, color="0.6", lw=0.6, label="samples")
    t, v = block_smooth(time, values, max_points=100)
    if len(t) < len(time):
        ax.plot(t, v, color="black", lw=1.2, label="block-averaged")
    cut = analysis.equilibration["t0_ps"]
    ax.axvline(cut, color="tab:orange", lw=1, label=f"equilibration cut {cut:.3g} ps")
    observable = analysis.scalars.get(name)
    if observable is not None and math.isfinite(observable.estimate.mean):
        e = observable.estimate
        ax.axhline(e.mean, color="tab:blue", lw=1,
                   label=f"mean after the cut {e.mean:.5g} ± {e.sem:.2g} (SEM)"
                   + ("" if observable.supported else " — not supported, see report"))
    _targets(ax, name, analysis)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel(f"{label} ({unit})")
    ax.set_title(f"{analysis.run.name}: {label}")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_run_rdf(analysis: RunAnalysis, pair: str, path: Path) -> Path:
    """g(r) of one run with its per-bin noise band (±1.96 SEM from blocks of frames)."""
    from .compare import _bin_sem

    plt = _pyplot()
    rdf = analysis.rdfs[pair]
    band = 1.96 * np.nan_to_num(_bin_sem(rdf.g_frames))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.fill_between(rdf.r, rdf.g - band, rdf.g + band, color="tab:blue", alpha=0.25, lw=0,
                    label="±1.96 SEM (blocks of frames)")
    ax.plot(rdf.r, rdf.g, color="black", lw=1.2, label=f"{len(rdf.g_frames)} frames")
    ax.axhline(1.0, color="0.5", lw=0.6)
    ax.set_xlabel("r (nm)")
    ax.set_ylabel(f"g_{pair}(r) (dimensionless)")
    ax.set_title(f"{analysis.run.name}: " + _rdf_title(pair, rdf.intermolecular))
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_run_msd(analysis: RunAnalysis, path: Path) -> Path:
    plt = _pyplot()
    fig, linear, loglog = _msd_axes(plt)
    e = analysis.diffusion.estimate
    label = (f"D = {e.mean:.3g} ± {e.sem:.2g} (SEM) {observable_label('diffusion')[1]}; "
             + _regime_text(analysis))
    _plot_msd_run(linear, loglog, analysis, "black", "-", label)
    _finish_msd(fig, linear, loglog, analysis.diffusion.time_ps, analysis.diffusion.msd_nm2)
    return save_figure(fig, path)


def run_figure_names(analysis: RunAnalysis) -> list[str]:
    """The figures a run supports drawing: series present, RDF pairs, MSD if measured."""
    wanted = ["temperature", "potential_energy"]
    if analysis.run.ensemble == "npt":
        wanted.insert(1, "density")
    if analysis.run.ensemble == "nve":
        wanted.append("total_energy")
    names = [f"series_{n}" for n in wanted if n in analysis.series]
    names += [f"rdf_{pair}" for pair in analysis.rdfs]
    if analysis.diffusion is not None:
        names.append("msd")
    return names


def make_run_figures(analysis: RunAnalysis, directory: str | Path) -> dict[str, Path]:
    """Every figure of the single-run report; returns {figure name: path}."""
    directory = Path(directory)
    figures: dict[str, Path] = {}
    for name in run_figure_names(analysis):
        if name.startswith("series_"):
            series = name[len("series_"):]
            figures[name] = plot_run_series(analysis, series, directory / f"{name}.png")
        elif name.startswith("rdf_"):
            pair = name[len("rdf_"):]
            figures[name] = plot_run_rdf(analysis, pair, directory / f"rdf_{_safe(pair)}.png")
        else:
            figures[name] = plot_run_msd(analysis, directory / "msd.png")
    return figures
