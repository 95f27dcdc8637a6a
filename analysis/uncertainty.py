"""Estimates with honest uncertainties and their combination over seeds.

Every estimate carries a standard error *and* the effective number of degrees of freedom
behind it: an error from 8 blocks is itself uncertain, and the verdict's critical value
(Student t) must widen accordingly. Uncertainties are combined with the
Welch-Satterthwaite approximation. Verdicts against a reference are in :mod:`.equivalence`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np


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
