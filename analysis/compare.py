"""Every precision arm against the FP64 reference: differences, uncertainties, verdicts.

Runs are grouped by policy; seeds of one policy are combined (see
:func:`uncertainty.combine_seeds`: within-run SEM propagated, or the seed-to-seed spread
when larger). Each observable with a margin (:mod:`.margins`) gets a three-way verdict
(:mod:`.equivalence`): TOST against the margin, Holm-corrected over the arm's observables.
An observable the data cannot support (:mod:`.support`) in the arm *or* the reference is
never called equivalent.

RDFs are compared by their integrated absolute difference (IAD) over the range where an
ideal gas would put at least one pair per bin per frame. Its noise is measured on the
data: per bin, the SEM from blocks of frames within each run combined with the spread
between seeds, for the arm and for the reference (the reference's own frame-to-frame and
seed-to-seed floor). Noise alone gives an IAD of sqrt(2/pi) * sum_r dr sqrt(s_arm^2 +
s_ref^2) (the noise floor). For equivalence the IAD's standard error is that of its linear
part: every frame's g(r) is projected on the sign of the observed difference, and that
per-frame series gets the usual correlated-data SEM and seed combination.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import support
from .analyze import AnalysisOptions, RunAnalysis, analyze_run, observable_label
from .equivalence import (DEFAULT_ALPHA, DIFFERENT, EQUIVALENT, INCONCLUSIVE, Verdict,
                          decide, rdf_verdict, scalar_verdict)
from .margins import MARGINS, RDF_PREFIX, Margin, margin_for
from .observables import integrated_absolute_difference
from .rundir import find_runs, group_by_policy
from .timeseries import mean_estimate
from .uncertainty import Estimate, combine_seeds, welch_satterthwaite

POLICY_ORDER = ("fp64", "fp32", "tf32", "bf16", "fp16")
RDF_BLOCKS = 8  # blocks of frames for the per-bin SEM of g(r)
VERDICTS = (EQUIVALENT, DIFFERENT, INCONCLUSIVE)


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
    rdf_sem: dict[str, np.ndarray]  # per-bin SEM of the seed mean (blocks, seed spread)
    speed: dict[str, Any]
    limitations: dict[str, list[str]] = field(default_factory=dict)  # observable -> messages
    failed_runs: list[str] = field(default_factory=list)  # "name: reason"

    @property
    def n_seeds(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int | None]:
        return [run.run.seed for run in self.runs]

    @property
    def production_ps_per_seed(self) -> float:
        return float(np.mean([run.production_ps for run in self.runs]))

    @property
    def kept_ps_per_seed(self) -> float:
        return float(np.mean([run.kept_ps for run in self.runs]))

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
class RDFComparison:
    """The numbers behind one pair's verdict."""

    iad: float  # nm
    noise_floor: float  # nm, IAD from noise alone (per-bin SEMs of arm and reference)
    sigma: float  # standard error of the IAD's linear part
    dof: float
    r_min_nm: float
    reference_seed_floor: float = math.nan  # mean IAD between reference seeds, scaled

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Comparison:
    """The full comparison; ``verdicts[policy][column]`` ('rdf:O-O' for RDFs)."""

    reference: str
    alpha: float
    margins: dict[str, Margin]
    policies: dict[str, PolicySummary]
    verdicts: dict[str, dict[str, Verdict]]
    rdf: dict[str, dict[str, RDFComparison]]
    speed_notes: dict[str, str] = field(default_factory=dict)  # policy -> why unreliable
    warnings: list[str] = field(default_factory=list)
    unanalysable: dict[str, list[str]] = field(default_factory=dict)  # policy -> reasons

    @property
    def arms(self) -> list[str]:
        """Policies other than the reference, in table order."""
        return [p for p in self.policies if p != self.reference]

    def observables(self) -> list[str]:
        names: list[str] = []
        for summary in self.policies.values():
            names += [n for n in summary.estimates if n not in names]
        return names

    def rdf_pairs(self) -> list[str]:
        return list(self.policies[self.reference].rdf_g)

    def verdict_columns(self) -> list[str]:
        columns: list[str] = []
        for verdicts in self.verdicts.values():
            columns += [c for c in verdicts if c not in columns]
        order = {name: i for i, name in enumerate(self.observables()
                                                  + [RDF_PREFIX + p for p in self.rdf_pairs()])}
        return sorted(columns, key=lambda c: order.get(c, len(order)))

    def verdict(self, policy: str, column: str) -> Verdict | None:
        return self.verdicts.get(policy, {}).get(column)

    def by_verdict(self, policy: str) -> dict[str, list[str]]:
        """{'equivalent': [...], 'different': [...], 'inconclusive': [...]} for one arm."""
        out: dict[str, list[str]] = {v: [] for v in VERDICTS}
        for column in self.verdict_columns():
            verdict = self.verdict(policy, column)
            if verdict is not None:
                out[verdict.verdict].append(column)
        return out

    def limitations(self) -> list[tuple[str, str, str]]:
        """(policy, column, message) for every observable the data cannot support."""
        out = []
        for policy in self.policies:
            for column in self.verdict_columns():
                verdict = self.verdict(policy, column)
                if verdict is not None:
                    out += [(policy, column, message) for message in verdict.limitations]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "openmm-mace-lp/comparison/2",
            "reference": self.reference,
            "alpha": self.alpha,
            "criteria": criteria_text(self.alpha, self.reference),
            "margins": margins_record(self.margins),
            "policies": {
                policy: {
                    "runs": [run.run.name for run in s.runs],
                    "seeds": s.seeds,
                    "production_ps_per_seed": s.production_ps_per_seed,
                    "kept_ps_per_seed": s.kept_ps_per_seed,
                    "failed_runs": s.failed_runs,
                    "status": s.status,
                    "observables": {name: {"label": observable_label(name)[0],
                                           "unit": observable_label(name)[1], **e.to_dict(),
                                           "error": "SEM"}
                                    for name, e in s.estimates.items()},
                    "limitations": s.limitations,
                    "speed": s.speed,
                    "speed_note": self.speed_notes.get(policy),
                    "equilibration_t0_ps": {run.run.name: run.equilibration["t0_ps"]
                                            for run in s.runs},
                } for policy, s in self.policies.items()},
            "verdicts": {p: {c: v.to_dict() for c, v in verdicts.items()}
                         for p, verdicts in self.verdicts.items()},
            "rdf": {p: {pair: r.to_dict() for pair, r in pairs.items()}
                    for p, pairs in self.rdf.items()},
            "unanalysable_policies": self.unanalysable,
            "warnings": self.warnings,
        }


def margin_unit(name: str, margin: Margin) -> str:
    """'' for a relative margin, else the observable's unit (nm for the RDF IAD)."""
    if margin.relative:
        return ""
    return "nm" if name.startswith("rdf") else observable_label(name)[1]


def margins_record(margins: dict[str, Margin]) -> dict[str, Any]:
    return {name: {"value": m.value, "relative": m.relative, "unit": margin_unit(name, m),
                   "source": m.source} for name, m in margins.items()}


def criteria_text(alpha: float, reference: str) -> str:
    """The decision rule, stated once in every output."""
    return (f"Equivalent: the two one-sided tests (TOST) show |arm - {reference}| < margin "
            f"(the {100 * (1 - 2 * alpha):g}% interval lies inside +-margin), Holm-corrected "
            f"over the arm's observables at alpha = {alpha:g}, and the data support the "
            "number (no limitation). Different: the difference from zero is significant "
            f"(two-sided, Holm-corrected at {alpha:g}) and equivalence is not shown. "
            "Inconclusive: neither; the extra simulation time that would decide it at the "
            "observed noise is given. Errors are SEMs: statistical inefficiency / blocking "
            "within a run, the larger of the propagated SEM and the seed-to-seed SD/sqrt(n) "
            "across seeds, Student t with Welch-Satterthwaite dof. RDFs: integrated absolute "
            "difference (IAD) against a margin in nm, with the reference's own frame and "
            "seed noise as the yardstick.")


# --------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------


def _interval(run: RunAnalysis) -> tuple[datetime, datetime] | None:
    manifest = run.run.manifest
    try:
        start = datetime.fromisoformat(str(manifest["started"]))
        end = datetime.fromisoformat(str(manifest["updated"]))
    except (KeyError, ValueError, TypeError):
        return None
    return start, end


def _device_key(run: RunAnalysis) -> tuple[str, str, str]:
    manifest = run.run.manifest
    properties = manifest.get("platform_properties") or {}
    index = str(properties.get("DeviceIndex", manifest.get("device_index", "")))
    return str(manifest.get("host")), str(manifest.get("device")), index


def shared_device_notes(policies: dict[str, "PolicySummary"]) -> dict[str, str]:
    """Policies whose runs overlapped in time with another policy's on the same device.

    Two processes on one card (or one CPU) slow each other down by an amount that depends
    on what the other does, so speed-ups between them mean little. Runs are taken to have
    run from ``started`` to ``updated`` of their manifests; runs without both are not
    judged.
    """
    runs = [(policy, run) for policy, s in policies.items() for run in s.runs]
    notes: dict[str, set[str]] = {}
    for (p1, r1), (p2, r2) in itertools.combinations(runs, 2):
        if p1 == p2 or _device_key(r1) != _device_key(r2):
            continue
        a, b = _interval(r1), _interval(r2)
        if a is None or b is None or not (a[0] < b[1] and b[0] < a[1]):
            continue
        notes.setdefault(p1, set()).add(r2.run.name)
        notes.setdefault(p2, set()).add(r1.run.name)
    out = {}
    for policy, others in notes.items():
        device = _device_key(policies[policy].runs[0])[1]
        out[policy] = (f"unreliable: ran at the same time as {', '.join(sorted(others))} on "
                       f"{device} ({_device_key(policies[policy].runs[0])[0]})")
    return out


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


# --------------------------------------------------------------------------------------
# Seeds of one policy
# --------------------------------------------------------------------------------------


def _bin_sem(g_frames: np.ndarray, n_blocks: int = RDF_BLOCKS) -> np.ndarray:
    """Per-bin SEM of a run's frame-mean g(r) from contiguous blocks of frames."""
    n = min(n_blocks, len(g_frames))
    if n < 2:
        return np.full(g_frames.shape[1], math.nan)
    blocks = np.stack([part.mean(axis=0) for part in np.array_split(g_frames, n)])
    return blocks.std(axis=0, ddof=1) / math.sqrt(n)


def seed_mean_sem(means: np.ndarray, sems: np.ndarray) -> np.ndarray:
    """Per-bin version of :func:`combine_seeds`: max(propagated SEM, seed SD/sqrt(n))."""
    n = len(means)
    propagated = np.sqrt(np.sum(sems ** 2, axis=0)) / n
    if n < 2:
        return propagated
    spread = np.std(means, axis=0, ddof=1) / math.sqrt(n)
    return np.maximum(propagated, spread)


def _run_limitation_messages(run: RunAnalysis, name: str) -> list[str]:
    if name.startswith(RDF_PREFIX):
        pair = name[len(RDF_PREFIX):]
        items = run.rdf_limitations.get(pair, [])
    elif name in run.scalars:
        items = run.scalars[name].limitations
    else:
        items = [run.missing[name]] if name in run.missing else []
    return [f"{run.run.name}: {item.message}" for item in items]


def summarize_policy(policy: str, runs: list[RunAnalysis],
                     reference_msteps: float | None = None) -> PolicySummary:
    """Combine the seeds of one policy; collect what its data cannot support."""
    names: list[str] = []
    for run in runs:
        names += [n for n in run.scalars if n not in names]
    estimates = {}
    for name in names:
        per_seed = [run.scalars[name].estimate for run in runs if name in run.scalars]
        if per_seed:
            estimates[name] = combine_seeds(per_seed)
    rdf_r, rdf_g, rdf_sem = {}, {}, {}
    pairs = [p for p in runs[0].rdfs if all(p in run.rdfs for run in runs)]
    for pair in pairs:
        n = min(len(run.rdfs[pair].g) for run in runs)
        rdf_r[pair] = runs[0].rdfs[pair].r[:n]
        means = np.array([run.rdfs[pair].g[:n] for run in runs])
        sems = np.array([_bin_sem(run.rdfs[pair].g_frames[:, :n]) for run in runs])
        rdf_g[pair] = means.mean(axis=0)
        rdf_sem[pair] = seed_mean_sem(means, sems)
    limitations: dict[str, list[str]] = {}
    for name in names + [RDF_PREFIX + p for p in pairs]:
        label = observable_label(name)[0] if not name.startswith(RDF_PREFIX) else \
            f"g({name[len(RDF_PREFIX):]})"
        messages = [m for run in runs for m in _run_limitation_messages(run, name)]
        messages += [item.message for item in support.seed_limitation(name, label, len(runs),
                                                                      policy)]
        if messages:
            limitations[name] = list(dict.fromkeys(messages))
    return PolicySummary(policy, runs, estimates, rdf_r, rdf_g, rdf_sem,
                         _speed(runs, reference_msteps), limitations)


# --------------------------------------------------------------------------------------
# RDFs
# --------------------------------------------------------------------------------------


def rdf_window(reference_runs: list[RunAnalysis], pair: str, n_bins: int) -> slice:
    """Bins the IAD integrates: from the first r where an ideal gas would put at least one
    pair per bin per frame, to ``n_bins``.

    Below that, g(r) is a few single counts divided by a tiny shell volume: one close
    contact gives a spike of hundreds that would dominate both the IAD and its noise.
    """
    start = 0
    for run in reference_runs:
        ideal = run.rdfs[pair].ideal_counts
        if ideal is not None and np.any(ideal[:n_bins] >= 1.0):
            start = max(start, int(np.argmax(ideal[:n_bins] >= 1.0)))
    return slice(start, n_bins)


def _projection(summary: PolicySummary, pair: str, weights: np.ndarray,
                window: slice) -> Estimate:
    """Seed-combined mean of sum_r w(r) g_f(r) dr, each run's frames a correlated series."""
    per_seed = []
    for run in summary.runs:
        rdf = run.rdfs[pair]
        series = rdf.g_frames[:, window] @ weights * rdf.bin_width
        if len(series) >= 2 and np.ptp(series) > 0:
            per_seed.append(mean_estimate(series).estimate)
        else:
            per_seed.append(Estimate(float(series.mean()), math.nan, math.nan, "one frame"))
    return combine_seeds(per_seed)


def reference_seed_floor(reference: PolicySummary, arm: PolicySummary, pair: str,
                         window: slice) -> float:
    """The reference's own seed-to-seed IAD, scaled to the frame counts compared.

    IAD between two seeds of n_1 and n_2 frames ~ k sqrt(1/n_1 + 1/n_2); k is averaged
    over the reference's seed pairs and applied to the two seed means compared. NaN with a
    single reference seed.
    """
    samples = []
    for a, b in itertools.combinations(reference.runs, 2):
        ra, rb = a.rdfs[pair], b.rdfs[pair]
        n = min(window.stop, len(ra.g), len(rb.g))
        iad = integrated_absolute_difference(ra.r[window.start:n], ra.g[window.start:n],
                                             rb.g[window.start:n])
        samples.append(iad / math.sqrt(1.0 / len(ra.g_frames) + 1.0 / len(rb.g_frames)))
    if not samples:
        return math.nan

    def variance(runs: list[RunAnalysis]) -> float:
        return sum(1.0 / len(run.rdfs[pair].g_frames) for run in runs) / len(runs) ** 2

    return float(np.mean(samples)) * math.sqrt(variance(arm.runs) + variance(reference.runs))


def compare_rdf(arm: PolicySummary, reference: PolicySummary, pair: str) -> RDFComparison:
    """IAD of the seed-mean g(r) of an arm to the reference's, with its noise."""
    n = min(len(arm.rdf_g[pair]), len(reference.rdf_g[pair]))
    window = rdf_window(reference.runs, pair, n)
    difference = arm.rdf_g[pair][window] - reference.rdf_g[pair][window]
    r = reference.rdf_r[pair][window]
    iad = integrated_absolute_difference(r, arm.rdf_g[pair][window],
                                         reference.rdf_g[pair][window])
    bin_width = reference.runs[0].rdfs[pair].bin_width
    noise = np.sqrt(arm.rdf_sem[pair][window] ** 2 + reference.rdf_sem[pair][window] ** 2)
    floor = float(math.sqrt(2.0 / math.pi) * np.sum(noise) * bin_width)
    weights = np.sign(difference)
    arm_p = _projection(arm, pair, weights, window)
    ref_p = _projection(reference, pair, weights, window)
    variances = [arm_p.sem ** 2, ref_p.sem ** 2]
    sigma = math.sqrt(sum(variances))
    dof = welch_satterthwaite(variances, [arm_p.dof, ref_p.dof])
    seed_floor = reference_seed_floor(reference, arm, pair, window)
    return RDFComparison(iad, floor, sigma, dof, window.start * bin_width, seed_floor)


# --------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------


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


def _verdicts_of(arm: PolicySummary, reference: PolicySummary, margins: dict[str, Margin],
                 alpha: float) -> tuple[dict[str, Verdict], dict[str, RDFComparison]]:
    verdicts: dict[str, Verdict] = {}
    rdfs: dict[str, RDFComparison] = {}
    for name, estimate in arm.estimates.items():
        margin = margin_for(name, margins)
        if margin is None or name not in reference.estimates:
            continue
        ref = reference.estimates[name]
        unit = observable_label(name)[1]
        sigma = math.sqrt(estimate.sem ** 2 + ref.sem ** 2)
        dof = welch_satterthwaite([estimate.sem ** 2, ref.sem ** 2], [estimate.dof, ref.dof])
        verdicts[name] = scalar_verdict(name, estimate.mean - ref.mean, sigma, dof,
                                        margin.absolute(ref.mean), margin.describe(unit), alpha)
    for pair in reference.rdf_g:
        column = RDF_PREFIX + pair
        margin = margin_for(column, margins)
        if pair not in arm.rdf_g or margin is None:
            continue
        rdfs[pair] = result = compare_rdf(arm, reference, pair)
        verdicts[column] = rdf_verdict(column, result.iad, result.sigma, result.dof,
                                       result.noise_floor, margin.value,
                                       margin.describe("nm"), alpha)
    for column, verdict in verdicts.items():
        own = arm.limitations.get(column, [])
        theirs = reference.limitations.get(column, [])
        if not (math.isfinite(verdict.sigma) and verdict.sigma > 0):
            own = own + ["no error estimate for the difference (too few samples or frames)"]
        verdict.limitations = list(dict.fromkeys(own + theirs))
    decide(list(verdicts.values()), alpha)
    kept = float(np.mean([arm.kept_ps_per_seed, reference.kept_ps_per_seed]))
    for verdict in verdicts.values():
        if math.isfinite(verdict.extra_factor):
            verdict.extra_ps_per_seed = (verdict.extra_factor - 1.0) * kept
    return verdicts, rdfs


def compare_analyses(analyses: list[RunAnalysis], reference: str = "fp64",
                     alpha: float = DEFAULT_ALPHA, margins: dict[str, Margin] | None = None,
                     failures: dict[str, list[str]] | None = None) -> Comparison:
    """Compare analysed runs, grouped by policy, against the ``reference`` policy."""
    margins = dict(MARGINS) if margins is None else margins
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
    verdicts, rdf = {}, {}
    for policy, summary in policies.items():
        if policy != reference:
            verdicts[policy], rdf[policy] = _verdicts_of(summary, ref_summary, margins, alpha)
    warnings = _consistency_warnings(policies)
    for policy, reasons in failures.items():
        warnings += [f"{policy}: {reason}" for reason in reasons]
    unanalysable = {p: r for p, r in failures.items() if p not in policies}
    return Comparison(reference, alpha, margins, policies, verdicts, rdf,
                      shared_device_notes(policies), warnings, unanalysable)


def analyze_arms(arms_dir: str | Path | Sequence[str | Path], options: AnalysisOptions | None = None
                 ) -> tuple[list[RunAnalysis], dict[str, list[str]]]:
    """Analyse every run under ``arms_dir`` (one directory or several); runs that cannot be
    analysed are collected per policy with the reason instead of stopping the whole comparison."""
    analyses, failures = [], {}
    for policy, runs in group_by_policy(find_runs(arms_dir)).items():
        for run in runs:
            try:
                analyses.append(analyze_run(run, options))
            except (ValueError, FileNotFoundError) as error:
                failures.setdefault(policy, []).append(f"{run.name}: {error}")
    return analyses, failures


def compare_arms(arms_dir: str | Path | Sequence[str | Path], reference: str = "fp64",
                 options: AnalysisOptions | None = None, alpha: float = DEFAULT_ALPHA,
                 margins: dict[str, Margin] | None = None) -> Comparison:
    """Analyse every run under ``arms_dir`` and compare each policy with ``reference``."""
    analyses, failures = analyze_arms(arms_dir, options)
    return compare_analyses(analyses, reference, alpha, margins, failures)
