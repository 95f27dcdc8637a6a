"""Helpers of the simulation-recipe tests (configs for tiny CPU runs, kill/flip reporters)."""
from __future__ import annotations

from pathlib import Path

from openmm_mace_lp.simulations.config import SimulationConfig, load_config


def tiny_settings(model: Path, **overrides) -> list[str]:
    """``--set`` strings for a tiny CPU run; ``overrides`` use '__' for '.' in keys, and a
    value of None drops the key."""
    settings = {
        "model.path": str(model), "model.policy": "fp64", "model.backend": "e3nn",
        "system.water_molecules": 8, "platform.name": "Reference", "platform.device": "cpu",
        "platform.cpu_threads": 1,
        "run.minimize": False, "run.equilibration_steps": 2, "run.production_steps": 8,
        "output.report_interval_steps": 2, "output.trajectory_interval_steps": 2,
        "output.checkpoint_interval_steps": 1000, "barostat.interval_steps": 2,
        "guards.max_temperature_factor": 10.0,
    }
    settings.update({key.replace("__", "."): value for key, value in overrides.items()})
    return [f"{key}={_toml(value)}" for key, value in settings.items() if value is not None]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def tiny_config(model: Path, ensemble: str = "nvt", **overrides) -> SimulationConfig:
    return load_config(None, tiny_settings(model, **overrides), ensemble=ensemble)


class RaiseAt:
    """An OpenMM reporter that raises at one step: a kill at a moment we choose."""

    def __init__(self, step: int, error: BaseException) -> None:
        self.step = step
        self.error = error

    def describeNextReport(self, simulation):  # noqa: N802
        remaining = self.step - simulation.currentStep
        return {"steps": remaining if remaining > 0 else 10**9, "periodic": None, "include": []}

    def report(self, simulation, state):
        raise self.error


class SetParameterAt:
    """Sets a context parameter at one step, *before* the run's own reporter sees that step.

    It asks for wrapped positions, and OpenMM's Simulation serves reporters that want wrapped
    positions before those (like the recipe's) that want them unwrapped.
    """

    def __init__(self, step: int, name: str, value: float) -> None:
        self.step, self.name, self.value = step, name, value

    def describeNextReport(self, simulation):  # noqa: N802
        remaining = self.step - simulation.currentStep
        return {"steps": remaining if remaining > 0 else 10**9, "periodic": True, "include": ["positions"]}

    def report(self, simulation, state):
        simulation.context.setParameter(self.name, self.value)


def add_switchable_force(system) -> None:
    """A force k*x on every atom with a global k (0: no effect); setting k to NaN makes every
    force non-finite at finite positions."""
    import openmm

    force = openmm.CustomExternalForce("k*x")
    force.addGlobalParameter("k", 0.0)
    for index in range(system.getNumParticles()):
        force.addParticle(index, [])
    system.addForce(force)


class SignalAt(RaiseAt):
    """An OpenMM reporter that sends this process a real signal at one step (a scheduler's
    SIGTERM, a Ctrl-C), delivered while the run is stepping."""

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(step, RuntimeError("unused"))
        self.signum = signum

    def report(self, simulation, state):
        import os

        os.kill(os.getpid(), self.signum)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes): to show that nothing changed."""
    return {str(path.relative_to(directory)): path.read_bytes()
            for path in sorted(Path(directory).rglob("*")) if path.is_file()}
