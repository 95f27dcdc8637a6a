"""Seed combination and Welch-Satterthwaite against hand-computed values; the combined
error of seeds drawn from one AR(1) distribution covers the truth at the stated rate.
(Verdicts against a reference: test_analysis_equivalence.py.)"""
from __future__ import annotations

import math

import pytest
from scipy import stats

from openmm_mace_lp.analysis.timeseries import mean_estimate
from openmm_mace_lp.analysis.uncertainty import (Estimate, combine_seeds, t_critical,
                                                 welch_satterthwaite)
from synthetic_runs import ar1_stationary


def test_welch_satterthwaite_hand_computed():
    # (4 + 1)^2 / (4^2/10 + 1^2/5) = 25 / 1.8
    assert welch_satterthwaite([4.0, 1.0], [10.0, 5.0]) == pytest.approx(25 / 1.8)
    assert welch_satterthwaite([4.0, 1.0], [math.inf, math.inf]) == math.inf
    assert welch_satterthwaite([0.0, 0.0], [3.0, 3.0]) == math.inf


def test_t_critical_matches_tables():
    assert t_critical(0.99, math.inf) == pytest.approx(2.5758, abs=1e-4)
    assert t_critical(0.99, 4) == pytest.approx(4.6041, abs=1e-4)
    assert t_critical(0.95, 10) == pytest.approx(2.2281, abs=1e-4)
    with pytest.raises(ValueError):
        t_critical(1.5, 3)


def test_combine_seeds_uses_propagated_error_when_seeds_agree():
    seeds = [Estimate(1.0, 0.3, 100.0), Estimate(1.1, 0.4, 100.0)]
    combined = combine_seeds(seeds)
    assert combined.mean == pytest.approx(1.05)
    # sqrt(0.09 + 0.16) / 2 = 0.25 > seed spread sd/sqrt(2) = 0.05
    assert combined.sem == pytest.approx(0.25)
    assert combined.dof == pytest.approx(0.0625 ** 2 / ((0.0225 ** 2 + 0.04 ** 2) / 100))
    assert "propagated" in combined.method


def test_combine_seeds_uses_spread_when_seeds_disagree():
    seeds = [Estimate(0.0, 0.01, 1e6), Estimate(1.0, 0.01, 1e6), Estimate(2.0, 0.01, 1e6)]
    combined = combine_seeds(seeds)
    assert combined.mean == pytest.approx(1.0)
    assert combined.sem == pytest.approx(1.0 / math.sqrt(3))  # SD = 1
    assert combined.dof == pytest.approx(2.0, rel=1e-3)  # dominated by the 3 seeds
    assert "seed-to-seed" in combined.method


def test_single_seed_is_unchanged():
    estimate = Estimate(2.0, 0.1, 7.0, "x")
    assert combine_seeds([estimate]) is estimate


def _arm(rng, shift: float, n_seeds: int = 2, n: int = 2000, phi: float = 0.9) -> Estimate:
    return combine_seeds([mean_estimate(ar1_stationary(rng, n, phi) + shift).estimate
                          for _ in range(n_seeds)])


@pytest.mark.parametrize("n_seeds", [2, 3])
def test_seed_combined_interval_covers_the_truth(rng, n_seeds):
    """300 seed-combined means of AR(1) seeds around 0: |mean| <= t_99%(dof) SEM in about
    99 % of them (at least the binomial 0.1 % lower bound of a 99 % rate)."""
    trials = 300
    hits = 0
    for _ in range(trials):
        estimate = _arm(rng, 0.0, n_seeds)
        hits += abs(estimate.mean) <= t_critical(0.99, estimate.dof) * estimate.sem
    assert hits >= stats.binom.ppf(0.001, trials, 0.99)
