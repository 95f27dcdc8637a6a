"""Estimates with honest uncertainties, their combination over seeds, and verdicts.

Every estimate carries a standard error *and* the effective number of degrees of freedom
behind it: an error from 8 blocks is itself uncertain, and the verdict's critical value
(Student t) must widen accordingly. Uncertainties are combined with the
Welch-Satterthwaite approximation.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

DEFAULT_LEVEL = 0.99


@dataclass(frozen=True)
class Estimate:
    """A mean with its standard error (``sem``) and the effective degrees of freedom."""

    mean: float
    sem: float
    dof: float = math.inf
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Estimate":
        dof = data.get("dof")
        return cls(mean=float(data["mean"]), sem=float(data["sem"]),
                   dof=math.inf if dof is None else float(dof), method=data.get("method", ""))


def welch_satterthwaite(variances: Sequence[float], dofs: Sequence[float]) -> float:
    """Effective dof of a sum of variance terms, each estimated with its own dof."""
    total = float(sum(variances))
    if total <= 0.0:
        return math.inf
    denominator = sum(v * v / d for v, d in zip(variances, dofs) if v > 0 and math.isfinite(d))
    return math.inf if denominator == 0.0 else total * total / denominator


def t_critical(level: float, dof: float) -> float:
    """Two-sided critical value for confidence ``level`` (Student t; normal for dof=inf)."""
    from scipy import stats

    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie between 0 and 1, got {level}.")
    quantile = 0.5 + level / 2.0
    if not math.isfinite(dof) or dof > 1e6:
        return float(stats.norm.ppf(quantile))
    return float(stats.t.ppf(quantile, max(dof, 1.0)))


def combine_seeds(estimates: Sequence[Estimate]) -> Estimate:
    """Combine independent runs (seeds) of one precision arm into one estimate.

    The mean is the plain average of the seed means. Its error is the larger of
    (a) the within-run errors propagated, sqrt(sum sem_i^2)/n, and (b) the seed-to-seed
    spread SD/sqrt(n). (b) catches what (a) misses (e.g. seeds trapped in different
    states) but has only n-1 dof; the excess of (b) over (a) is given n-1 dof so that
    the total dof moves smoothly from (a)'s to n-1 (Welch-Satterthwaite).
    """
    if not estimates:
        raise ValueError("no estimates to combine.")
    if len(estimates) == 1:
        return estimates[0]
    n = len(estimates)
    means = np.array([e.mean for e in estimates], dtype=float)
    var_prop = sum(e.sem ** 2 for e in estimates) / n ** 2
    dof_prop = welch_satterthwaite([e.sem ** 2 / n ** 2 for e in estimates],
                                   [e.dof for e in estimates])
    var_spread = float(np.var(means, ddof=1)) / n
    if var_spread <= var_prop:
        return Estimate(float(means.mean()), math.sqrt(var_prop), dof_prop,
                        f"{n} seeds; propagated within-run SEM (>= seed spread)")
    dof = welch_satterthwaite([var_prop, var_spread - var_prop], [dof_prop, n - 1])
    return Estimate(float(means.mean()), math.sqrt(var_spread), dof,
                    f"{n} seeds; seed-to-seed SD/sqrt(n) (> propagated within-run SEM)")


@dataclass(frozen=True)
class Difference:
    """Difference of an arm to the reference with its combined uncertainty and verdict."""

    delta: float  # arm - reference
    sigma: float  # combined standard error
    dof: float
    level: float
    threshold: float  # t_crit * sigma: |delta| above it is outside noise
    z: float  # delta / sigma
    relative: float  # delta / |reference mean|
    within_noise: bool | None  # None: no usable uncertainty, cannot judge

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_estimates(arm: Estimate, reference: Estimate,
                      level: float = DEFAULT_LEVEL) -> Difference:
    """Judge ``arm - reference`` against its combined uncertainty at confidence ``level``.

    Within noise means |delta| <= t_{(1+level)/2, dof} * sqrt(sem_arm^2 + sem_ref^2), with
    dof from Welch-Satterthwaite: a two-sided test of "same mean" at 1 - level. Without a
    finite uncertainty (e.g. a single-frame estimate) the verdict is None, not a guess.
    """
    delta = arm.mean - reference.mean
    variances = [arm.sem ** 2, reference.sem ** 2]
    sigma = math.sqrt(sum(variances))
    relative = delta / abs(reference.mean) if reference.mean != 0 else math.nan
    if not (math.isfinite(sigma) and math.isfinite(delta)):
        return Difference(delta, sigma, math.nan, level, math.nan, math.nan, relative, None)
    dof = welch_satterthwaite(variances, [arm.dof, reference.dof])
    threshold = t_critical(level, dof) * sigma
    if sigma > 0:
        z = delta / sigma
    else:
        z = 0.0 if delta == 0 else math.copysign(math.inf, delta)
    within = bool(abs(delta) <= threshold)
    return Difference(delta, sigma, dof, level, threshold, z, relative, within)
