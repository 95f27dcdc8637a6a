"""benchmarks/energy_bias.py's grouping against hand-worked numbers: frames of a model's own NPT
runs are grouped by the model that sampled them, and each group's mean and SEM are the plain ones."""

import pytest

from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def energy_bias():
    return load_benchmark("energy_bias")


def test_own_frames_are_grouped_by_their_sampling_model(energy_bias):
    own = dict(config_type="model_npt_periodic", sampling_model_sha256="b9c3629d413a5351")
    assert energy_bias.frame_kind(own) == "model_npt_periodic (b9c3629d runs)"
    assert energy_bias.frame_kind(dict(config_type="md_periodic")) == "md_periodic"


def test_group_means_and_sems_by_hand(energy_bias):
    rows = [dict(config_type="a", density_g_cm3=1.10, energy_error_meV_per_atom=e, pressure_error_bar=p)
            for e, p in ((-3.0, 100.0), (-5.0, 300.0))]
    rows.append(dict(config_type="a", density_g_cm3=1.00, energy_error_meV_per_atom=2.0, pressure_error_bar=-50.0))
    dense, liquid = energy_bias.summarise(rows)
    assert (dense["density_class"], dense["frames"], liquid["frames"]) == ("dense", 2, 1)
    assert dense["energy_error_meV_per_atom"]["mean"] == pytest.approx(-4.0)
    # SD of (-3, -5) is sqrt(2); SEM sqrt(2)/sqrt(2) = 1
    assert dense["energy_error_meV_per_atom"]["sem"] == pytest.approx(1.0)
    assert dense["pressure_error_bar"]["mean"] == pytest.approx(200.0)
    assert liquid["energy_error_meV_per_atom"]["sem"] is None
