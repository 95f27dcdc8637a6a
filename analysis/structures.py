"""Structures for the static precision errors: an extended XYZ file or trajectory frames.

Frames are grouped by composition (one evaluator call per group needs one list of atomic
numbers); lengths are converted to nm.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

XYZ_SUFFIXES = (".xyz", ".extxyz")
COMPRESSED_SUFFIXES = (".xz", ".gz")
ANGSTROM = 0.1  # nm


@dataclass
class StructureSet:
    """Frames with identical atoms: what one ``evaluate_frames`` call takes."""

    atomic_numbers: list[int]
    positions_nm: np.ndarray  # (n_frames, n_atoms, 3)
    boxes_nm: np.ndarray | None  # (n_frames, 3, 3), rows are box vectors; None: no PBC
    frame_indices: np.ndarray  # positions of these frames in the input file

    @property
    def n_frames(self) -> int:
        return len(self.positions_nm)


def _select(n: int, stride: int, max_frames: int | None) -> np.ndarray:
    indices = np.arange(0, n, max(1, stride))
    return indices[:max_frames] if max_frames else indices


def read_xyz(path: Path, stride: int = 1, max_frames: int | None = None) -> list[StructureSet]:
    """Extended XYZ (ASE; may be .xz/.gz compressed): Å -> nm; periodic frames keep their cell."""
    from openmm_mace_lp.systems.extxyz import read_frames

    try:
        atoms_list = read_frames(path)
    except Exception as error:  # ASE raises many types for malformed files
        raise ValueError(f"could not read {path} as (extended) XYZ: {error}") from error
    if not isinstance(atoms_list, list):
        atoms_list = [atoms_list]
    groups: dict[tuple, list[int]] = {}
    chosen = _select(len(atoms_list), stride, max_frames)
    for index in chosen:
        atoms = atoms_list[index]
        pbc = tuple(bool(p) for p in atoms.pbc)
        if any(pbc) and not all(pbc):
            raise ValueError(f"{path} frame {index} is periodic in some directions only "
                             f"(pbc={pbc}); the evaluator needs full or no periodicity.")
        key = (tuple(int(z) for z in atoms.numbers), all(pbc))
        groups.setdefault(key, []).append(int(index))
    sets = []
    for (numbers, periodic), indices in groups.items():
        positions = np.stack([atoms_list[i].positions for i in indices]) * ANGSTROM
        boxes = (np.stack([np.asarray(atoms_list[i].cell) for i in indices]) * ANGSTROM
                 if periodic else None)
        sets.append(StructureSet(list(numbers), positions, boxes, np.array(indices)))
    return sets


def read_trajectory(path: Path, topology: str | Path | None, stride: int = 1,
                    max_frames: int | None = None) -> list[StructureSet]:
    """Any MDTraj-readable trajectory (DCD needs ``topology``); nm already."""
    import mdtraj as md

    if path.suffix.lower() in (".dcd", ".xtc", ".trr", ".nc") and topology is None:
        raise ValueError(f"{path} holds no topology; pass --top topology.pdb.")
    try:
        traj = md.load(str(path), top=str(topology) if topology else None)
    except Exception as error:
        raise ValueError(f"could not read {path}: {error}") from error
    indices = _select(traj.n_frames, stride, max_frames)
    traj = traj[indices]
    numbers = []
    for atom in traj.topology.atoms:
        if atom.element is None or atom.element.atomic_number == 0:
            raise ValueError(f"atom {atom} in {topology or path} has no element; fix the "
                             "topology (element column of the PDB).")
        numbers.append(int(atom.element.atomic_number))
    boxes = None if traj.unitcell_vectors is None else traj.unitcell_vectors.astype(float)
    return [StructureSet(numbers, traj.xyz.astype(float), boxes, indices)]


def load_structures(path: str | Path, topology: str | Path | None = None, stride: int = 1,
                    max_frames: int | None = None) -> list[StructureSet]:
    """Read structures from ``path`` (.xyz/.extxyz via ASE, else MDTraj with ``topology``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"structure file {path} not found.")
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    is_xyz = suffixes[-1] in XYZ_SUFFIXES or (
        suffixes[-1] in COMPRESSED_SUFFIXES and len(suffixes) == 2 and suffixes[0] in XYZ_SUFFIXES)
    sets = (read_xyz(path, stride, max_frames) if is_xyz
            else read_trajectory(path, topology, stride, max_frames))
    if not sets or sum(s.n_frames for s in sets) == 0:
        raise ValueError(f"{path} holds no frames (after stride/max-frames).")
    return sets
