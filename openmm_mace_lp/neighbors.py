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
box without wrapping.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

def _stencil(half_width: List[int], device: torch.device) -> torch.Tensor:
    """All integer offsets in [-h0, h0] x [-h1, h1] x [-h2, h2], shape [S, 3]."""
    axes = [torch.arange(-h, h + 1, device=device) for h in half_width]
    grid = torch.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], dim=1)


def neighbor_list(
    positions: torch.Tensor, cell: Optional[torch.Tensor], cutoff: float, max_candidates: int = 8000000
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Edges (sender, receiver) [2, E] int64 and shifts [E, 3] for pairs closer than ``cutoff``.

    ``cell`` holds the box vectors as rows (any triclinic cell, e.g. OpenMM's reduced form) or is
    None for a non-periodic system. Positions need not be wrapped into the box. At most
    ``max_candidates`` candidate pairs (~40 bytes each) are examined at once.
    """
    positions = positions.detach()
    device, dtype = positions.device, positions.dtype
    n_atoms = positions.shape[0]
    periodic = cell is not None
    # Non-periodic systems use a zero box: every image is 0, so every shift is 0.
    box = torch.zeros((3, 3), dtype=dtype, device=device)
    if cell is not None:
        box = cell
        inverse = torch.linalg.inv(cell)
        frac_raw = positions @ inverse
        image_of_atom = torch.floor(frac_raw)
        frac = frac_raw - image_of_atom  # in [0, 1)
        volume = torch.abs(torch.linalg.det(cell))
        widths = torch.stack([
            volume / torch.linalg.norm(torch.linalg.cross(cell[1], cell[2])),
            volume / torch.linalg.norm(torch.linalg.cross(cell[2], cell[0])),
            volume / torch.linalg.norm(torch.linalg.cross(cell[0], cell[1])),
        ])
        counts_per_dim = torch.clamp(torch.floor(widths / cutoff), min=1.0)
        half_width = torch.ceil(cutoff * counts_per_dim / widths - 1e-9)
        grid_coord = frac * counts_per_dim
        wrapped = frac @ cell
    else:
        origin = positions.min(dim=0).values
        extent = positions.max(dim=0).values - origin
        counts_per_dim = torch.clamp(torch.floor(extent / cutoff), min=1.0)
        cell_size = torch.maximum(extent / counts_per_dim, torch.full_like(extent, cutoff))
        half_width = torch.ones(3, dtype=dtype, device=device)
        grid_coord = (positions - origin) / cell_size
        image_of_atom = torch.zeros_like(positions)
        wrapped = positions
    counts_list: List[float] = counts_per_dim.tolist()
    halves_list: List[float] = half_width.tolist()
    dims: List[int] = [int(v) for v in counts_list]
    halves: List[int] = [max(int(v), 1) for v in halves_list]
    n_cells_dim = torch.tensor(dims, device=device)
    atom_cell = torch.minimum(torch.floor(grid_coord).long().clamp(min=0), n_cells_dim - 1)  # [N, 3]
    cell_id = (atom_cell[:, 0] * dims[1] + atom_cell[:, 1]) * dims[2] + atom_cell[:, 2]
    order = torch.argsort(cell_id)
    atoms_in_cell = torch.bincount(cell_id, minlength=dims[0] * dims[1] * dims[2])
    cell_start = torch.cumsum(atoms_in_cell, 0) - atoms_in_cell
    max_per_cell = int(atoms_in_cell.max().item())
    offsets = _stencil(halves, device)  # [S, 3]
    n_offsets = offsets.shape[0]
    slot = torch.arange(max_per_cell, device=device)
    cutoff2 = cutoff * cutoff
    chunk = max(1, max_candidates // max(1, n_offsets * max_per_cell))
    senders: List[torch.Tensor] = []
    receivers: List[torch.Tensor] = []
    images: List[torch.Tensor] = []
    for first in range(0, n_atoms, chunk):
        i = torch.arange(first, min(first + chunk, n_atoms), device=device)
        target = atom_cell[i].unsqueeze(1) + offsets.unsqueeze(0)  # [n, S, 3]
        if periodic:
            image = torch.div(target, n_cells_dim, rounding_mode="floor")
            target = target - image * n_cells_dim
            valid_cell = torch.ones(target.shape[:2], dtype=torch.bool, device=device)
        else:
            image = torch.zeros_like(target)
            valid_cell = ((target >= 0) & (target < n_cells_dim)).all(dim=-1)
            target = torch.minimum(target.clamp(min=0), n_cells_dim - 1)
        target_id = (target[..., 0] * dims[1] + target[..., 1]) * dims[2] + target[..., 2]
        start = cell_start[target_id].unsqueeze(-1)  # [n, S, 1]
        filled = slot < atoms_in_cell[target_id].unsqueeze(-1)  # [n, S, M]
        mask = filled & valid_cell.unsqueeze(-1)
        j = order[(start + slot).clamp(max=n_atoms - 1)]  # [n, S, M]
        image_full = image.unsqueeze(2).expand(-1, -1, max_per_cell, -1)
        i_full = i.view(-1, 1, 1).expand_as(j)
        i_sel, j_sel, image_sel = i_full[mask], j[mask], image_full[mask]
        vec = wrapped[j_sel] + image_sel.to(dtype) @ box - wrapped[i_sel]
        distance2 = (vec * vec).sum(dim=-1)
        is_self = (i_sel == j_sel) & (image_sel == 0).all(dim=-1)
        keep = (distance2 < cutoff2) & ~is_self
        senders.append(i_sel[keep])
        receivers.append(j_sel[keep])
        images.append(image_sel[keep])
    sender = torch.cat(senders)
    receiver = torch.cat(receivers)
    # Pair vectors refer to the unwrapped positions MACE receives.
    lattice_shift = torch.cat(images).to(dtype) + image_of_atom[sender] - image_of_atom[receiver]
    return torch.stack([sender, receiver]), lattice_shift @ box
