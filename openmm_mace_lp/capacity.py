"""Keeps a fixed-capacity MACE force inside its capacities while a simulation runs.

With CUDA graphs the neighbour list has shapes fixed at export (``neighbors.plan_capacity``): a
denser liquid, a shrinking box or a crowded cell could need more than it has. The force module
never goes silently wrong (it returns NaN), but a run should not get there: between report
intervals the simulation layer asks each watch whether a capacity is nearly used up, and if so
re-exports the force sized for the current positions (openmm-torch then captures a new graph).
The check runs the module's own neighbour list (``neighbor_stats``), outside the captured step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

# Attribute of the openmm.System on which the plug-in lists the modules it exported for it.
EXPORTS_ATTRIBUTE = "mace_lp_exports"
# Grow once this share of the edge capacity is in use.
DEFAULT_HEADROOM = 0.97


@dataclass(frozen=True)
class CapacityUse:
    edges: int
    edge_capacity: int
    fullest_cell: int
    cell_capacity: int
    grid_ok: bool

    def shortfall(self, headroom: float = DEFAULT_HEADROOM) -> Optional[str]:
        """Why the capacities must grow now, or None."""
        if not self.grid_ok:
            return "the box shrank below the neighbour grid's margin"
        if self.edges > headroom * self.edge_capacity:
            return f"{self.edges} of {self.edge_capacity} edge slots in use"
        if self.cell_capacity and self.fullest_cell >= self.cell_capacity:
            return f"a cell holds {self.fullest_cell} atoms, its capacity is {self.cell_capacity}"
        return None


class CapacityWatch:
    """One exported fixed-capacity module, loaded a second time to run its neighbour list."""

    def __init__(self, module_path: os.PathLike, device: str, headroom: float = DEFAULT_HEADROOM) -> None:
        import torch

        self.path = os.fspath(module_path)
        self.device = device
        self.headroom = headroom
        self.module = torch.jit.load(self.path, map_location=device)

    def use(self, positions_nm: np.ndarray, box_nm: Optional[np.ndarray]) -> CapacityUse:
        import torch

        dtype = torch.float64
        pos = torch.tensor(np.asarray(positions_nm), dtype=dtype, device=self.device)
        box = None if box_nm is None else torch.tensor(np.asarray(box_nm), dtype=dtype, device=self.device)
        edges, edge_capacity, fullest, cell_capacity, grid_ok = self.module.neighbor_stats(pos, box).tolist()
        return CapacityUse(int(edges), int(edge_capacity), int(fullest), int(cell_capacity), bool(grid_ok))

    def shortfall(self, positions_nm: np.ndarray, box_nm: Optional[np.ndarray]) -> Optional[str]:
        return self.use(positions_nm, box_nm).shortfall(self.headroom)


def record_export(system, module_path: os.PathLike, device: str, fixed_capacity: bool) -> None:
    """Called by the plug-in for each force it adds to ``system``."""
    records = getattr(system, EXPORTS_ATTRIBUTE, None)
    if records is None:
        records = []
        setattr(system, EXPORTS_ATTRIBUTE, records)
    records.append({"path": os.fspath(module_path), "device": device, "fixed_capacity": fixed_capacity})


def watches_for(system) -> List[CapacityWatch]:
    """A watch for every fixed-capacity MACE force the plug-in added to this System."""
    return [CapacityWatch(record["path"], record["device"])
            for record in getattr(system, EXPORTS_ATTRIBUTE, []) if record["fixed_capacity"]]
