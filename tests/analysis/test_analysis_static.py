"""Static precision metrics against hand-computed values, and the ``static`` command
with a stand-in evaluator."""
from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest

from openmm_mace_lp.analysis import static_errors as se
from openmm_mace_lp.analysis.structures import load_structures

E_REF = np.array([-100.0, 50.0])
E_POL = np.array([-99.0, 49.0])
F_REF = np.array([[[3.0, 0, 0], [0, 4.0, 0]],
                  [[1.0, 1.0, 0], [0, 0, 1.0]]])
F_POL = np.array([[[3.0, 0, 0], [0, 4.0, 3.0]],
                  [[-1.0, -1.0, 0], [0, 0, -1.0]]])


def test_per_structure_metrics_by_hand():
    m = se.per_structure_errors(E_REF, F_REF, E_POL, F_POL)
    # |dE| = 1 for both; 2 atoms.
    np.testing.assert_allclose(m["AE_E"], [0.5, 0.5])
    np.testing.assert_allclose(m["RAE_E"], [1 / 100, 1 / 50])
    # Structure 1: errors (0,0,0), (0,0,3). Structure 2: (-2,-2,0), (0,0,-2).
    np.testing.assert_allclose(m["AE_F"], [1.5, (2 * math.sqrt(2) + 2) / 2])
    np.testing.assert_allclose(m["RAE_F"], [3 / 5, math.sqrt(12) / math.sqrt(3)])
    np.testing.assert_allclose(m["cos_F"], [25 / (5 * math.sqrt(34)), -1.0])


def test_aggregates_by_hand():
    agg = se.aggregate_errors(se.per_structure_errors(E_REF, F_REF, E_POL, F_POL))
    low, high = 1.5, 1 + math.sqrt(2)
    assert agg["AE_F"]["mean"] == pytest.approx((low + high) / 2)
    assert agg["AE_F"]["p95"] == pytest.approx(low + 0.95 * (high - low))  # linear interp.
    assert agg["cos_F"]["p05"] == pytest.approx(-1 + 0.05 * (25 / (5 * math.sqrt(34)) + 1))
    assert agg["AE_E"]["n"] == 2 and agg["AE_E"]["n_nonfinite"] == 0
    values = se.aggregate(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert values["mean"] == 3.0 and values["p95"] == pytest.approx(4.8)


def test_identical_policy_has_zero_error_and_unit_cosine():
    m = se.per_structure_errors(E_REF, F_REF, E_REF, F_REF)
    for name in ("AE_E", "RAE_E", "AE_F", "RAE_F"):
        np.testing.assert_array_equal(m[name], 0.0)
    np.testing.assert_allclose(m["cos_F"], 1.0)


def test_nonfinite_results_are_counted_not_hidden():
    e = E_POL.copy()
    e[1] = np.inf  # e.g. an fp16 overflow
    agg = se.aggregate_errors(se.per_structure_errors(E_REF, F_REF, e, F_POL))
    assert agg["AE_E"]["n_nonfinite"] == 1
    assert agg["AE_E"]["mean"] == pytest.approx(0.5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        se.per_structure_errors(E_REF, F_REF, E_POL, F_POL[:, :1])


def fake_energies_forces(policy: str, positions_nm: np.ndarray):
    """A toy 'model': E = sum x^2, F = -2x; lower precision = rounding through float16."""
    x = positions_nm.astype(np.float64)
    if policy != "fp64":
        x = x.astype(np.float16).astype(np.float64)
    return np.sum(x ** 2, axis=(1, 2)) * 100.0, -200.0 * x


def test_evaluate_static_errors_calls_the_reference_once_per_set():
    calls = []

    def evaluate(policy, structure_set):
        calls.append(policy)
        return fake_energies_forces(policy, structure_set.positions_nm)

    sets = [types.SimpleNamespace(positions_nm=np.random.default_rng(0).uniform(size=(3, 4, 3)))]
    result = se.evaluate_static_errors(sets, ["fp64", "fp32", "bf16"], evaluate)
    assert calls == ["fp64", "fp32", "bf16"]
    assert set(result.per_structure) == {"fp32", "bf16"}
    assert len(result.per_structure["fp32"]["AE_E"]) == 3
    with pytest.raises(ValueError, match="--policies"):
        se.evaluate_static_errors(sets, ["fp64"], evaluate)


def write_extxyz(path):
    from ase import Atoms
    from ase.io import write

    rng = np.random.default_rng(1)
    frames = []
    for _ in range(3):
        water = Atoms("OH2", positions=rng.uniform(0, 9, (3, 3)), cell=[10, 10, 10], pbc=True)
        frames.append(water)
    frames.append(Atoms("CH4", positions=rng.uniform(0, 5, (5, 3)), pbc=False))
    write(str(path), frames, format="extxyz")
    return frames


def test_extxyz_is_grouped_by_composition_and_converted_to_nm(tmp_path):
    frames = write_extxyz(tmp_path / "s.extxyz")
    sets = load_structures(tmp_path / "s.extxyz")
    assert [s.n_frames for s in sets] == [3, 1]
    water, methane = sets
    assert water.atomic_numbers == [8, 1, 1]
    np.testing.assert_allclose(water.positions_nm[0], frames[0].positions / 10)
    np.testing.assert_allclose(water.boxes_nm[0], np.eye(3) * 1.0)
    assert methane.boxes_nm is None
    assert list(methane.frame_indices) == [3]


def test_static_command_with_a_stand_in_evaluator(tmp_path, monkeypatch, run_cli):
    write_extxyz(tmp_path / "s.xyz")
    seen = []

    def evaluate_frames(model_path, policy, backend, atomic_numbers, positions_nm, boxes_nm,
                        device):
        seen.append((model_path, policy, backend, tuple(atomic_numbers), device,
                     None if boxes_nm is None else boxes_nm.shape))
        return fake_energies_forces(policy, positions_nm)

    module = types.ModuleType("openmm_mace_lp.evaluate")
    module.evaluate_frames = evaluate_frames
    monkeypatch.setitem(sys.modules, "openmm_mace_lp.evaluate", module)
    model = tmp_path / "m.model"
    model.write_text("x")
    out = tmp_path / "static.json"
    assert run_cli("static", "--model", model, "--structures", tmp_path / "s.xyz",
                   "--policies", "fp64,fp32,bf16", "--device", "cpu", "-o", out) == 0
    data = json.loads(out.read_text())
    assert set(data["aggregates"]) == {"fp32", "bf16"}
    assert data["n_structures"] == 4
    assert (str(model), "fp64", "e3nn", (8, 1, 1), "cpu", (3, 3, 3)) in seen
    assert (str(model), "fp32", "e3nn", (6, 1, 1, 1, 1), "cpu", None) in seen
    # Check one number end to end against the toy model directly.
    sets = load_structures(tmp_path / "s.xyz")
    e_ref, f_ref = fake_energies_forces("fp64", sets[0].positions_nm)
    e, f = fake_energies_forces("fp32", sets[0].positions_nm)
    expected = se.per_structure_errors(e_ref, f_ref, e, f)["AE_F"]
    np.testing.assert_allclose(data["per_structure"]["fp32"]["AE_F"][:3], expected)
    assert "AE_E mean" in (tmp_path / "static.md").read_text()
    import hashlib

    assert data["model_name"] == "m.model" and data["model_sha256"] == hashlib.sha256(b"x").hexdigest()


def test_static_command_without_the_evaluator_says_what_to_install(tmp_path, monkeypatch,
                                                                    run_cli):
    write_extxyz(tmp_path / "s.xyz")
    monkeypatch.setitem(sys.modules, "openmm_mace_lp.evaluate", None)  # import fails
    with pytest.raises(RuntimeError, match="openmm_mace_lp.evaluate"):
        run_cli("static", "--structures", tmp_path / "s.xyz", "--policies", "fp64,fp32",
                "--device", "cpu", "-o", tmp_path / "o.json")
    assert not (tmp_path / "o.json").exists()


def test_static_command_missing_structures(tmp_path, run_cli):
    with pytest.raises(FileNotFoundError, match="structure file"):
        run_cli("static", "--structures", tmp_path / "none.xyz", "--policies", "fp64,fp32")
