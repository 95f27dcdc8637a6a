"""openmm-ml plug-in: ``MLPotential("mace-off24-lp", policy="bf16")`` -> a TorchForce.

Registered through the ``openmmml.potentials`` entry point (``entry_point.py``) for the names
in ``model_files.KNOWN_MODELS`` and ``mace-lp`` (a local file via ``modelPath``, or the
embedded water model). ``createSystem`` and ``createMixedSystem`` come from openmm-ml unchanged; this
module only adds the force, after the guards that turn known failure modes into clear errors.
One exception: ``createMixedSystem(..., interpolate=True)``. openmm-ml's interpolation puts deep
copies of the potential's forces into a CustomCVForce, and both that copy and the CustomCVForce
itself (which clones its variables when a Context is made) go through an XML round trip of the
TorchForce, which crashes the process with openmm 8.6.1 and openmm-torch 1.5. The plug-in
therefore runs openmm-ml's mechanical embedding with a stand-in whose forces are a zero
placeholder, and builds its own TorchForce beside the CustomCVForce, scaled by the same
``lambda_interpolate`` global parameter (the exported module multiplies energy and forces by it).
"""
from __future__ import annotations

import logging
import math
import os
import uuid
from typing import Iterable, List, Optional, Tuple

import openmm
import openmm.app
from openmmml.mlpotential import MLPotentialImpl

from .backend import BACKENDS
from .capacity import record_export
from .compiled import INDUCTOR, check_compiler
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

    from .upstream import quiet_simtk_notice

    with quiet_simtk_notice():  # openmm-torch 1.5 imports the deprecated simtk.openmm
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
    ``mace-lp`` unless the embedded water model is wanted; the file is a pickle, which runs code
    when loaded: pass only files you trust), ``policy`` (fp64, fp32, tf32, bf16,
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
        if modelPath is not None:
            from .model_files import check_model_path

            check_model_path(modelPath)
        self.name = name
        self.modelPath = modelPath
        self.policy = policy
        self.backend = backend

    def addForces(self, topology: openmm.app.Topology, system: openmm.System, atoms: Optional[Iterable[int]],
                  forceGroup: int, **args) -> None:
        self.add_force(topology, system, atoms, forceGroup, **args)

    def add_force(self, topology: openmm.app.Topology, system: openmm.System, atoms: Optional[Iterable[int]],
                  forceGroup: int, device: Optional[str] = None, returnEnergyType: str = "interaction_energy",
                  platform: Optional[str] = None, cudaGraphs: Optional[bool] = None, positions=None,
                  neighborMargin: Optional[float] = None, fixedNeighborList: Optional[bool] = None,
                  neighborList: Optional[str] = None, compiler: str = "torchscript",
                  scale_parameter: Optional[Tuple[str, float]] = None, **args) -> None:
        """Export the module for these atoms and add its TorchForce to ``system``.

        ``neighborList``: "native" (this package's ``mace_lp::cell_list`` operator), "torchscript",
        or None for the native one where it is the default (``neighbors.resolve_neighbor_list_impl``);
        it chooses the fixed-capacity list, so "native" needs ``fixedNeighborList`` or CUDA graphs.
        ``compiler``: "torchscript" (TorchScript runs the model) or "inductor" (the model's energy
        and forces compiled ahead of time by AOTInductor, ``compiled.py``; it implies the
        fixed-capacity list, as CUDA graphs do).
        ``scale_parameter`` (name, default): the force's energy and forces are multiplied by
        that global parameter of the Context."""
        import torch

        from .export import export_to_file
        from .model_files import resolve_model_path

        refuse_unknown_keywords(args, CREATE_SYSTEM_KEYWORDS, "createSystem/createMixedSystem")
        check_platform_name(platform)
        check_margin(neighborMargin)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        check_cuda(device)
        # A module on the CPU runs on OpenMM's CPU or Reference platform, whatever is named.
        check_cpu_torch(platform or ("CPU" if device == "cpu" else None))
        all_atoms = list(topology.atoms())
        if any(atom.element is None for atom in all_atoms):
            raise ValueError("Every atom needs an element for MACE; the topology has atoms without one.")
        indices = None if atoms is None else checked_atom_indices(atoms, len(all_atoms))
        selected = all_atoms if indices is None else [all_atoms[i] for i in indices]
        if not selected:
            raise ValueError("The topology has no atoms; MACE needs at least one (check the PDB/topology).")
        atomic_numbers = [atom.element.atomic_number for atom in selected]
        periodic = topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
        model_path = resolve_model_path(self.name, self.modelPath)
        graphs = use_cuda_graphs(cudaGraphs, device, len(selected))
        if scale_parameter is not None and graphs:
            # openmm-torch 1.5 makes a new tensor for each global parameter on every call, outside
            # the captured graph: a replay would read the value it had when it was captured.
            if cudaGraphs:
                raise ValueError(f"cudaGraphs=True cannot be combined with interpolate=True: the force reads "
                                 f"{scale_parameter[0]!r} on every step, which a captured CUDA graph does not "
                                 f"see change (openmm-torch 1.5); leave cudaGraphs unset or False.")
            graphs = False
        # CUDA graphs and compiled code have fixed shapes: either implies the fixed list.
        fixed = (graphs or compiler == INDUCTOR) if fixedNeighborList is None else bool(fixedNeighborList)
        if graphs and not fixed:
            raise ValueError("cudaGraphs=True needs the fixed-capacity neighbour list (a CUDA graph "
                             "cannot change shape); pass fixedNeighborList=True, or cudaGraphs=False.")
        check_neighbor_list_choice(neighborList, fixed)
        check_compiler(compiler, fixed)
        capacity = None
        if fixed:
            capacity = neighbor_capacity(model_path, topology, system, indices, positions, neighborMargin)
        path = export_to_file(
            model_path, self.policy, self.backend, atomic_numbers, atom_indices=indices,
            num_atoms_total=len(all_atoms), periodic=periodic, device=device, energy_type=returnEnergyType,
            capacity=capacity, scaled=scale_parameter is not None, neighbor_list=neighborList,
            compiler=compiler,
        )
        if KNOWN_MODELS.get(self.name) is not None:
            logger.warning("%s is distributed under the %s licence: no commercial use.", self.name,
                           KNOWN_MODELS[self.name].licence)
        openmmtorch = import_openmmtorch()
        force = openmmtorch.TorchForce(os.fspath(path))
        force.setOutputsForces(True)
        if graphs:
            force.setProperty("useCUDAGraphs", "true")
        force.setUsesPeriodicBoundaryConditions(periodic)
        force.setForceGroup(forceGroup)
        if scale_parameter is not None:
            force.addGlobalParameter(*scale_parameter)
        record_export(system, path, device, fixed)
        system.addForce(force)

    def getSupportedEmbeddings(self) -> List[str]:
        # openmm-ml's own default embedding, run by openmm-ml's code (createMixedSystem below).
        return [MECHANICAL_EMBEDDING]

    def createMixedSystem(self, topology: openmm.app.Topology, system: openmm.System, atoms: List[int],
                          forceGroup: int, interpolate: bool, embedding: str, returnInfo: bool = False, **args):
        """openmm-ml's mechanical embedding; with ``interpolate`` our force is built, not copied.

        openmm-ml's interpolation adds the potential's forces to a scratch System and puts deep
        copies of them into a CustomCVForce; copying a TorchForce crashes (module docstring).
        The embedding therefore sees a stand-in that adds a zero placeholder, and a TorchForce
        scaled by the CustomCVForce's interpolation parameter is added to the System beside it.
        """
        from openmmml.mlpotential import MLPotential

        checked_atom_indices(atoms, topology.getNumAtoms())  # before openmm-ml's embedding asserts on them
        method = MLPotential._embeddingFactories[embedding].createEmbedding(embedding)
        if not interpolate:
            return method.createMixedSystem(self, topology, system, atoms, forceGroup, False,
                                            returnInfo=returnInfo, **args)
        deferred = _DeferredForces(self)
        result = method.createMixedSystem(deferred, topology, system, atoms, forceGroup, True,
                                          returnInfo=returnInfo, **args)
        deferred.build_into(result["system"] if isinstance(result, dict) else result)
        return result

    def getMLLongRange(self) -> bool:
        return False


MECHANICAL_EMBEDDING = "mechanical"
# Name of the zero force that stands for the MACE force inside openmm-ml's interpolating CustomCVForce.
PLACEHOLDER_PREFIX = "openmm-mace-lp: MACE force outside, scaled by the same parameter "


class _DeferredForces:
    """Stands in for the potential in openmm-ml's embedding: records each ``addForces`` call and
    adds a placeholder (a zero CustomExternalForce, named) that openmm-ml may copy freely."""

    def __init__(self, potential: MACELPPotentialImpl) -> None:
        self.potential = potential
        self.calls: list = []

    def __getattr__(self, name: str):
        return getattr(self.potential, name)

    def addForces(self, topology: openmm.app.Topology, system: openmm.System, atoms, forceGroup: int,
                  **args) -> None:
        placeholder = openmm.CustomExternalForce("0")
        placeholder.setName(PLACEHOLDER_PREFIX + uuid.uuid4().hex)
        system.addForce(placeholder)
        self.calls.append((placeholder.getName(), topology, None if atoms is None else list(atoms), forceGroup, args))

    def build_into(self, system: openmm.System) -> None:
        """Add, for each placeholder that openmm-ml put into a CustomCVForce of ``system``, the
        TorchForce it stands for, scaled by that CustomCVForce's interpolation parameter."""
        for name, topology, atoms, group, args in self.calls:
            holder = _collective_variable_holder(system, name)
            if holder is None or holder.getNumGlobalParameters() != 1:
                raise RuntimeError(
                    "openmm-ml's interpolating embedding did not put the MACE force into a CustomCVForce "
                    "with one interpolation parameter (as openmm-ml 1.8 does); createMixedSystem("
                    "interpolate=True) cannot be built.")
            parameter = (holder.getGlobalParameterName(0), holder.getGlobalParameterDefaultValue(0))
            self.potential.add_force(topology, system, atoms, group, scale_parameter=parameter, **args)


def _collective_variable_holder(system: openmm.System, name: str) -> Optional[openmm.CustomCVForce]:
    """The CustomCVForce of ``system`` with a collective-variable Force called ``name``."""
    for force in system.getForces():
        if isinstance(force, openmm.CustomCVForce) and any(
                force.getCollectiveVariable(i).getName() == name for i in range(force.getNumCollectiveVariables())):
            return force
    return None


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


# Keywords of createSystem/createMixedSystem that reach this plug-in (openmm-ml takes its own).
CREATE_SYSTEM_KEYWORDS = ("device", "returnEnergyType", "platform", "cudaGraphs", "positions", "neighborMargin",
                          "fixedNeighborList", "neighborList", "compiler")


def check_neighbor_list_choice(choice: Optional[str], fixed: bool) -> None:
    """Refuse a neighbour-list choice the export could not honour, in createSystem's own words."""
    from .neighbors import NATIVE_LIST, NEIGHBOR_LIST_IMPLS

    if choice is not None and choice not in NEIGHBOR_LIST_IMPLS:
        raise ValueError(f"neighborList={choice!r} is not a neighbour list; use one of "
                         f"{', '.join(repr(c) for c in NEIGHBOR_LIST_IMPLS)}, or leave it unset.")
    if choice == NATIVE_LIST and not fixed:
        raise ValueError("neighborList='native' is the fixed-capacity list: pass fixedNeighborList=True "
                         "(CUDA graphs imply it), or leave neighborList unset.")


def refuse_unknown_keywords(args: dict, known: Iterable[str], where: str) -> None:
    """A misspelt keyword would otherwise be swallowed by openmm-ml's **args and ignored."""
    import difflib

    for key in args:
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{where}: unknown keyword {key!r} for the mace-lp potentials.{hint} "
                        f"Known: {', '.join(known)}.")


def check_platform_name(platform: Optional[str]) -> None:
    """The platform hint must name an OpenMM platform (it decides which torch crash to check for)."""
    if platform is None:
        return
    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if platform not in names:
        raise ValueError(f"platform={platform!r} is not an OpenMM platform here; use one of {', '.join(names)}.")


def check_margin(margin: Optional[float]) -> None:
    if margin is not None and not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"neighborMargin={margin!r}: the spare edge capacity must be a finite fraction >= 0 "
                         "(e.g. 0.1 for 10 %).")


def checked_atom_indices(atoms: Iterable[int], n_atoms: int) -> List[int]:
    """The ML atoms, sorted: each one once, every index inside the topology, at least one."""
    indices = [int(i) for i in atoms]
    if not indices:
        raise ValueError("atoms=[] selects no atom for the ML potential; pass the indices of the ML region.")
    bad = sorted({i for i in indices if not 0 <= i < n_atoms})
    if bad:
        raise ValueError(f"atoms: indices {bad[:5]} are outside the topology's {n_atoms} atoms (0..{n_atoms - 1}).")
    if len(set(indices)) != len(indices):
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        raise ValueError(f"atoms: indices {repeated[:5]} are listed more than once; list each ML atom once.")
    return sorted(indices)
