"""The closed-loop comparison (benchmarks/closed_loop.py) against hand-worked numbers: each target
as the issue states it, failed and paused runs named in the table and the model card."""

import pytest

from openmm_mace_lp.systems.recipes import train_water as W
from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def closed_loop():
    return load_benchmark("closed_loop")


TEACHER = dict(density_g_cm3=1.000, density_sem=0.002, production_ps=100.0, oo_peak_r_nm=0.2800, oo_peak_r_sem=0.0003,
               oo_peak_g=3.00, oo_peak_g_sem=0.03, diffusion=2.00, diffusion_sem=0.05)


def test_targets_by_hand(closed_loop):
    model = dict(TEACHER, density_g_cm3=1.016, oo_peak_r_nm=0.2846, oo_peak_g=2.71, diffusion=2.58)
    checks = closed_loop.compare(TEACHER, model, 300.0)
    assert checks["density"]["relative_difference"] == pytest.approx(0.016)
    assert not checks["density"]["met"]  # 1.6 % > 1.5 %
    assert checks["oo_peak_position"]["difference_A"] == pytest.approx(0.046)
    assert checks["oo_peak_position"]["met"]  # 0.046 A <= 0.05 A
    assert checks["oo_peak_height"]["relative_difference"] == pytest.approx(-0.09 - 0.00667, abs=1e-4)
    assert checks["oo_peak_height"]["met"]  # -9.7 %
    assert checks["diffusion"]["relative_difference"] == pytest.approx(0.29)
    assert checks["diffusion"]["met"]
    # the same density difference is within the 2 % of the other temperatures, which check only density
    other = closed_loop.compare(TEACHER, model, 350.0)
    assert other["density"]["met"] and set(other) == {"density"}


def test_failed_and_paused_runs_are_named(closed_loop):
    manifest = {"status": "failed", "failure": {"message": "Traceback ...\nproduction step 18900: the neighbour "
                                                           "list is short (a cell holds 577 atoms); set model."
                                                           "neighbor_list = \"dynamic\". More text."}}
    assert closed_loop.run_failure(manifest) == "production step 18900: the neighbour list is short (a cell holds 577 atoms)"
    assert closed_loop.run_failure({"status": "completed"}) is None
    model = dict(TEACHER, density_g_cm3=1.113, status="failed", failure=closed_loop.run_failure(manifest))
    paused = dict(TEACHER, density_g_cm3=1.10, status="paused", failure=None, production_ps=15.0)
    summary = {"temperatures": [
        {"temperature_K": 260.0, "teacher": TEACHER, "model": None,
         "model_run": {"status": "failed", "failure": "guard stopped the run at equilibration step 100"}, "checks": {}},
        {"temperature_K": 300.0, "teacher": TEACHER, "model": model,
         "checks": closed_loop.compare(TEACHER, model, 300.0)},
        {"temperature_K": 350.0, "teacher": TEACHER, "model": paused,
         "checks": closed_loop.compare(TEACHER, paused, 350.0)}]}
    table = closed_loop.markdown(summary)
    assert "no production, failed: guard stopped the run at equilibration step 100" in table
    assert "(100 ps, failed: production step 18900" in table and "+11.30 %" in table
    assert "(15 ps, paused)" in table and "+10.00 %" in table
    lines = W._status_lines(W.DEFAULT_TARGET, {"max_num_epochs": 20}, {"overall": dict(
        force_rmse_meV_per_A=50.0, energy_rmse_meV_per_atom=2.0)}, 60.0,
        dict(summary, model_runs_complete=False))
    text = "\n".join(lines)
    assert "Does not hold its teacher's density under NPT** (model minus teacher: 300 K +11.3 %, 350 K +10.0 %" in text
    assert "Its NPT run at 260 K failed**: guard stopped the run at equilibration step 100." in text
    assert "Its NPT run at 300 K failed**: production step 18900" in text
    assert "The closed loop is incomplete" in text


def test_recipe_is_a_valid_simulate_config(closed_loop):
    """The TOML a closed-loop run writes loads through the simulate recipe's own reader, with
    the equilibration active learning asks for (1 ps) or the closed loop's 10 ps."""
    import tomllib

    from openmm_mace_lp.simulations.config import config_from_dict

    def load(text):
        return config_from_dict(tomllib.loads(text))

    point = closed_loop.Point("model", 300.0)
    sampling = load(closed_loop.config_text(point, 100.0, "m.model", "CPU", equilibration_ps=1.0))
    default = load(closed_loop.config_text(point, 100.0, "m.model", "CPU"))
    assert (sampling.run.equilibration_steps, default.run.equilibration_steps) == (1000, 10000)
    assert sampling.run.production_steps == 100000
    assert sampling.model.path == "m.model" and sampling.ensemble == "npt"
