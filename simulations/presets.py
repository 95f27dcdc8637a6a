"""The config of ``mace-lp run``: a short NPT water run sized for the machine at hand.

On a 2-core CPU the embedded AMOEBA-trained model takes ~0.3 s per MD step for 192 atoms
(one thread, 2026-12-01), so the CPU preset is 1 ps of production after 0.2 ps (about five
minutes): enough rows and frames for a temperature, a potential energy and the O-O RDF with
their SEMs, not enough for a density or a diffusion coefficient (the summary says so). On a
GPU the same box runs 20 ps. The GPU reference results: CPU_NOTE.
"""
from __future__ import annotations

from typing import Iterable

from .config import SimulationConfig, apply_overrides, config_from_dict, validate

DEFAULT_MAIN_DIR = "runs/main"

# Sections of the preset that depend on the device; everything else is the config default.
# One torch thread: on a busy (shared) 2-core machine two OpenMP threads spin against the
# other load and run 3-40x slower; on an idle one they would gain less than 2x.
_CPU = {
    "integrator": {"timestep_fs": 1.0},
    "run": {"equilibration_steps": 200, "production_steps": 1000, "minimize_max_iterations": 50},
    "output": {"report_interval_steps": 10, "trajectory_interval_steps": 10, "checkpoint_interval_steps": 200},
    "barostat": {"interval_steps": 25},
    "platform": {"cpu_threads": 1},
}
_GPU = {
    "integrator": {"timestep_fs": 1.0},
    "run": {"equilibration_steps": 5000, "production_steps": 20000, "minimize_max_iterations": 200},
    "output": {"report_interval_steps": 50, "trajectory_interval_steps": 100, "checkpoint_interval_steps": 5000},
    "barostat": {"interval_steps": 25},
}
# The embedded model's closed loop (benchmarks/closed_loop.py), quoted after a CPU main job; a
# test checks that it is the current model's and that the densities are its numbers.
CLOSED_LOOP_RESULT = "benchmarks/results/closed_loop_2026-12-01_h200_b9c3629d.json"
# What a CPU run of the main job can and cannot show, printed after it.
CPU_NOTE = ("On a CPU this is a 1 ps run of 64 waters: it checks the installation and gives the "
            "temperature, potential energy and O-O RDF with their SEMs; density and diffusion need "
            "tens of ps (a GPU). There the embedded model is still too dense (1.057 g/cm3 at 300 K "
            "against its AMOEBA teacher's 1.005, 1029 atoms on an H200: "
            f"{CLOSED_LOOP_RESULT.removesuffix('.json')}.md).")


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
