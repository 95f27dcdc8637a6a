"""Cell-list neighbour list in TorchScript, on the device of the positions.

MACE needs, for every ordered pair (sender i, receiver j) and lattice image closer than the
cutoff, the index pair and the shift such that ``pos[j] - pos[i] + shift`` is the pair vector.
openmm-ml 1.8 builds this on the CPU with matscipy every step; here it is built from tensor ops
so the whole step stays on the GPU.

Method: atoms are binned into a grid of cells in fractional coordinates whose perpendicular
width is at least the cutoff, so every neighbour lies in the 3x3x3 block of cells around an
atom's own. A box thinner than the cutoff along some direction gets one cell there and a wider
stencil of periodic images (``ceil(cutoff / width)`` on each side), so small boxes are handled
with as many images as the cutoff needs instead of being refused. Memory is O(N * 27 * atoms per
cell), processed in chunks, i.e. linear in N. Non-periodic systems use a grid over the bounding
box without wrapping. One function (``cell_list``) does this, with shapes fixed in advance (the
CUDA-graph path) or sized from the data. The fixed-shape list also exists as a native operator
(``native_cell_list``: C++/CUDA kernels in native/, the same output bit for bit on the CPU),
which exported modules call when its library is loaded (``resolve_neighbor_list_impl``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch


def _stencil(half_width: List[int], device: torch.device) -> torch.Tensor:
    """All integer offsets in [-h0, h0] x [-h1, h1] x [-h2, h2], shape [S, 3]."""
    axes = [torch.arange(-h, h + 1, device=device) for h in half_width]
    grid = torch.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], dim=1)


# ---------------------------------------------------------------------------------------------
# One cell list, two ways of sizing it.
#
# ``cell_list`` is the only implementation. Given capacities (cells per box vector, atoms per
# cell, edges) every shape is fixed when the module is exported and nothing waits for the device,
# so the call can be captured in a CUDA graph: openmm-torch's ``useCUDAGraphs`` is what removes the
# 2-5x host overhead of the MACE step below ~3000 atoms. The grid is chosen with a margin so the
# box may shrink under a barostat. Unused edge slots are padding: self-pairs (sender = receiver,
# spread over all atoms) with a shift longer than the cutoff, so MACE's polynomial envelope
# (exactly zero beyond r_max) and its bias-free radial MLP give them exactly zero messages and
# zero force. Whether the capacities held is returned as ``stats`` (edges needed, fullest cell,
# grid still valid), computed on the device; the force module poisons its output when they did
# not (``export.MACEForce``), so an overflow is never silent, and the simulation layer checks
# ``stats`` between report intervals to grow the capacities before that happens
# (``capacity.py``). Without capacities (``neighbor_list``) the grid comes from the box of the
# moment and the atoms per cell and edges from the data (host synchronisation, shapes that change
# from step to step): the list for runs without CUDA graphs and for sizing the fixed one.
# ---------------------------------------------------------------------------------------------

def _reciprocal_rows(cell: torch.Tensor) -> torch.Tensor:
    """Rows r_k with r_k . a_l = delta_kl: the 3x3 inverse without a solver call (torch.linalg.inv
    checks its result on the host, which a CUDA graph cannot contain). 1/|r_k| is the distance
    between the cell's faces across a_k."""
    cross = torch.stack([
        torch.linalg.cross(cell[1], cell[2]),
        torch.linalg.cross(cell[2], cell[0]),
        torch.linalg.cross(cell[0], cell[1]),
    ])
    return cross / (cell[0] * cross[0]).sum()


def _compact(keep: torch.Tensor, sender: torch.Tensor, receiver: torch.Tensor, image: torch.Tensor,
             offset: torch.Tensor, out_sender: torch.Tensor, out_receiver: torch.Tensor,
             out_image: torch.Tensor) -> torch.Tensor:
    """Write the kept candidates into the next free edge slots; returns the new edge count.

    Slots past the capacity, and candidates not kept, all go to the extra dump slot at the end.
    """
    capacity = out_sender.shape[0] - 1
    kept = keep.to(torch.long)
    slot = offset + torch.cumsum(kept, 0) - kept
    slot = torch.where(keep & (slot < capacity), slot, torch.full_like(slot, capacity))
    out_sender.scatter_(0, slot, sender)
    out_receiver.scatter_(0, slot, receiver)
    out_image.index_copy_(0, slot, image)
    return offset + kept.sum()


def cell_list(
    positions: torch.Tensor,
    cell: Optional[torch.Tensor],
    cutoff: float,
    grid: List[int],
    stencil: torch.Tensor,
    cell_capacity: int,
    edge_capacity: int,
    max_candidates: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edges (sender, receiver) [2, E], shifts [E, 3] and stats [3] (int64 on the device: edges
    needed, atoms in the fullest cell, 1 if the grid still covers the cutoff else 0).

    ``pos[receiver] - pos[sender] + shift`` is the pair vector of every ordered pair closer than
    ``cutoff`` (each lattice image apart). ``cell`` holds the box vectors as rows (any triclinic
    cell, e.g. OpenMM's reduced form) or is None (non-periodic: the grid spans the atoms'
    bounding box, cells at least ``cutoff`` wide). Positions need not be wrapped. Atoms are binned
    into ``grid`` cells (per box vector or axis); each atom's candidates are the atoms of the
    cells at the ``stencil`` offsets [S, 3] around its own, at most ``max_candidates`` candidate
    pairs (~50 bytes each) at a time.

    ``cell_capacity`` and ``edge_capacity`` > 0 fix the shapes: E = ``edge_capacity``, the first
    ``stats[0]`` edges are real when ``stats`` shows no overflow and the rest is padding. 0 (or
    less) sizes them from the data: E is the number of edges, all real. Edges come in a canonical
    order (sender, receiver, image), so the sums over edges, and hence the energy to the last bit,
    do not depend on the grid or the capacities.
    """
    positions = positions.detach()
    device, dtype = positions.device, positions.dtype
    n_atoms = positions.shape[0]
    cutoff2 = cutoff * cutoff
    # Built on the device (torch.tensor(grid) would be a host-to-device copy, not capturable).
    dims = torch.cat([torch.full((1,), g, dtype=torch.long, device=device) for g in grid])
    dims_f = dims.to(dtype)
    # Non-periodic systems use a zero box: every image is 0, so every shift is 0.
    box = torch.zeros((3, 3), dtype=dtype, device=device)
    grid_ok = torch.ones((), dtype=torch.long, device=device)
    if cell is None:
        origin = positions.min(dim=0).values
        extent = positions.max(dim=0).values - origin
        cell_size = torch.maximum(extent / dims_f, torch.full_like(extent, cutoff))
        grid_coord = (positions - origin) / cell_size
        image_of_atom = torch.zeros_like(positions)
        wrapped = positions
    else:
        box = cell
        reciprocal = _reciprocal_rows(cell)
        frac_raw = positions @ reciprocal.T
        image_of_atom = torch.floor(frac_raw)
        frac = frac_raw - image_of_atom  # in [0, 1)
        wrapped = frac @ cell
        # The stencil reaches h cells of width w/dims on each side: it covers the cutoff while
        # h * w / dims >= cutoff along each box vector (w: distance between opposite faces).
        widths = 1.0 / torch.linalg.norm(reciprocal, dim=1)
        reach = stencil.abs().max(dim=0).values.to(dtype) * widths / dims_f
        grid_ok = (reach >= cutoff).all().to(torch.long)
        grid_coord = frac * dims_f
    atom_cell = torch.minimum(torch.floor(grid_coord).long().clamp(min=0), dims - 1)  # [N, 3]
    cell_id = (atom_cell[:, 0] * grid[1] + atom_cell[:, 1]) * grid[2] + atom_cell[:, 2]
    # Stable: atoms of a cell in ascending index, on every device, so that which pairs an
    # overflowing cell drops is defined (the native operator, mace_lp::cell_list, drops the same).
    order = torch.argsort(cell_id, stable=True)
    n_cells = grid[0] * grid[1] * grid[2]
    atoms_in_cell = torch.zeros(n_cells, dtype=torch.long, device=device).index_add_(
        0, cell_id, torch.ones_like(cell_id))
    fullest = atoms_in_cell.max()
    cell_start = torch.cumsum(atoms_in_cell, 0) - atoms_in_cell
    if cell_capacity <= 0:
        cell_capacity = int(fullest.item())
    data_sized = edge_capacity <= 0
    capacity = max(edge_capacity, 0)
    out_sender = torch.zeros(capacity + 1, dtype=torch.long, device=device)
    out_receiver = torch.zeros(capacity + 1, dtype=torch.long, device=device)
    out_image = torch.zeros((capacity + 1, 3), dtype=dtype, device=device)
    count = torch.zeros((), dtype=torch.long, device=device)
    senders: List[torch.Tensor] = []
    receivers: List[torch.Tensor] = []
    images: List[torch.Tensor] = []
    slot = torch.arange(cell_capacity, device=device)
    n_offsets = stencil.shape[0]
    chunk = max(1, max_candidates // max(1, n_offsets * cell_capacity))
    for first in range(0, n_atoms, chunk):
        i = torch.arange(first, min(first + chunk, n_atoms), device=device)
        target = atom_cell[i].unsqueeze(1) + stencil.unsqueeze(0)  # [n, S, 3]
        if cell is None:
            image = torch.zeros_like(target)
            valid_cell = ((target >= 0) & (target < dims)).all(dim=-1)
            target = torch.minimum(target.clamp(min=0), dims - 1)
        else:
            image = torch.div(target, dims, rounding_mode="floor")
            target = target - image * dims
            valid_cell = torch.ones(target.shape[:2], dtype=torch.bool, device=device)
        target_id = (target[..., 0] * grid[1] + target[..., 1]) * grid[2] + target[..., 2]
        filled = (slot < atoms_in_cell[target_id].unsqueeze(-1)) & valid_cell.unsqueeze(-1)  # [n, S, M]
        j = order[(cell_start[target_id].unsqueeze(-1) + slot).clamp(max=n_atoms - 1)]
        image_f = image.to(dtype).unsqueeze(2).expand(-1, -1, cell_capacity, -1)
        vec = wrapped[j] + image_f @ box - wrapped[i].view(-1, 1, 1, 3)
        is_self = (j == i.view(-1, 1, 1)) & (image == 0).all(-1).unsqueeze(-1)
        keep = (filled & ((vec * vec).sum(-1) < cutoff2) & ~is_self).reshape(-1)
        i_full = i.view(-1, 1, 1).expand(-1, n_offsets, cell_capacity).reshape(-1)
        j_flat = j.reshape(-1)
        image_flat = image_f.reshape(-1, 3)
        if data_sized:
            senders.append(i_full[keep])
            receivers.append(j_flat[keep])
            images.append(image_flat[keep])
        else:
            count = _compact(keep, i_full, j_flat, image_flat, count, out_sender, out_receiver, out_image)
    if data_sized:
        out_sender = torch.cat(senders)
        out_receiver = torch.cat(receivers)
        out_image = torch.cat(images)
        count = torch.full((), out_sender.shape[0], dtype=torch.long, device=device)
        capacity = out_sender.shape[0]
    real = torch.arange(capacity, device=device) < count
    # The canonical order (sender, receiver, cell image); padding sorts last.
    image_index = out_image[:capacity].round().long() + 32  # |image| < 32 along each vector
    image_code = (image_index[:, 0] * 64 + image_index[:, 1]) * 64 + image_index[:, 2]
    key = (out_sender[:capacity] * n_atoms + out_receiver[:capacity]) * 262144 + image_code
    key = torch.where(real, key, torch.full_like(key, 2**62))
    ordered = torch.argsort(key)
    sender = out_sender[ordered]
    receiver = out_receiver[ordered]
    lattice_image = out_image[ordered]
    # Pair vectors refer to the unwrapped positions MACE receives.
    lattice = lattice_image + image_of_atom[sender] - image_of_atom[receiver]
    shifts = lattice @ box
    padding_shift = (torch.arange(3, device=device) == 0).to(dtype) * (2.0 * cutoff)
    shifts = torch.where(real.unsqueeze(1), shifts, padding_shift)
    # Padding pairs each atom with itself in turn: had they all pointed at one atom, every
    # scatter-add of messages (and of their gradients) would serialise on that atom's row.
    spread = torch.arange(capacity, device=device) % max(n_atoms, 1)
    sender = torch.where(real, sender, spread)
    receiver = torch.where(real, receiver, spread)
    stats = torch.stack([count, fullest, grid_ok])
    return torch.stack([sender, receiver]), shifts, stats


def data_sized_grid(positions: torch.Tensor, cell: Optional[torch.Tensor], cutoff: float) -> Tuple[List[int], List[int]]:
    """Cells per box vector (or axis) and stencil reach for the box or bounding box of the moment.

    Periodic: cells at least ``cutoff`` wide; a box thinner than the cutoff along some vector gets
    one cell there and a stencil of ``ceil(cutoff / width)`` images on each side, so small boxes
    are handled with as many images as the cutoff needs. Non-periodic: cells over the bounding
    box, at least ``cutoff`` wide, and the neighbouring cells where there are any.
    """
    if cell is not None:
        widths: List[float] = (1.0 / torch.linalg.norm(_reciprocal_rows(cell), dim=1)).tolist()
        dims = [max(1, int(math.floor(w / cutoff))) for w in widths]
        reach = [max(1, int(math.ceil(cutoff * d / w - 1e-9))) for d, w in zip(dims, widths)]
        return dims, reach
    extents: List[float] = (positions.max(dim=0).values - positions.min(dim=0).values).tolist()
    dims = [max(1, int(math.floor(e / cutoff))) for e in extents]
    return dims, [1 if d > 1 else 0 for d in dims]


def neighbor_list(
    positions: torch.Tensor, cell: Optional[torch.Tensor], cutoff: float, max_candidates: int = 4000000
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Edges (sender, receiver) [2, E] int64 and shifts [E, 3] for pairs closer than ``cutoff``,
    sized from the data (``cell_list`` without capacities)."""
    positions = positions.detach()
    dims, reach = data_sized_grid(positions, cell, cutoff)
    edges, shifts, _ = cell_list(positions, cell, cutoff, dims, _stencil(reach, positions.device), 0, 0,
                                 max_candidates)
    return edges, shifts


def padded_neighbor_list(
    positions: torch.Tensor,
    cell: Optional[torch.Tensor],
    cutoff: float,
    grid: List[int],
    stencil: torch.Tensor,
    cell_capacity: int,
    edge_capacity: int,
    max_candidates: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed-capacity list (``cell_list`` with capacities): CUDA-graph capturable.

    Non-periodic systems pass one cell (``grid`` [1, 1, 1], ``stencil`` [[0, 0, 0]],
    ``cell_capacity`` = the number of atoms): all pairs are examined (they are small: molecules,
    ML regions).
    """
    return cell_list(positions, cell, cutoff, grid, stencil, max(cell_capacity, 1), max(edge_capacity, 1),
                     max_candidates)


def native_cell_list(
    positions: torch.Tensor,
    cell: Optional[torch.Tensor],
    cutoff: float,
    grid: List[int],
    stencil: torch.Tensor,
    cell_capacity: int,
    edge_capacity: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``padded_neighbor_list`` from the native operator ``mace_lp::cell_list`` (native/, loaded by
    ``openmm_mace_lp.native``): the same edges, shifts and stats, bit for bit on the CPU, with a
    CUDA kernel that a CUDA graph can capture. Only callable once the library is loaded, also
    when scripted."""
    return torch.ops.mace_lp.cell_list(positions.detach(), cell, cutoff, grid, stencil, max(cell_capacity, 1),
                                       max(edge_capacity, 1))


# Which implementation builds the fixed-capacity list of an exported module.
NATIVE_LIST = "native"
TORCHSCRIPT_LIST = "torchscript"
NEIGHBOR_LIST_IMPLS = (NATIVE_LIST, TORCHSCRIPT_LIST)


# Device types whose native kernels are the default (see resolve_neighbor_list_impl).
NATIVE_DEFAULT_DEVICES = ("cpu", "cuda")


def resolve_neighbor_list_impl(requested: Optional[str], device_type: str, fixed_capacity: bool) -> str:
    """The implementation an export uses: ``requested``, or by default the native operator where
    it is loaded for ``device_type`` and proven there. The data-sized list (no fixed capacity) is
    TorchScript only.

    Proven: the CPU kernel equals the TorchScript list bit for bit in the CPU tests; the CUDA
    kernels pass the same comparisons and CUDA-graph replay on an H200 (``tests/gpu/test_native_gpu.py``),
    and inside a captured step they are faster: 5.19 against 6.02 ms of kernel time per
    energy+force call at 1029 atoms, the index/scatter kernels 0.14 against 0.50 ms
    (benchmarks/results/kernel_profile_2026-12-02_h200.md). Where the library lacks a kernel for
    ``device_type`` the TorchScript list is used.
    """
    from . import native

    if requested is not None and requested not in NEIGHBOR_LIST_IMPLS:
        raise ValueError(f"Unknown neighbour list implementation {requested!r}; use one of "
                         f"{', '.join(NEIGHBOR_LIST_IMPLS)} (or None for the native one where it is loaded).")
    usable = fixed_capacity and native.available(device_type)
    if requested == NATIVE_LIST and not usable:
        if not fixed_capacity:
            raise ValueError("The native neighbour list has fixed capacities: pass a capacity "
                             "(fixedNeighborList=True), or neighbor_list='torchscript'.")
        state = native.state()
        cause = ("OPENMM_MACE_LP_NATIVE=0 turns it off" if native.disabled_by_environment() else
                 state.problem or f"its library has no {device_type} kernel (loaded: {sorted(state.loaded) or 'none'})")
        raise RuntimeError(f"The native neighbour list is not available for {device_type}: {cause}. "
                           f"Use neighbor_list='torchscript' or None.")
    if requested is None:
        return NATIVE_LIST if usable and device_type in NATIVE_DEFAULT_DEVICES else TORCHSCRIPT_LIST
    return requested


# Candidate pairs examined per chunk of atoms by the cell list (~50 bytes each; neighbor_list's default too).
CANDIDATES_PER_CHUNK = 4_000_000


@dataclass(frozen=True)
class NeighborCapacity:
    """The fixed shapes of a padded neighbour list (see ``padded_neighbor_list``).

    ``grid`` is empty for non-periodic systems (all pairs are examined); ``stencil_reach`` is the
    number of cells the stencil reaches along each box vector.
    """

    grid: Tuple[int, ...]
    stencil_reach: Tuple[int, ...]
    cell_capacity: int
    edge_capacity: int

    def stencil(self) -> torch.Tensor:
        if not self.grid:
            return torch.zeros((1, 3), dtype=torch.long)
        return _stencil(list(self.stencil_reach), torch.device("cpu"))

    def list_arguments(self, num_atoms: int) -> Tuple[List[int], torch.Tensor, int]:
        """(grid, stencil, atoms per cell) as ``padded_neighbor_list`` takes them; a non-periodic
        system is one cell that holds every atom."""
        if not self.grid:
            return [1, 1, 1], torch.zeros((1, 3), dtype=torch.long), num_atoms
        return list(self.grid), self.stencil(), self.cell_capacity


def face_distances(box: np.ndarray) -> np.ndarray:
    """Distance between opposite faces of the cell spanned by the rows of ``box`` (shape
    (3, 3), or (n, 3, 3) for n boxes -> (n, 3)): V / |b x c| for each face. Half the smallest
    is the largest cutoff that sees at most one image of each atom. The project's one copy of
    this geometry (neighbour list, RDF range, the teacher's cutoff check)."""
    box = np.asarray(box, dtype=np.float64)
    volume = np.abs(np.linalg.det(box))
    widths = [volume / np.linalg.norm(np.cross(box[..., (k + 1) % 3, :], box[..., (k + 2) % 3, :]), axis=-1)
              for k in range(3)]
    return np.stack(widths, axis=-1)


def plan_capacity(num_atoms: int, cutoff: float, box: Optional[np.ndarray] = None,
                  positions: Optional[np.ndarray] = None, edge_margin: Optional[float] = None,
                  box_margin: float = 0.1) -> NeighborCapacity:
    """Capacities for a system, from its atoms (and box, Angstrom) or from real positions.

    With ``positions`` the edges and the fullest cell are counted and ``edge_margin`` defaults to
    10%; without, they are estimated from the mean density and it defaults to 25%. The grid is
    chosen so the box may shrink by ``box_margin`` along each vector (a barostat) before it stops
    covering the cutoff. Every choice is checked on the device at each call (``stats``).
    """
    if positions is not None:
        check_finite_positions(positions)
    if edge_margin is None:
        edge_margin = 0.10 if positions is not None else 0.25
    if box is None:
        if positions is not None:
            edges = _count_edges(positions, None, cutoff)
        else:
            # Condensed matter has ~0.1 atoms per cubic Angstrom; a molecule has fewer neighbours.
            per_atom = min(num_atoms - 1, 0.1 * 4.0 / 3.0 * np.pi * cutoff ** 3)
            edges = num_atoms * per_atom
        return NeighborCapacity((), (), 0, _with_margin(edges, edge_margin))
    box = np.asarray(box, dtype=np.float64)
    smallest = face_distances(box) / (1.0 + box_margin)
    grid = tuple(max(1, int(np.floor(w / cutoff))) for w in smallest)
    reach = tuple(max(1, int(np.ceil(cutoff * g / w - 1e-9))) for g, w in zip(grid, smallest))
    mean_per_cell = num_atoms / float(np.prod(grid))
    cell_capacity = int(np.ceil(mean_per_cell + 5.0 * np.sqrt(mean_per_cell) + 4.0))
    if positions is not None:
        edges = _count_edges(positions, box, cutoff)
        cell_capacity = max(cell_capacity, _fullest_cell(positions, box, grid) + 4)
    else:
        volume = abs(float(np.linalg.det(box)))
        edges = num_atoms * (num_atoms / volume) * 4.0 / 3.0 * np.pi * cutoff ** 3
    # One slot more than there are atoms: a cell can then never fill up.
    return NeighborCapacity(grid, reach, min(cell_capacity, num_atoms + 1), _with_margin(edges, edge_margin))


def check_finite_positions(positions: np.ndarray) -> None:
    """Positions that size a neighbour list must be finite: a NaN atom would count no neighbours."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(positions, dtype=np.float64)).all(axis=-1))
    if bad.size:
        listed = ", ".join(str(int(i)) for i in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise ValueError(
            f"The positions used to size the neighbour list are not finite for {bad.size} atom(s) "
            f"(index {listed}); pass the finite starting positions of the system (positions=...)."
        )


def _with_margin(edges: float, margin: float) -> int:
    return int(np.ceil(edges * (1.0 + margin))) + 32


def _count_edges(positions: np.ndarray, box: Optional[np.ndarray], cutoff: float) -> int:
    cell = None if box is None else torch.tensor(box, dtype=torch.float64)
    edges, _ = neighbor_list(torch.tensor(positions, dtype=torch.float64), cell, cutoff)
    return int(edges.shape[1])


def _fullest_cell(positions: np.ndarray, box: np.ndarray, grid: Tuple[int, ...]) -> int:
    frac = positions @ np.linalg.inv(box)
    frac -= np.floor(frac)
    dims = np.array(grid)
    index = np.minimum(np.floor(frac * dims).astype(int), dims - 1)
    flat = (index[:, 0] * dims[1] + index[:, 1]) * dims[2] + index[:, 2]
    return int(np.bincount(flat).max())
