"""openmm-ml plug-in: ``MLPotential("mace-off24-lp", policy="bf16")`` -> a TorchForce.

Registered through the ``openmmml.potentials`` entry point (``entry_point.py``) for the names
in ``model_files.KNOWN_MODELS`` and ``mace-lp`` (a local file via ``modelPath``, or the
embedded water model). ``createSystem`` and ``createMixedSystem`` come from openmm-ml unchanged; this
module only adds the force, after the guards that turn known failure modes into clear errors.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable, Optional

import openmm
import openmm.app
from openmmml.mlpotential import MLPotentialImpl

from .backend import BACKENDS
from .capacity import record_export
from .model_files import KNOWN_MODELS, LOCAL_MODEL_NAME
from .policy import get_policy

logger = logging.getLogger(__name__)

# openmmtorch 1.5's Reference/CPU kernels crash with torch >= 2.10 (openmm-torch issue #175).
_FIRST_BROKEN_CPU_TORCH = (2, 10)


def import_openmmtorch():
    """Import openmmtorch and make sure OpenMM has its TorchForce kernels.

    openmmtorch's libraries find torch's only once torch is loaded. OpenMM loads its plug-in
    kernels when ``openmm`` is first imported, which for openmm-ml users happens before torch:
    the TorchForce kernels then fail to load (e.g. 'libnvrtc.so.12: cannot open shared object
    file') and a Context later reports 'does not support all required kernels'. Loading the
    failed TorchForce plug-ins again once torch is in the process fixes that.
    """
    import torch  # noqa: F401

    import openmmtorch

    _reload_failed_torch_plugins()
    return openmmtorch


_RELOADED: set = set()


def _reload_failed_torch_plugins() -> None:
    import re

    for message in openmm.Platform.getPluginLoadFailures():
        match = re.match(r"Error loading library (.+?): ", message)
        if not match:
            continue
        library = match.group(1)
        name = os.path.basename(library)
        if "OpenMMTorch" not in name or "OpenCL" in name or library in _RELOADED:
            continue  # OpenCL needs libOpenCL, which has nothing to do with torch
        _RELOADED.add(library)
        try:
            openmm.Platform.loadPluginLibrary(library)
        except Exception as error:  # noqa: BLE001 - report, the Context will fail clearly
            logger.warning("Could not load the openmm-torch plug-in %s: %s", library, error)


def torch_version_tuple() -> tuple:
    import torch

    return tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])


def check_cpu_torch(platform_name: Optional[str], version: Optional[tuple] = None) -> None:
    """Refuse the CPU/Reference platforms where openmm-torch would crash inside OpenMM."""
    version = version or torch_version_tuple()
    if platform_name in ("CPU", "Reference") and version >= _FIRST_BROKEN_CPU_TORCH:
        found = ".".join(str(v) for v in version)
        raise RuntimeError(
            f"openmmtorch 1.5 cannot run a TorchForce on OpenMM's {platform_name} platform with "
            f"torch {found}: its CPU kernels fail with 'set_stride is not allowed on a Tensor "
            f"created from .data or .detach()' for torch >= 2.10 (openmm-torch issue #175). "
            f"Install torch 2.9.1 for CPU runs (pip install -c constraints/cpu.txt -e '.[cpu]'), "
            f"or use the CUDA platform (device='cuda', or platform='CUDA' if a CPU-built module "
            f"will run there)."
        )


def check_cuda(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device!r} was requested but torch sees no CUDA device "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). Use device='cpu' "
            f"with the CPU or Reference platform, or run on a machine with a GPU."
        )


# Above this many atoms ``cudaGraphs`` defaults to off. Measured on an H100 with the
# MACE-OFF24(M) architecture (benchmarks/results/bench_2026-11-28_h100_*.md): a captured step is
# 2x faster at 3000 atoms (18.1 against 35.5 ms), no faster at 10k (58.4 against 57.9) and
# slower at 28k (180 against 150); and openmm-torch's capture allocates a second copy of the
# step's memory next to what its warm-up calls left cached. When that does not fit the process
# dies in a segmentation fault, not a Python error.
CUDA_GRAPH_MAX_ATOMS = 15000


def use_cuda_graphs(requested: Optional[bool], device: str, num_atoms: int) -> bool:
    """``cudaGraphs``: None picks by size; an explicit True above the size is allowed, with a warning."""
    if not device.startswith("cuda"):
        return False
    if requested is None:
        return num_atoms <= CUDA_GRAPH_MAX_ATOMS
    if requested and num_atoms > CUDA_GRAPH_MAX_ATOMS:
        logger.warning(
            "cudaGraphs=True for %d atoms: above %d atoms a captured step is not faster and openmm-torch "
            "needs about twice the memory to capture it (out of memory there ends the process with a "
            "segmentation fault). Leave cudaGraphs unset to let the size decide.", num_atoms, CUDA_GRAPH_MAX_ATOMS)
    return bool(requested)


class MACELPPotentialImpl(MLPotentialImpl):
    """MACE with a precision policy, exported to TorchScript and run by openmm-torch.

    Keyword arguments of ``MLPotential``: ``modelPath`` (a MACE .model file; required for
    ``mace-lp`` unless the embedded water model is wanted), ``policy`` (fp64, fp32, tf32, bf16,
    fp16; default fp32), ``backend`` (auto, cueq, cueq-fused, e3nn). Keyword arguments of ``createSystem``:
    ``device`` ('cuda' or 'cpu'; default: cuda if available), ``returnEnergyType``
    ('interaction_energy', the default as in openmm-ml, or 'energy' including E0s),
    ``platform`` (name of the OpenMM platform you will use, checked for known crashes),
    ``cudaGraphs`` (default: on CUDA up to ``CUDA_GRAPH_MAX_ATOMS`` atoms, a fixed-capacity
    neighbour list and the step captured in a CUDA graph by openmm-torch), ``fixedNeighborList``
    (default: as ``cudaGraphs``; the fixed-capacity list alone, e.g. to test it on the CPU),
    ``positions`` (the starting positions, used to size that list exactly; without them it is
    sized from the density with a wider margin) and
    ``neighborMargin`` (extra edge capacity, a fraction). ``openmm_mace_lp.capacity`` grows the
    capacities during a run.
    """

    def __init__(self, name: str, modelPath: Optional[str], policy: str, backend: str) -> None:
        if name != LOCAL_MODEL_NAME and name not in KNOWN_MODELS:
            valid = ", ".join([LOCAL_MODEL_NAME, *KNOWN_MODELS])
            raise ValueError(f"Unknown model name {name!r}. Valid names: {valid}.")
        get_policy(policy)
        if backend not in BACKENDS:
            raise ValueError(f"Unknown backend {backend!r}. Valid backends: {', '.join(BACKENDS)}.")
        if modelPath is not None and not os.path.exists(modelPath):
            raise FileNotFoundError(f"MACE model file {modelPath} does not exist; check modelPath=.")
        self.name = name
        self.modelPath = modelPath
        self.policy = policy
        self.backend = backend

    def addForces(self, topology: openmm.app.Topology, system: openmm.System, atoms: Optional[Iterable[int]],
                  forceGroup: int, device: Optional[str] = None, returnEnergyType: str = "interaction_energy",
                  platform: Optional[str] = None, cudaGraphs: Optional[bool] = None, positions=None,
                  neighborMargin: Optional[float] = None, fixedNeighborList: Optional[bool] = None,
                  **args) -> None:
        import torch

        from .export import export_to_file
        from .model_files import resolve_model_path

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        check_cuda(device)
        # A module on the CPU runs on OpenMM's CPU or Reference platform, whatever is named.
        check_cpu_torch(platform or ("CPU" if device == "cpu" else None))
        all_atoms = list(topology.atoms())
        if any(atom.element is None for atom in all_atoms):
            raise ValueError("Every atom needs an element for MACE; the topology has atoms without one.")
        indices = None if atoms is None else sorted(int(i) for i in atoms)
        selected = all_atoms if indices is None else [all_atoms[i] for i in indices]
        atomic_numbers = [atom.element.atomic_number for atom in selected]
        periodic = topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
        model_path = resolve_model_path(self.name, self.modelPath)
        graphs = use_cuda_graphs(cudaGraphs, device, len(selected))
        fixed = graphs if fixedNeighborList is None else bool(fixedNeighborList)
        if graphs and not fixed:
            raise ValueError("cudaGraphs=True needs the fixed-capacity neighbour list (a CUDA graph "
                             "cannot change shape); pass fixedNeighborList=True, or cudaGraphs=False.")
        capacity = None
        if fixed:
            capacity = neighbor_capacity(model_path, topology, system, indices, positions, neighborMargin)
        path = export_to_file(
            model_path, self.policy, self.backend, atomic_numbers, atom_indices=indices,
            num_atoms_total=len(all_atoms), periodic=periodic, device=device, energy_type=returnEnergyType,
            capacity=capacity,
        )
        if KNOWN_MODELS.get(self.name) is not None:
            logger.warning("%s is distributed under the %s licence: no commercial use.", self.name,
                           KNOWN_MODELS[self.name].licence)
        openmmtorch = import_openmmtorch()
        force = openmmtorch.TorchForce(os.fspath(path))
        force.setOutputsForces(True)
        if graphs:
            force.setProperty("useCUDAGraphs", "true")
        record_export(system, path, device, fixed)
        force.setUsesPeriodicBoundaryConditions(periodic)
        force.setForceGroup(forceGroup)
        system.addForce(force)

    def getMLLongRange(self) -> bool:
        return False


def neighbor_capacity(model_path, topology: openmm.app.Topology, system: Optional[openmm.System],
                      indices: Optional[list], positions, margin: Optional[float]):
    """Fixed neighbour-list shapes for this system (Angstrom inside; OpenMM gives nm)."""
    import numpy as np

    from .model_files import model_cutoff
    from .neighbors import plan_capacity

    box = topology.getPeriodicBoxVectors()
    if box is None and system is not None and system.usesPeriodicBoundaryConditions():
        box = system.getDefaultPeriodicBoxVectors()
    box_a = None if box is None else 10.0 * np.array([[v[i] for i in range(3)] for v in _nm(box)])
    n_atoms = topology.getNumAtoms() if indices is None else len(indices)
    pos_a = None
    if positions is not None:
        pos_a = 10.0 * np.asarray(_nm(positions), dtype=np.float64).reshape(-1, 3)
        if pos_a.shape[0] != topology.getNumAtoms():
            raise ValueError(f"positions has {pos_a.shape[0]} atoms but the topology has "
                             f"{topology.getNumAtoms()}; pass the positions of this topology.")
        if indices is not None:
            pos_a = pos_a[indices]
    return plan_capacity(n_atoms, model_cutoff(model_path), box_a, pos_a, margin)


def _nm(value):
    """Strip OpenMM units (nm) from positions or box vectors; plain numbers are taken as nm."""
    from openmm import unit

    if unit.is_quantity(value):
        return value.value_in_unit(unit.nanometer)
    return [(_nm(v) if unit.is_quantity(v) else v) for v in value]
