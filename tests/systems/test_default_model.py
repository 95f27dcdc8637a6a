"""The shipped water model: checksum, elements, cutoff, and its stored test-set errors."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from openmm_mace_lp.evaluate import evaluate_frames
from openmm_mace_lp.export import ANGSTROM_PER_NM, EV_TO_KJ_PER_MOL
from openmm_mace_lp.model_files import default_model_path, load_mace_model
from openmm_mace_lp.systems.extxyz import read_frames
from openmm_mace_lp.systems.recipes.train_water import DEFAULT_TARGET

MODELS = Path(default_model_path()).parent
CARD = (MODELS / f"{DEFAULT_TARGET.model_name}.md").read_text()
ERRORS = json.loads((MODELS / f"{DEFAULT_TARGET.model_name}.test_errors.json").read_text())


def test_the_default_model_is_the_amoeba_model():
    assert default_model_path().name == f"{DEFAULT_TARGET.model_name}.model" == "mace-water-amoeba.model"
    assert "reproduces a classical polarisable force field, not electronic structure" in CARD


def test_checksum_matches_the_card():
    digest = hashlib.sha256(default_model_path().read_bytes()).hexdigest()
    assert f"SHA-256 `{digest}`" in CARD
    assert ERRORS["model_sha256"] == digest


def test_elements_and_cutoff_are_those_of_the_card():
    model = load_mace_model(default_model_path())
    assert [int(z) for z in model.atomic_numbers] == [1, 8]
    assert "Elements: H, O." in CARD
    cutoff = float(re.search(r"\| r_max \| ([0-9.]+) \|", CARD).group(1))
    assert float(model.r_max) == cutoff == 5.0


def test_card_states_the_measured_test_errors():
    overall = ERRORS["overall"]
    assert f"Force RMSE: **{overall['force_rmse_meV_per_A']:.1f} meV/A**" in CARD
    assert f"Energy RMSE: **{overall['energy_rmse_meV_per_atom']:.2f} meV/atom**" in CARD


@pytest.mark.parametrize("entry", ERRORS["subset_check"]["frames"], ids=lambda e: f"frame{e['index']}")
def test_exported_module_reproduces_stored_test_errors(entry):
    """Through the TorchScript module OpenMM runs (float64), against the teacher's labels."""
    atoms = read_frames(Path(__file__).parents[2] / f"systems/data/{DEFAULT_TARGET.prefix}_test.extxyz.xz")[entry["index"]]
    periodic = bool(atoms.pbc.any())
    positions = atoms.get_positions()[None] / ANGSTROM_PER_NM
    boxes = np.asarray(atoms.cell)[None] / ANGSTROM_PER_NM if periodic else None
    energies, forces = evaluate_frames(None, "fp64", "e3nn", list(atoms.numbers), positions, boxes,
                                       energy_type="energy")
    energy_ev = energies[0] / EV_TO_KJ_PER_MOL
    forces_ev_a = forces[0] / (EV_TO_KJ_PER_MOL * ANGSTROM_PER_NM)
    n = len(atoms)
    energy_error = 1000 * (energy_ev - atoms.info["REF_energy"]) / n
    force_rmse = 1000 * np.sqrt(np.mean((forces_ev_a - atoms.arrays["REF_forces"]) ** 2))
    assert energy_error == pytest.approx(entry["energy_error_meV_per_atom"], abs=1e-6)
    assert force_rmse == pytest.approx(entry["force_rmse_meV_per_A"], rel=1e-8)


def test_the_main_job_quotes_this_models_closed_loop():
    """The note after a CPU main job names the closed loop of the shipped model (its SHA-256)
    and quotes that file's 300 K densities, so a retrained model cannot leave it stale."""
    from openmm_mace_lp.simulations.presets import CLOSED_LOOP_RESULT, CPU_NOTE

    result = json.loads((Path(__file__).resolve().parents[2] / CLOSED_LOOP_RESULT).read_text())
    digest = hashlib.sha256(default_model_path().read_bytes()).hexdigest()
    assert result["model"]["sha256"] == digest
    assert f"{result['model_density_g_cm3']:.3f} g/cm3 at 300 K" in CPU_NOTE
    assert f"teacher's {result['teacher_density_g_cm3']:.3f}" in CPU_NOTE
    assert CLOSED_LOOP_RESULT.removesuffix(".json") + ".md" in CPU_NOTE
