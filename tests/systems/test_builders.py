"""Structure builders and the committed structure files (fast, CPU)."""

import numpy as np
import pytest

from openmm_mace_lp.systems import builders as B


@pytest.mark.parametrize("n,density", [(32, 0.9), (64, 1.0), (343, 1.0), (100, 1.1), (67, 1.0)])
def test_water_box_density_and_no_overlap(n, density):
    s = B.water_box(n, density, seed=3)
    assert s.topology.getNumAtoms() == 3 * n == len(s.positions)
    assert s.topology.getNumBonds() == 2 * n
    assert abs(B.density_g_cm3(s.topology, s.box) - density) / density < 0.02
    assert B.min_intermolecular_distance(s.topology, s.positions, s.box) > 0.17  # nm
    # O-H bonds intact (molecules are whole, not wrapped apart)
    xyz = s.positions.reshape(-1, 3, 3)
    r = np.linalg.norm(xyz[:, 1:] - xyz[:, :1], axis=-1)
    assert np.allclose(r, 0.09572, atol=1e-6)
    box = s.topology.getPeriodicBoxVectors()
    assert box is not None and np.allclose(np.array(box._value), s.box)


def test_water_box_target_atoms_and_determinism():
    a = B.water_box(target_atoms=1000, seed=1)
    b = B.water_box(target_atoms=1000, seed=1)
    c = B.water_box(target_atoms=1000, seed=2)
    assert a.topology.getNumAtoms() == 999
    assert np.array_equal(a.positions, b.positions)
    assert not np.array_equal(a.positions, c.positions)


def test_load_water_box_builds_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENMM_MACE_LP_CACHE", str(tmp_path))
    s1 = B.load_water_box(10000)
    assert s1.topology.getNumAtoms() == 9999
    assert abs(B.density_g_cm3(s1.topology, s1.box) - 1.0) < 0.02
    assert B.min_intermolecular_distance(s1.topology, s1.positions, s1.box) > 0.17
    cached = list((tmp_path / "structures").glob("*.npz"))
    assert len(cached) == 1
    s2 = B.load_water_box(10000)
    assert np.array_equal(s1.positions, s2.positions)
    assert s2.topology.getNumAtoms() == 9999


@pytest.mark.parametrize("n_mol", sorted(B.READY_WATER_BOXES))
def test_committed_water_boxes_match_builder(n_mol):
    from openmm.app import PDBFile

    path = B.STRUCTURES_DIR / B.READY_WATER_BOXES[n_mol]
    pdb = PDBFile(str(path))
    box = np.array(pdb.topology.getPeriodicBoxVectors()._value)
    pos = np.array(pdb.getPositions(asNumpy=True)._value)
    assert pdb.topology.getNumAtoms() == 3 * n_mol
    assert abs(B.density_g_cm3(pdb.topology, box) - 1.0) < 0.02
    assert B.min_intermolecular_distance(pdb.topology, pos, box) > 0.17
    ref = B.water_box(n_mol, 1.0, seed=0)
    assert np.allclose(pos, ref.positions, atol=1e-4)  # PDB precision 0.001 A
    assert np.allclose(box, ref.box, atol=1e-3)
    # load_water_box returns the committed file for these sizes
    s = B.load_water_box(3 * n_mol)
    assert s.topology.getNumAtoms() == 3 * n_mol


def test_committed_structure_files_load():
    from openmm.app import ForceField, NoCutoff, PDBFile

    for name, periodic in [("methanol.pdb", False), ("methanol_liquid_128.pdb", True),
                           ("alanine_dipeptide.pdb", False)]:
        pdb = PDBFile(str(B.STRUCTURES_DIR / name))
        assert (pdb.topology.getPeriodicBoxVectors() is not None) == periodic, name
        assert pdb.topology.getNumBonds() > 0, name
    for p in B.STRUCTURES_DIR.iterdir():
        assert p.stat().st_size < 1_000_000, p
    ala = PDBFile(str(B.STRUCTURES_DIR / "alanine_dipeptide.pdb"))
    assert {a.element.symbol for a in ala.topology.atoms()} == {"H", "C", "N", "O"}
    # standard residue/atom names: Amber ff14SB parametrises it as is
    ForceField("amber14/protein.ff14SB.xml").createSystem(ala.topology, nonbondedMethod=NoCutoff)


def test_methanol_liquid():
    s = B.methanol_liquid(64, seed=0)
    assert s.topology.getNumAtoms() == 6 * 64
    assert abs(B.density_g_cm3(s.topology, s.box) - 0.7866) < 0.02 * 0.7866
    assert B.min_intermolecular_distance(s.topology, s.positions, s.box) > 0.17


@pytest.mark.parametrize("name", B.ORGANIC_MOLECULES)
def test_organic_molecules(name):
    s = B.organic_molecule(name)
    n = s.topology.getNumAtoms()
    assert s.box is None and s.positions.shape == (n, 3)
    # a connected bond graph: n - 1 + rings bonds, every atom bonded
    bonded = {a.index for b in s.topology.bonds() for a in b}
    assert bonded == set(range(n))
    for b in s.topology.bonds():
        d = np.linalg.norm(s.positions[b[0].index] - s.positions[b[1].index])
        assert 0.09 < d < 0.19, (name, b, d)


def test_alanine_dipeptide_is_L():
    s = B.organic_molecule("alanine_dipeptide")
    idx = {(a.residue.name, a.name): a.index for a in s.topology.atoms()}
    g = lambda n: s.positions[idx["ALA", n]]  # noqa: E731
    # CORN rule: looking from HA to CA, CO -> R -> N runs clockwise
    view = g("HA") - g("CA")
    assert np.dot(view, np.cross(g("CB") - g("C"), g("N") - g("CB"))) < 0
    assert s.topology.getNumAtoms() == 22 and s.topology.getNumBonds() == 21


def test_diamond_supercell():
    s = B.diamond_supercell(2)
    assert s.topology.getNumAtoms() == 64
    assert np.allclose(s.box, np.eye(3) * 0.7134)
    d = s.positions[:, None] - s.positions[None]
    d -= np.diag(s.box) * np.round(d / np.diag(s.box))
    r = np.linalg.norm(d, axis=-1)
    r[np.diag_indices(64)] = 1.0
    assert np.isclose(r.min(), 0.3567 * np.sqrt(3) / 4, atol=1e-6)
    assert ((r < 0.16).sum(axis=1) == 4).all()  # tetrahedral


def test_tiled_box_copies_the_base_and_its_forces(tmp_path, monkeypatch):
    """k x k x k copies of a periodic box: density and molecules kept, and a MACE model gives
    every copy of an atom the force of the original (the bench's reference for big boxes)."""
    monkeypatch.setenv("OPENMM_MACE_LP_CACHE", str(tmp_path))
    from tests.plugin.helpers import TestSystem, evaluate

    big, base, copies = B.tiled_water_box(1700, max_base_atoms=250)
    assert copies == 2 and len(big.positions) == 8 * len(base.positions)
    assert B.density_g_cm3(big.topology, big.box) == pytest.approx(B.density_g_cm3(base.topology, base.box))
    assert big.topology.getNumBonds() == 8 * base.topology.getNumBonds()
    assert B.min_intermolecular_distance(big.topology, big.positions, big.box) == pytest.approx(
        B.min_intermolecular_distance(base.topology, base.positions, base.box))
    e_base, f_base = evaluate(TestSystem(base.topology, base.positions, base.box), "fp64", "e3nn")
    e_big, f_big = evaluate(TestSystem(big.topology, big.positions, big.box), "fp64", "e3nn")
    assert e_big == pytest.approx(8 * e_base, rel=1e-10)
    np.testing.assert_allclose(f_big, np.tile(f_base, (8, 1)), rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="periodic"):
        B.tile_periodic(B.Structure(base.topology, base.positions, None), 2)
