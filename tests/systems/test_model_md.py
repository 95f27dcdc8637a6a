"""The model's-own-MD stage of the water data: start frames, the NPT sampler, labelling into the right split."""
from __future__ import annotations

import lzma
from pathlib import Path

import numpy as np
import pytest

from openmm_mace_lp.systems.recipes import low_density as L
from openmm_mace_lp.systems.recipes import model_md as M
from openmm_mace_lp.systems.recipes.water_data import _frame_id, _water_density, format_frame

DATA = Path(M.DATA_DIR)


def _stored_blocks() -> dict[str, list[str]]:
    return {split: L.read_split(DATA / f"water_gfn2_{split}.extxyz.xz") for split in M.SPLITS}


def _without_stage(blocks: dict[str, list[str]]) -> dict[str, list[str]]:
    return {split: [b for b in bl if f"config_type={M.CONFIG_TYPE}" not in b] for split, bl in blocks.items()}


def test_start_frames_are_one_md_frame_per_trajectory_in_its_split():
    blocks = _without_stage(_stored_blocks())
    starts = M.start_frames(blocks)
    trajectories = [L._header_value(b, "trajectory_id") for _, b in starts]
    assert len(trajectories) == len(set(trajectories)) == 48
    for split, block in starts:
        assert "config_type=md_periodic" in block
        assert block in blocks[split]
        same = [b for b in blocks[split] if "config_type=md_periodic" in b
                and L._header_value(b, "trajectory_id") == L._header_value(block, "trajectory_id")]
        assert _frame_id(block) == min(map(_frame_id, same))
    small = M.start_frames(blocks, molecules=32)
    assert len(small) == 36 and all(b.startswith("96\n") for _, b in small)


def _harmonic(anchor: np.ndarray, k: float, stress: float):
    """ASE calculator: every atom tied to where it started, plus a constant isotropic stress."""
    from ase.calculators.calculator import Calculator, all_changes

    class Harmonic(Calculator):
        implemented_properties = ["energy", "forces", "stress"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            delta = self.atoms.positions - anchor
            self.results = dict(energy=0.5 * k * float((delta ** 2).sum()), forces=-k * delta,
                                stress=np.array([stress] * 3 + [0.0] * 3))

    return Harmonic()


def _start_block() -> str:
    return M.start_frames(_without_stage(_stored_blocks()), molecules=32)[0][1]


def test_npt_sampler_moves_the_box_the_way_the_pressure_pushes():
    block = _start_block()
    symbols, positions, box = L._parse_periodic(block)
    # ASE's stress is -pressure: a negative stress is a positive internal pressure that expands the box
    # (1e-2 eV/A^3 = 1.6 GPa, well above the ideal-gas term ASE's barostat adds, ~2e-3)
    expanding = M.run_npt(block, _harmonic(positions, 5.0, -1e-2), (5, 10), seed=1)
    shrinking = M.run_npt(block, _harmonic(positions, 5.0, +1e-2), (5, 10), seed=1)
    assert [s[0] for s in expanding] == [5, 10]
    assert expanding[0][1].shape == positions.shape
    assert expanding[-1][2] > expanding[0][2] > box
    assert shrinking[-1][2] < shrinking[0][2] < box


def test_npt_sampler_stops_at_a_blow_up():
    block = _start_block()
    _, positions, _ = L._parse_periodic(block)
    assert M.run_npt(block, _harmonic(positions + 20.0, 10.0, 0.0), (5, 10), seed=1) == []


def _sampled_frame(block: str, split: str) -> str:
    symbols, positions, box = L._parse_periodic(block)
    trajectory = L._header_value(block, "trajectory_id")
    info = dict(config_type=M.CONFIG_TYPE, trajectory_id=trajectory, temperature_K=300.0, density_g_cm3=1.0,
                box_density_g_cm3=round(float(_water_density(len(symbols) // 3, [box] * 3)), 6), md_step=5,
                sampling_model_sha256="0" * 16, source_frame_id=_frame_id(block), split=split,
                frame_id=f"{trajectory}/{M.CONFIG_TYPE}00")
    return format_frame(symbols, positions, info, cell=np.eye(3) * box, pbc=(True, True, True))


def _data_copy(tmp_path: Path, blocks: dict[str, list[str]]) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for split in M.SPLITS:
        (data / f"water_gfn2_{split}.extxyz.xz").write_bytes(lzma.compress("".join(blocks[split]).encode()))
    (data / "water_gfn2_manifest.json").write_text("{}")
    return data


def test_extend_labels_the_frames_into_their_trajectory_split(tmp_path):
    pytest.importorskip("tblite")
    blocks = _without_stage(_stored_blocks())
    split, start = M.start_frames(blocks, molecules=32)[-1]
    data = _data_copy(tmp_path, blocks)
    work = tmp_path / "work"
    work.mkdir()
    (work / "sampled.extxyz").write_text(_sampled_frame(start, split))
    counts = M.extend(data, work, workers=1)
    assert counts[split] == 1 and sum(counts.values()) == 1
    new = [b for b in L.read_split(data / f"water_gfn2_{split}.extxyz.xz") if M.CONFIG_TYPE in b]
    assert len(new) == 1 and "REF_energy=" in new[0] and "REF_stress=" in new[0] and "REF_forces" in new[0]
    assert "model_md_stage" in (data / "water_gfn2_manifest.json").read_text()
    with pytest.raises(SystemExit, match="already holds"):
        M.extend(data, work, workers=1)


def test_extend_refuses_a_sample_of_another_split_and_writes_nothing(tmp_path):
    blocks = _without_stage(_stored_blocks())
    split, start = M.start_frames(blocks, molecules=32)[0]
    data = _data_copy(tmp_path, blocks)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    work = tmp_path / "work"
    work.mkdir()
    wrong = "test" if split != "test" else "train"
    (work / "sampled.extxyz").write_text(_sampled_frame(start, wrong))
    with pytest.raises(SystemExit, match="belongs to another data set"):
        M.extend(data, work, workers=1)
    (work / "sampled.extxyz").write_text("")
    with pytest.raises(SystemExit, match="run --stage sample first"):
        M.extend(data, work, workers=1)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before


def test_sample_refuses_a_missing_model_and_writes_nothing(tmp_path):
    with pytest.raises(SystemExit, match="not found: pass an existing MACE .model file with --model"):
        M.sample(DATA, tmp_path / "missing.model", tmp_path / "work", "cpu", workers=1, seed=M.SEED)
    assert not (tmp_path / "work").exists()
