"""The low-density stage of the water data: geometry of the new frames, their split, no double extension."""
from __future__ import annotations

import lzma
from pathlib import Path

import numpy as np
import pytest

from openmm_mace_lp.systems.recipes import low_density as L
from openmm_mace_lp.systems.recipes.water_data import _water_density

DATA = Path(L.DATA_DIR)


def _box(n_molecules: int = 32, box: float = 10.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    oxygens = rng.uniform(0, box, size=(n_molecules, 3))
    hydrogens = oxygens[:, None, :] + np.array([[0.96, 0, 0], [-0.24, 0.93, 0]])
    hydrogens -= box * np.floor(hydrogens / box)  # some molecules straddle the boundary
    return np.concatenate([oxygens[:, None, :], hydrogens], axis=1).reshape(-1, 3)


def _bond_lengths(positions: np.ndarray, box: float) -> np.ndarray:
    molecules = L._whole_molecules(positions, box)
    return np.linalg.norm(molecules[:, 1:] - molecules[:, :1], axis=2)


def test_expanded_box_has_the_target_density_and_rigid_molecules():
    positions = _box()
    xyz, new_box = L.expanded(positions, 10.0, 0.62)
    assert _water_density(32, [new_box] * 3) == pytest.approx(0.62, rel=1e-12)
    np.testing.assert_allclose(_bond_lengths(xyz, new_box), _bond_lengths(positions, 10.0), atol=1e-12)
    oxygens_before = positions[0::3]
    np.testing.assert_allclose(xyz[0::3], oxygens_before * new_box / 10.0, atol=1e-12)


def test_cavity_removes_whole_molecules_nearest_a_point():
    positions = _box(n_molecules=40)
    xyz = L.with_cavity(positions, 10.0, 0.25, np.random.default_rng(3))
    assert len(xyz) == 3 * 30
    np.testing.assert_allclose(_bond_lengths(xyz, 10.0), 0 * _bond_lengths(xyz, 10.0) + [0.96, 0.96], atol=1e-2)
    kept = {tuple(np.round(o, 9)) for o in xyz[0::3]}
    removed = [o for o in positions[0::3] if tuple(np.round(o, 9)) not in kept]
    assert len(removed) == 10
    # the same draw again: the removed oxygens are exactly those nearest the random centre
    centre = np.random.default_rng(3).uniform(0.0, 10.0, size=3)

    def distance(points):
        d = np.asarray(points) - centre
        d -= 10.0 * np.round(d / 10.0)
        return np.linalg.norm(d, axis=-1)
    assert distance(removed).max() <= distance(xyz[0::3]).min()


def _split_blocks() -> dict[str, list[str]]:
    return {split: L.read_split(DATA / f"water_gfn2_{split}.extxyz.xz") for split in L.SPLITS}


def test_new_frames_follow_their_trajectory_split_and_are_deterministic():
    blocks = _split_blocks()
    original = {split: [b for b in bl if "expanded_periodic" not in b and "cavity_periodic" not in b]
                for split, bl in blocks.items()}
    trajectory_split = {L._header_value(b, "trajectory_id"): split
                        for split, bl in original.items() for b in bl if "config_type=md_periodic" in b}
    frames = L.new_frames(original, L.SEED)
    assert frames == L.new_frames(original, L.SEED)
    assert len(frames) == 3 * len(trajectory_split)
    for split, block in frames:
        assert trajectory_split[L._header_value(block, "trajectory_id")] == split
        density = float(L._header_value(block, "box_density_g_cm3"))
        assert 0.45 < density < 0.95


def test_shipped_set_has_the_labelled_low_density_frames():
    blocks = _split_blocks()
    for split in L.SPLITS:
        kinds = [L._header_value(b, "config_type") for b in blocks[split]]
        assert kinds.count("cavity_periodic") > 0 and kinds.count("expanded_periodic") > 0
        for block in blocks[split]:
            if "cavity_periodic" in block or "expanded_periodic" in block:
                assert "REF_energy=" in block and "REF_stress=" in block and "REF_forces" in block


def test_extending_twice_is_refused_and_changes_nothing(tmp_path):
    for split in L.SPLITS:
        (tmp_path / f"water_gfn2_{split}.extxyz.xz").write_bytes((DATA / f"water_gfn2_{split}.extxyz.xz").read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(SystemExit, match="already holds"):
        L.extend(tmp_path, tmp_path / "work", workers=1, seed=L.SEED)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    with lzma.open(tmp_path / "water_gfn2_test.extxyz.xz", "rt") as handle:
        assert "cavity_periodic" in handle.read()
