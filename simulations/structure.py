"""The starting structure of a run: topology, positions and box, from the config's [system].

Cheap (no model involved), so it runs before the model is exported: a structure that cannot
do what the config asks (e.g. NPT without a periodic box) fails before any GPU time is spent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import SystemConfig


@dataclass
class StartStructure:
    topology: Any  # openmm.app.Topology
    positions: np.ndarray  # (n_atoms, 3) nm
    box: np.ndarray | None  # (3, 3) nm, rows are the box vectors; None: not periodic
    source: str  # what it was built or read from (for the log and manifest)

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])


def load_structure(system: SystemConfig) -> StartStructure:
    """Build or read the structure the config describes."""
    if system.pdb is not None:
        structure = read_structure_file(system.pdb)
    else:
        structure = water_structure(system.water_molecules or 64, system.density_g_cm3,
                                    system.structure_seed)
    if system.state is not None:
        structure = with_state(structure, system.state)
    return structure


def water_structure(n_molecules: int, density: float, seed: int) -> StartStructure:
    """A water box from ``openmm_mace_lp.systems.builders``: the committed PDB when one matches
    (64, 343 or 1000 molecules at 1 g/cm^3, seed 0), else a freshly packed box."""
    from openmm_mace_lp.systems import builders

    ready = builders.READY_WATER_BOXES.get(n_molecules)
    if ready and seed == 0 and density == 1.0 and (builders.STRUCTURES_DIR / ready).is_file():
        return read_structure_file(builders.STRUCTURES_DIR / ready)
    built = builders.water_box(n_molecules, density_g_cm3=density, seed=seed)
    return StartStructure(built.topology, np.asarray(built.positions, float),
                          None if built.box is None else np.asarray(built.box, float),
                          f"water_box({n_molecules}, {density} g/cm3, seed={seed})")


def read_structure_file(path: str | Path) -> StartStructure:
    """A PDB or PDBx/mmCIF file; its unit cell (if any) becomes the periodic box."""
    from openmm.app import PDBFile, PDBxFile

    path = Path(path)
    reader = PDBxFile if path.suffix.lower() in (".cif", ".pdbx") else PDBFile
    try:
        structure = reader(str(path))
    except Exception as error:  # noqa: BLE001 - the readers raise many types
        raise ValueError(f"system.pdb = {str(path)!r} cannot be read as {reader.__name__} "
                         f"({error}); pass a PDB or PDBx file.") from None
    # OpenMM's readers accept files without atoms, or with atoms that name no element (a broken
    # or foreign file read as PDBx): neither is a structure MACE can run.
    atoms = list(structure.topology.atoms())
    unnamed = [atom.name for atom in atoms if atom.element is None]
    if not atoms or unnamed:
        problem = "it holds no atoms" if not atoms else (
            f"{len(unnamed)} of its {len(atoms)} atoms name no element (first: {unnamed[0]!r})")
        raise ValueError(f"system.pdb = {str(path)!r} cannot be read as {reader.__name__}: {problem}; pass a "
                         "PDB or PDBx file of the starting structure whose atoms name their elements.")
    positions = np.asarray(structure.getPositions(asNumpy=True).value_in_unit_system(_md_units()))
    vectors = structure.topology.getPeriodicBoxVectors()
    box = None if vectors is None else np.array([[v[i].value_in_unit_system(_md_units())
                                                   for i in range(3)] for v in vectors])
    return StartStructure(structure.topology, positions, box, str(path))


def _md_units():
    from openmm import unit

    return unit.md_unit_system


def with_state(structure: StartStructure, state_path: str | Path) -> StartStructure:
    """Replace positions (and box) by those of an OpenMM State XML file (e.g. a shared start)."""
    state = read_state_xml(state_path)
    positions = np.asarray(state.getPositions(asNumpy=True).value_in_unit_system(_md_units()))
    if positions.shape[0] != structure.n_atoms:
        raise ValueError(f"system.state = {str(state_path)!r} has {positions.shape[0]} atoms but the "
                         f"structure ({structure.source}) has {structure.n_atoms}; they must describe "
                         "the same system.")
    box = structure.box
    if structure.box is not None:
        box = np.array([[v[i] for i in range(3)] for v in
                        state.getPeriodicBoxVectors().value_in_unit_system(_md_units())])
    return StartStructure(structure.topology, positions, box, f"{structure.source} + {state_path}")


def read_state_xml(path: str | Path):
    """An OpenMM State from XmlSerializer output, with a clear error otherwise."""
    import openmm

    try:
        state = openmm.XmlSerializer.deserialize(Path(path).read_text())
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{path} is not an OpenMM State XML file ({error}).") from None
    if not isinstance(state, openmm.State):
        raise ValueError(f"{path} holds a serialized {type(state).__name__}, not a State.")
    return state


def check_structure(structure: StartStructure, ensemble: str) -> None:
    """Fail early on a structure that cannot run the requested ensemble."""
    if structure.n_atoms == 0:
        raise ValueError(f"the structure {structure.source} has no atoms.")
    if ensemble == "npt" and structure.box is None:
        raise ValueError(f"ensemble = 'npt' needs a periodic box, but {structure.source} has none "
                         "(no CRYST1 record); add a box or run nvt/nve.")
    if not np.all(np.isfinite(structure.positions)):
        raise ValueError(f"the structure {structure.source} has non-finite coordinates.")
    missing = [a.index for a in structure.topology.atoms() if a.element is None]
    if missing:
        raise ValueError(f"atoms {missing[:5]} of {structure.source} have no element; MACE needs "
                         "one for every atom (check the element columns of the PDB).")
