"""Reproducible structure builders: water boxes, organic molecules and liquids, diamond.

Every builder is deterministic for a given ``seed`` and returns a :class:`Structure`
``(topology, positions, box)``:

* ``topology``  -- an :class:`openmm.app.Topology` with elements, residues and bonds
  (periodic box vectors set on it for periodic structures);
* ``positions`` -- ``numpy.ndarray`` of shape ``(n_atoms, 3)`` in **nanometres**;
* ``box``       -- ``numpy.ndarray`` of shape ``(3, 3)`` in nanometres (rows are the box
  vectors), or ``None`` for a non-periodic molecule.

``Structure`` is a named tuple, so ``top, pos, box = water_box(343)`` works.

Liquids are packed without overlaps: molecule centres sit on the lattice (simple cubic,
body-centred or face-centred cubic, whichever gives the widest spacing for the number of
molecules) that fills the box exactly at the requested density, with a small random
jitter; each molecule gets a random orientation, re-drawn until no atom is closer than
``min_distance`` to an atom of another molecule.  The density is exact by construction
(the box edge follows from the molecule count and the mass density).  The structures are
clash-free starting points, not equilibrated liquids: minimise and equilibrate before
production MD.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
from scipy.constants import Avogadro as AVOGADRO  # the project's one N_A (CODATA)

STRUCTURES_DIR = Path(__file__).resolve().parent / "structures"

# Water geometry used for packing (flexible TIP3P equilibrium: r(OH) 0.9572 A, 104.52 deg).
_R_OH = 0.9572
_THETA_HOH = np.deg2rad(104.52)
WATER_TEMPLATE = np.array(
    [
        [0.0, 0.0, 0.0],
        [_R_OH, 0.0, 0.0],
        [_R_OH * np.cos(_THETA_HOH), _R_OH * np.sin(_THETA_HOH), 0.0],
    ]
)  # Angstrom, O H H

# Ready water boxes committed in systems/structures (file -> molecules).
READY_WATER_BOXES = {64: "water_64.pdb", 343: "water_343.pdb", 1000: "water_1000.pdb"}


class Structure(NamedTuple):
    topology: "openmm.app.Topology"  # noqa: F821
    positions: np.ndarray  # (n_atoms, 3) nm
    box: Optional[np.ndarray]  # (3, 3) nm or None


# ----------------------------------------------------------------------------- helpers


def _element(symbol: str):
    from openmm.app import Element

    return Element.getBySymbol(symbol)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation matrix (from a normalised 4D Gaussian quaternion)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _lattice_sites(n: int, length: float) -> tuple[np.ndarray, float]:
    """Sites of the cubic lattice (sc, bcc or fcc) with >= n sites in a cube of edge
    ``length`` whose nearest-neighbour distance is largest.  Returns (sites, nn_distance)."""
    best = None
    for basis, nn_factor in (
        (np.zeros((1, 3)), 1.0),  # simple cubic
        (np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), np.sqrt(3) / 2),  # bcc
        (np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]), 1 / np.sqrt(2)),
    ):
        m = 1
        while len(basis) * m**3 < n:
            m += 1
        nn = length / m * nn_factor
        if best is None or nn > best[2] + 1e-12:
            best = (basis, m, nn)
    basis, m, nn = best
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = (grid[:, None, :] + basis[None, :, :]).reshape(-1, 3) * (length / m)
    return sites, nn


def pack_molecules(
    template: np.ndarray,
    n: int,
    box_length: float,
    seed: int = 0,
    min_distance: float = 2.0,
    max_tries: int = 200,
    jitter: float = 0.1,
) -> tuple[np.ndarray, float]:
    """Place ``n`` copies of ``template`` (Angstrom, (k, 3)) in a periodic cube of edge
    ``box_length`` (Angstrom) without intermolecular contacts below ``min_distance``.

    Returns (positions (n*k, 3) in Angstrom, the smallest intermolecular distance reached).
    Molecules are kept whole (atoms may stick out of the primary cell)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    tmpl = np.asarray(template, float)
    tmpl = tmpl - tmpl.mean(axis=0)
    radius = float(np.max(np.linalg.norm(tmpl, axis=1)))
    sites, _ = _lattice_sites(n, box_length)
    centres = sites[np.sort(rng.choice(len(sites), size=n, replace=False))]
    centres = centres + rng.normal(scale=jitter, size=centres.shape)
    centres %= box_length
    tree = cKDTree(centres, boxsize=box_length)
    neighbours = tree.query_ball_point(centres, r=2 * radius + min_distance)
    k = len(tmpl)
    pos = np.zeros((n, k, 3))
    placed = np.zeros(n, bool)
    worst = np.inf
    for i in range(n):
        nb = [j for j in neighbours[i] if placed[j] and j != i]
        others = pos[nb].reshape(-1, 3) if nb else np.zeros((0, 3))
        best_d, best_xyz = -1.0, None
        for _ in range(max_tries):
            xyz = tmpl @ _random_rotation(rng).T + centres[i]
            if len(others) == 0:
                best_d, best_xyz = np.inf, xyz
                break
            d = xyz[:, None, :] - others[None, :, :]
            d -= box_length * np.round(d / box_length)
            dmin = float(np.sqrt((d**2).sum(-1)).min())
            if dmin > best_d:
                best_d, best_xyz = dmin, xyz
            if dmin >= min_distance:
                break
        pos[i] = best_xyz
        placed[i] = True
    # Refinement passes: re-orient molecules that still touch a neighbour, now that all
    # neighbours are placed.
    for _ in range(5):
        worst, bad = np.inf, []
        for i in range(n):
            d = _min_dist_to(pos[i], pos[[j for j in neighbours[i] if j != i]], box_length)
            worst = min(worst, d)
            if d < min_distance:
                bad.append(i)
        if not bad:
            break
        for i in bad:
            others = pos[[j for j in neighbours[i] if j != i]]
            best_d, best_xyz = _min_dist_to(pos[i], others, box_length), pos[i]
            for _ in range(max_tries):
                xyz = tmpl @ _random_rotation(rng).T + centres[i]
                dmin = _min_dist_to(xyz, others, box_length)
                if dmin > best_d:
                    best_d, best_xyz = dmin, xyz
                if dmin >= min_distance:
                    break
            pos[i] = best_xyz
    worst = min(_min_dist_to(pos[i], pos[[j for j in neighbours[i] if j != i]], box_length)
                for i in range(n))
    return pos.reshape(-1, 3), worst


def _min_dist_to(xyz: np.ndarray, others: np.ndarray, box_length: float) -> float:
    others = others.reshape(-1, 3)
    if len(others) == 0:
        return np.inf
    d = xyz[:, None, :] - others[None, :, :]
    d -= box_length * np.round(d / box_length)
    return float(np.sqrt((d**2).sum(-1)).min())


def _box_length_angstrom(n: int, molar_mass: float, density_g_cm3: float) -> float:
    volume_cm3 = n * molar_mass / AVOGADRO / density_g_cm3
    return (volume_cm3 * 1e24) ** (1.0 / 3.0)


def _set_box(topology, box_nm: np.ndarray) -> None:
    from openmm import Vec3
    from openmm.unit import nanometer

    topology.setPeriodicBoxVectors([Vec3(*map(float, row)) for row in box_nm] * nanometer)


def _molecule_topology(
    symbols: Sequence[str],
    bonds: Sequence[tuple[int, int]],
    n_copies: int,
    resname: str,
    atom_names: Optional[Sequence[str]] = None,
    max_residues_per_chain: int = 9999,
):
    """Topology of n_copies of one molecule, one residue each, chains of <= 9999 residues
    (PDB residue numbers have four digits)."""
    from openmm.app import Topology

    if atom_names is None:
        atom_names = _default_atom_names(symbols)
    top = Topology()
    chain = None
    for c in range(n_copies):
        if c % max_residues_per_chain == 0:
            chain = top.addChain()
        res = top.addResidue(resname, chain)
        atoms = [top.addAtom(nm, _element(s), res) for nm, s in zip(atom_names, symbols)]
        for a, b in bonds:
            top.addBond(atoms[a], atoms[b])
    return top


def _default_atom_names(symbols: Sequence[str]) -> list[str]:
    counts: dict[str, int] = {}
    names = []
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
        names.append(f"{s.upper()}{counts[s]}")
    return names


def _bonds_from_distances(symbols: Sequence[str], xyz: np.ndarray, scale: float = 1.2):
    """Covalent bonds: pairs closer than scale * (r_cov,i + r_cov,j)."""
    from ase.data import atomic_numbers, covalent_radii

    r = np.array([covalent_radii[atomic_numbers[s]] for s in symbols])
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    bonds = []
    for i in range(len(symbols)):
        for j in range(i + 1, len(symbols)):
            if d[i, j] < scale * (r[i] + r[j]):
                bonds.append((i, j))
    return bonds


def density_g_cm3(topology, box_nm: np.ndarray) -> float:
    """Mass density of a periodic topology (g/cm^3)."""
    mass = sum(a.element.mass._value for a in topology.atoms())  # g/mol (dalton)
    volume_cm3 = abs(np.linalg.det(np.asarray(box_nm, float))) * 1e-21
    return mass / AVOGADRO / volume_cm3


def min_intermolecular_distance(topology, positions_nm: np.ndarray, box_nm=None) -> float:
    """Smallest distance (nm) between atoms of different residues (minimum image for an
    orthorhombic box).  O(N log N) with a k-d tree."""
    from scipy.spatial import cKDTree

    pos = np.asarray(positions_nm, float)
    res = np.array([a.residue.index for a in topology.atoms()])
    if box_nm is not None:
        L = np.diag(np.asarray(box_nm, float))
        tree = cKDTree(pos % L, boxsize=L)
    else:
        tree = cKDTree(pos)
    r = 0.3
    pairs = np.array(sorted(tree.query_pairs(r)))
    if len(pairs) == 0:
        return np.inf
    pairs = pairs[res[pairs[:, 0]] != res[pairs[:, 1]]]
    if len(pairs) == 0:
        return np.inf
    d = pos[pairs[:, 0]] - pos[pairs[:, 1]]
    if box_nm is not None:
        d -= L * np.round(d / L)
    return float(np.sqrt((d**2).sum(-1)).min())


# ----------------------------------------------------------------------------- water


def water_box(
    n_molecules: Optional[int] = None,
    density_g_cm3: float = 1.0,
    seed: int = 0,
    target_atoms: Optional[int] = None,
    min_distance: float = 2.0,
) -> Structure:
    """Periodic cubic box of ``n_molecules`` waters (or ``round(target_atoms / 3)``) at the
    given mass density.  Residues ``HOH`` with atoms ``O``, ``H1``, ``H2`` and O-H bonds
    (OpenMM's water templates match it).  ``min_distance`` (Angstrom) is the smallest
    allowed distance between atoms of different molecules."""
    if n_molecules is None:
        if target_atoms is None:
            raise ValueError("give n_molecules or target_atoms")
        n_molecules = max(1, int(round(target_atoms / 3)))
    molar = _element("O").mass._value + 2 * _element("H").mass._value
    L = _box_length_angstrom(n_molecules, molar, density_g_cm3)
    xyz, _ = pack_molecules(WATER_TEMPLATE, n_molecules, L, seed=seed, min_distance=min_distance)
    top = _molecule_topology(["O", "H", "H"], [(0, 1), (0, 2)], n_molecules, "HOH",
                             atom_names=["O", "H1", "H2"])
    box = np.eye(3) * L / 10.0
    _set_box(top, box)
    return Structure(top, xyz / 10.0, box)


def water_topology(n_molecules: int, box_nm: Optional[np.ndarray] = None):
    top = _molecule_topology(["O", "H", "H"], [(0, 1), (0, 2)], n_molecules, "HOH",
                             atom_names=["O", "H1", "H2"])
    if box_nm is not None:
        _set_box(top, box_nm)
    return top


def load_water_box(n_atoms_approx: int, seed: int = 0, cache: bool = True) -> Structure:
    """Water box at 1 g/cm^3 with about ``n_atoms_approx`` atoms.

    The committed boxes (``systems/structures/water_{64,343,1000}.pdb``: 192, 1029 and 3000
    atoms) are read when the request is within 10 % of them (seed 0 only); any other size is
    built with :func:`water_box` (``n = round(n_atoms_approx / 3)`` molecules) and cached as
    ``.npz`` under ``$OPENMM_MACE_LP_CACHE/structures`` (default ``~/.cache/openmm-mace-lp``, the package's cache),
    e.g. 10000 atoms -> 3333 waters, 30000 atoms -> 10000 waters."""
    from openmm.app import PDBFile

    if seed == 0:
        for n_mol, fname in READY_WATER_BOXES.items():
            if abs(3 * n_mol - n_atoms_approx) <= 0.1 * 3 * n_mol and (STRUCTURES_DIR / fname).exists():
                pdb = PDBFile(str(STRUCTURES_DIR / fname))
                pos = np.array(pdb.getPositions(asNumpy=True)._value)
                box = np.array(pdb.topology.getPeriodicBoxVectors()._value)
                return Structure(pdb.topology, pos, box)
    n = max(1, int(round(n_atoms_approx / 3)))
    key = hashlib.sha1(f"water_box-v1-{n}-1.0-{seed}".encode()).hexdigest()[:10]
    from openmm_mace_lp.model_files import cache_dir

    path = cache_dir() / "structures" / f"water_{n}_seed{seed}_{key}.npz"
    if cache and path.exists():
        data = np.load(path)
        return Structure(water_topology(n, data["box"]), data["positions"], data["box"])
    s = water_box(n, 1.0, seed=seed)
    if cache:
        from openmm_mace_lp.atomic import atomic_path

        with atomic_path(path) as tmp:
            np.savez(tmp, positions=s.positions, box=s.box)
    return s


def tile_periodic(structure: Structure, copies: int) -> Structure:
    """The periodic ``structure`` repeated ``copies`` times along each box vector.

    By periodicity each copy of an atom feels exactly the forces of the original (same
    neighbourhood), so the small box's reference forces, tiled in this order (copy by copy,
    ``np.tile(forces, (copies**3, 1))``), are the exact reference of the big one.
    """
    if structure.box is None:
        raise ValueError("tile_periodic needs a periodic structure (box vectors)")
    from openmm.app import Topology

    box = np.asarray(structure.box)
    offsets = [i * box[0] + j * box[1] + k * box[2]
               for i in range(copies) for j in range(copies) for k in range(copies)]
    positions = np.concatenate([structure.positions + offset for offset in offsets])
    topology = Topology()
    for _ in offsets:
        chain = topology.addChain()
        atoms = {}
        for residue in structure.topology.residues():
            new_residue = topology.addResidue(residue.name, chain)
            for atom in residue.atoms():
                atoms[atom.index] = topology.addAtom(atom.name, atom.element, new_residue)
        for bond in structure.topology.bonds():
            topology.addBond(atoms[bond[0].index], atoms[bond[1].index])
    _set_box(topology, box * copies)
    return Structure(topology, positions, box * copies)


def tiled_water_box(n_atoms_approx: int, max_base_atoms: int = 3000) -> tuple[Structure, Structure, int]:
    """(big box, base box, copies per axis): a 1 g/cm3 water box of about ``n_atoms_approx``
    atoms made of copies**3 copies of a base box of at most ``max_base_atoms`` atoms, so that
    the base box's reference (e.g. eager float64 MACE) checks the big one exactly."""
    copies = 1
    while n_atoms_approx / copies**3 > max_base_atoms:
        copies += 1
    base = load_water_box(int(round(n_atoms_approx / copies**3)))
    return tile_periodic(base, copies), base, copies


# ----------------------------------------------------------------------------- organics

# name -> (ASE g2 key, residue name)
_G2_MOLECULES = {
    "water": ("H2O", "HOH"),
    "methanol": ("CH3OH", "MOH"),
    "ethanol": ("CH3CH2OH", "EOH"),
    "acetic_acid": ("CH3COOH", "ACY"),
    "formic_acid": ("HCOOH", "FMT"),
    "acetamide": ("CH3CONH2", "ACM"),
    "methylamine": ("H3CNH2", "MEA"),
    "acetone": ("CH3COCH3", "ACN"),
    "dimethyl_ether": ("CH3OCH3", "DME"),
    "methanethiol": ("CH3SH", "MSH"),
    "chloromethane": ("CH3Cl", "CMH"),
    "trifluoromethane": ("HCF3", "FMM"),
}

ORGANIC_MOLECULES = tuple(_G2_MOLECULES) + ("alanine_dipeptide",)


def _place(a, b, c, bond, angle_deg, torsion_deg):
    """Natural-extension reference frame: position of d with |cd| = bond, angle bcd and
    dihedral abcd (degrees)."""
    angle, torsion = np.deg2rad(angle_deg), np.deg2rad(torsion_deg)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array([-bond * np.cos(angle), bond * np.sin(angle) * np.cos(torsion),
                   bond * np.sin(angle) * np.sin(torsion)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def _alanine_dipeptide_geometry(phi: float = -75.0, psi: float = 145.0):
    """ACE-ALA-NME (L-alanine) from standard peptide internal coordinates (Angstrom,
    degrees).  Returns {(residue, atom name): xyz}."""
    P = {}
    P["ACE", "CH3"] = np.zeros(3)
    P["ACE", "C"] = np.array([1.52, 0.0, 0.0])
    ang = np.deg2rad(116.6)
    P["ALA", "N"] = P["ACE", "C"] + 1.33 * np.array([-np.cos(ang), np.sin(ang), 0.0])
    P["ACE", "O"] = _place(P["ACE", "CH3"], P["ALA", "N"], P["ACE", "C"], 1.23, 122.9, 180.0)
    P["ALA", "CA"] = _place(P["ACE", "CH3"], P["ACE", "C"], P["ALA", "N"], 1.46, 121.7, 180.0)
    P["ALA", "C"] = _place(P["ACE", "C"], P["ALA", "N"], P["ALA", "CA"], 1.52, 111.2, phi)
    P["NME", "N"] = _place(P["ALA", "N"], P["ALA", "CA"], P["ALA", "C"], 1.33, 116.2, psi)
    P["ALA", "O"] = _place(P["ALA", "CA"], P["NME", "N"], P["ALA", "C"], 1.23, 122.7, 180.0)
    P["NME", "C"] = _place(P["ALA", "CA"], P["ALA", "C"], P["NME", "N"], 1.46, 121.7, 180.0)
    # CB / HA: the two remaining tetrahedral slots on CA; pick the L (S) configuration,
    # for which (N - CA) . ((C - CA) x (CB - CA)) > 0.
    for sign in (1.0, -1.0):
        cb = _place(P["ALA", "C"], P["ALA", "N"], P["ALA", "CA"], 1.53, 110.5, sign * 122.0)
        ca = P["ALA", "CA"]
        if np.dot(P["ALA", "N"] - ca, np.cross(P["ALA", "C"] - ca, cb - ca)) > 0:
            P["ALA", "CB"] = cb
            P["ALA", "HA"] = _place(P["ALA", "C"], P["ALA", "N"], ca, 1.09, 109.5, -sign * 118.0)
            break
    P["ALA", "H"] = _place(P["ACE", "O"], P["ACE", "C"], P["ALA", "N"], 1.01, 119.0, 180.0)
    P["NME", "H"] = _place(P["ALA", "O"], P["ALA", "C"], P["NME", "N"], 1.01, 119.0, 180.0)
    for k, t in zip(("H1", "H2", "H3"), (0.0, 120.0, 240.0)):
        P["ACE", k] = _place(P["ACE", "O"], P["ACE", "C"], P["ACE", "CH3"], 1.09, 109.5, t)
    for k, t in zip(("HB1", "HB2", "HB3"), (60.0, 180.0, 300.0)):
        P["ALA", k] = _place(P["ALA", "N"], P["ALA", "CA"], P["ALA", "CB"], 1.09, 110.0, t)
    for k, t in zip(("H1", "H2", "H3"), (60.0, 180.0, 300.0)):
        P["NME", k] = _place(P["ALA", "C"], P["NME", "N"], P["NME", "C"], 1.09, 109.5, t)
    return P


_ALA2_ATOMS = {
    "ACE": ["H1", "CH3", "H2", "H3", "C", "O"],
    "ALA": ["N", "H", "CA", "HA", "CB", "HB1", "HB2", "HB3", "C", "O"],
    "NME": ["N", "H", "C", "H1", "H2", "H3"],
}
_ALA2_BONDS = [
    (("ACE", "CH3"), ("ACE", "H1")), (("ACE", "CH3"), ("ACE", "H2")), (("ACE", "CH3"), ("ACE", "H3")),
    (("ACE", "CH3"), ("ACE", "C")), (("ACE", "C"), ("ACE", "O")), (("ACE", "C"), ("ALA", "N")),
    (("ALA", "N"), ("ALA", "H")), (("ALA", "N"), ("ALA", "CA")), (("ALA", "CA"), ("ALA", "HA")),
    (("ALA", "CA"), ("ALA", "CB")), (("ALA", "CB"), ("ALA", "HB1")), (("ALA", "CB"), ("ALA", "HB2")),
    (("ALA", "CB"), ("ALA", "HB3")), (("ALA", "CA"), ("ALA", "C")), (("ALA", "C"), ("ALA", "O")),
    (("ALA", "C"), ("NME", "N")), (("NME", "N"), ("NME", "H")), (("NME", "N"), ("NME", "C")),
    (("NME", "C"), ("NME", "H1")), (("NME", "C"), ("NME", "H2")), (("NME", "C"), ("NME", "H3")),
]


def _alanine_dipeptide() -> Structure:
    from openmm.app import Topology

    P = _alanine_dipeptide_geometry()
    top = Topology()
    chain = top.addChain()
    atoms, xyz = {}, []
    for resname, names in _ALA2_ATOMS.items():
        res = top.addResidue(resname, chain)
        for nm in names:
            el = "H" if nm.startswith("H") else nm[0]
            atoms[resname, nm] = top.addAtom(nm, _element(el), res)
            xyz.append(P[resname, nm])
    for a, b in _ALA2_BONDS:
        top.addBond(atoms[a], atoms[b])
    return Structure(top, np.array(xyz) / 10.0, None)


def organic_molecule(name: str) -> Structure:
    """A small molecule of MACE-OFF elements as an OpenMM topology with bonds.

    ``name`` is one of :data:`ORGANIC_MOLECULES`: g2-set molecules from ``ase.build.molecule``
    (methanol, ethanol, acetic_acid, formic_acid, acetamide, methylamine, acetone,
    dimethyl_ether, methanethiol, chloromethane, trifluoromethane, water; bonds from covalent
    radii) or ``alanine_dipeptide`` (ACE-ALA-NME, L, built from standard internal
    coordinates with Amber atom names, phi/psi = -75/145 deg; not minimised -- the
    committed ``structures/alanine_dipeptide.pdb`` is minimised with Amber ff14SB).
    Positions in nm centred at the origin; ``box`` is None."""
    key = name.lower().replace("-", "_").replace(" ", "_")
    if key == "alanine_dipeptide":
        return _alanine_dipeptide()
    if key not in _G2_MOLECULES:
        raise KeyError(f"unknown molecule {name!r}; known: {', '.join(ORGANIC_MOLECULES)}")
    from ase.build import molecule

    g2, resname = _G2_MOLECULES[key]
    mol = molecule(g2)
    symbols = mol.get_chemical_symbols()
    xyz = mol.positions - mol.positions.mean(axis=0)
    bonds = _bonds_from_distances(symbols, xyz)
    names = ["O", "H1", "H2"] if key == "water" else None
    top = _molecule_topology(symbols, bonds, 1, resname, atom_names=names)
    return Structure(top, xyz / 10.0, None)


def molecular_liquid(name: str, n: int, density_g_cm3: float, seed: int = 0,
                     min_distance: float = 2.0) -> Structure:
    """Periodic cubic box of ``n`` copies of :func:`organic_molecule` ``(name)``."""
    mol = organic_molecule(name)
    symbols = [a.element.symbol for a in mol.topology.atoms()]
    bonds = [(b[0].index, b[1].index) for b in mol.topology.bonds()]
    names = [a.name for a in mol.topology.atoms()]
    resname = next(mol.topology.residues()).name
    molar = sum(a.element.mass._value for a in mol.topology.atoms())
    L = _box_length_angstrom(n, molar, density_g_cm3)
    xyz, _ = pack_molecules(mol.positions * 10.0, n, L, seed=seed, min_distance=min_distance)
    top = _molecule_topology(symbols, bonds, n, resname, atom_names=names)
    box = np.eye(3) * L / 10.0
    _set_box(top, box)
    return Structure(top, xyz / 10.0, box)


def methanol_liquid(n: int = 128, density_g_cm3: float = 0.7866, seed: int = 0) -> Structure:
    """Liquid methanol (default 298 K experimental density 0.7866 g/cm^3)."""
    return molecular_liquid("methanol", n, density_g_cm3, seed=seed)


# ----------------------------------------------------------------------------- diamond


def diamond_supercell(n: int = 3, a: float = 3.567) -> Structure:
    """Periodic n x n x n supercell of the 8-atom conventional cubic diamond cell
    (8 n^3 carbon atoms, lattice constant ``a`` in Angstrom; experiment 3.567 A).
    One residue ``DIA`` per atom, C-C bonds between nearest neighbours (1.545 A) are
    not added (the MACE force needs none; a periodic bond graph confuses PDB writers)."""
    from ase.build import bulk
    from openmm.app import Topology

    at = bulk("C", "diamond", a=a, cubic=True).repeat((n, n, n))
    top = Topology()
    chain = top.addChain()
    for i in range(len(at)):
        res = top.addResidue("DIA", chain)
        top.addAtom("C", _element("C"), res)
    box = np.array(at.cell) / 10.0
    _set_box(top, box)
    return Structure(top, at.positions / 10.0, box)


__all__ = [
    "Structure", "water_box", "load_water_box", "water_topology", "organic_molecule",
    "molecular_liquid", "methanol_liquid", "diamond_supercell", "pack_molecules",
    "density_g_cm3", "min_intermolecular_distance", "ORGANIC_MOLECULES", "READY_WATER_BOXES",
]
