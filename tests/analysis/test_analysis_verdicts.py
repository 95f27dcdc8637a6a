"""Verdicts end to end on synthetic run directories whose truth is known.

State series are AR(1) noise with known SD and correlation (synthetic_runs): the SE of an
arm's difference to the reference is sqrt(2/k) SD sqrt(g/N) for k seeds of N rows,
g = (1 + phi)/(1 - phi). The margins here are set to 4.6 such SEs at N = 8000: ample data
shows equivalence (needs |delta| < (4.6 - 2.1) SE), a fifth of it cannot (4.6/sqrt(5) = 2.06
SE of margin is less than the 2.13 SE that TOST needs with Holm over three observables).
"""
from __future__ import annotations

import json
import math

import pytest

from openmm_mace_lp.analysis.analyze import AnalysisOptions
from openmm_mace_lp.analysis.compare import compare_arms
from openmm_mace_lp.analysis.margins import MARGINS, Margin
from synthetic_runs import make_arms_dir

SEEDS = 3
ROWS = 8000
# (SD, phi) of the synthetic series: temperature K, density (1 % of 1 g/cm3), energy/atom
NOISE = {"temperature": (5.0, 0.9), "density": (0.01, 0.95), "potential_energy": (0.05, 0.9)}
STATE_ONLY = AnalysisOptions(trajectory=False)


def expected_se(name: str, rows: int) -> float:
    sd, phi = NOISE[name]
    return math.sqrt(2 / SEEDS) * sd * math.sqrt((1 + phi) / (1 - phi) / rows)


def verdict_margins():
    margins = dict(MARGINS)
    for name in NOISE:
        margins[name] = Margin(4.6 * expected_se(name, ROWS), False, "test: 4.6 SE")
    return margins


@pytest.fixture(scope="module")
def state_arms(tmp_path_factory):
    """fp64, fp32 (same distribution) and bf16 (density +3 %), 3 seeds of 8000 rows; the
    same three again with a fifth of the rows."""
    arms = {"fp64": {}, "fp32": {}, "bf16": {"density": 1.03}}
    common = dict(transient=False, n_frames=4, trajectory_interval=10)
    ample = make_arms_dir(tmp_path_factory.mktemp("ample"), arms, seeds=SEEDS,
                          n_rows=ROWS, **common)
    fifth = make_arms_dir(tmp_path_factory.mktemp("fifth"), arms, seeds=SEEDS,
                          n_rows=ROWS // 5, **common)
    return ample, fifth


def test_same_distribution_with_ample_data_is_equivalent(state_arms):
    comparison = compare_arms(state_arms[0], options=STATE_ONLY, margins=verdict_margins())
    for name in NOISE:
        verdict = comparison.verdict("fp32", name)
        assert verdict.verdict == "equivalent", (name, verdict)
        assert not verdict.limitations
        # the SE the analysis estimated agrees with the analytic one; it may be larger when
        # the spread of 3 seeds (2 dof: up to ~1.7x by chance) exceeds the within-run SEM
        assert 0.8 < verdict.sigma / expected_se(name, ROWS) < 2.0


def test_same_distribution_with_a_fifth_of_the_data_is_inconclusive(state_arms):
    comparison = compare_arms(state_arms[1], options=STATE_ONLY, margins=verdict_margins())
    for name in NOISE:
        verdict = comparison.verdict("fp32", name)
        assert verdict.verdict == "inconclusive", (name, verdict)
        if not verdict.limitations:
            # more data would decide it: the projected factor is at least the 5 we removed
            # minus the noise of one realisation
            assert verdict.extra_factor > 1.5 and verdict.extra_ps_per_seed > 0


def test_shifted_arm_is_different(state_arms):
    comparison = compare_arms(state_arms[0], options=STATE_ONLY, margins=verdict_margins())
    density = comparison.verdict("bf16", "density")
    assert density.verdict == "different"
    assert density.delta == pytest.approx(0.03, abs=0.003)
    assert density.ci_low > density.margin  # the whole interval lies outside the margin
    assert comparison.verdict("bf16", "temperature").verdict != "different"
    assert comparison.verdict("bf16", "potential_energy").verdict != "different"


def test_default_margins_make_short_runs_inconclusive_not_equivalent(state_arms):
    """With the thesis' 0.064 K margin (10x below the SE here) even the ample runs cannot
    show temperature equivalence: the verdict says inconclusive, with the time to decide."""
    for root in state_arms:
        verdict = compare_arms(root, options=STATE_ONLY).verdict("fp32", "temperature")
        assert verdict.verdict == "inconclusive"
        assert verdict.margin == pytest.approx(0.064) and verdict.sigma > 0.064
        assert verdict.extra_outcome in ("equivalent", "different")
        assert 0 < verdict.extra_ps_per_seed < math.inf


@pytest.fixture(scope="module")
def trajectory_arms(tmp_path_factory):
    """Trajectory observables: fp32 same physics, bf16 with D x 2 and an O-H bond of
    0.100 nm; two seeds each; one single-seed policy."""
    root = make_arms_dir(tmp_path_factory.mktemp("traj"), {
        "fp64": {}, "fp32": {}, "bf16": {"diffusion_nm2_ps": 4.6e-3, "o_h_nm": 0.100}},
        seeds=2, n_rows=600, n_frames=100, n_side=4, transient=False)
    return root


OH_ALL = AnalysisOptions(rdf_pairs=(("O-O", "water and element O", "water and element O"),
                                    ("O-H all", "water and element O", "water and element H")),
                         equilibration="none")


def test_rdf_and_diffusion_verdicts(trajectory_arms):
    margins = {**MARGINS, "rdf": Margin(0.2, False, "test"), "diffusion": Margin(0.5, True, "t")}
    comparison = compare_arms(trajectory_arms, options=OH_ALL, margins=margins)
    # the covalent O-H peak moves from 0.0957 to 0.100 nm: far beyond the noise floor
    oh = comparison.verdict("bf16", "rdf:O-H all")
    assert oh.verdict == "different"
    assert comparison.rdf["bf16"]["O-H all"].iad > 10 * comparison.rdf["bf16"]["O-H all"].noise_floor
    assert comparison.verdict("bf16", "diffusion").verdict == "different"
    assert comparison.verdict("bf16", "diffusion").delta == pytest.approx(2.3, rel=0.3)
    same = comparison.rdf["fp32"]["O-O"]
    # same physics: the IAD is what noise gives, and the modelled floor matches the one
    # measured between reference seeds
    assert same.iad < 2.5 * same.noise_floor
    assert same.reference_seed_floor == pytest.approx(same.noise_floor, rel=0.5)
    assert comparison.verdict("fp32", "rdf:O-O").verdict != "different"


def test_single_seed_cannot_support_d_and_rdf(tmp_path):
    root = make_arms_dir(tmp_path, {"fp64": {}, "fp32": {}}, seeds=1, n_rows=300,
                         n_frames=60, n_side=4, transient=False)
    comparison = compare_arms(root, options=AnalysisOptions(equilibration="none"))
    for column in ("diffusion", "rdf:O-O"):
        verdict = comparison.verdict("fp32", column)
        assert verdict.verdict != "equivalent"
        assert any("single seed" in message for message in verdict.limitations)
    assert ("fp32", "diffusion") in {(p, c) for p, c, _ in comparison.limitations()}


def test_speedup_of_arms_that_shared_a_device_is_marked_unreliable(tmp_path, run_cli):
    shared = {"host": "node1", "device": "NVIDIA H200", "started": "2026-12-01T10:00:00+00:00",
              "updated": "2026-12-01T11:00:00+00:00"}
    later = {**shared, "started": "2026-12-01T12:00:00+00:00",
             "updated": "2026-12-01T13:00:00+00:00"}
    root = make_arms_dir(tmp_path / "arms", {
        "fp64": {"manifest_extra": shared, "ns_per_day": 10.0},
        "bf16": {"manifest_extra": shared, "ns_per_day": 20.0},
        "fp32": {"manifest_extra": later, "ns_per_day": 15.0}},
        seeds=1, n_rows=200, n_frames=4, transient=False)
    comparison = compare_arms(root, options=STATE_ONLY)
    assert "bf16" in comparison.speed_notes and "fp32" not in comparison.speed_notes
    assert "fp64-seed1" in comparison.speed_notes["bf16"]
    out = tmp_path / "study"
    assert run_cli("compare", root, "--no-trajectory", "--study-json", out, "--card",
                   "NVIDIA H200", "--date", "2026-12-01") == 0
    record = json.loads((out / "precision_study_2026-12-01_nvidia-h200.json").read_text())
    assert record["card"] == "NVIDIA H200" and record["atoms"] == 375
    arms = {arm["policy"]: arm for arm in record["arms"]}
    assert arms["bf16"]["speedup"] == pytest.approx(2.0) and not arms["bf16"]["speedup_reliable"]
    assert arms["fp32"]["speedup_reliable"]
    for key in ("seeds", "production_ps_per_seed", "ns_per_day", "verdicts"):
        assert key in arms["bf16"]
    assert arms["bf16"]["production_ps_per_seed"] == pytest.approx(2.0)  # 2000 steps of 1 fs
    assert set(arms["bf16"]["verdicts"].values()) <= {"equivalent", "different", "inconclusive"}
    assert set(arms["bf16"]["verdicts"]) == set(arms["bf16"]["verdict_numbers"])
    headers = record["table_4_5_differences_and_speed"]["headers"]
    assert "MSteps/day" in headers and "Speed-up vs fp64" in headers
    assert record["table_4_4_final_means"]["rows"][0][0] == "fp64"
    markdown = (out / "precision_study_2026-12-01_nvidia-h200.md").read_text()
    assert "Table 4.4" in markdown and "Table 4.5" in markdown and "unreliable" in markdown


def test_study_json_needs_a_card(tmp_path, run_cli, state_arms):
    with pytest.raises(ValueError, match="--card"):
        run_cli("compare", state_arms[1], "--no-trajectory", "--study-json", tmp_path)
