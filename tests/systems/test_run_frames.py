"""Active learning from a run directory (systems/recipes/run_frames.py): the frames read back
from a run's DCD are the positions and box that were written, their labels equal AMOEBA
evaluated directly with OpenMM, the data set gains them in the split asked for, and the
refusals (a run already in the set, a teacher's own run, a bad RUN:SPLIT) change nothing."""

import json

import numpy as np
import pytest

from openmm_mace_lp.systems.extxyz import read_frames
from openmm_mace_lp.systems.recipes import run_frames as R
from openmm_mace_lp.systems.recipes.low_density import SPLITS, read_split
from openmm_mace_lp.systems.recipes.water_data import DATA_DIR
from tests.systems.test_amoeba_data import _direct_amoeba

SHA = "ab" * 32


def _teacher_frame():
    """A 216-water liquid frame of the stored AMOEBA test split (box > twice the 0.8 nm cutoff)."""
    frames = read_frames(DATA_DIR / "water_amoeba_test.extxyz.xz")
    return next(a for a in frames if a.info.get("config_type") == "md_periodic")


def _write_run(run_dir, atoms, copies=2, model=None, temperature=300.0):
    """A run directory as `mace-lp simulate` leaves it: topology.pdb, trajectory.dcd, manifest.json."""
    import mdtraj

    from openmm_mace_lp.systems.builders import water_topology

    run_dir.mkdir(parents=True)
    box_nm = atoms.cell.array / 10
    topology = mdtraj.Topology.from_openmm(water_topology(len(atoms) // 3, box_nm))
    rng = np.random.default_rng(7)
    xyz = np.stack([atoms.positions / 10 + rng.normal(0, 1e-3, atoms.positions.shape) * k for k in range(copies)])
    traj = mdtraj.Trajectory(xyz.astype(np.float32), topology, time=np.arange(copies, dtype=float),
                             unitcell_lengths=np.tile(np.diag(box_nm), (copies, 1)),
                             unitcell_angles=np.full((copies, 3), 90.0))
    traj[0].save_pdb(str(run_dir / "topology.pdb"))
    traj.save_dcd(str(run_dir / "trajectory.dcd"))
    manifest = dict(temperature_K=temperature, model=model if model is not None else dict(name="default", sha256=SHA))
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return xyz * 10


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    """A small data set (two frames a split) extended with a two-frame run put in 'valid'."""
    root = tmp_path_factory.mktemp("run_frames")
    data = root / "data"
    data.mkdir()
    for split in SPLITS:
        blocks = read_split(DATA_DIR / f"water_amoeba_{split}.extxyz.xz")[:2]
        (data / f"water_amoeba_{split}.extxyz.xz").write_bytes(__import__("lzma").compress("".join(blocks).encode()))
    (data / "water_amoeba_manifest.json").write_text("{}")
    atoms = _teacher_frame()
    written = _write_run(root / "model_300K", atoms)
    counts = R.extend([(root / "model_300K", "valid")], data, root / "work", "amoeba", workers=1)
    return dict(root=root, data=data, written=written, counts=counts, atoms=atoms)


def test_frames_are_the_positions_and_box_written(extended):
    blocks = R.run_frames(extended["root"] / "model_300K")
    assert len(blocks) == 2
    import ase.io
    import io

    for block, xyz in zip(blocks, extended["written"]):
        atoms = ase.io.read(io.StringIO(block), format="extxyz")
        np.testing.assert_allclose(atoms.positions, xyz, atol=1e-4)  # float32 DCD, 6 decimals
        np.testing.assert_allclose(atoms.cell.array, extended["atoms"].cell.array, atol=1e-4)
        assert atoms.info["config_type"] == R.CONFIG_TYPE
        assert atoms.info["sampling_model_sha256"] == SHA
        assert atoms.info["temperature_K"] == 300.0


def test_labels_equal_amoeba_evaluated_directly(extended):
    added = [a for a in read_frames(extended["data"] / "water_amoeba_valid.extxyz.xz")
             if a.info.get("config_type") == R.CONFIG_TYPE]
    assert len(added) == 2
    energy, forces = _direct_amoeba(added[0], cutoff_nm=0.8, tolerance=1e-5)
    assert abs(added[0].info["REF_energy"] - energy) < 2e-8 * abs(energy) + 1e-8
    assert np.abs(added[0].arrays["REF_forces"] - forces).max() < 2e-6  # stored with 6 decimals
    assert np.asarray(added[0].info["REF_stress"]).shape == (6,)


def test_only_the_named_split_grows_and_the_manifest_records_the_stage(extended):
    counts = extended["counts"]
    assert counts == {"train": 0, "valid": 2, "test": 0}
    for split in ("train", "test"):
        assert len(read_split(extended["data"] / f"water_amoeba_{split}.extxyz.xz")) == 2
    manifest = json.loads((extended["data"] / "water_amoeba_manifest.json").read_text())
    stage = manifest[f"model_npt_stage_{SHA[:8]}"]
    assert stage["frames_added"] == counts and stage["sampling_models_sha256"] == [SHA]


def test_refusals_leave_the_data_set_unchanged(extended, tmp_path):
    data = extended["data"]
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    with pytest.raises(SystemExit, match="already holds its frames"):
        R.extend([(extended["root"] / "model_300K", "train")], data, tmp_path / "work", "amoeba", workers=1)
    teacher_run = tmp_path / "teacher_300K"
    _write_run(teacher_run, extended["atoms"], copies=1, model={})
    with pytest.raises(SystemExit, match="not a MACE model's run"):
        R.extend([(teacher_run, "train")], data, tmp_path / "work", "amoeba", workers=1)
    with pytest.raises(SystemExit, match="RUN_DIR:SPLIT"):
        R.parse_run("build/closed_loop/model_300K:training")
    with pytest.raises(SystemExit, match="no trajectory.dcd"):
        R.run_frames(tmp_path)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before


def test_runs_of_one_model_in_same_named_directories_get_their_own_ids():
    first = R.run_trajectory_id(SHA, "model_300K", "2026-12-01T17:45:28+00:00")
    again = R.run_trajectory_id(SHA, "model_300K", "2026-12-01T19:02:11+00:00")
    assert first == f"model-npt-{SHA[:8]}-model_300K-20261201T174528" and first != again
    # frames labelled before runs recorded their start keep the id they were stored under
    assert R.run_trajectory_id(SHA, "model_300K", None) == f"model-npt-{SHA[:8]}-model_300K"


def test_a_second_stage_of_one_model_gets_its_own_manifest_record(tmp_path):
    manifest = tmp_path / "water_amoeba_manifest.json"
    manifest.write_text(json.dumps({f"model_npt_stage_{SHA[:8]}": {}, f"model_npt_stage_{SHA[:8]}_2": {}}))
    assert R.unused_stage_name(manifest, f"model_npt_stage_{SHA[:8]}") == f"model_npt_stage_{SHA[:8]}_3"
    assert R.unused_stage_name(manifest, "model_npt_stage") == "model_npt_stage"
