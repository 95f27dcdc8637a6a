"""compare / report / analyze end to end on synthetic run directories.

The arms (see conftest): fp32 has the same physics as fp64; bf16 has a density 3 %
higher and an O-H bond of 0.100 instead of 0.0957 nm. The analysis must call bf16's
density different and nothing of fp32 different, give the speed table, and write every
figure. (Equivalence with ample data: test_analysis_verdicts.py.)
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from openmm_mace_lp.analysis.analyze import AnalysisOptions, analyze_run
from openmm_mace_lp.analysis.compare import compare_arms
from synthetic_runs import D_TRUE_NM2_PS, make_arms_dir, make_run_dir

EXPECTED_FIGURES = {"verdicts.png", "timeseries_temperature.png", "timeseries_density.png",
                    "timeseries_potential_energy.png", "rdf_O-O.png", "rdf_O-H.png",
                    "rdf_H-H.png", "msd.png"}


def test_shifted_density_is_different(comparison):
    assert comparison.reference == "fp64" and comparison.arms == ["fp32", "bf16"]
    bf16 = comparison.verdict("bf16", "density")
    assert bf16.verdict == "different"
    assert bf16.delta == pytest.approx(0.03, abs=0.01)
    assert "density" in comparison.by_verdict("bf16")["different"]


def test_same_physics_is_never_different(comparison):
    for column in comparison.verdict_columns():
        assert comparison.verdict("fp32", column).verdict != "different", column
    assert {"temperature", "density", "potential_energy", "diffusion", "rdf:O-O", "rdf:O-H",
            "rdf:H-H"} <= set(comparison.verdict_columns())


def test_water_o_h_rdf_leaves_out_the_covalent_peak(comparison):
    from openmm_mace_lp.analysis import observables as obs

    run = comparison.policies["fp64"].runs[0]
    rdf = run.rdfs["O-H"]
    assert rdf.intermolecular and rdf.n_pairs == 125 * 250 - 250
    traj = run.run.load_trajectory()
    every = obs.compute_rdf(traj, obs.select_pairs(traj.topology, "element O", "element H"),
                            r_max=0.5, bin_width=0.005)
    bond = (rdf.r > 0.09) & (rdf.r < 0.10)
    # with the 250 covalent pairs counted, the bond bin holds a spike of ~50; without
    # them (the synthetic molecules may overlap) it is what overlapping neighbours give
    assert every.g[bond[:len(every.g)]].max() > 20
    assert rdf.g[bond].max() < 3


def test_seed_combined_means_and_speed_table(comparison):
    fp64 = comparison.policies["fp64"]
    assert fp64.n_seeds == 2
    assert fp64.estimates["density"].mean == pytest.approx(1.0, abs=0.01)
    assert fp64.estimates["temperature"].mean == pytest.approx(300.0, abs=3.0)
    d = fp64.estimates["diffusion"]
    assert abs(d.mean - D_TRUE_NM2_PS * 1000) < 4 * d.sem
    speed = {p: s.speed for p, s in comparison.policies.items()}
    assert speed["fp64"]["msteps_per_day"] == pytest.approx(10.0)  # 10 ns/day at 1 fs
    assert speed["fp32"]["speedup"] == pytest.approx(2.0)
    assert speed["bf16"]["speedup"] == pytest.approx(2.5)


def test_comparison_json_is_complete(comparison):
    data = json.loads(json.dumps(comparison.to_dict()))
    assert "TOST" in data["criteria"] and data["alpha"] == 0.05
    assert data["verdicts"]["bf16"]["density"]["verdict"] == "different"
    assert data["policies"]["fp64"]["observables"]["density"]["unit"] == "g/cm^3"
    assert data["policies"]["fp64"]["observables"]["density"]["error"] == "SEM"
    assert data["margins"]["density"] == {"value": 0.0029, "relative": True, "unit": "",
                                          "source": data["margins"]["density"]["source"]}


def test_report_writes_every_figure_and_puts_the_verdict_first(arms_dir, tmp_path, run_cli):
    out = tmp_path / "report"
    assert run_cli("report", arms_dir, "-o", out) == 0
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == EXPECTED_FIGURES
    for name in figures:
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    head = markdown[:markdown.index("![")]  # everything before the first figure
    assert "| Arm |" in head and "bf16" in head and "✗ different" in head
    assert "bf16 vs fp64: different for Density" in head
    # what the data cannot support comes before the verdicts
    assert head.index("What the data cannot support") < head.index("## Verdicts")
    for figure in EXPECTED_FIGURES:
        assert f"figures/{figure}" in markdown
    html = (out / "report.html").read_text()
    assert "class='outside'" in html and "figures/rdf_O-H.png" in html
    assert "Table 4.4" in markdown and "Table 4.5" in markdown
    assert json.loads((out / "comparison.json").read_text())["reference"] == "fp64"
    assert not [p for p in out.rglob("*.tmp*")]  # no temp files left


def test_compare_command_writes_json_and_markdown(arms_dir, tmp_path, run_cli, capsys):
    out = tmp_path / "cmp" / "comparison.json"
    assert run_cli("compare", arms_dir, "-o", out, "--no-trajectory") == 0
    data = json.loads(out.read_text())
    assert "diffusion" not in data["verdicts"]["bf16"]
    markdown = out.with_suffix(".md").read_text()
    assert "## Final means per precision" in markdown and "Speed-up vs fp64" in markdown
    assert "p TOST (Holm)" in markdown
    assert "bf16" in capsys.readouterr().out


def test_analyze_command(arms_dir, tmp_path, run_cli, capsys):
    out = tmp_path / "a.json"
    assert run_cli("analyze", arms_dir / "fp64-seed1", "-o", out) == 0
    data = json.loads(out.read_text())
    assert data["run"]["policy"] == "fp64"
    assert set(data["rdf"]) == {"O-O", "O-H", "H-H"}
    assert data["observables"]["density"]["g"] >= 1
    assert data["equilibration"]["t0_ps"] > 0  # the synthetic transient was cut
    assert "Density" in capsys.readouterr().out


def test_equilibration_cut_removes_the_transient(arms_dir):
    cut = analyze_run(arms_dir / "fp64-seed1")
    uncut = analyze_run(arms_dir / "fp64-seed1", AnalysisOptions(equilibration="none"))
    # The synthetic temperature starts 40 K high and decays: without the cut it is biased.
    assert cut.scalars["temperature"].estimate.mean == pytest.approx(300, abs=4)
    assert uncut.scalars["temperature"].estimate.mean > cut.scalars["temperature"].estimate.mean


def test_reference_missing_names_the_fix(arms_dir):
    with pytest.raises(ValueError, match="--reference"):
        compare_arms(arms_dir, reference="fp128", options=AnalysisOptions(trajectory=False))


def test_single_seed_reference_cannot_support_rdf_verdicts(tmp_path, run_cli):
    root = make_arms_dir(tmp_path / "arms", {"fp64": {}, "fp16": {"ns_per_day": 30.0}}, seeds=1)
    comparison = compare_arms(root)
    verdict = comparison.verdict("fp16", "rdf:O-O")
    assert verdict.verdict != "equivalent"
    assert any("single seed" in m for m in verdict.limitations)
    assert math.isnan(comparison.rdf["fp16"]["O-O"].reference_seed_floor)
    assert math.isfinite(comparison.rdf["fp16"]["O-O"].noise_floor)
    assert run_cli("report", root, "-o", tmp_path / "rep") == 0


def test_nve_drift_is_measured_and_plotted(tmp_path, run_cli):
    root = tmp_path / "nve"
    for policy, drift in (("fp64", 0.0), ("bf16", 0.5)):
        make_run_dir(root / f"{policy}-seed1", policy, 1, ensemble="nve", n_rows=2000,
                     drift_per_atom_ns=drift, transient=False, n_frames=40)
    comparison = compare_arms(root)
    fp64 = comparison.policies["fp64"].estimates["energy_drift"]
    bf16 = comparison.policies["bf16"].estimates["energy_drift"]
    assert abs(fp64.mean) < 4 * fp64.sem
    assert abs(bf16.mean - 0.5) < 4 * bf16.sem
    assert comparison.verdict("bf16", "energy_drift").verdict == "different"
    assert "density" not in comparison.policies["fp64"].estimates  # constant in NVE
    assert run_cli("report", root, "-o", tmp_path / "rep") == 0
    assert (tmp_path / "rep" / "figures" / "timeseries_total_energy.png").is_file()


def test_unanalysable_arm_is_reported_not_fatal(tmp_path):
    root = make_arms_dir(tmp_path / "arms", {"fp64": {}, "fp16": {}}, seeds=1,
                         n_frames=20, n_rows=100)
    (root / "fp16-seed1" / "state.csv").write_text(
        (root / "fp16-seed1" / "state.csv").read_text().splitlines()[0] + "\n")
    comparison = compare_arms(root, options=AnalysisOptions(trajectory=False))
    assert "fp16" in comparison.unanalysable
    assert any("no rows" in w for w in comparison.warnings)


def test_bad_options_are_user_errors(arms_dir, run_cli):
    with pytest.raises(ValueError, match="--equilibration"):
        run_cli("analyze", arms_dir / "fp64-seed1", "--equilibration", "soon")
    with pytest.raises(ValueError, match="--stride"):
        run_cli("analyze", arms_dir / "fp64-seed1", "--stride", "0")
    with pytest.raises(ValueError, match="discards the whole run"):
        run_cli("analyze", arms_dir / "fp64-seed1", "--equilibration", "1e6",
                "--no-trajectory")


def test_custom_rdf_pair_and_msd_selection(arms_dir):
    options = AnalysisOptions(rdf_pairs=(("OW", "name O", "name O"),),
                              msd_selection="name H1", equilibration="none")
    analysis = analyze_run(arms_dir / "fp32-seed2", options)
    assert list(analysis.rdfs) == ["OW"]
    assert "rdf_peak_height:OW" in analysis.scalars
    np.testing.assert_allclose(analysis.rdfs["OW"].g, np.mean(analysis.rdfs["OW"].g_frames, 0))
    assert analysis.diffusion.estimate.mean > 0


def test_diverged_run_uses_only_the_frames_before_divergence(tmp_path):
    import mdtraj as md

    run = make_run_dir(tmp_path / "bf16-seed1", "bf16", 1, n_frames=60, n_rows=300,
                       transient=False, status="failed")
    lines = (run / "state.csv").read_text().splitlines()
    lines = lines[:201] + [",".join(["2010", "2.01"] + ["nan"] * 7)]  # diverged at step 2010
    (run / "state.csv").write_text("\n".join(lines) + "\n")
    traj = md.load_dcd(str(run / "trajectory.dcd"), top=str(run / "topology.pdb"))
    traj.xyz[50:] = np.nan
    traj.save_dcd(str(run / "trajectory.dcd"))
    analysis = analyze_run(run, AnalysisOptions(equilibration="none"))
    assert len(analysis.series["time_ps"]) == 200
    assert analysis.rdfs["O-O"].g_frames.shape[0] == 40  # frames at <= 2.0 ps
    assert np.isfinite(analysis.rdfs["O-O"].g).all()
    assert any("diverged" in w for w in analysis.warnings)
    assert any("status is 'failed'" in w for w in analysis.warnings)


def test_pressure_is_analysed_when_recorded(tmp_path):
    run = make_run_dir(tmp_path / "fp64-seed1", n_frames=10, n_rows=200, transient=False)
    lines = (run / "state.csv").read_text().splitlines()
    rng = np.random.default_rng(3)
    lines = [lines[0] + ",pressure_bar"] + [f"{line},{rng.normal(1.0, 300.0):.3f}"
                                             for line in lines[1:]]
    (run / "state.csv").write_text("\n".join(lines) + "\n")
    analysis = analyze_run(run, AnalysisOptions(trajectory=False))
    pressure = analysis.scalars["pressure"].estimate
    assert abs(pressure.mean - 1.0) < 4 * pressure.sem
    assert pressure.sem == pytest.approx(300 / np.sqrt(200 - analysis.equilibration["t0_index"]),
                                         rel=0.5)


def test_arms_split_over_directories_compare_as_one_set(arms_dir, tmp_path, run_cli):
    # the seeds of a study run in separate campaign directories (one seed per job)
    import shutil

    seeds = {1: tmp_path / "seed1", 2: tmp_path / "seed2"}
    for seed, directory in seeds.items():
        for run in sorted(arms_dir.glob(f"*-seed{seed}")):
            shutil.copytree(run, directory / run.name)
    out = tmp_path / "split.json"
    assert run_cli("compare", seeds[1], seeds[2], "-o", out, "--no-trajectory") == 0
    whole = tmp_path / "whole.json"
    assert run_cli("compare", arms_dir, "-o", whole, "--no-trajectory") == 0
    split, together = json.loads(out.read_text()), json.loads(whole.read_text())
    assert split["verdicts"] == together["verdicts"]
    assert split["verdicts"]["bf16"]["density"]["verdict"] == "different"
    # an arm passed twice would count as two seeds: refused, naming both places
    shutil.copytree(arms_dir / "fp64-seed1", tmp_path / "again" / "fp64-seed1")
    with pytest.raises(ValueError, match=r"arm fp64 seed 1 is in .*seed1.* and in .*again"):
        run_cli("compare", seeds[1], seeds[2], tmp_path / "again", "--no-trajectory")
    with pytest.raises(ValueError, match="single run directory"):
        run_cli("report", seeds[1], arms_dir / "fp64-seed1", "--no-trajectory")
