"""The GFN2-xTB water data set, its recipe helpers and independent checks of the labels."""

import io
import json

import numpy as np
import pytest

from openmm_mace_lp.systems.extxyz import read_frames

from openmm_mace_lp.systems.recipes import water_data as W

SPLITS = ("train", "valid", "test")
PATHS = {s: W.DATA_DIR / f"{W.PREFIX}_{s}.extxyz.xz" for s in SPLITS}
HAVE_DATA = all(p.exists() for p in PATHS.values())
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="systems/data/water_gfn2_*.extxyz.xz not generated yet")


# ----------------------------------------------------------------------------- recipe helpers


def test_format_frame_roundtrip_with_ase():
    import ase.io

    pos = np.array([[0.0, 0.0, 0.0], [0.957, 0.0, 0.0], [-0.24, 0.927, 0.0]])
    f = np.array([[0.1, -0.2, 0.3], [0.0, 0.0, 1e-6], [-0.1, 0.2, -0.3]])
    txt = W.format_frame(["O", "H", "H"], pos, dict(REF_energy=-137.9, REF_stress=np.arange(6) * 1e-3,
                                                    config_type="md_periodic", trajectory_id="w32_T300_rho1.00",
                                                    temperature_K=300.0, frame_id="x/md_periodic00"),
                         cell=np.eye(3) * 5.0, pbc=(True,) * 3, forces=f)
    at = ase.io.read(io.StringIO(txt), format="extxyz")
    assert at.info["REF_energy"] == -137.9
    assert np.allclose(at.info["REF_stress"], np.arange(6) * 1e-3)
    assert at.info["config_type"] == "md_periodic" and at.info["trajectory_id"] == "w32_T300_rho1.00"
    assert np.allclose(at.arrays["REF_forces"], f) and np.allclose(at.positions, pos)
    assert at.pbc.all() and np.allclose(at.cell.lengths(), 5.0)


def test_read_blocks_drops_torn_frame(tmp_path):
    good = W.format_frame(["H"], np.zeros((1, 3)), dict(frame_id="a/x00"))
    good2 = W.format_frame(["H", "H"], np.zeros((2, 3)), dict(frame_id="a/x01"))
    p = tmp_path / "shard.extxyz"
    p.write_text(good + good2[:-15])  # crash in the middle of the second frame
    blocks = W.read_blocks(p)
    assert [W._frame_id(b) for b in blocks] == ["a/x00"]
    assert W._labelled_ids(p) == {"a/x00"}  # and the shard is repaired
    assert p.read_text() == good


def test_split_is_by_trajectory_stratified_and_deterministic():
    s = W.Settings()
    trs = W.trajectories(s)
    a, b = W.split_trajectories(trs, s), W.split_trajectories(trs, s)
    assert a == b and set(a) == {t["trajectory_id"] for t in trs}
    for group in ("w32", "w64"):
        parts = [a[t["trajectory_id"]] for t in trs if t["group"] == group]
        assert parts.count("valid") >= 1 and parts.count("test") >= 1
        assert parts.count("train") >= 0.7 * len(parts)
    assert len(trs) == len({t["trajectory_id"] for t in trs})
    temps = [t["temperature_K"] for t in trs]
    dens = [t["density_g_cm3"] for t in trs]
    assert min(temps) == 260 and max(temps) == 400 and min(dens) == 0.90 and max(dens) == 1.10


def test_cluster_cut_keeps_molecules_whole_and_strain_is_rigid():
    from openmm_mace_lp.systems.builders import water_box

    s = water_box(32, 1.0, seed=5)
    L = np.diag(s.box) * 10
    pos = s.positions * 10 % L  # wrap atoms independently: molecules split across faces
    rng = np.random.default_rng(0)
    for k in (1, 8, 16):
        xyz = W._cut_cluster(pos, L, k, rng).reshape(-1, 3, 3)
        assert xyz.shape[0] == k
        r = np.linalg.norm(xyz[:, 1:] - xyz[:, :1], axis=-1)
        assert np.allclose(r, 0.9572, atol=1e-6)
    f = np.array([0.95, 1.0, 1.05])
    xyz, cell = W._strain_rigid(pos, L, f, rng, 0.0)
    xyz = xyz.reshape(-1, 3, 3)
    assert np.allclose(cell, L * f)
    assert np.allclose(np.linalg.norm(xyz[:, 1:] - xyz[:, :1], axis=-1), 0.9572, atol=1e-6)


# ----------------------------------------------------------------------------- the data files


@pytest.fixture(scope="module")
def data():
    return {s: read_frames(PATHS[s]) for s in SPLITS}


@needs_data
def test_data_keys_and_finiteness(data):
    for split, frames in data.items():
        assert len(frames) > 0, split
        for at in frames:
            ct = at.info["config_type"]
            assert np.isfinite(at.info["REF_energy"])
            assert at.arrays["REF_forces"].shape == (len(at), 3)
            assert np.isfinite(at.arrays["REF_forces"]).all()
            assert set(at.get_chemical_symbols()) <= {"H", "O"}
            if ct == "IsolatedAtom":
                assert split == "train" and len(at) == 1
                continue
            for key in ("trajectory_id", "temperature_K", "density_g_cm3", "frame_id"):
                assert key in at.info, (key, at.info)
            assert 260 <= at.info["temperature_K"] <= 400
            assert 0.9 <= at.info["density_g_cm3"] <= 1.1
            assert len(at) % 3 == 0
            if at.pbc.any():
                assert at.pbc.all() and at.info["REF_stress"].shape == (6,)
                assert np.isfinite(at.info["REF_stress"]).all()
                assert at.get_volume() > 0
            else:
                assert "REF_stress" not in at.info
            # sanity: GFN2-xTB forces on MD frames are bounded
            if ct.startswith("md"):
                assert np.abs(at.arrays["REF_forces"]).max() < 20.0


@needs_data
def test_splits_disjoint_by_trajectory(data):
    ids = {s: {a.info["trajectory_id"] for a in fr if a.info["config_type"] != "IsolatedAtom"} for s, fr in data.items()}
    assert not ids["train"] & ids["valid"]
    assert not ids["train"] & ids["test"]
    assert not ids["valid"] & ids["test"]
    frame_ids = [a.info["frame_id"] for fr in data.values() for a in fr]
    assert len(frame_ids) == len(set(frame_ids))
    for s in SPLITS:  # both periodic and cluster data in every split
        kinds = {a.info["config_type"] for a in data[s]}
        assert {"md_periodic", "md_cluster"} <= kinds, (s, kinds)


@needs_data
def test_isolated_atoms_match_e0_json(data):
    e0 = json.loads((W.DATA_DIR / f"{W.PREFIX}_e0s.json").read_text())["E0s"]
    iso = {a.get_chemical_symbols()[0]: a.info["REF_energy"] for a in data["train"]
           if a.info["config_type"] == "IsolatedAtom"}
    assert iso.keys() == {"H", "O"} and all(np.isclose(iso[k], e0[k]) for k in iso)


@needs_data
def test_data_size_is_small():
    total = sum(p.stat().st_size for p in PATHS.values())
    assert total < 8_000_000


# ----------------------------------------------------------------------------- labels vs tblite


@needs_data
def test_relabel_smallest_cluster_reproduces_stored_labels(data):
    pytest.importorskip("tblite")
    frames = [a for fr in data.values() for a in fr
              if a.info["config_type"] != "IsolatedAtom" and not a.pbc.any() and len(a) >= 6]
    at = min(frames, key=len)
    e, f, st = W.label_atoms(at, W.Settings())
    assert st is None
    assert abs(e - at.info["REF_energy"]) < 1e-6
    assert np.abs(f - at.arrays["REF_forces"]).max() < 2e-6  # stored with 6 decimals


@needs_data
@pytest.mark.slow
def test_relabel_one_periodic_frame(data):
    pytest.importorskip("tblite")
    at = next(a for a in data["test"] if a.pbc.any() and len(a) == 96)
    e, f, st = W.label_atoms(at, W.Settings())
    assert abs(e - at.info["REF_energy"]) < 1e-5
    assert np.abs(f - at.arrays["REF_forces"]).max() < 1e-5
    assert np.abs(st - at.info["REF_stress"]).max() < 1e-7


def _tiny_cluster():
    from ase import Atoms

    from openmm_mace_lp.systems.builders import water_box

    s = water_box(8, 1.0, seed=11)
    xyz = W._cut_cluster(s.positions * 10, np.diag(s.box) * 10, 2, np.random.default_rng(1))
    return Atoms("OHHOHH", positions=xyz + np.random.default_rng(2).normal(scale=0.03, size=xyz.shape))


def test_tblite_forces_are_minus_energy_gradient():
    pytest.importorskip("tblite")
    s = W.Settings()
    at = _tiny_cluster()
    _, f, _ = W.label_atoms(at, s)
    h = 1e-4
    fd = np.zeros_like(f)
    for i in range(len(at)):
        for c in range(3):
            es = []
            for sgn in (1, -1):
                a = at.copy()
                a.positions[i, c] += sgn * h
                es.append(W.label_atoms(a, s)[0])
            fd[i, c] = -(es[0] - es[1]) / (2 * h)
    assert np.abs(f - fd).max() < 2e-4, np.abs(f - fd).max()


def test_tblite_stress_is_ase_convention(tmp_path):
    pytest.importorskip("tblite")
    # 4 waters, one diagonal and one shear component (each periodic call ~1 s here); the
    # recipe checks all nine components on 8 waters and records it in the manifest
    res = W.stress_check(tmp_path, W.Settings(), n_waters=4, components=[(0, 0), (0, 1)])
    assert res["agrees"], res
    assert res["max_abs_difference_eV_A3"] < 1e-5
