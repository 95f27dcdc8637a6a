"""Export stage: one TorchScript module per (model, policy, backend, atoms) for openmm-torch.

The module takes OpenMM's positions and box vectors (nm), builds the neighbour list on the same
device, evaluates MACE and returns the energy (kJ/mol) and forces (kJ/mol/nm), so a TorchForce
with ``setOutputsForces(True)`` keeps the whole step on the GPU. Exported files are cached on
disk under a key of everything that changes their content: the model file's hash, the policy,
backend, atoms, device, capacities and neighbour-list implementation (native operator or
TorchScript), the library versions and the source code of every
module of this package that shapes the exported module (``SHAPING_MODULES``); a cached file
whose own SHA-256 no longer matches the one recorded beside it is rebuilt.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import __version__
from .atomic import atomic_path, atomic_write_text
from .backend import CUEQ_BACKENDS, convert_to_cueq, make_scriptable, model_layout, resolve_backend
from .compiled import (INDUCTOR, TORCHSCRIPT, backend_request, check_compiled_backend, check_compiled_device,
                       check_compiler, compiled_model)
from .fused_conv import fuse_convolutions, keep_weights_low
from .linears import TF32_NATIVE, apply_policy_layers, resolve_tf32_impl, use_native_tf32
from .neighbors import (CANDIDATES_PER_CHUNK, NATIVE_LIST, TORCHSCRIPT_LIST, NeighborCapacity, native_cell_list,
                        neighbor_list, padded_neighbor_list, resolve_neighbor_list_impl)
from .policy import MATMUL_BF16, MATMUL_FP16, Policy, get_policy, require_fp32_accumulation

logger = logging.getLogger(__name__)

# CODATA 2018: N_A * e / 1000.
EV_TO_KJ_PER_MOL = 96.48533212331002
ANGSTROM_PER_NM = 10.0
ENERGY_TYPES = ("interaction_energy", "energy")
METADATA_FILE = "openmm_mace_lp.json"
# The modules of this package whose code ends up in, or decides, an exported module: their
# source is part of every export's cache key, so editing any of them rebuilds the cache.
SHAPING_MODULES = ("export", "neighbors", "backend", "fused_conv", "linears", "policy", "compiled")
# Beside each cached module: its SHA-256 (hex), checked before the module is served.
DIGEST_SUFFIX = ".sha256"


@functools.lru_cache(maxsize=None)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def shaping_source_files() -> List[Path]:
    """The source files of ``SHAPING_MODULES``."""
    files = []
    for name in SHAPING_MODULES:
        spec = importlib.util.find_spec(f"{__package__}.{name}")
        if spec is None or spec.origin is None:
            raise RuntimeError(f"cannot find the source of {__package__}.{name} for the export cache key")
        files.append(Path(spec.origin))
    return files


def source_digest(files: Optional[Sequence[Path]] = None) -> str:
    """SHA-256 over the names and contents of the source files that shape an exported module."""
    digest = hashlib.sha256()
    for path in shaping_source_files() if files is None else files:
        stat = os.stat(path)
        digest.update(Path(path).name.encode() + b"\0" + _file_sha256(os.fspath(path), stat.st_size,
                                                                      stat.st_mtime_ns).encode())
    return digest.hexdigest()


class MACEForce(torch.nn.Module):
    """positions [N, 3] nm (and box [3, 3] nm) -> (energy kJ/mol, forces [N, 3] kJ/mol/nm).

    With a ``capacity`` the neighbour list has fixed shapes and the call never waits for the
    device, so openmm-torch can capture it in a CUDA graph; if a capacity is exceeded the energy
    is +inf and the forces NaN (never silently wrong; +inf makes a barostat reject the trial,
    which NaN would not), and ``neighbor_stats`` tells by how much. Non-finite positions or box
    vectors give NaN energy and forces on every path. A fixed-capacity module returns the same
    two output tensors from every call (see ``energy_out``).

    A ``scaled`` module multiplies both outputs by one more argument, a TorchForce global
    parameter (``createMixedSystem(..., interpolate=True)``'s ``lambda_interpolate``).
    openmm-torch passes global parameters after the box vectors, so a non-periodic module
    receives it in the box's place.

    ``neighbor_list_impl`` "native" builds the fixed-capacity list with the native operator
    (``neighbors.native_cell_list``; the file then needs the ``mace_lp`` library loaded),
    "torchscript" with ``neighbors.padded_neighbor_list``. A constant, so TorchScript compiles
    only the chosen call.
    """

    __constants__ = ["native_list"]

    def __init__(self, model: torch.nn.Module, node_attrs: torch.Tensor, atom_indices: Optional[torch.Tensor],
                 num_atoms_total: int, periodic: bool, dtype: torch.dtype, energy_type: str,
                 capacity: Optional[NeighborCapacity] = None, scaled: bool = False,
                 neighbor_list_impl: str = TORCHSCRIPT_LIST) -> None:
        super().__init__()
        self.model = model
        self.scaled = scaled
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
        grid, stencil, list_cell_capacity = fixed.list_arguments(n)
        self.grid: List[int] = grid
        self.register_buffer("stencil", stencil)
        # Reported capacity (0: no cell limit, non-periodic) and the one the list is built with.
        self.cell_capacity = fixed.cell_capacity
        self.list_cell_capacity = list_cell_capacity
        self.edge_capacity = fixed.edge_capacity
        self.max_candidates = CANDIDATES_PER_CHUNK
        self.neighbor_list_impl = neighbor_list_impl if capacity is not None else TORCHSCRIPT_LIST
        self.native_list = self.neighbor_list_impl == NATIVE_LIST
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

    def _finite_inputs(self, pos: torch.Tensor, cell: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(inputs finite: bool tensor, positions and cell for the neighbour list).

        A NaN or infinite coordinate would bin its atom nowhere: it would silently drop out of
        the list. The list gets finite stand-ins (computed on the device, no host sync) and the
        caller poisons the result with ``finite``.
        """
        finite_pos = torch.isfinite(pos)
        finite = finite_pos.all()
        list_pos = torch.where(finite_pos, pos, torch.zeros_like(pos))
        list_cell: Optional[torch.Tensor] = None
        if cell is not None:
            finite_cell = torch.isfinite(cell).all()
            finite = finite & finite_cell
            stand_in = torch.eye(3, dtype=cell.dtype, device=cell.device) * (4.0 * self.cutoff)
            list_cell = torch.where(finite_cell, cell, stand_in)
        return finite, list_pos, list_cell

    def _fixed_list(self, pos: torch.Tensor, cell: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edges, shifts and stats of the fixed-capacity list, from the implementation chosen at export."""
        if self.native_list:
            return native_cell_list(pos, cell, self.cutoff, self.grid, self.stencil, self.list_cell_capacity,
                                    self.edge_capacity)
        return padded_neighbor_list(pos, cell, self.cutoff, self.grid, self.stencil, self.list_cell_capacity,
                                    self.edge_capacity, self.max_candidates)

    @torch.jit.export
    def neighbor_stats(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[edges needed, edge capacity, atoms in the fullest cell, cell capacity, grid valid]."""
        pos, cell = self._inputs(positions, boxvectors)
        _, pos, cell = self._finite_inputs(pos, cell)
        if not self.padded:
            edges, _ = neighbor_list(pos, cell, self.cutoff)
            return torch.tensor([edges.shape[1], edges.shape[1], 0, 0, 1])
        _, _, stats = self._fixed_list(pos, cell)
        limits = torch.tensor([self.edge_capacity, self.cell_capacity], device=stats.device)
        return torch.stack([stats[0], limits[0], stats[1], limits[1], stats[2]]).cpu()

    def forward(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor] = None,
                scale: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.scaled and not self.periodic:
            scale = boxvectors  # openmm-torch: no box for a non-periodic force, the parameter comes next
        pos, cell = self._inputs(positions, boxvectors)
        finite, list_pos, list_cell = self._finite_inputs(pos, cell)
        overflow = torch.zeros((), dtype=torch.bool, device=pos.device)
        if self.padded:
            edge_index, shifts, stats = self._fixed_list(list_pos, list_cell)
            overflow = (stats[0] > self.edge_capacity) | (stats[2] == 0)
            if self.periodic:
                overflow = overflow | (stats[1] > self.cell_capacity)
        else:
            edge_index, shifts = neighbor_list(list_pos, list_cell, self.cutoff)
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
        # Never silently wrong: a capacity overflow gives +inf energy (a Monte Carlo barostat
        # rejects such a trial; NaN it would accept, as `NaN > 0` is false) and NaN forces (a
        # step is poisoned); non-finite inputs give NaN for both.
        zero = torch.zeros((), dtype=forces.dtype, device=forces.device)
        nan = torch.full((), float("nan"), dtype=forces.dtype, device=forces.device)
        inf = torch.full((), float("inf"), dtype=forces.dtype, device=forces.device)
        energy_poison = torch.where(overflow, inf, zero) + torch.where(finite, zero, nan)
        force_poison = torch.where(overflow | ~finite, nan, zero)
        energy = energy.detach().sum() * self.kj_per_ev + energy_poison
        forces = forces.detach() * (self.kj_per_ev * self.angstrom_per_nm) + force_poison
        if self.use_subset:
            full = torch.zeros((self.num_atoms_total, 3), dtype=forces.dtype, device=forces.device)
            forces = full.index_copy(0, self.atom_indices, forces)
        if self.scaled:
            if scale is None:
                raise RuntimeError("this MACE force is scaled by a global parameter: pass its value")
            factor = scale.to(forces.dtype).reshape(())
            energy = energy * factor
            forces = forces * factor
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
    scaled: bool = False
    neighbor_list_impl: str = TORCHSCRIPT_LIST
    compiler: str = TORCHSCRIPT
    tf32_impl: str = ""
    versions: Dict[str, str] = field(default_factory=dict)
    source_sha256: str = ""

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
    from .upstream import import_mace

    import_mace()
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
    scaled: bool = False,
    neighbor_list: Optional[str] = None,
    compiler: str = TORCHSCRIPT,
    tf32_impl: Optional[str] = None,
) -> torch.jit.ScriptModule:
    """The scripted MACEForce for these atoms, on ``device``.

    ``neighbor_list``: "native", "torchscript", or None for the native operator where its
    library is loaded for ``device`` (fixed capacities only; see ``MACEForce``). ``compiler``
    "inductor" replaces the model by its AOTInductor package (``compiled.py``; fixed
    capacities only), compiled here for ``device``. ``tf32_impl`` (tf32 policy): "native"
    (``mace_lp::tf32_mm``), "emulated", or None for ``linears.resolve_tf32_impl``'s choice."""
    policy = get_policy(policy_name)
    device = torch.device(device)
    backend = resolve_backend(backend_request(compiler, backend), device)
    impl = resolve_neighbor_list_impl(neighbor_list, device.type, capacity is not None)
    if energy_type not in ENERGY_TYPES:
        raise ValueError(f"Unknown returnEnergyType {energy_type!r}; use one of {', '.join(ENERGY_TYPES)}.")
    check_compiler(compiler, capacity is not None)
    check_compiled_backend(compiler, backend)
    check_compiled_device(compiler, device.type)
    element_index = check_elements(model, atomic_numbers)
    prepared, _ = prepare_model(model, policy, backend)
    if resolve_tf32_impl(policy.matmul_mode, device.type, tf32_impl) == TF32_NATIVE:
        use_native_tf32(prepared)
    node_attrs = torch.nn.functional.one_hot(
        torch.tensor(element_index, dtype=torch.long), num_classes=len(model.atomic_numbers)
    )
    indices = None if atom_indices is None else torch.tensor(list(atom_indices), dtype=torch.long)
    total = len(atomic_numbers) if num_atoms_total is None else num_atoms_total
    if compiler == INDUCTOR:
        assert capacity is not None
        prepared = compiled_model(prepared, node_attrs, energy_type, capacity.edge_capacity, policy.model_dtype,
                                  device)
    force = MACEForce(prepared, node_attrs, indices, total, periodic, policy.model_dtype, energy_type, capacity,
                      scaled, impl)
    return script_module(force.to(device))


def read_metadata(path: os.PathLike) -> dict:
    """The export record stored inside a module file written by this package."""
    extra = {METADATA_FILE: ""}
    torch.jit.load(os.fspath(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_FILE])


def digest_path(cached: Path) -> Path:
    return cached.with_name(cached.name + DIGEST_SUFFIX)


def cached_export_intact(cached: Path) -> bool:
    """True when ``cached`` exists and its SHA-256 is the one recorded when it was written.

    A missing record, or a file changed since (a disk error, a partial copy, an edit), means the
    module is rebuilt: torch.jit.load of a damaged archive may fail far from here, or not at all.
    """
    from .model_files import sha256_of

    if not cached.is_file():
        return False
    record = digest_path(cached)
    recorded = record.read_text().strip() if record.is_file() else ""
    found = sha256_of(cached)
    if found == recorded:
        return True
    logger.warning("cached export %s %s; rebuilding it", cached,
                   f"has SHA-256 {found}, recorded {recorded}" if recorded else "has no recorded SHA-256")
    return False


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
    scaled: bool = False,
    neighbor_list: Optional[str] = None,
    compiler: str = TORCHSCRIPT,
    tf32_impl: Optional[str] = None,
) -> Path:
    """The TorchScript file for this model, policy and system: from the cache, or built into it.

    With ``output`` the cached file is also copied there (atomically) for the user to keep. With
    a ``capacity`` the neighbour list has fixed shapes (CUDA-graph capturable); ``scaled``: see
    ``MACEForce``; ``neighbor_list``, ``compiler`` and ``tf32_impl``: see ``build_force_module``
    (all are part of the cache key and of the file's metadata).
    """
    from .model_files import cache_dir, check_model_path, load_mace_model, sha256_of

    policy = get_policy(policy_name)
    require_fp32_accumulation(policy)
    device = torch.device(device)
    resolved_backend = resolve_backend(backend_request(compiler, backend), device)
    check_model_path(model_path)
    impl = resolve_neighbor_list_impl(neighbor_list, device.type, capacity is not None)
    check_compiler(compiler, capacity is not None)
    check_compiled_backend(compiler, resolved_backend)
    check_compiled_device(compiler, device.type)
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
        scaled=bool(scaled),
        neighbor_list_impl=impl,
        compiler=compiler,
        tf32_impl=resolve_tf32_impl(policy.matmul_mode, device.type, tf32_impl),
        versions=library_versions(),
        source_sha256=source_digest(),
    )
    cached = cache_dir() / "exports" / f"{spec.key()}.pt"
    if not cached_export_intact(cached):
        model = load_mace_model(model_path)
        module = build_force_module(
            model, policy_name, resolved_backend, atomic_numbers, atom_indices=atom_indices,
            num_atoms_total=num_atoms_total, periodic=periodic, device=device, energy_type=energy_type,
            capacity=capacity, scaled=scaled, neighbor_list=impl, compiler=compiler,
            tf32_impl=spec.tf32_impl or None,
        )
        metadata = {**asdict(spec), "model_path": os.fspath(model_path), "cutoff_angstrom": float(model.r_max)}
        with atomic_path(cached) as tmp:
            torch.jit.save(module, os.fspath(tmp), _extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})
            digest = sha256_of(tmp)
        atomic_write_text(digest_path(cached), digest + "\n")
    if output is None:
        return cached
    with atomic_path(output) as tmp:
        shutil.copyfile(cached, tmp)
    return Path(output)
