"""OpenMM objects of a run: the System (MACE TorchForce + barostat), integrators, Simulation.

Seeds are always set explicitly (OpenMM's default 0 means "a new random seed each time",
which no one can repeat). The System's default box is set from the exact starting box, so a
resumed run (which reads its structure back from the run directory) builds a System that is
bit-for-bit the one of the original run: the barostat derives its initial step size from it.
"""
from __future__ import annotations

import logging

import numpy as np

from .config import SimulationConfig
from .structure import StartStructure

logger = logging.getLogger("openmm_mace_lp.simulations")

LANGEVIN = "langevin"
VERLET = "verlet"


def apply_cpu_threads(config: SimulationConfig) -> None:
    """Set torch's intra-op thread count for a model on the CPU (``platform.cpu_threads``)."""
    if config.platform.device == "cpu" and config.platform.cpu_threads > 0:
        import torch

        torch.set_num_threads(config.platform.cpu_threads)


def create_system(config: SimulationConfig, structure: StartStructure, margin: float | None = None):
    """The MACE System for the structure (this exports the TorchScript module: the expensive
    part of setting up, cached on disk per model, policy, backend and atoms). The structure's
    positions and box size a fixed-capacity neighbour list, with ``margin`` (default
    ``model.neighbor_margin``) of extra edges. ``model.kind = "amoeba"`` builds the teacher's
    own System instead."""
    import openmm

    if config.model.kind == "amoeba":
        system = amoeba_system(structure)
    else:
        system = mace_system(config, structure, margin)
        if config.ensemble == "npt" and config.barostat.scale_molecules:
            add_molecule_bonds(system, structure.topology)
    if structure.box is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*map(float, row)) for row in structure.box])
    if config.ensemble == "npt":
        system.addForce(create_barostat(config))
    return system


def amoeba_system(structure: StartStructure):
    """The embedded model's teacher (AMOEBA water) with the settings of its own MD."""
    from openmm_mace_lp.systems.recipes.teachers import AmoebaTeacher

    return AmoebaTeacher().create_system(_topology_with_box(structure), periodic=structure.box is not None,
                                         polarization="extrapolated")


def _topology_with_box(structure: StartStructure):
    """The structure's topology, carrying its box when it has one."""
    import openmm

    topology = structure.topology
    if structure.box is not None:
        topology.setPeriodicBoxVectors([openmm.Vec3(*map(float, row)) for row in structure.box])
    return topology


def add_molecule_bonds(system, topology) -> None:
    """The topology's bonds as a HarmonicBondForce with zero force constants: no energy or
    force, but OpenMM's Context.getMolecules() (which MonteCarloBarostat uses to scale
    molecule centres) finds molecules only through bonded forces and constraints."""
    import openmm

    bonds = openmm.HarmonicBondForce()
    bonds.setName("MoleculeBonds")
    for bond in topology.bonds():
        bonds.addBond(bond[0].index, bond[1].index, 0.1, 0.0)
    if bonds.getNumBonds():
        system.addForce(bonds)


def mace_system(config: SimulationConfig, structure: StartStructure, margin: float | None = None):
    """The plug-in's MACE System (TorchForce) for the structure."""
    from openmmml import MLPotential

    apply_cpu_threads(config)

    model_path = None if config.model.path == "default" else config.model.path
    potential = MLPotential("mace-lp", modelPath=model_path, policy=config.model.policy,
                            backend=config.model.backend)
    topology = _topology_with_box(structure)
    margin = margin or config.model.neighbor_margin or (0.1 if config.ensemble == "npt" else 0.05)
    neighbors = config.model.neighbor_list
    system = potential.createSystem(
        topology, device=config.platform.device, platform=config.platform.name,
        cudaGraphs=cuda_graphs_argument(config.model.cuda_graphs, neighbors),
        fixedNeighborList=None if neighbors == "auto" else neighbors == "fixed",
        positions=structure.positions, neighborMargin=margin, compiler=config.model.compiler)
    return system


def cuda_graphs_argument(cuda_graphs: "bool | str", neighbors: str) -> "bool | None":
    """``createSystem``'s cudaGraphs: None lets the plug-in decide by size ("auto")."""
    if neighbors == "dynamic":
        return False
    return None if cuda_graphs == "auto" else bool(cuda_graphs)


def create_barostat(config: SimulationConfig):
    """MonteCarloBarostat (isotropic) or MonteCarloAnisotropicBarostat, seeded."""
    import openmm
    from openmm import unit

    baro = config.barostat
    temperature = config.integrator.temperature_K * unit.kelvin
    if baro.mode == "anisotropic":
        pressure = openmm.Vec3(baro.pressure_bar, baro.pressure_bar, baro.pressure_bar) * unit.bar
        barostat = openmm.MonteCarloAnisotropicBarostat(pressure, temperature, True, True, True,
                                                        baro.interval_steps)
    else:
        barostat = openmm.MonteCarloBarostat(baro.pressure_bar * unit.bar, temperature,
                                             baro.interval_steps)
    barostat.setRandomNumberSeed(config.run.seed)
    return barostat


def create_integrator(config: SimulationConfig, kind: str):
    """LangevinMiddleIntegrator (NVT/NPT, and NVE's equilibration) or VerletIntegrator (NVE)."""
    import openmm
    from openmm import unit

    timestep = config.integrator.timestep_fs * unit.femtoseconds
    if kind == VERLET:
        return openmm.VerletIntegrator(timestep)
    integrator = openmm.LangevinMiddleIntegrator(config.integrator.temperature_K * unit.kelvin,
                                                 config.integrator.friction_per_ps / unit.picosecond,
                                                 timestep)
    integrator.setRandomNumberSeed(config.run.seed)
    return integrator


def create_simulation(config: SimulationConfig, topology, system, kind: str):
    """An OpenMM Simulation on the configured platform (with its properties)."""
    import openmm
    from openmm.app import Simulation

    platform = openmm.Platform.getPlatformByName(config.platform.name)
    properties = dict(config.platform.properties) or None
    try:
        return Simulation(topology, system, create_integrator(config, kind), platform, properties)
    except openmm.OpenMMException as error:
        raise RuntimeError(f"OpenMM could not create a context on platform {config.platform.name} "
                           f"with properties {properties or {}}: {error}") from None


def set_box_and_positions(context, structure_box: np.ndarray | None, positions: np.ndarray) -> None:
    import openmm

    if structure_box is not None:
        context.setPeriodicBoxVectors(*[openmm.Vec3(*map(float, row)) for row in structure_box])
    context.setPositions(positions)


def seeded_velocities(system, positions: np.ndarray, temperature_K: float, seed: int) -> np.ndarray:
    """Maxwell-Boltzmann velocities (nm/ps) that depend only on masses, constraints and seed.

    ``Context.setVelocitiesToTemperature`` with a LangevinMiddleIntegrator also shifts the
    draw by half a step of the *model's* forces, so two policies would start from slightly
    different velocities. Drawing on a force-free copy of the System (same masses and
    constraints, Verlet: no offset) gives every model and policy the same velocities.
    """
    import openmm

    bare = openmm.System()
    for index in range(system.getNumParticles()):
        bare.addParticle(system.getParticleMass(index))
    for index in range(system.getNumConstraints()):
        bare.addConstraint(*system.getConstraintParameters(index))
    context = openmm.Context(bare, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    context.setVelocitiesToTemperature(temperature_K, seed)
    velocities = np.asarray(context.getState(getVelocities=True).getVelocities(asNumpy=True)._value)
    del context
    return velocities


def degrees_of_freedom(system) -> int:
    """3N minus constraints minus 3 for a centre-of-mass motion remover (as OpenMM counts)."""
    import openmm

    dof = sum(3 for i in range(system.getNumParticles()) if system.getParticleMass(i)._value > 0)
    dof -= system.getNumConstraints()
    if any(isinstance(system.getForce(i), openmm.CMMotionRemover) for i in range(system.getNumForces())):
        dof -= 3
    return max(dof, 1)


def total_mass_dalton(system) -> float:
    return float(sum(system.getParticleMass(i)._value for i in range(system.getNumParticles())))
