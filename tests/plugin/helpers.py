"""Test systems, models and the eager-MACE reference for the plug-in tests."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from openmm_mace_lp.upstream import import_mace

import_mace()  # before e3nn, without weakening torch.load
import openmm  # noqa: E402
import openmm.app as app  # noqa: E402
import openmm.unit as unit  # noqa: E402
import torch  # noqa: E402

from openmm_mace_lp.export import EV_TO_KJ_PER_MOL, build_force_module  # noqa: E402
from openmm_mace_lp.systems.architectures import TINY, build_mace, save_model  # noqa: E402

# A per-atom interaction-energy shift (eV) that is not zero, so that a module that lost the
# model's ScaleShift would fail the interaction-energy checks (test_parity.py).
TEST_SHIFT_EV = 0.37
# Both backends can script this one quickly on a CPU (cuEquivariance's naive path for
# max_ell=3 / correlation 3 generates ~76k lines of code); correlation 3 keeps the degree-3
# symmetric contraction that mace's run-time branching breaks under TorchScript.
ARCH_BOTH = dataclasses.replace(TINY, max_ell=1, correlation=3, shift=TEST_SHIFT_EV)
# MACE-OFF's angular structure (max_ell 3, correlation 3), e3nn backend only on the CPU.
ARCH_FULL = dataclasses.replace(TINY, shift=TEST_SHIFT_EV)

WATER_OH = 0.09572  # nm
WATER_ANGLE = np.deg2rad(104.52)


@functools.lru_cache(maxsize=None)
def model(arch_name: str = "both", seed: int = 1) -> torch.nn.Module:
    arch = {"both": ARCH_BOTH, "full": ARCH_FULL}[arch_name]
    return build_mace(arch, seed=seed)


def model_file(directory: Path, arch_name: str = "both", seed: int = 1) -> Path:
    path = directory / f"tiny-{arch_name}-{seed}.model"
    if not path.exists():
        save_model(model(arch_name, seed), path)
    return path


@dataclasses.dataclass
class TestSystem:
    topology: app.Topology
    positions: np.ndarray  # nm
    box: Optional[np.ndarray]  # nm, rows

    @property
    def atomic_numbers(self) -> list:
        return [a.element.atomic_number for a in self.topology.atoms()]


def water_box(n_per_side: int = 2, spacing: float = 0.31, seed: int = 0, box: Optional[np.ndarray] = None) -> TestSystem:
    """Waters on a jittered cubic lattice with random orientations (not equilibrated)."""
    rng = np.random.default_rng(seed)
    topology = app.Topology()
    chain = topology.addChain()
    positions = []
    h1 = np.array([WATER_OH, 0, 0])
    h2 = WATER_OH * np.array([np.cos(WATER_ANGLE), np.sin(WATER_ANGLE), 0])
    for ix in range(n_per_side):
        for iy in range(n_per_side):
            for iz in range(n_per_side):
                residue = topology.addResidue("HOH", chain)
                o_atom = topology.addAtom("O", app.element.oxygen, residue)
                topology.addBond(o_atom, topology.addAtom("H1", app.element.hydrogen, residue))
                topology.addBond(o_atom, topology.addAtom("H2", app.element.hydrogen, residue))
                q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
                o = (np.array([ix, iy, iz]) + 0.5) * spacing + rng.normal(scale=0.01, size=3)
                positions += [o, o + q @ h1, o + q @ h2]
    cell = np.eye(3) * n_per_side * spacing if box is None else box
    topology.setPeriodicBoxVectors(cell * unit.nanometer)
    return TestSystem(topology, np.array(positions), cell)


def acetamide() -> TestSystem:
    """CH3CONH2 (H, C, N, O), non-periodic."""
    from ase.build import molecule

    atoms = molecule("CH3CONH2")
    topology = app.Topology()
    residue = topology.addResidue("ACM", topology.addChain())
    for i, symbol in enumerate(atoms.get_chemical_symbols()):
        topology.addAtom(f"{symbol}{i}", app.element.get_by_symbol(symbol), residue)
    return TestSystem(topology, atoms.get_positions() / 10.0, None)


def eager_reference(model_path: Path, system: TestSystem, dtype: str = "float64"):
    """Energy (kJ/mol, total incl. E0) and forces (kJ/mol/nm) from mace's own ASE calculator."""
    energy, forces, _ = eager_reference_with_interaction(model_path, system, dtype)
    return energy, forces


def eager_reference_with_interaction(model_path: Path, system: TestSystem, dtype: str = "float64"):
    """(total energy, forces, interaction energy) from mace's own ASE calculator, kJ/mol(/nm).

    The interaction energy is the total minus each atom's E0, subtracted in float64 (mace's
    calculator reports the total only)."""
    from ase import Atoms
    from mace.calculators import MACECalculator

    from openmm_mace_lp.model_files import load_mace_model

    atoms = Atoms(numbers=system.atomic_numbers, positions=system.positions * 10.0)
    if system.box is not None:
        atoms.set_cell(system.box * 10.0)
        atoms.set_pbc(True)
    # The model is unpickled by our loader (weights_only passed explicitly), not by the
    # calculator's bare torch.load.
    calc = MACECalculator(models=[load_mace_model(model_path)], device="cpu", default_dtype=dtype)
    atoms.calc = calc
    energy_ev = float(atoms.get_potential_energy())
    forces = atoms.get_forces() * EV_TO_KJ_PER_MOL * 10.0
    table = [int(z) for z in calc.models[0].atomic_numbers]
    e0 = calc.models[0].atomic_energies_fn.atomic_energies.detach().double().numpy().reshape(-1)
    e0_sum = float(sum(e0[table.index(z)] for z in system.atomic_numbers))
    return energy_ev * EV_TO_KJ_PER_MOL, forces, (energy_ev - e0_sum) * EV_TO_KJ_PER_MOL


def torchforce_system(path: Path, system: TestSystem) -> openmm.System:
    """A periodic System holding only an exported file in plain openmm-torch (no plug-in)."""
    from openmm_mace_lp.potential import import_openmmtorch

    omm = openmm.System()
    for atom in system.topology.atoms():
        omm.addParticle(atom.element.mass)
    omm.setDefaultPeriodicBoxVectors(*system.box)
    force = import_openmmtorch().TorchForce(str(path))
    force.setOutputsForces(True)
    force.setUsesPeriodicBoundaryConditions(True)
    omm.addForce(force)
    return omm


def openmm_state(system_obj: openmm.System, system: TestSystem, platform: str = "Reference"):
    """Energy and forces of an OpenMM System at the test positions."""
    integrator = openmm.VerletIntegrator(0.0005)
    context = openmm.Context(system_obj, integrator, openmm.Platform.getPlatformByName(platform))
    if system.box is not None:
        context.setPeriodicBoxVectors(*system.box)
    context.setPositions(system.positions)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return energy, np.asarray(forces)


@functools.lru_cache(maxsize=None)
def _scripted(arch_name: str, policy: str, backend: str, numbers: tuple, periodic: bool, energy: str):
    return build_force_module(model(arch_name), policy, backend, list(numbers), periodic=periodic, energy_type=energy)


def evaluate(system: TestSystem, policy: str = "fp64", backend: str = "e3nn", arch_name: str = "both",
             positions: Optional[np.ndarray] = None, box: Optional[np.ndarray] = None,
             numbers: Optional[Sequence[int]] = None, energy: str = "interaction_energy"):
    """Call the scripted force module directly (no OpenMM) and return float64 numpy results."""
    numbers = tuple(system.atomic_numbers if numbers is None else numbers)
    box = system.box if box is None else box
    module = _scripted(arch_name, policy, backend, numbers, box is not None, energy)
    pos = torch.tensor(system.positions if positions is None else positions, dtype=torch.float64)
    cell = None if box is None else torch.tensor(box, dtype=torch.float64)
    e, f = module(pos, cell)
    return float(e), f.detach().double().numpy()


def rel_error(value: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))
