"""``mace-lp profile``: per-block times that add up, with the backward pass on its blocks."""
from __future__ import annotations

import json

import pytest
import torch

from openmm_mace_lp.bench import eager_inputs
from openmm_mace_lp.export import prepare_model
from openmm_mace_lp.policy import get_policy
from openmm_mace_lp.profile import OUTSIDE, RANGE_PREFIX, _attach_ranges, attribute, profiled_blocks

from .helpers import model, water_box


@pytest.fixture(scope="module")
def prepared_and_data():
    system = water_box(3)
    prepared, _ = prepare_model(model(), get_policy("fp64"), "e3nn")
    data = eager_inputs(prepared, system.atomic_numbers, system.positions, system.box, "cpu", torch.float64)
    return prepared, data


def test_block_times_add_up_and_backward_lands_on_blocks(prepared_and_data):
    prepared, data = prepared_and_data
    blocks = profiled_blocks(prepared)
    assert "interactions.1.conv_tp_weights" in blocks and "products.0" in blocks
    before = prepared(dict(data), compute_force=True)["energy"].item()
    handles = _attach_ranges(prepared, blocks)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        prepared(dict(data), compute_force=True)
    for handle in handles:
        handle.remove()
    events = profile.events()
    times = attribute(events)
    # Every op's self time is counted once: the rows sum to the profile's total.
    total = sum(e.self_cpu_time_total for e in events if not e.name.startswith(RANGE_PREFIX)) / 1000.0
    assert sum(row.host_ms for row in times.values()) == pytest.approx(total, rel=1e-9)
    for name in blocks:
        assert times[name].forward_host_ms > 0, name
    # The radial MLP's matrix products have their gradients on the same row.
    assert times["interactions.0.conv_tp_weights"].backward_host_ms > 0
    backward = sum(row.backward_host_ms for row in times.values())
    assert times.get(OUTSIDE) is None or times[OUTSIDE].backward_host_ms < 0.1 * backward
    # Hooks are gone: the model computes what it computed before.
    assert prepared(dict(data), compute_force=True)["energy"].item() == before


def test_profile_command_writes_table_json_and_chart(tmp_path):
    from openmm_mace_lp.cli import main

    assert main(["profile", "--atoms", "192", "--repeats", "1", "--device", "cpu", "-o", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "profile.json").read_text())
    assert record["atoms"] == 192 and record["policy"] == "fp32"
    assert record["blocks"]["interactions.0.conv_tp"]["host_ms"] > 0
    assert "| products.0 |" in (tmp_path / "profile.md").read_text()
    assert (tmp_path / "profile.png").read_bytes()[:4] == b"\x89PNG"


def test_total_row_sums_each_column_in_its_own_column():
    from openmm_mace_lp.profile import BlockTime, markdown_table

    times = {"embedding": BlockTime(1.0, 0.5, 2.0, 0.25), "interactions.0": BlockTime(3.0, 1.5, 4.0, 0.75),
             OUTSIDE: BlockTime(0.5, 0.0, 0.0, 0.0)}
    lines = markdown_table(times, "header").strip().splitlines()
    header = [cell.strip() for cell in lines[2].strip("|").split("|")]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[4:])}
    total = dict(zip(header, rows["**total**"]))
    for column, expected in (("forward host ms", 4.5), ("forward GPU ms", 2.0), ("backward host ms", 6.0),
                             ("backward GPU ms", 1.0)):
        assert float(total[column]) == pytest.approx(expected)
        assert sum(float(dict(zip(header, cells))[column]) for name, cells in rows.items()
                   if name != "**total**") == pytest.approx(expected)
    assert total["share of GPU time"] == "100.0%" and total["share of host time"] == "100.0%"
