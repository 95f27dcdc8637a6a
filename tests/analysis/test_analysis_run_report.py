"""One run is a report too: a 20-step NPT run made by the simulation recipe (tiny random
MACE model, 8 waters, Reference platform) is reported as too short for everything it
cannot support, and its single-run report writes every figure."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "simulations"))  # sim_helpers

from openmm_mace_lp.analysis import support  # noqa: E402
from openmm_mace_lp.analysis.analyze import analyze_run  # noqa: E402
from openmm_mace_lp.analysis.report import write_run_report  # noqa: E402

STEPS = 20
RUN_FIGURES = {"series_temperature.png", "series_density.png", "series_potential_energy.png",
               "rdf_O-O.png", "rdf_O-H.png", "rdf_H-H.png", "msd.png"}


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory) -> Path:
    import mace  # noqa: F401  (before e3nn)

    from openmm_mace_lp.simulations.run import simulate
    from openmm_mace_lp.systems.architectures import TINY, build_mace, save_model
    from sim_helpers import tiny_config

    root = tmp_path_factory.mktemp("recipe")
    model = root / "tiny.model"
    save_model(build_mace(dataclasses.replace(TINY, max_ell=1, correlation=3), seed=1), model)
    config = tiny_config(model, "npt", run__production_steps=STEPS,
                         output__report_interval_steps=1, output__trajectory_interval_steps=1,
                         output__checkpoint_interval_steps=STEPS, barostat__interval_steps=2)
    return simulate(config, root / "run", quiet=True).run_dir


def test_twenty_step_run_is_too_short_for_every_observable(recipe_run):
    analysis = analyze_run(recipe_run)
    assert analysis.run.manifest["steps_completed"] == STEPS
    assert {"temperature", "density", "potential_energy", "diffusion"} <= set(analysis.scalars)
    for name, observable in analysis.scalars.items():
        assert observable.limitations, name
        assert not observable.supported
    codes = {item.code for o in analysis.scalars.values() for item in o.limitations}
    assert support.FEW_SAMPLES in codes and support.EQUILIBRATION in codes
    # 10 fs of MSD is ballistic, not diffusive
    assert support.MSD_REGIME in {i.code for i in analysis.scalars["diffusion"].limitations}
    assert set(analysis.rdf_limitations) == {"O-O", "O-H", "H-H"}
    assert all(analysis.rdf_limitations.values())
    assert "energy_drift" in analysis.missing  # NPT: no conservation test


def test_summary_says_what_was_measured_and_what_is_too_short(recipe_run):
    from openmm_mace_lp.simulations.summary import format_summary, summarize

    summary = summarize(recipe_run)
    assert summary["simulated_ps"] == pytest.approx(STEPS * 0.5e-3)
    assert summary["temperature_sem_K"] > 0 and summary["too_short_to_say"]
    text = format_summary(summary)
    assert "(SEM)" in text and "SD" in text and "ns/day" in text
    assert "temperature" in text and "density" in text
    assert "too short" in text and "independent" in text
    assert "+-" not in text.split("what this run is too short")[0]  # every ± is labelled
    assert "kJ/mol/atom/ns" not in text  # no total-energy trend extrapolated from 10 fs
    assert "no conservation test" in text


def test_single_run_report_writes_every_figure(recipe_run, tmp_path, run_cli, capsys):
    out = tmp_path / "report"
    assert run_cli("report", recipe_run, "-o", out) == 0
    assert {p.name for p in (out / "figures").iterdir()} == RUN_FIGURES
    for name in RUN_FIGURES:
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    head = markdown[:markdown.index("## Measured")]
    assert "What the data cannot support" in head and "No observable is supported" in head
    for name in RUN_FIGURES:
        assert f"figures/{name}" in markdown
    assert "figures/rdf_O-H.png" in (out / "report.html").read_text()
    data = json.loads((out / "analysis.json").read_text())
    assert data["observables"]["temperature"]["supported"] is False
    assert not list(out.rglob("*.tmp*"))
    assert "No observable is supported" in capsys.readouterr().out
    paths = write_run_report(recipe_run)  # the function `mace-lp run` can call
    assert paths["markdown"] == recipe_run / "report" / "report.md"
    assert {p.name for p in paths.values() if p.suffix == ".png"} == RUN_FIGURES


def test_six_row_run_is_analysed_not_refused(tmp_path, run_cli, capsys):
    """What the CPU main job used to write (6 state rows) was refused; now it is analysed
    and every number is marked as unsupported."""
    from synthetic_runs import make_run_dir

    run = make_run_dir(tmp_path / "fp32-seed1", "fp32", n_rows=6, n_frames=6,
                       report_interval=5, trajectory_interval=5, n_side=3)
    assert run_cli("analyze", run, "--no-trajectory") == 0
    data = json.loads((run / "analysis.json").read_text())
    assert data["observables"]["temperature"]["n_samples"] == 6
    assert not any(o["supported"] for o in data["observables"].values())
    assert "What the data cannot support" in capsys.readouterr().out
