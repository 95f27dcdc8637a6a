"""Statistical inefficiency, block averaging and equilibration detection on AR(1) series,
whose variance of the mean is known analytically:
var(mean) = sigma^2 / N * (1 + phi) / (1 - phi)   (N >> correlation time).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from openmm_mace_lp.analysis import timeseries as ts
from synthetic_runs import ar1_stationary


def analytic_var_mean(sigma: float, phi: float, n: int, exact: bool = True) -> float:
    """Variance of the mean of n samples of a stationary AR(1) process."""
    if not exact:
        return sigma ** 2 / n * (1 + phi) / (1 - phi)
    t = np.arange(1, n)
    return sigma ** 2 / n * (1 + 2 * np.sum((1 - t / n) * phi ** t))


def test_generator_matches_the_analytic_variance_of_the_mean(rng):
    """Guards the reference itself: 2000 independent series, empirical var of their means."""
    phi, n = 0.8, 1000
    means = ar1_stationary(rng, n, phi, sigma=2.0, size=2000).mean(axis=1)
    expected = analytic_var_mean(2.0, phi, n)
    # var of a sample variance of 2000 normals: relative SD sqrt(2/1999) = 3.2 %
    assert np.var(means, ddof=1) == pytest.approx(expected, rel=0.12)
    assert analytic_var_mean(2.0, phi, n, exact=False) == pytest.approx(expected, rel=0.01)


def test_autocorrelation_of_ar1_decays_as_phi_to_the_t(rng):
    x = ar1_stationary(rng, 200_000, 0.7)
    c = ts.autocorrelation(x)
    assert c[0] == 1.0
    np.testing.assert_allclose(c[1:6], 0.7 ** np.arange(1, 6), atol=0.01)


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.8, 0.95])
def test_statistical_inefficiency_recovers_analytic_g(rng, phi):
    n = 50_000
    expected_g = (1 + phi) / (1 - phi)
    estimates = [ts.statistical_inefficiency(ar1_stationary(rng, n, phi)) for _ in range(8)]
    assert np.mean(estimates) == pytest.approx(expected_g, rel=0.08)


@pytest.mark.parametrize("phi, n", [(0.0, 4000), (0.5, 4000), (0.8, 20_000), (0.95, 40_000)])
def test_both_error_estimates_recover_the_analytic_variance_of_the_mean(rng, phi, n):
    sigma = 3.0
    expected = analytic_var_mean(sigma, phi, n)
    ratios_g, ratios_block, ratios_final = [], [], []
    for _ in range(30):
        result = ts.mean_estimate(ar1_stationary(rng, n, phi, sigma))
        ratios_g.append(result.sem_inefficiency ** 2 / expected)
        ratios_block.append(result.sem_block ** 2 / expected)
        ratios_final.append(result.estimate.sem ** 2 / expected)
    # Each estimate of var(mean) scatters by ~10-25 %; their average over 30 series by < 5 %.
    assert np.mean(ratios_g) == pytest.approx(1.0, abs=0.1)
    assert np.mean(ratios_block) == pytest.approx(1.0, abs=0.15)
    # The reported SEM is the larger of the two: conservative, but not by much.
    assert 0.95 <= np.mean(ratios_final) <= 1.3


def test_block_average_of_white_noise_is_sigma_over_sqrt_n(rng):
    x = rng.normal(scale=2.0, size=8192)
    blocks = ts.block_average(x)
    assert blocks.converged
    assert blocks.sem == pytest.approx(2.0 / math.sqrt(8192), rel=0.2)
    sizes = [level["block_size"] for level in blocks.levels]
    assert sizes[:4] == [1, 2, 4, 8]


def test_block_average_flags_series_too_short_for_its_correlation_time(rng):
    x = ar1_stationary(rng, 200, 0.99)  # tau ~ 100 samples: no plateau reachable
    assert not ts.block_average(x).converged


def test_error_estimate_misses_nothing_for_a_known_mean(rng):
    """Coverage: |mean - true| <= 2.576 SEM in about 99 % of 400 AR(1) series."""
    hits = 0
    for _ in range(400):
        result = ts.mean_estimate(ar1_stationary(rng, 2000, 0.9) + 5.0)
        hits += abs(result.estimate.mean - 5.0) <= 2.576 * result.estimate.sem
    assert hits / 400 >= 0.965


def test_equilibration_detection_cuts_the_transient(rng):
    n, phi = 5000, 0.8
    t = np.arange(n)
    x = ar1_stationary(rng, n, phi) + 20.0 * np.exp(-t / 200.0)
    result = ts.detect_equilibration(x)
    # The transient falls below one marginal SD (1.0) at t = 200 ln 20 ~ 600.
    assert 400 <= result.t0 <= 1500
    assert result.n_eff == pytest.approx((n - result.t0) / result.g)


def test_equilibration_detection_keeps_a_stationary_series(rng):
    result = ts.detect_equilibration(ar1_stationary(rng, 5000, 0.8))
    assert result.t0 <= 0.2 * 5000


def test_constant_series_has_g_one_and_zero_error():
    x = np.full(100, 3.5)
    assert ts.statistical_inefficiency(x) == 1.0
    result = ts.mean_estimate(x)
    assert result.estimate.mean == 3.5 and result.estimate.sem == 0.0


def test_bad_series_are_rejected_with_a_reason():
    with pytest.raises(ValueError, match="at least 2"):
        ts.statistical_inefficiency([1.0])
    with pytest.raises(ValueError, match="NaN"):
        ts.mean_estimate([1.0, np.nan, 2.0])


def test_statistical_inefficiency_agrees_with_pymbar(rng):
    """Ours (Sokal window) and pymbar's (first zero crossing) estimate the same g of AR(1)."""
    pymbar = ts.pymbar_timeseries()
    for phi in (0.5, 0.9):
        ours, theirs = [], []
        for _ in range(6):
            x = ar1_stationary(rng, 20_000, phi)
            ours.append(ts.statistical_inefficiency(x))
            theirs.append(pymbar.statistical_inefficiency(x))
        assert np.mean(ours) == pytest.approx(np.mean(theirs), rel=0.1)
        assert np.mean(theirs) == pytest.approx((1 + phi) / (1 - phi), rel=0.12)


def test_equilibration_search_over_every_origin_is_pymbars(rng):
    """With every origin a candidate and no limit, the cut is pymbar's detect_equilibration
    (its N_eff counts N - t + 1 samples; ours N - t, which moves the optimum by < 1 %)."""
    pymbar = ts.pymbar_timeseries()
    n = 600
    x = ar1_stationary(rng, n, 0.7) + 8.0 * np.exp(-np.arange(n) / 40.0)
    ours = ts.detect_equilibration(x, max_fraction=1.0, n_candidates=n)
    t0, g, _ = pymbar.detect_equilibration(x, fast=True)
    assert abs(ours.t0 - t0) <= 0.01 * n
    assert ours.g == pytest.approx(float(pymbar.statistical_inefficiency(x[ours.t0:], fast=True)))


def test_transient_longer_than_the_search_is_flagged(rng):
    """A shift that lasts 60 % of the run: N_eff still rises at the last origin searched
    (half the run), so the cut sits at the limit; a trend over the whole run leaves the
    kept data drifting. Both are what support.equilibration_limitations reports."""
    from openmm_mace_lp.analysis import support

    n = 1000
    step = ar1_stationary(rng, n, 0.5) + np.where(np.arange(n) < 600, 5.0, 0.0)
    found = ts.detect_equilibration(step)
    assert found.at_limit and found.t0 == 500
    assert not ts.detect_equilibration(ar1_stationary(rng, n, 0.5)).at_limit
    trend = ar1_stationary(rng, n, 0.5, 0.1) + np.linspace(5.0, 0.0, n)
    kept = trend[ts.detect_equilibration(trend).t0:]
    codes = {item.code for item in support.equilibration_limitations(
        "energy", False, ts.drift_p_value(kept), 100.0)}
    assert codes == {support.DRIFTING}
    assert {item.code for item in support.equilibration_limitations(
        "energy", True, 0.5, 100.0)} == {support.EQUILIBRATION}


def test_drift_p_value_tells_a_trend_from_noise(rng):
    assert ts.drift_p_value(ar1_stationary(rng, 4000, 0.8) + np.linspace(0, 3, 4000)) < 1e-6
    p_values = [ts.drift_p_value(ar1_stationary(rng, 4000, 0.8)) for _ in range(200)]
    assert np.mean(np.array(p_values) < 0.01) <= 0.05  # ~1 % expected
    assert math.isnan(ts.drift_p_value(np.arange(6.0)))
