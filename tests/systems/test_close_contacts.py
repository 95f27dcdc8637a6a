"""The close-contact stage of the water data: dimer geometry, splits, labels, and the stage end to end."""
from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import pytest

from openmm_mace_lp.systems.recipes import close_contacts as C
from openmm_mace_lp.systems.recipes.low_density import _header_value, read_split
from openmm_mace_lp.systems.recipes.water_data import _frame_id

DATA = Path(C.DATA_DIR)
WATER = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])


def _internal(molecule: np.ndarray) -> np.ndarray:
    return np.linalg.norm(molecule[:, None] - molecule[None], axis=-1)


@pytest.mark.parametrize("contact", list(C.CONTACTS))
def test_contact_pair_is_the_closest_at_the_drawn_distance(contact):
    atom_first, atom_second, (low, high) = C.CONTACTS[contact]
    rng = np.random.default_rng(5)
    for distance in np.linspace(low, high, 4):
        xyz = C.contact_dimer(WATER, WATER + 3.0, atom_first, atom_second, distance, rng)
        assert xyz is not None
        first, second = xyz[:3], xyz[3:]
        np.testing.assert_allclose(first, WATER)
        np.testing.assert_allclose(_internal(second), _internal(WATER), atol=1e-12)  # rigid
        pairs = np.linalg.norm(first[:, None] - second[None], axis=-1)
        assert pairs[atom_first, atom_second] == pytest.approx(distance, abs=1e-9)
        assert pairs.min() == pytest.approx(distance, abs=1e-9)


def _blocks() -> dict[str, list[str]]:
    return {split: [b for b in read_split(DATA / f"water_gfn2_{split}.extxyz.xz") if C.CONFIG_TYPE not in b]
            for split in C.SPLITS}


def test_new_frames_are_deterministic_and_follow_their_trajectory_split():
    blocks = _blocks()
    frames = C.new_frames(blocks, C.SEED)
    assert frames == C.new_frames(blocks, C.SEED)
    trajectory_split = {_header_value(b, "trajectory_id"): split for split, bl in blocks.items() for b in bl
                        if "config_type=small_cluster" in b}
    assert len(frames) > 4 * len(trajectory_split)
    for split, block in frames:
        assert trajectory_split[_header_value(block, "trajectory_id")] == split
        assert block.startswith("6\n") and "pbc=\"F F F\"" in block


def _tiny_set(directory: Path, per_split: int = 1) -> None:
    """Split files holding a few two-molecule clusters of real trajectories, and a manifest."""
    for split, blocks in _blocks().items():
        chosen = [b for b in blocks if "config_type=small_cluster" in b and int(b.split("\n", 1)[0]) >= 6][:per_split]
        (directory / f"water_gfn2_{split}.extxyz.xz").write_bytes(lzma.compress("".join(chosen).encode()))
    (directory / "water_gfn2_manifest.json").write_text(json.dumps({"counts": {}}))


def test_stage_labels_keeps_the_wall_and_refuses_a_second_run(tmp_path):
    pytest.importorskip("tblite")
    _tiny_set(tmp_path)
    counts = C.extend(tmp_path, tmp_path / "work", seed=C.SEED)
    assert sum(c["kept"] + c["dropped"] for c in counts.values()) == 3 * C.FRAMES_PER_TRAJECTORY
    manifest = json.loads((tmp_path / "water_gfn2_manifest.json").read_text())
    assert manifest["close_contact_stage"]["frames"] == counts
    labelled = [b for split in C.SPLITS for b in read_split(tmp_path / f"water_gfn2_{split}.extxyz.xz")
                if C.CONFIG_TYPE in b]
    assert len(labelled) == sum(c["kept"] for c in counts.values()) > 0
    for block in labelled:
        interaction = float(_header_value(block, "interaction_energy_eV"))
        # at most a hydrogen bond's worth below the separated molecules (~0.2 eV), never the hundreds of eV
        # of the deepest contacts that the threshold drops
        assert -0.5 < interaction <= C.MAX_INTERACTION_EV
        assert "REF_forces" in block and "REF_energy=" in block
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(SystemExit, match="already holds"):
        C.extend(tmp_path, tmp_path / "work", seed=C.SEED)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_interaction_energy_is_dimer_minus_monomers():
    pytest.importorskip("tblite")
    block = C.new_frames(_blocks(), C.SEED)[0][1]
    labelled = C._label(block)
    import ase.io
    import io

    from openmm_mace_lp.systems.recipes.water_data import Settings, label_atoms

    atoms = ase.io.read(io.StringIO(labelled), format="extxyz")
    monomers = sum(label_atoms(atoms[3 * k:3 * k + 3], Settings())[0] for k in range(2))
    assert float(_header_value(labelled, "interaction_energy_eV")) == pytest.approx(
        atoms.info["REF_energy"] - monomers, abs=1e-6)
    assert _frame_id(labelled) == _frame_id(block)
