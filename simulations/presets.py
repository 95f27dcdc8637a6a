"""The config of ``mace-lp run``: a short NPT water run sized for the machine at hand.

On a GPU it is a real (if short) run; on a 2-core CPU the default water model takes a few
seconds per step for 192 atoms, so the CPU preset is a smoke run that finishes in a couple
of minutes and still exercises every stage (minimisation, equilibration, barostat moves,
checkpoints, trajectory).
"""
from __future__ import annotations

from typing import Iterable

from .config import SimulationConfig, apply_overrides, config_from_dict, validate

DEFAULT_MAIN_DIR = "runs/main"

# Sections of the preset that depend on the device; everything else is the config default.
# One torch thread: on a busy (shared) 2-core machine two OpenMP threads spin against the
# other load and run 3-40x slower; on an idle one they would gain less than 2x.
_CPU = {
    "run": {"equilibration_steps": 10, "production_steps": 30, "minimize_max_iterations": 10},
    "output": {"report_interval_steps": 5, "trajectory_interval_steps": 5, "checkpoint_interval_steps": 10},
    "barostat": {"interval_steps": 10},
    "platform": {"cpu_threads": 1},
}
_GPU = {
    "run": {"equilibration_steps": 1000, "production_steps": 4000, "minimize_max_iterations": 200},
    "output": {"report_interval_steps": 20, "trajectory_interval_steps": 100, "checkpoint_interval_steps": 1000},
    "barostat": {"interval_steps": 25},
}


def main_config(device: str, *, model: str | None = None, policy: str = "fp32",
                production_steps: int | None = None, overrides: Iterable[str] = ()) -> SimulationConfig:
    """The `mace-lp run` config for ``device`` ("cpu" or "cuda..."), validated."""
    data = {
        "ensemble": "npt",
        "model": {"path": model or "default", "policy": policy, "backend": "auto"},
        "system": {"water_molecules": 64},
        **{section: dict(values) for section, values in (_GPU if device.startswith("cuda") else _CPU).items()},
    }
    data.setdefault("platform", {})["device"] = device
    if production_steps is not None:
        data["run"]["production_steps"] = production_steps
        for key in ("report_interval_steps", "trajectory_interval_steps"):
            data["output"][key] = min(data["output"][key], production_steps)
    config = config_from_dict(apply_overrides(data, overrides), "mace-lp run")
    validate(config)
    return config
