"""Growing a fixed-capacity neighbour list during a run (what CUDA-graph runs rely on).

On the CPU the fixed-capacity list is used without graphs (``model.neighbor_list = "fixed"``).
A re-export must continue the run exactly: padding never changes a sum, so a run whose force
was re-exported mid-way reproduces an uninterrupted run bit for bit on the Reference platform.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from openmm_mace_lp import capacity
from openmm_mace_lp.simulations import run as run_module
from openmm_mace_lp.simulations.run import simulate
from sim_helpers import tiny_config

STEPS = 12


def _rows(run_dir):
    with open(run_dir / "state.csv", newline="") as handle:
        return [row[:-1] for row in csv.reader(handle)]  # without the speed column


class _ShortOnce:
    """A real watch that also reports a shortfall once, at the first check after ``after``."""

    fired = False

    def __init__(self, watch, after: int) -> None:
        self.watch, self.after, self.checks = watch, after, 0

    def shortfall(self, positions, box):
        self.checks += 1
        real = self.watch.shortfall(positions, box)
        if real is None and not _ShortOnce.fired and self.checks > self.after:
            _ShortOnce.fired = True
            return "forced by the test"
        return real


@pytest.fixture
def forced_growth(monkeypatch):
    _ShortOnce.fired = False
    monkeypatch.setattr(run_module, "capacity_watches",
                        lambda system: [_ShortOnce(w, after=3) for w in capacity.watches_for(system)])


def test_regrown_force_continues_the_run_exactly(tmp_path, tiny_model, forced_growth):
    settings = dict(run__production_steps=STEPS, model__neighbor_list="fixed", output__trajectory_interval_steps=2)
    grown = simulate(tiny_config(tiny_model, "npt", **settings), tmp_path / "grown", quiet=True).run_dir
    assert _ShortOnce.fired
    manifest = json.loads((grown / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["capacity_growths"] == 1
    assert "forced by the test; neighbour capacities re-sized" in (grown / "run.log").read_text()

    _ShortOnce.fired = True  # no growth in the reference run
    plain = simulate(tiny_config(tiny_model, "npt", **settings), tmp_path / "plain", quiet=True).run_dir
    assert "capacity_growths" not in json.loads((plain / "manifest.json").read_text())
    grown_rows, plain_rows = _rows(grown), _rows(plain)
    assert [int(r[0]) for r in grown_rows[1:]] == list(range(2, STEPS + 1, 2))  # no row lost or repeated
    assert grown_rows == plain_rows
    import mdtraj as md

    frames = [md.load_dcd(str(d / "trajectory.dcd"), top=str(d / "topology.pdb")) for d in (grown, plain)]
    assert frames[0].n_frames == frames[1].n_frames == STEPS // 2
    np.testing.assert_array_equal(frames[0].xyz, frames[1].xyz)


def test_dynamic_list_has_nothing_to_watch(tmp_path, tiny_model):
    config = tiny_config(tiny_model, "nvt", run__production_steps=4, model__neighbor_list="dynamic")
    from openmm_mace_lp.simulations.openmm_setup import create_system
    from openmm_mace_lp.simulations.structure import load_structure

    system = create_system(config, load_structure(config.system))
    assert capacity.watches_for(system) == []
    assert len(getattr(system, capacity.EXPORTS_ATTRIBUTE)) == 1


def test_watch_reports_each_kind_of_shortfall(tiny_model):
    from openmm_mace_lp.simulations.openmm_setup import create_system
    from openmm_mace_lp.simulations.structure import load_structure

    config = tiny_config(tiny_model, "nvt", model__neighbor_list="fixed", model__neighbor_margin=0.2)
    structure = load_structure(config.system)
    (watch,) = capacity.watches_for(create_system(config, structure))
    use = watch.use(structure.positions, structure.box)
    assert use.grid_ok and use.edges > 0
    assert use.edge_capacity == pytest.approx(1.2 * use.edges + 32, abs=2)
    assert watch.shortfall(structure.positions, structure.box) is None
    squeezed = 0.5  # thinner than the cutoff with one cell: the grid no longer covers it
    assert "neighbour grid" in watch.shortfall(structure.positions * squeezed, structure.box * squeezed)
    assert "edge slots" in watch.shortfall(structure.positions * 0.9, structure.box * 0.9)
    assert "edge slots" in capacity.CapacityUse(100, 100, 1, 10, True).shortfall()
    assert "a cell holds" in capacity.CapacityUse(10, 100, 10, 10, True).shortfall()
    assert torch.is_tensor(watch.module.neighbor_stats(torch.tensor(structure.positions), torch.tensor(structure.box)))


def test_capacities_are_sized_for_the_box_of_the_moment(tiny_model):
    """After a barostat has shrunk the box past the grid's margin, a force re-sized for the
    current positions and box fits them (the runner passes both)."""
    import dataclasses

    from openmm_mace_lp.simulations.openmm_setup import create_system
    from openmm_mace_lp.simulations.structure import load_structure

    config = tiny_config(tiny_model, "npt", model__neighbor_list="fixed", system__water_molecules=64)
    structure = load_structure(config.system)
    shrunk = dataclasses.replace(structure, positions=structure.positions * 0.6, box=structure.box * 0.6)
    (first,) = capacity.watches_for(create_system(config, structure))
    assert first.shortfall(shrunk.positions, shrunk.box) is not None
    (resized,) = capacity.watches_for(create_system(config, shrunk))
    assert resized.shortfall(shrunk.positions, shrunk.box) is None
