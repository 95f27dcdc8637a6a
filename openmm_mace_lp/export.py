"""Export stage: one TorchScript module per (model, policy, backend, atoms) for openmm-torch.

The module takes OpenMM's positions and box vectors (nm), builds the neighbour list on the same
device, evaluates MACE and returns the energy (kJ/mol) and forces (kJ/mol/nm), so a TorchForce
with ``setOutputsForces(True)`` keeps the whole step on the GPU. Exported files are cached on
disk under a key of everything that changes their content.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import __version__
from .atomic import atomic_path
from .backend import CUEQ_BACKENDS, convert_to_cueq, make_scriptable, model_layout, resolve_backend
from .fused_conv import fuse_convolutions, keep_weights_low
from .linears import apply_policy_layers
from .neighbors import NeighborCapacity, neighbor_list, padded_neighbor_list
from .policy import MATMUL_BF16, MATMUL_FP16, Policy, get_policy

# CODATA 2018: N_A * e / 1000.
EV_TO_KJ_PER_MOL = 96.48533212331002
ANGSTROM_PER_NM = 10.0
ENERGY_TYPES = ("interaction_energy", "energy")
METADATA_FILE = "openmm_mace_lp.json"
# Part of every export's cache key: raise it whenever the code of an exported module changes,
# so that modules cached by an older version are rebuilt (2: fused radial MLP in edge chunks,
# low-precision tensor-product weights).
EXPORT_FORMAT = 2


class MACEForce(torch.nn.Module):
    """positions [N, 3] nm (and box [3, 3] nm) -> (energy kJ/mol, forces [N, 3] kJ/mol/nm).

    With a ``capacity`` the neighbour list has fixed shapes and the call never waits for the
    device, so openmm-torch can capture it in a CUDA graph; if a capacity is exceeded the energy
    and forces are NaN (never silently wrong), and ``neighbor_stats`` tells by how much. Such a
    module returns the same two output tensors from every call (see ``energy_out``).
    """

    def __init__(self, model: torch.nn.Module, node_attrs: torch.Tensor, atom_indices: Optional[torch.Tensor],
                 num_atoms_total: int, periodic: bool, dtype: torch.dtype, energy_type: str,
                 capacity: Optional[NeighborCapacity] = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("node_attrs", node_attrs.to(dtype))
        n = node_attrs.shape[0]
        self.register_buffer("batch", torch.zeros(n, dtype=torch.long))
        self.register_buffer("ptr", torch.tensor([0, n], dtype=torch.long))
        self.register_buffer("head", torch.zeros(1, dtype=torch.long))
        self.register_buffer("atom_indices", atom_indices if atom_indices is not None else torch.zeros(0, dtype=torch.long))
        self.use_subset = atom_indices is not None
        self.num_atoms_total = num_atoms_total
        self.periodic = periodic
        self.cutoff = float(model.r_max)
        self.dtype = dtype
        self.energy_type = energy_type
        # TorchScript cannot read module-level constants: keep the unit factors as attributes.
        self.angstrom_per_nm = ANGSTROM_PER_NM
        self.kj_per_ev = EV_TO_KJ_PER_MOL
        self.padded = capacity is not None
        fixed = capacity if capacity is not None else NeighborCapacity((), (), 0, 0)
        self.grid: List[int] = list(fixed.grid) if fixed.grid else [1, 1, 1]
        self.register_buffer("stencil", fixed.stencil())
        self.cell_capacity = fixed.cell_capacity
        self.edge_capacity = fixed.edge_capacity
        self.chunk_atoms = fixed.chunk_atoms()
        # Static outputs for CUDA graphs. openmm-torch 1.5 captures one graph per includeForces
        # value and keeps the output tensors of the *last captured* graph, so replays of the other
        # graph hand OpenMM stale results: stale energies for energy-only calls (a barostat's
        # trial moves) or stale forces for steps, depending on which graph came first. Writing
        # both graphs' results into these same buffers makes whichever tensor openmm-torch holds
        # the current one. Each call overwrites them (only in the fixed-capacity, graph mode).
        self.register_buffer("energy_out", torch.zeros((), dtype=dtype))
        self.register_buffer("forces_out", torch.zeros((num_atoms_total, 3), dtype=dtype))

    def _inputs(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        pos = positions.to(self.dtype) * self.angstrom_per_nm
        if self.use_subset:
            pos = pos[self.atom_indices]
        cell: Optional[torch.Tensor] = None
        if self.periodic:
            if boxvectors is None:
                raise RuntimeError("this MACE force is periodic: box vectors are required")
            cell = boxvectors.to(self.dtype) * self.angstrom_per_nm
        return pos, cell

    @torch.jit.export
    def neighbor_stats(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[edges needed, edge capacity, atoms in the fullest cell, cell capacity, grid valid]."""
        pos, cell = self._inputs(positions, boxvectors)
        if not self.padded:
            edges, _ = neighbor_list(pos, cell, self.cutoff)
            return torch.tensor([edges.shape[1], edges.shape[1], 0, 0, 1])
        _, _, stats = padded_neighbor_list(pos, cell, self.cutoff, self.grid, self.stencil, self.cell_capacity,
                                           self.edge_capacity, self.chunk_atoms)
        limits = torch.tensor([self.edge_capacity, self.cell_capacity], device=stats.device)
        return torch.stack([stats[0], limits[0], stats[1], limits[1], stats[2]]).cpu()

    def forward(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        pos, cell = self._inputs(positions, boxvectors)
        overflow = torch.zeros((), dtype=torch.bool, device=pos.device)
        if self.padded:
            edge_index, shifts, stats = padded_neighbor_list(
                pos, cell, self.cutoff, self.grid, self.stencil, self.cell_capacity, self.edge_capacity,
                self.chunk_atoms)
            overflow = (stats[0] > self.edge_capacity) | (stats[2] == 0)
            if self.periodic:
                overflow = overflow | (stats[1] > self.cell_capacity)
        else:
            edge_index, shifts = neighbor_list(pos, cell, self.cutoff)
        data: Dict[str, torch.Tensor] = {
            "positions": pos,
            "node_attrs": self.node_attrs,
            "edge_index": edge_index,
            "shifts": shifts,
            "batch": self.batch,
            "ptr": self.ptr,
            "head": self.head,
            "cell": cell if cell is not None else torch.zeros((3, 3), dtype=pos.dtype, device=pos.device),
        }
        out = self.model(data, training=False, compute_force=True)
        energy = out[self.energy_type]
        forces = out["forces"]
        assert energy is not None and forces is not None
        # A capacity overflow makes both outputs NaN: the step is poisoned, never silently wrong.
        poison = torch.where(overflow, torch.full_like(overflow, float("nan"), dtype=forces.dtype),
                             torch.zeros_like(overflow, dtype=forces.dtype))
        energy = energy.detach().sum() * self.kj_per_ev + poison
        forces = forces.detach() * (self.kj_per_ev * self.angstrom_per_nm) + poison
        if self.use_subset:
            full = torch.zeros((self.num_atoms_total, 3), dtype=forces.dtype, device=forces.device)
            forces = full.index_copy(0, self.atom_indices, forces)
        if self.padded:
            self.energy_out.copy_(energy)
            self.forces_out.copy_(forces)
            return self.energy_out, self.forces_out
        return energy, forces


@dataclass
class ExportSpec:
    """Everything that determines the content of an exported module."""

    model_sha256: str
    policy: str
    backend: str
    atomic_numbers: List[int]
    atom_indices: Optional[List[int]]
    num_atoms_total: int
    periodic: bool
    energy_type: str
    device: str
    neighbor_capacity: Optional[Dict[str, object]] = None
    versions: Dict[str, str] = field(default_factory=dict)
    export_format: int = EXPORT_FORMAT

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]


def library_versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"openmm-mace-lp": __version__, "torch": torch.__version__}
    for name in ("mace-torch", "e3nn", "cuequivariance", "cuequivariance-torch", "cuequivariance-ops-torch-cu12",
                 "cuequivariance-ops-torch-cu13"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def check_elements(model: torch.nn.Module, atomic_numbers: Sequence[int]) -> List[int]:
    """Index of each atom's element in the model's element table, or a clear error."""
    from openmm.app import element as openmm_element

    table = [int(z) for z in model.atomic_numbers]
    missing = sorted(set(int(z) for z in atomic_numbers) - set(table))
    if missing:
        names = ", ".join(f"{openmm_element.Element.getByAtomicNumber(z).symbol} (Z={z})" for z in missing)
        known = ", ".join(openmm_element.Element.getByAtomicNumber(z).symbol for z in table)
        raise ValueError(
            f"The model has no parameters for element(s) {names}; it covers only {known}. Use a "
            f"model trained on these elements, or apply it to a subset of atoms (atoms=[...] or "
            f"createMixedSystem)."
        )
    return [table.index(int(z)) for z in atomic_numbers]


def prepare_model(model: torch.nn.Module, policy: Policy, backend: str) -> Tuple[torch.nn.Module, Dict[str, int]]:
    """model -> policy dtype -> backend conversion -> scriptable stand-ins -> policy layers."""
    prepared = copy.deepcopy(model).to(policy.model_dtype)
    if backend in CUEQ_BACKENDS:
        prepared = convert_to_cueq(prepared)
    prepared = make_scriptable(prepared)
    if backend == "cueq-fused":
        fuse_convolutions(prepared)
    counts = apply_policy_layers(prepared, policy.matmul_mode, policy.model_dtype, model_layout(prepared))
    if backend == "cueq-fused" and policy.matmul_mode in (MATMUL_BF16, MATMUL_FP16):
        counts["low_precision_tp_weights"] = keep_weights_low(prepared)
    for parameter in prepared.parameters():
        parameter.requires_grad_(False)
    return prepared.eval(), counts


def script_module(module: torch.nn.Module) -> torch.jit.ScriptModule:
    """TorchScript the MACE force; e3nn modules need e3nn's own compile first."""
    from e3nn.util import jit as e3nn_jit

    module.model = e3nn_jit.compile(module.model)
    return torch.jit.script(module)


def build_force_module(
    model: torch.nn.Module,
    policy_name: str,
    backend: str,
    atomic_numbers: Sequence[int],
    *,
    atom_indices: Optional[Sequence[int]] = None,
    num_atoms_total: Optional[int] = None,
    periodic: bool,
    device: str | torch.device = "cpu",
    energy_type: str = "interaction_energy",
    capacity: Optional[NeighborCapacity] = None,
) -> torch.jit.ScriptModule:
    """The scripted MACEForce for these atoms, on ``device``."""
    policy = get_policy(policy_name)
    device = torch.device(device)
    backend = resolve_backend(backend, device)
    if energy_type not in ENERGY_TYPES:
        raise ValueError(f"Unknown returnEnergyType {energy_type!r}; use one of {', '.join(ENERGY_TYPES)}.")
    element_index = check_elements(model, atomic_numbers)
    prepared, _ = prepare_model(model, policy, backend)
    node_attrs = torch.nn.functional.one_hot(
        torch.tensor(element_index, dtype=torch.long), num_classes=len(model.atomic_numbers)
    )
    indices = None if atom_indices is None else torch.tensor(list(atom_indices), dtype=torch.long)
    total = len(atomic_numbers) if num_atoms_total is None else num_atoms_total
    force = MACEForce(prepared, node_attrs, indices, total, periodic, policy.model_dtype, energy_type, capacity)
    return script_module(force.to(device))


def read_metadata(path: os.PathLike) -> dict:
    """The export record stored inside a module file written by this package."""
    extra = {METADATA_FILE: ""}
    torch.jit.load(os.fspath(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_FILE])


def export_to_file(
    model_path: os.PathLike,
    policy_name: str,
    backend: str,
    atomic_numbers: Sequence[int],
    *,
    output: Optional[os.PathLike] = None,
    atom_indices: Optional[Sequence[int]] = None,
    num_atoms_total: Optional[int] = None,
    periodic: bool,
    device: str | torch.device = "cpu",
    energy_type: str = "interaction_energy",
    capacity: Optional[NeighborCapacity] = None,
) -> Path:
    """The TorchScript file for this model, policy and system: from the cache, or built into it.

    With ``output`` the cached file is also copied there (atomically) for the user to keep. With
    a ``capacity`` the neighbour list has fixed shapes (CUDA-graph capturable).
    """
    from .model_files import cache_dir, load_mace_model, sha256_of

    get_policy(policy_name)
    device = torch.device(device)
    resolved_backend = resolve_backend(backend, device)
    spec = ExportSpec(
        model_sha256=sha256_of(model_path),
        policy=policy_name,
        backend=resolved_backend,
        atomic_numbers=[int(z) for z in atomic_numbers],
        atom_indices=None if atom_indices is None else [int(i) for i in atom_indices],
        num_atoms_total=len(atomic_numbers) if num_atoms_total is None else int(num_atoms_total),
        periodic=bool(periodic),
        energy_type=energy_type,
        device=device.type,
        neighbor_capacity=None if capacity is None else asdict(capacity),
        versions=library_versions(),
    )
    cached = cache_dir() / "exports" / f"{spec.key()}.pt"
    if not cached.is_file():
        model = load_mace_model(model_path)
        module = build_force_module(
            model, policy_name, resolved_backend, atomic_numbers, atom_indices=atom_indices,
            num_atoms_total=num_atoms_total, periodic=periodic, device=device, energy_type=energy_type,
            capacity=capacity,
        )
        metadata = {**asdict(spec), "model_path": os.fspath(model_path), "cutoff_angstrom": float(model.r_max)}
        with atomic_path(cached) as tmp:
            torch.jit.save(module, os.fspath(tmp), _extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})
    if output is None:
        return cached
    with atomic_path(output) as tmp:
        shutil.copyfile(cached, tmp)
    return Path(output)
