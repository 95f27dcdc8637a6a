"""Every precision arm against the FP64 reference: differences, uncertainties, verdicts.

Runs are grouped by policy; seeds of one policy are combined (see
:func:`uncertainty.combine_seeds`). Scalar observables are judged with a two-sided t
test at the stated level; RDFs by their integrated absolute difference (IAD) to the
reference against a noise floor measured on the reference itself.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .analyze import AnalysisOptions, RunAnalysis, analyze_run, observable_label
from .observables import integrated_absolute_difference
from .rundir import find_runs, group_by_policy
from .uncertainty import (DEFAULT_LEVEL, Difference, Estimate, combine_seeds,
                          compare_estimates)

POLICY_ORDER = ("fp64", "fp32", "tf32", "bf16", "fp16")
DEFAULT_RDF_FACTOR = 1.5
# Redundant with density in the verdict table (kept in the means and differences tables).
NOT_IN_VERDICTS = ("volume",)


def policy_sort_key(policy: str) -> tuple[int, str]:
    """fp64, fp32, tf32, bf16, fp16 first, then the others alphabetically."""
    return (POLICY_ORDER.index(policy) if policy in POLICY_ORDER else len(POLICY_ORDER), policy)


@dataclass
class PolicySummary:
    """The runs of one policy and their seed-combined observables."""

    policy: str
    runs: list[RunAnalysis]
    estimates: dict[str, Estimate]
    rdf_r: dict[str, np.ndarray]
    rdf_g: dict[str, np.ndarray]  # mean over seeds
    speed: dict[str, Any]
    failed_runs: list[str] = field(default_factory=list)  # "name: reason"

    @property
    def n_seeds(self) -> int:
        return len(self.runs)

    @property
    def status(self) -> str:
        bad = [run.run.name for run in self.runs
               if run.run.manifest.get("status") not in (None, "completed")]
        unusable = [reason.split(":", 1)[0] for reason in self.failed_runs]
        text = f"{len(self.runs)} run(s)"
        if bad:
            text += f"; not completed: {', '.join(bad)}"
        if unusable:
            text += f"; not analysable: {', '.join(unusable)}"
        return text


@dataclass
class RDFVerdict:
    """IAD of an arm's RDF to the reference's, judged against the reference's noise floor."""

    iad: float  # nm
    noise_floor: float  # nm, expected IAD from sampling noise alone
    ratio: float
    within_noise: bool | None  # None: no noise floor available
    floor_method: str
    r_min_nm: float = 0.0  # the IAD integrates from here (see :func:`rdf_window`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Comparison:
    """The full comparison; ``differences[policy][observable]`` etc."""

    reference: str
    level: float
    rdf_factor: float
    policies: dict[str, PolicySummary]
    differences: dict[str, dict[str, Difference]]
    rdf_verdicts: dict[str, dict[str, RDFVerdict]]
    reference_rdf_floor: dict[str, tuple[float, str]]
    warnings: list[str] = field(default_factory=list)
    unanalysable: dict[str, list[str]] = field(default_factory=dict)  # policy -> reasons

    @property
    def arms(self) -> list[str]:
        """Policies other than the reference, in table order."""
        return [p for p in self.policies if p != self.reference]

    def observables(self, verdicts_only: bool = False) -> list[str]:
        names: list[str] = []
        for summary in self.policies.values():
            names += [n for n in summary.estimates if n not in names]
        if verdicts_only:
            names = [n for n in names if n not in NOT_IN_VERDICTS]
        return names

    def rdf_pairs(self) -> list[str]:
        return list(self.policies[self.reference].rdf_g)

    def verdict(self, policy: str, column: str) -> bool | None:
        """True within noise, False outside, None not available; column 'rdf:O-O' for RDFs."""
        if column.startswith("rdf:"):
            result = self.rdf_verdicts.get(policy, {}).get(column[4:])
        else:
            result = self.differences.get(policy, {}).get(column)
        return None if result is None else result.within_noise

    def verdict_columns(self) -> list[str]:
        return self.observables(verdicts_only=True) + [f"rdf:{p}" for p in self.rdf_pairs()]

    def outside_noise(self) -> list[tuple[str, str]]:
        return [(p, c) for p in self.arms for c in self.verdict_columns()
                if self.verdict(p, c) is False]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "openmm-mace-lp/comparison/1",
            "reference": self.reference,
            "level": self.level,
            "criteria": criteria_text(self.level, self.rdf_factor, self.reference),
            "policies": {
                policy: {
                    "runs": [run.run.name for run in s.runs],
                    "failed_runs": s.failed_runs,
                    "status": s.status,
                    "observables": {name: {"label": observable_label(name)[0],
                                           "unit": observable_label(name)[1], **e.to_dict()}
                                    for name, e in s.estimates.items()},
                    "speed": s.speed,
                    "equilibration_t0_ps": {run.run.name: run.equilibration["t0_ps"]
                                            for run in s.runs},
                } for policy, s in self.policies.items()},
            "differences": {p: {n: d.to_dict() for n, d in diffs.items()}
                            for p, diffs in self.differences.items()},
            "rdf_differences": {p: {n: v.to_dict() for n, v in verdicts.items()}
                                for p, verdicts in self.rdf_verdicts.items()},
            "reference_rdf_noise_floor": {pair: {"noise_floor": floor, "method": method}
                                          for pair, (floor, method)
                                          in self.reference_rdf_floor.items()},
            "outside_noise": [{"policy": p, "observable": c} for p, c in self.outside_noise()],
            "unanalysable_policies": self.unanalysable,
            "warnings": self.warnings,
        }


def criteria_text(level: float, rdf_factor: float, reference: str) -> str:
    """The decision rule, stated once in every output."""
    return (f"Scalars: within noise if |arm - {reference}| <= t * sigma, sigma = "
            f"sqrt(sem_arm^2 + sem_ref^2), t the two-sided {100 * level:g}% Student-t value "
            "(Welch-Satterthwaite dof). RDFs: within noise if the integrated absolute "
            f"difference <= {rdf_factor:g} x the noise floor (the IAD that sampling noise alone "
            f"gives, measured on {reference} seed pairs and run halves, scaled to the frame "
            "counts compared; integrated from the r where an ideal gas has >= 1 pair per bin "
            "per frame).")


# --------------------------------------------------------------------------------------


def _speed(runs: list[RunAnalysis], reference_msteps: float | None) -> dict[str, Any]:
    ns = np.array([r.speed["ns_per_day"] for r in runs], dtype=float)
    msteps = np.array([r.speed["msteps_per_day"] for r in runs], dtype=float)
    mean_msteps = float(np.nanmean(msteps)) if np.isfinite(msteps).any() else math.nan
    return {
        "ns_per_day": float(np.nanmean(ns)) if np.isfinite(ns).any() else math.nan,
        "ns_per_day_sd": float(np.nanstd(ns, ddof=1)) if np.isfinite(ns).sum() > 1 else math.nan,
        "msteps_per_day": mean_msteps,
        "speedup": (mean_msteps / reference_msteps
                    if reference_msteps and math.isfinite(reference_msteps) else math.nan),
        "devices": sorted({str(r.speed["device"]) for r in runs}),
        "backends": sorted({str(r.speed["backend"]) for r in runs}),
        "timestep_fs": sorted({r.speed["timestep_fs"] for r in runs}),
    }


def _common_length(curves: list[np.ndarray]) -> int:
    return min(len(c) for c in curves)


def summarize_policy(policy: str, runs: list[RunAnalysis],
                     reference_msteps: float | None = None) -> PolicySummary:
    """Combine the seeds of one policy."""
    names: list[str] = []
    for run in runs:
        names += [n for n in run.scalars if n not in names]
    estimates = {}
    for name in names:
        per_seed = [run.scalars[name].estimate for run in runs if name in run.scalars]
        if per_seed:
            estimates[name] = combine_seeds(per_seed)
    rdf_r, rdf_g = {}, {}
    pairs = [p for p in runs[0].rdfs if all(p in run.rdfs for run in runs)]
    for pair in pairs:
        curves = [run.rdfs[pair].g for run in runs]
        n = _common_length(curves)
        rdf_r[pair] = runs[0].rdfs[pair].r[:n]
        rdf_g[pair] = np.mean([c[:n] for c in curves], axis=0)
    return PolicySummary(policy, runs, estimates, rdf_r, rdf_g, _speed(runs, reference_msteps))


def _curve_variance(runs: list[RunAnalysis], pair: str) -> float:
    """Noise variance of the seed-mean g(r) in units of k^2 (see :func:`rdf_noise_floor`):
    one run of n frames contributes 1/n, a mean over n_s runs (1/n_s^2) sum 1/n_i."""
    return sum(1.0 / len(run.rdfs[pair].g_frames) for run in runs) / len(runs) ** 2


def rdf_window(reference_runs: list[RunAnalysis], pair: str, n_bins: int) -> slice:
    """Bins the IAD integrates: from the first r where an ideal gas would put at least one
    pair per bin per frame, to ``n_bins``.

    Below that, g(r) is a few single counts divided by a tiny shell volume: one close
    contact gives a spike of hundreds that would dominate both the IAD and its noise
    floor (for water this is r < ~0.05 nm, where g is zero anyway).
    """
    start = 0
    for run in reference_runs:
        ideal = run.rdfs[pair].ideal_counts
        if ideal is not None and np.any(ideal[:n_bins] >= 1.0):
            start = max(start, int(np.argmax(ideal[:n_bins] >= 1.0)))
    return slice(start, n_bins)


def rdf_noise_amplitude(reference_runs: list[RunAnalysis], pair: str,
                        window: slice) -> tuple[float, str]:
    """Noise amplitude k of the reference RDF: IAD(noise) ~ k sqrt(1/n_1 + 1/n_2).

    Two g(r) curves averaged over n_1 and n_2 frames of the same system differ by
    sampling noise alone by an IAD proportional to sqrt(1/n_1 + 1/n_2). k is measured on
    the reference itself: every pair of reference seeds (captures seed-to-seed variation)
    and the two halves of every reference run (frame noise), averaged.
    """
    samples = []
    for a, b in itertools.combinations(reference_runs, 2):
        ra, rb = a.rdfs[pair], b.rdfs[pair]
        iad = integrated_absolute_difference(ra.r[window], ra.g[window], rb.g[window])
        samples.append(iad / math.sqrt(1.0 / len(ra.g_frames) + 1.0 / len(rb.g_frames)))
    for run in reference_runs:
        rdf = run.rdfs[pair]
        if len(rdf.g_frames) < 2:
            continue
        n_first = len(rdf.g_frames) // 2
        first, second = rdf.g_frames[:n_first].mean(0), rdf.g_frames[n_first:].mean(0)
        iad = integrated_absolute_difference(rdf.r[window], first[window], second[window])
        samples.append(iad / math.sqrt(1.0 / n_first + 1.0 / (len(rdf.g_frames) - n_first)))
    if not samples:
        return math.nan, "no reference noise estimate (single-frame reference)"
    n_ref = len(reference_runs)
    method = (f"{n_ref * (n_ref - 1) // 2} {reference_runs[0].run.policy} seed pair(s) + "
              f"halves of {n_ref} run(s)")
    return float(np.mean(samples)), method


def rdf_noise_floor(reference_runs: list[RunAnalysis], arm_runs: list[RunAnalysis],
                    pair: str, window: slice) -> tuple[float, str]:
    """Expected IAD between the arm's and the reference's seed-mean RDFs from noise alone.

    floor = k * sqrt(var_arm + var_ref) with k from :func:`rdf_noise_amplitude` and the
    variances from the frame counts (:func:`_curve_variance`); this assumes the arm's
    per-frame noise equals the reference's (same system and frame interval).
    """
    k, method = rdf_noise_amplitude(reference_runs, pair, window)
    variance = _curve_variance(arm_runs, pair) + _curve_variance(reference_runs, pair)
    return k * math.sqrt(variance), method


def _rdf_verdicts(arm: PolicySummary, reference: PolicySummary,
                  factor: float) -> dict[str, RDFVerdict]:
    verdicts = {}
    for pair in reference.rdf_g:
        if pair not in arm.rdf_g:
            continue
        window = rdf_window(reference.runs, pair,
                            min(len(arm.rdf_g[pair]), len(reference.rdf_g[pair])))
        iad = integrated_absolute_difference(reference.rdf_r[pair][window],
                                             arm.rdf_g[pair][window],
                                             reference.rdf_g[pair][window])
        floor, method = rdf_noise_floor(reference.runs, arm.runs, pair, window)
        ratio = iad / floor if floor > 0 else (math.nan if math.isnan(floor) else math.inf)
        r_min = window.start * reference.runs[0].rdfs[pair].bin_width
        within = None if math.isnan(ratio) else bool(ratio <= factor)
        verdicts[pair] = RDFVerdict(iad, floor, ratio, within, method, r_min)
    return verdicts


def _consistency_warnings(policies: dict[str, PolicySummary]) -> list[str]:
    warnings = []
    runs = [run for s in policies.values() for run in s.runs]
    for key in ("ensemble", "temperature_K", "pressure_bar", "n_atoms", "timestep_fs"):
        values = {str(run.run.manifest.get(key)) for run in runs}
        if len(values) > 1:
            warnings.append(f"arms differ in {key} ({', '.join(sorted(values))}): differences "
                            "may not be due to precision alone.")
    devices = {str(run.speed["device"]) for run in runs}
    if len(devices) > 1:
        warnings.append(f"speeds come from different devices ({', '.join(sorted(devices))}); "
                        "speed-ups mix hardware and precision.")
    for run in runs:
        warnings += run.warnings
    return warnings


def compare_analyses(analyses: list[RunAnalysis], reference: str = "fp64",
                     level: float = DEFAULT_LEVEL, rdf_factor: float = DEFAULT_RDF_FACTOR,
                     failures: dict[str, list[str]] | None = None) -> Comparison:
    """Compare analysed runs, grouped by policy, against the ``reference`` policy."""
    groups: dict[str, list[RunAnalysis]] = {}
    for analysis in analyses:
        groups.setdefault(analysis.run.policy, []).append(analysis)
    failures = failures or {}
    if reference not in groups:
        found = sorted(set(groups) | set(failures), key=policy_sort_key)
        reason = f" (its runs failed: {'; '.join(failures[reference])})" \
            if reference in failures else ""
        raise ValueError(f"no analysable run of the reference policy {reference!r}{reason}; "
                         f"policies found: {', '.join(found) or 'none'}. Pass --reference "
                         "with one of them, or run the fp64 arm.")
    ref_summary = summarize_policy(reference, groups[reference])
    ref_msteps = ref_summary.speed["msteps_per_day"]
    ref_summary.speed["speedup"] = 1.0 if math.isfinite(ref_msteps) else math.nan
    policies = {reference: ref_summary}
    for policy in sorted(groups, key=policy_sort_key):
        if policy != reference:
            policies[policy] = summarize_policy(policy, groups[policy], ref_msteps)
    for policy, reasons in failures.items():
        if policy in policies:
            policies[policy].failed_runs = list(reasons)
    differences = {
        policy: {name: compare_estimates(estimate, ref_summary.estimates[name], level)
                 for name, estimate in summary.estimates.items()
                 if name in ref_summary.estimates}
        for policy, summary in policies.items() if policy != reference}
    rdf_verdicts = {policy: _rdf_verdicts(summary, ref_summary, rdf_factor)
                    for policy, summary in policies.items() if policy != reference}
    ref_floor = {pair: rdf_noise_floor(ref_summary.runs, ref_summary.runs, pair,
                                       rdf_window(ref_summary.runs, pair,
                                                  len(ref_summary.rdf_g[pair])))
                 for pair in ref_summary.rdf_g}
    warnings = _consistency_warnings(policies)
    for policy, reasons in failures.items():
        warnings += [f"{policy}: {reason}" for reason in reasons]
    unanalysable = {p: r for p, r in failures.items() if p not in policies}
    return Comparison(reference, level, rdf_factor, policies, differences, rdf_verdicts,
                      ref_floor, warnings, unanalysable)


def analyze_arms(arms_dir: str | Path, options: AnalysisOptions | None = None
                 ) -> tuple[list[RunAnalysis], dict[str, list[str]]]:
    """Analyse every run under ``arms_dir``; runs that cannot be analysed are collected
    per policy with the reason instead of stopping the whole comparison."""
    analyses, failures = [], {}
    for policy, runs in group_by_policy(find_runs(arms_dir)).items():
        for run in runs:
            try:
                analyses.append(analyze_run(run, options))
            except (ValueError, FileNotFoundError) as error:
                failures.setdefault(policy, []).append(f"{run.name}: {error}")
    return analyses, failures


def compare_arms(arms_dir: str | Path, reference: str = "fp64",
                 options: AnalysisOptions | None = None, level: float = DEFAULT_LEVEL,
                 rdf_factor: float = DEFAULT_RDF_FACTOR) -> Comparison:
    """Analyse every run under ``arms_dir`` and compare each policy with ``reference``."""
    analyses, failures = analyze_arms(arms_dir, options)
    return compare_analyses(analyses, reference, level, rdf_factor, failures)
