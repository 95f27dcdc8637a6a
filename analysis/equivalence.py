"""Equivalence, not absence of evidence: TOST, Holm's correction and a three-way verdict.

A t test that fails to reject "same mean" says nothing when the data are few: every arm
"reproduces" the reference. The question is turned around (Schuirmann's two one-sided
tests, TOST): is the difference *shown* to lie inside a practical margin +-M? Combined
with the ordinary test of a difference, each observable gets one of three verdicts
(Lakens, Scheel & Isager, Adv. Methods Pract. Psychol. Sci. 1, 259 (2018)):

- ``equivalent``: TOST rejects |delta| >= M (the 1 - 2 alpha interval lies inside +-M);
- ``different``: the difference from zero is significant and equivalence is not shown;
- ``inconclusive``: neither; :func:`extra_data_factor` says how much more data at the
  observed noise would decide it.

The p values of one arm's observables form one family; Holm's step-down correction
(Scand. J. Statist. 6, 65 (1979)) keeps the chance of any false "equivalent" (and,
separately, of any false "different") within alpha per arm.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from scipy import stats

DEFAULT_ALPHA = 0.05
EQUIVALENT = "equivalent"
DIFFERENT = "different"
INCONCLUSIVE = "inconclusive"
# sqrt(pi/2 - 1): the SD of the integral of |noise| is at most this times its mean (reached
# when the noise of every bin is perfectly correlated); used for the RDF difference test.
ABS_NOISE_SD_BOUND = math.sqrt(math.pi / 2.0 - 1.0)


def _t_cdf(x: float, dof: float) -> float:
    if not math.isfinite(dof) or dof > 1e6:
        return float(stats.norm.cdf(x))
    return float(stats.t.cdf(x, max(dof, 1.0)))


def _t_ppf(q: float, dof: float) -> float:
    if not math.isfinite(dof) or dof > 1e6:
        return float(stats.norm.ppf(q))
    return float(stats.t.ppf(q, max(dof, 1.0)))


def tost_p_value(delta: float, sigma: float, dof: float, margin: float) -> float:
    """p of the two one-sided tests of H0: |delta| >= margin (Student t, ``dof``).

    p = max(P(T >= (delta + M)/sigma), P(T <= (delta - M)/sigma)); equivalence at level
    alpha when p <= alpha, i.e. when the 1 - 2 alpha interval lies inside +-M.
    """
    if not (sigma > 0 and math.isfinite(sigma) and math.isfinite(delta)):
        return math.nan
    p_lower = 1.0 - _t_cdf((delta + margin) / sigma, dof)  # H0: delta <= -M
    p_upper = _t_cdf((delta - margin) / sigma, dof)  # H0: delta >= +M
    return max(p_lower, p_upper)


def difference_p_value(delta: float, sigma: float, dof: float) -> float:
    """Two-sided p of H0: delta = 0."""
    if not (sigma > 0 and math.isfinite(sigma) and math.isfinite(delta)):
        return math.nan
    return 2.0 * (1.0 - _t_cdf(abs(delta) / sigma, dof))


def holm_adjust(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p values (NaN entries stay NaN and do not count).

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max over j <= i of
    min(1, (m - j + 1) p_(j)). Rejecting where adjusted p <= alpha controls the
    family-wise error rate at alpha.
    """
    finite = sorted((p, name) for name, p in p_values.items() if math.isfinite(p))
    m = len(finite)
    adjusted = {name: math.nan for name in p_values}
    running = 0.0
    for rank, (p, name) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[name] = running
    return adjusted


def extra_data_factor(gap: float, sigma: float, dof: float, quantile: float,
                      offset: float = 0.0) -> float:
    """Factor f by which the data must grow so that ``gap >= offset/sqrt(f) + t sigma/sqrt(f)``.

    Errors shrink as 1/sqrt(data) and the degrees of freedom grow with it, so f is solved
    by fixed-point iteration with the t quantile at ``dof * f``. ``gap <= 0``: never.
    """
    if not (gap > 0 and math.isfinite(sigma) and sigma >= 0):
        return math.inf
    factor = 1.0
    for _ in range(50):
        needed = ((offset + _t_ppf(quantile, dof * factor) * sigma) / gap) ** 2
        if abs(needed - factor) <= 1e-6 * max(needed, 1.0):
            return needed
        factor = needed
    return factor


@dataclass
class Verdict:
    """One observable of one arm against the reference."""

    observable: str
    kind: str  # "scalar": delta = arm - reference; "rdf": delta = integrated |difference|
    delta: float
    sigma: float  # standard error of delta (SEM of the difference)
    dof: float
    margin: float  # absolute, in the observable's unit
    margin_text: str
    noise_floor: float = 0.0  # rdf only: the IAD that noise alone gives
    p_equivalence: float = math.nan
    p_difference: float = math.nan
    p_equivalence_holm: float = math.nan
    p_difference_holm: float = math.nan
    ci_low: float = math.nan  # 1 - 2 alpha interval of delta (rdf: [nan, upper bound])
    ci_high: float = math.nan
    verdict: str = INCONCLUSIVE
    limitations: list[str] = field(default_factory=list)  # what the data cannot support
    extra_factor: float = math.nan  # inconclusive: data x this would decide it
    extra_outcome: str = ""  # the verdict the extra data would give at the observed delta
    extra_ps_per_seed: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scalar_verdict(name: str, delta: float, sigma: float, dof: float, margin: float,
                   margin_text: str, alpha: float) -> Verdict:
    """Raw (unadjusted) p values and interval of ``arm - reference`` against +-margin."""
    verdict = Verdict(name, "scalar", delta, sigma, dof, margin, margin_text)
    verdict.p_equivalence = tost_p_value(delta, sigma, dof, margin)
    verdict.p_difference = difference_p_value(delta, sigma, dof)
    if math.isfinite(verdict.p_equivalence):
        half = _t_ppf(1.0 - alpha, dof) * sigma
        verdict.ci_low, verdict.ci_high = delta - half, delta + half
    return verdict


def rdf_verdict(name: str, iad: float, sigma: float, dof: float, noise_floor: float,
                margin: float, margin_text: str, alpha: float) -> Verdict:
    """The integrated absolute difference (IAD) of two g(r) against a margin.

    Equivalence (H0: true IAD >= M): the observed IAD is at least the true one plus a
    zero-mean linear noise term whose standard error is ``sigma`` (the projection of the
    noise on the sign of the observed difference, see :mod:`.compare`), so
    p = P(T <= (IAD - M)/sigma) is conservative. Difference (H0: no true difference): the
    IAD of noise alone has mean ``noise_floor`` and an SD of at most
    ABS_NOISE_SD_BOUND * floor, so p = P(Z >= (IAD - floor) / (0.76 floor)).
    """
    verdict = Verdict(name, "rdf", iad, sigma, dof, margin, margin_text, noise_floor)
    if math.isfinite(iad) and sigma > 0 and math.isfinite(sigma):
        verdict.p_equivalence = _t_cdf((iad - margin) / sigma, dof)
        verdict.ci_high = iad + _t_ppf(1.0 - alpha, dof) * sigma
    if math.isfinite(iad) and noise_floor > 0 and math.isfinite(noise_floor):
        spread = ABS_NOISE_SD_BOUND * noise_floor
        verdict.p_difference = float(stats.norm.sf((iad - noise_floor) / spread))
    return verdict


def decide(verdicts: Sequence[Verdict], alpha: float = DEFAULT_ALPHA) -> None:
    """Holm-adjust one arm's p values and set each verdict (in place).

    An observable with limitations (data that cannot support a number) is never
    ``equivalent``; it may still be ``different``, with its limitations attached.
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha {alpha}: use a significance level such as 0.05.")
    by_name = {v.observable: v for v in verdicts}
    equivalence = holm_adjust({n: v.p_equivalence for n, v in by_name.items()})
    difference = holm_adjust({n: v.p_difference for n, v in by_name.items()})
    m = max(1, sum(math.isfinite(v.p_equivalence) for v in verdicts))
    for name, verdict in by_name.items():
        verdict.p_equivalence_holm = equivalence[name]
        verdict.p_difference_holm = difference[name]
        if verdict.p_equivalence_holm <= alpha and not verdict.limitations:
            verdict.verdict = EQUIVALENT
        elif verdict.p_difference_holm <= alpha:
            verdict.verdict = DIFFERENT
        else:
            verdict.verdict = INCONCLUSIVE
            _project(verdict, alpha / m)


def _project(verdict: Verdict, alpha_each: float) -> None:
    """How much more data (same noise, same observed delta) would make it decisive.

    Bonferroni's alpha/m stands in for Holm's (never stricter), so the factor is an upper
    bound of what is needed. Limitations are not fixed by more data alone.
    """
    if not (math.isfinite(verdict.sigma) and verdict.sigma > 0 and math.isfinite(verdict.delta)):
        return
    if verdict.kind == "scalar":
        size = abs(verdict.delta)
        to_equivalent = extra_data_factor(verdict.margin - size, verdict.sigma, verdict.dof,
                                          1.0 - alpha_each)
        to_different = extra_data_factor(size, verdict.sigma, verdict.dof, 1.0 - alpha_each / 2)
    else:
        floor = verdict.noise_floor if math.isfinite(verdict.noise_floor) else 0.0
        systematic = max(verdict.delta - floor, 0.0)
        to_equivalent = extra_data_factor(verdict.margin - systematic, verdict.sigma,
                                          verdict.dof, 1.0 - alpha_each, offset=floor)
        z = float(stats.norm.ppf(1.0 - alpha_each))
        to_different = ((z * ABS_NOISE_SD_BOUND * floor / systematic) ** 2
                        if systematic > 0 else math.inf)
    factor, outcome = min((to_equivalent, EQUIVALENT), (to_different, DIFFERENT))
    if math.isfinite(factor):
        verdict.extra_factor, verdict.extra_outcome = max(factor, 1.0), outcome
