"""TOST, Holm and the three-way verdict against independent references: hand-worked
values, the normal/t distributions, and Monte Carlo on AR(1) series whose truth is known."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from openmm_mace_lp.analysis import equivalence as eq
from openmm_mace_lp.analysis.margins import MARGINS, Margin, margin_for, resolve_margins
from openmm_mace_lp.analysis.timeseries import mean_estimate
from synthetic_runs import ar1_stationary


def test_tost_p_value_hand_computed():
    # delta 0.1, SE 0.2, margin 0.5, normal: max(1 - Phi(3), Phi(-2)) = Phi(-2) = 0.02275
    assert eq.tost_p_value(0.1, 0.2, math.inf, 0.5) == pytest.approx(0.0227501, abs=1e-6)
    # Student t with 10 dof: P(T <= (0.1 - 0.5)/0.2 = -2) = 0.036694
    assert eq.tost_p_value(0.1, 0.2, 10, 0.5) == pytest.approx(0.036694, abs=1e-5)
    # outside the margin the p value exceeds 1/2
    assert eq.tost_p_value(0.7, 0.2, math.inf, 0.5) > 0.5
    assert eq.difference_p_value(0.4, 0.2, math.inf) == pytest.approx(0.0455003, abs=1e-6)
    assert math.isnan(eq.tost_p_value(0.1, math.nan, 5, 0.5))


def test_holm_hand_worked_example():
    """m = 4. Sorted: d 0.005 x 4 = 0.02; a 0.01 x 3 = 0.03; c 0.03 x 2 = 0.06;
    b 0.04 x 1 = 0.04 -> kept monotone at 0.06. At alpha 0.05: d and a rejected only."""
    adjusted = eq.holm_adjust({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": math.nan})
    assert adjusted["d"] == pytest.approx(0.02)
    assert adjusted["a"] == pytest.approx(0.03)
    assert adjusted["c"] == pytest.approx(0.06)
    assert adjusted["b"] == pytest.approx(0.06)
    assert math.isnan(adjusted["e"])
    assert eq.holm_adjust({"x": 0.7, "y": 0.6}) == {"x": 1.0, "y": 1.0}


def _verdict(name, delta, sigma, margin, dof=math.inf):
    return eq.scalar_verdict(name, delta, sigma, dof, margin, f"{margin}", eq.DEFAULT_ALPHA)


def test_three_way_verdict_and_holm_family():
    equivalent = _verdict("a", 0.0, 0.1, 1.0)  # p_TOST ~ 0
    different = _verdict("b", 3.0, 0.1, 1.0)  # far outside, significant
    inconclusive = _verdict("c", 0.0, 1.0, 1.0)  # margin = one SE
    limited = _verdict("d", 0.0, 0.1, 1.0)
    limited.limitations = ["run too short"]
    eq.decide([equivalent, different, inconclusive, limited])
    assert [v.verdict for v in (equivalent, different, inconclusive, limited)] == [
        "equivalent", "different", "inconclusive", "inconclusive"]
    # Holm: p_TOST of c is ~0.16; the family of 4 multiplies the smallest by 4
    assert inconclusive.p_equivalence_holm >= inconclusive.p_equivalence
    # A TOST p of 0.02 passes alone at 0.05 but not in a family of four with three more at 0.02
    alone = _verdict("x", 0.0, 0.48, 1.0)
    assert 0.015 < alone.p_equivalence < 0.025
    eq.decide([alone])
    assert alone.verdict == "equivalent"
    family = [_verdict(f"x{i}", 0.0, 0.48, 1.0) for i in range(4)]
    eq.decide(family)
    assert {v.verdict for v in family} == {"inconclusive"}


def test_extra_data_to_decide_matches_the_closed_form():
    # dof infinite: gap = z * sigma / sqrt(f) -> f = (z sigma / gap)^2
    z = stats.norm.ppf(0.95)
    assert eq.extra_data_factor(1.0, 1.0, math.inf, 0.95) == pytest.approx(z ** 2, rel=1e-9)
    assert eq.extra_data_factor(0.0, 1.0, math.inf, 0.95) == math.inf
    # finite dof grow with the data: the factor lies between the t and the normal answers
    t = stats.t.ppf(0.95, 5)
    assert z ** 2 < eq.extra_data_factor(1.0, 1.0, 5, 0.95) < t ** 2
    verdict = _verdict("c", 0.2, 0.5, 1.0)
    eq.decide([verdict])
    assert verdict.verdict == "inconclusive" and verdict.extra_outcome == "equivalent"
    # after f times the data the interval just fits: 0.2 + z * 0.5/sqrt(f) = 1 (Bonferroni m=1)
    assert 0.2 + z * 0.5 / math.sqrt(verdict.extra_factor) == pytest.approx(1.0, rel=1e-6)


def _difference_of_ar1_means(rng, shift: float, trials: int, n: int, phi: float):
    """(delta, sigma, dof) of arm - reference, both AR(1) with SD 1, arm shifted."""
    out = []
    for _ in range(trials):
        a = mean_estimate(ar1_stationary(rng, n, phi) + shift).estimate
        b = mean_estimate(ar1_stationary(rng, n, phi)).estimate
        variances = [a.sem ** 2, b.sem ** 2]
        from openmm_mace_lp.analysis.uncertainty import welch_satterthwaite

        out.append((a.mean - b.mean, math.sqrt(sum(variances)),
                    welch_satterthwaite(variances, [a.dof, b.dof])))
    return out


def test_tost_error_rates_by_simulation_on_ar1(rng):
    """The true difference sits exactly on the margin: TOST may call it equivalent in at
    most alpha of the trials (5 %), within Monte Carlo error; and it must not be so
    conservative that it never does (the SEMs of correlated data are estimated, not
    known). With no true difference, 'different' appears in at most alpha of trials."""
    n, phi, trials, alpha = 1000, 0.8, 1200, 0.05
    sigma_true = math.sqrt(2 * (1 + phi) / (1 - phi) / n)  # SE of the difference, ~0.134
    margin = 2.0 * sigma_true
    boundary = _difference_of_ar1_means(rng, margin, trials, n, phi)
    false_equivalent = np.mean([eq.tost_p_value(d, s, f, margin) <= alpha
                                for d, s, f in boundary])
    mc = 3.0 * math.sqrt(alpha * (1 - alpha) / trials)  # 3 Monte Carlo SEs, ~0.019
    assert false_equivalent <= alpha + mc
    assert false_equivalent >= alpha - mc - 0.015  # not (much) more conservative than nominal
    null = _difference_of_ar1_means(rng, 0.0, trials, n, phi)
    false_different = np.mean([eq.difference_p_value(d, s, f) <= alpha for d, s, f in null])
    assert false_different <= alpha + mc
    # and the power at no difference with a margin of 4 SE is high (analytic ~0.96)
    power = np.mean([eq.tost_p_value(d, s, f, 2 * margin) <= alpha for d, s, f in null])
    assert power >= 0.9


def test_rdf_verdict_rules():
    # IAD well below the margin, small SE: equivalent; IAD far above its noise floor: different
    low = eq.rdf_verdict("rdf:O-O", 0.004, 0.001, 30, 0.003, 0.01, "0.01 nm", 0.05)
    high = eq.rdf_verdict("rdf:O-H", 0.05, 0.004, 30, 0.003, 0.01, "0.01 nm", 0.05)
    noisy = eq.rdf_verdict("rdf:H-H", 0.012, 0.004, 30, 0.011, 0.01, "0.01 nm", 0.05)
    eq.decide([low, high, noisy])
    assert (low.verdict, high.verdict, noisy.verdict) == ("equivalent", "different",
                                                          "inconclusive")
    # p of the difference: Z = (IAD - floor) / (sqrt(pi/2 - 1) floor)
    expected = stats.norm.sf((0.05 - 0.003) / (math.sqrt(math.pi / 2 - 1) * 0.003))
    assert high.p_difference == pytest.approx(expected)


def test_margins_table_and_overrides(tmp_path):
    assert MARGINS["density"].relative and MARGINS["density"].value == pytest.approx(0.0029)
    assert MARGINS["temperature"].value == pytest.approx(0.064)
    assert MARGINS["density"].absolute(0.997) == pytest.approx(0.0029 * 0.997)
    assert margin_for("rdf:O-H", MARGINS) is MARGINS["rdf"]
    assert margin_for("volume", MARGINS) is None
    path = tmp_path / "margins.toml"
    path.write_text('[margins]\ndensity = "0.5%"\n"rdf:O-H" = 0.03\n')
    margins = resolve_margins(["temperature=0.2"], path)
    assert margins["density"] == Margin(0.005, True, margins["density"].source)
    assert margins["temperature"].value == 0.2 and not margins["temperature"].relative
    assert margin_for("rdf:O-H", margins).value == 0.03
    assert margin_for("rdf:O-O", margins) is MARGINS["rdf"]
    with pytest.raises(ValueError, match="NAME=VALUE"):
        resolve_margins(["density"])
    with pytest.raises(ValueError, match="positive"):
        resolve_margins(["density=-1%"])
    with pytest.raises(ValueError, match=r"\[margins\]"):
        (tmp_path / "bad.toml").write_text("density = 1\n")
        resolve_margins([], tmp_path / "bad.toml")


def test_support_checks_temperature_and_msd_regime():
    from openmm_mace_lp.analysis import support
    from openmm_mace_lp.analysis.uncertainty import Estimate

    # 99 % interval of 302.0 +- 0.2 K (dof inf) misses 300 +- 1 K; 301.0 +- 0.2 does not
    assert support.temperature_limitation(Estimate(302.0, 0.2), 300.0, "nvt")
    assert not support.temperature_limitation(Estimate(301.0, 0.2), 300.0, "nvt")
    assert not support.temperature_limitation(Estimate(350.0, 0.2), 300.0, "nve")
    t = np.linspace(1.0, 5.0, 41)
    from openmm_mace_lp.analysis.observables import slope_ratio

    assert abs(slope_ratio(t, 6 * t + 2.0) - 1.0) < 1e-9  # diffusive with an offset
    assert slope_ratio(t, t ** 2) == pytest.approx((5 + 3) / (3 + 1), rel=1e-6)
    assert not support.msd_limitation(1.0, 0.9, 1.0, 5.0)
    assert support.msd_limitation(2.0, 1.9, 1.0, 5.0)[0].code == support.MSD_REGIME
    assert support.msd_limitation(0.6, 0.5, 1.0, 5.0)
