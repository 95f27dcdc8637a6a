"""Keeps a fixed-capacity MACE force inside its capacities while a simulation runs.

With CUDA graphs the neighbour list has shapes fixed at export (``neighbors.plan_capacity``): a
denser liquid, a shrinking box or a crowded cell could need more than it has. The force module
never goes silently wrong (+inf energy, NaN forces), but a run should not get there: between
report intervals the simulation layer asks each watch whether a capacity is nearly used up, and
if so re-exports the force sized for the current positions (openmm-torch then captures a new
graph). The check runs the module's own neighbour list (``neighbor_stats``), outside the
captured step.

The watches are found in the System's own forces (each TorchForce's module, also inside a
CustomCVForce), not in Python state attached to the System: a System handed back by a Context
(``context.getSystem()``), a deep copy or an XML round trip keeps them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np

# Attribute of the openmm.System on which the plug-in lists the modules it exported for it
# (a record for people and tools; the watches do not depend on it).
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

    @property
    def exceeded(self) -> bool:
        """True when the module's output was poisoned at these positions (a capacity overflowed)."""
        over_cell = bool(self.cell_capacity) and self.fullest_cell > self.cell_capacity
        return (not self.grid_ok) or self.edges > self.edge_capacity or over_cell


class CapacityWatch:
    """One fixed-capacity MACE module (the TorchForce's own), whose neighbour list it runs."""

    def __init__(self, module, device: str, headroom: float = DEFAULT_HEADROOM, path: Optional[str] = None) -> None:
        self.module = module
        self.device = device
        self.headroom = headroom
        self.path = path

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


def torch_forces(system) -> Iterator:
    """Every TorchForce of ``system`` (as ``openmmtorch.TorchForce``), also those inside a
    CustomCVForce (openmm-ml's interpolating mixed systems put them there)."""
    import openmm

    from .potential import import_openmmtorch

    openmmtorch = import_openmmtorch()

    def within(force) -> Iterator:
        if openmmtorch.TorchForce.isinstance(force):
            yield openmmtorch.TorchForce.cast(force)
        elif isinstance(force, openmm.CustomCVForce):
            for index in range(force.getNumCollectiveVariables()):
                yield from within(force.getCollectiveVariable(index))

    for force in system.getForces():
        yield from within(force)


def is_fixed_capacity_mace(module) -> bool:
    """True for a module exported by this package with a fixed-capacity neighbour list."""
    return hasattr(module, "neighbor_stats") and bool(getattr(module, "padded", False))


def watches_for(system) -> List[CapacityWatch]:
    """A watch for every fixed-capacity MACE force in this System."""
    watches = []
    for force in torch_forces(system):
        module = force.getModule()
        if not is_fixed_capacity_mace(module):
            continue
        device = str(module.node_attrs.device)
        watches.append(CapacityWatch(module, device, path=force.getFile() or None))
    return watches
