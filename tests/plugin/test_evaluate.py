"""evaluate_frames (the static-error evaluator) equals the module OpenMM runs, frame by frame."""
from __future__ import annotations

import numpy as np
import pytest

from openmm_mace_lp.evaluate import evaluate_frames

from .helpers import evaluate, model_file, water_box


def test_frames_match_single_evaluations(tmp_path_factory):
    path = str(model_file(tmp_path_factory.getbasetemp()))
    system = water_box(2)
    rng = np.random.default_rng(0)
    frames = np.stack([system.positions, system.positions + rng.normal(scale=0.005, size=system.positions.shape)])
    boxes = np.stack([system.box, system.box * 1.02])
    energies, forces = evaluate_frames(path, "fp64", "e3nn", system.atomic_numbers, frames, boxes)
    for i in range(2):
        energy, frame_forces = evaluate(system, positions=frames[i], box=boxes[i])
        assert energies[i] == pytest.approx(energy, rel=1e-12)
        assert np.allclose(forces[i], frame_forces, rtol=0, atol=1e-9 * np.abs(frame_forces).max())


def test_wrong_frame_shape_is_refused(tmp_path_factory):
    path = str(model_file(tmp_path_factory.getbasetemp()))
    with pytest.raises(ValueError, match=r"shape \(n_frames, 3, 3\)"):
        evaluate_frames(path, "fp64", "e3nn", [8, 1, 1], np.zeros((2, 4, 3)), None)
