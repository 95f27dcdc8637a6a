"""PNG figures of a comparison (matplotlib, Agg backend: no display needed).

Colours are fixed per policy so that every figure reads the same way; the reference is
always black.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from .analyze import observable_label
from .atomic import save_figure
from .compare import Comparison, rdf_window
from .uncertainty import t_critical

POLICY_COLOURS = {"fp64": "black", "fp32": "tab:blue", "tf32": "tab:green",
                  "bf16": "tab:orange", "fp16": "tab:red"}
EXTRA_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
SEED_STYLES = ("-", "--", ":", "-.")
TIMESERIES = ("temperature", "density", "potential_energy", "total_energy")
MAX_POINTS = 300


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


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


def plot_timeseries(comparison: Comparison, name: str, path: Path) -> Path:
    """Top: every run's series (smoothed); bottom: seed-mean difference to the reference,
    with each arm's mean difference and its verdict threshold as a band."""
    plt = _pyplot()
    label, unit = observable_label(name) if name != "total_energy" else \
        ("Total energy", "kJ/mol/atom")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True,
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
        difference = comparison.differences[policy].get(name)
        if difference is not None:
            low = difference.delta - difference.threshold
            high = difference.delta + difference.threshold
            bottom.axhspan(low, high, color=colour, alpha=0.12)
    bottom.axhline(0.0, color="black", lw=0.8)
    top.set_ylabel(f"{label} ({unit})")
    top.set_title(f"{label}: runs (thin vertical lines: equilibration cut)")
    top.legend(fontsize=8, ncol=3)
    bottom.set_ylabel(f"Δ vs {comparison.reference}")
    bottom.set_xlabel("time (ps)")
    bottom.set_title(f"Seed-mean difference; bands: mean Δ ± {100 * comparison.level:g}% "
                     "threshold", fontsize=9)
    if comparison.arms:
        bottom.legend(fontsize=8, ncol=3)
    return save_figure(fig, path)


def _reference_rdf_band(comparison: Comparison, pair: str, n_bins: int) -> np.ndarray:
    """Per-bin half-width (at the comparison's level) of arm - reference from noise alone.

    Per-bin SEM of each reference run from 8 blocks of frames, propagated to the seed
    mean; the arm is assumed as noisy as the reference (hence sqrt 2).
    """
    runs = comparison.policies[comparison.reference].runs
    variances, dof = [], 0
    for run in runs:
        blocks = run.rdfs[pair].blocks(8)[:, :n_bins]
        if len(blocks) > 1:
            variances.append(blocks.var(axis=0, ddof=1) / len(blocks))
            dof += len(blocks) - 1
    if not variances:
        return np.zeros(n_bins)
    sem = np.sqrt(np.sum(variances, axis=0)) / len(runs)
    return t_critical(comparison.level, max(dof, 1)) * math.sqrt(2.0) * sem


def plot_rdf(comparison: Comparison, pair: str, path: Path) -> Path:
    """RDF overlay (top) and difference to the reference (bottom, with noise band)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    reference = comparison.policies[comparison.reference]
    r_ref, g_ref = reference.rdf_r[pair], reference.rdf_g[pair]
    for policy, summary in comparison.policies.items():
        if pair not in summary.rdf_g:
            continue
        colour = policy_colour(comparison, policy)
        r, g = summary.rdf_r[pair], summary.rdf_g[pair]
        top.plot(r, g, color=colour, lw=1.2, label=policy)
        if policy != comparison.reference:
            n = min(len(g), len(g_ref))
            verdict = comparison.rdf_verdicts[policy].get(pair)
            note = f" (IAD/floor {verdict.ratio:.2g})" if verdict else ""
            bottom.plot(r[:n], g[:n] - g_ref[:n], color=colour, lw=1, label=policy + note)
    band = _reference_rdf_band(comparison, pair, len(g_ref))
    bottom.fill_between(r_ref, -band, band, color="gray", alpha=0.3,
                        label=f"{comparison.reference} noise ({100 * comparison.level:g}%)")
    bottom.axhline(0.0, color="black", lw=0.8)
    # Scale the difference panel to the range the IAD integrates; shade what it skips.
    window = rdf_window(reference.runs, pair, len(g_ref))
    if window.start > 0:
        bottom.axvspan(0.0, r_ref[window.start], color="gray", alpha=0.1, lw=0)
    span = [np.max(band[window], initial=0.0)] + [
        np.max(np.abs(s.rdf_g[pair][window] - g_ref[window][:len(s.rdf_g[pair][window])]),
               initial=0.0)
        for p, s in comparison.policies.items() if p != comparison.reference and pair in s.rdf_g]
    limit = 1.15 * max(span)
    if limit > 0 and np.isfinite(limit):
        bottom.set_ylim(-limit, limit)
    top.set_ylabel(f"g_{pair}(r)")
    top.set_title(f"Radial distribution function {pair}")
    top.legend(fontsize=8)
    bottom.set_ylabel(f"Δg vs {comparison.reference}")
    bottom.set_xlabel("r (nm)")
    bottom.legend(fontsize=8)
    return save_figure(fig, path)


def plot_msd(comparison: Comparison, path: Path) -> Path:
    """MSD of every run with its fit window; legend gives the seed-combined D."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for policy, summary in comparison.policies.items():
        colour = policy_colour(comparison, policy)
        estimate = summary.estimates.get("diffusion")
        label = policy + (f": D = {estimate.mean:.3g} ± {estimate.sem:.2g} "
                          f"({observable_label('diffusion')[1]})" if estimate else "")
        for i, run in enumerate(summary.runs):
            fit = run.diffusion
            if fit is None:
                continue
            t, msd = fit.time_ps, fit.msd_nm2
            step = max(1, len(t) // MAX_POINTS)
            ax.plot(t[::step], msd[::step], SEED_STYLES[i % len(SEED_STYLES)], color=colour,
                    lw=1, label=label if i == 0 else None)
            window = np.array([fit.fit_start_ps, fit.fit_end_ps])
            slope = fit.estimate.mean * 6.0 / 1000.0  # back to nm^2/ps
            ax.plot(window, fit.intercept_nm2 + slope * window, color=colour, lw=3, alpha=0.35)
    ax.set_xlabel("lag time (ps)")
    ax.set_ylabel("MSD (nm²)")
    ax.set_title("Mean squared displacement (thick: fit window)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def verdict_scores(comparison: Comparison, policy: str) -> list[tuple[str, float, bool]]:
    """(column, |Δ| / threshold, within) per verdict column; 1 is the decision line."""
    scores = []
    for column in comparison.verdict_columns():
        if column.startswith("rdf:"):
            v = comparison.rdf_verdicts.get(policy, {}).get(column[4:])
            if v is not None and v.within_noise is not None:
                scores.append((f"g({column[4:]})", v.ratio / comparison.rdf_factor,
                               v.within_noise))
        else:
            d = comparison.differences.get(policy, {}).get(column)
            if d is not None and d.within_noise is not None:
                score = abs(d.delta) / d.threshold if d.threshold > 0 else \
                    (0.0 if d.delta == 0 else math.inf)
                scores.append((observable_label(column)[0], score, d.within_noise))
    return scores


def plot_verdicts(comparison: Comparison, path: Path) -> Path:
    """One panel per arm: |Δ| / threshold per observable, green within, red outside."""
    plt = _pyplot()
    arms = comparison.arms or [comparison.reference]
    n_columns = max(1, len(comparison.verdict_columns()))
    fig, axes = plt.subplots(1, len(arms), figsize=(3.2 * len(arms) + 2, 0.35 * n_columns + 1.8),
                             sharey=True, squeeze=False)
    for ax, policy in zip(axes[0], arms):
        scores = verdict_scores(comparison, policy) if comparison.arms else []
        names = [s[0] for s in scores]
        values = [min(s[1], 1e3) for s in scores]
        colours = ["tab:green" if s[2] else "tab:red" for s in scores]
        ax.barh(range(len(scores)), values, color=colours)
        ax.set_yticks(range(len(scores)), names, fontsize=8)
        ax.axvline(1.0, color="black", lw=1, ls="--")
        if values and max(values) > 10:
            ax.set_xscale("log")
        ax.set_title(policy)
        ax.set_xlabel("|Δ| / threshold")
        ax.invert_yaxis()
    fig.suptitle(f"Verdicts vs {comparison.reference} ({100 * comparison.level:g}% level; "
                 "right of the dashed line = outside noise)", fontsize=10)
    return save_figure(fig, path)


def make_figures(comparison: Comparison, directory: str | Path) -> dict[str, Path]:
    """Write every figure of the report; returns {figure name: path}."""
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
        safe = pair.replace("/", "_").replace(" ", "_")
        figures[f"rdf_{pair}"] = plot_rdf(comparison, pair, directory / f"rdf_{safe}.png")
    if any(run.diffusion is not None for s in comparison.policies.values() for run in s.runs):
        figures["msd"] = plot_msd(comparison, directory / "msd.png")
    return figures
