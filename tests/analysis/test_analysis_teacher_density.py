"""The model's teacher's own density as a target on density plots (analysis.plots.teacher_density):
read from the errors JSON beside the model file, only for the same model and temperature."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from openmm_mace_lp.analysis.plots import teacher_density
from openmm_mace_lp.model_files import default_model_path, sha256_of


def _model_with_card(tmp_path, sha="ab" * 32, rows=((300.0, 1.0050, 0.0023),)):
    model = tmp_path / "water.model"
    model.write_bytes(b"not read")
    (tmp_path / "water.test_errors.json").write_text(json.dumps({
        "model_sha256": sha, "teacher": "amoeba",
        "teacher_densities": [{"temperature_K": t, "density_g_cm3": d, "sem": e} for t, d, e in rows]}))
    return model


def test_the_teacher_density_of_the_same_model_at_the_run_temperature(tmp_path):
    model = _model_with_card(tmp_path, rows=((260.0, 1.0047, 0.003), (300.0, 1.0050, 0.0023)))
    manifest = {"model": {"path": str(model), "sha256": "ab" * 32}, "temperature_K": 300.4}
    assert teacher_density(manifest) == (1.0050, 0.0023, "amoeba")


@pytest.mark.parametrize("change", ["other model", "other temperature", "no card", "no model"])
def test_no_teacher_line_unless_model_and_temperature_match(tmp_path, change):
    model = _model_with_card(tmp_path)
    manifest = {"model": {"path": str(model), "sha256": "ab" * 32}, "temperature_K": 300.0}
    if change == "other model":
        manifest["model"]["sha256"] = "cd" * 32
    elif change == "other temperature":
        manifest["temperature_K"] = 302.0
    elif change == "no card":
        (tmp_path / "water.test_errors.json").unlink()
    else:
        manifest.pop("model")
    assert teacher_density(manifest) is None


def test_the_embedded_model_is_judged_against_its_amoeba_teacher(tmp_path):
    """A run made elsewhere (its model path gone) still finds the packaged model's card by SHA-256;
    the number is the closed loop's teacher density at 300 K."""
    closed_loop = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" /
                              "closed_loop_2026-12-01_h200_b9c3629d.json").read_text())
    manifest = {"model": {"path": "/elsewhere/mace-water-amoeba.model", "sha256": sha256_of(default_model_path())},
                "temperature_K": 300.0}
    density, sem, teacher = teacher_density(manifest)
    assert teacher == "amoeba" and 0 < sem < 0.01
    assert density == pytest.approx(closed_loop["teacher_density_g_cm3"], rel=1e-12)
