"""The run config: a TOML file that records everything needed to repeat a simulation.

Loading checks the config completely before anything expensive happens (model loading,
TorchScript export, GPU context creation): unknown sections or keys (with a "did you mean"),
wrong types and impossible values all fail with a message that names the key and the fix.
The run directory keeps the *resolved* config (absolute paths, concrete platform and
device), so a run can be repeated or resumed from its directory alone.

Layout (every key is optional; defaults in the dataclasses below)::

    ensemble = "npt"                  # nvt | npt | nve
    [model]      path, policy, backend
    [system]     water_molecules | pdb, state, density_g_cm3, structure_seed
    [integrator] timestep_fs, temperature_K, friction_per_ps
    [barostat]   pressure_bar, interval_steps, mode            (npt only)
    [run]        seed, minimize, minimize_tolerance_kJ_mol_nm, minimize_max_iterations,
                 equilibration_steps, production_steps
    [output]     report_interval_steps, trajectory_interval_steps, checkpoint_interval_steps,
                 keep_checkpoints, reinitialize_on_checkpoint
    [guards]     max_temperature_factor, min_temperature_factor, check_forces
    [platform]   name, device, cpu_threads, [platform.properties]
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import tomli_w

ENSEMBLES = ("nvt", "npt", "nve")
BAROSTAT_MODES = ("isotropic", "anisotropic")
PLATFORM_NAMES = ("auto", "Reference", "CPU", "CUDA", "OpenCL")
DEFAULT_WATER_MOLECULES = 64  # 192 atoms: the committed systems/structures/water_64.pdb
MAX_SEED = 2**31 - 1
# Keys holding file paths: relative paths in a config file are relative to that file.
PATH_KEYS = (("model", "path"), ("system", "pdb"), ("system", "state"))
# Keys a resumed run may change: they do not alter the trajectory already computed.
# (model.path may move; the run checks that the file's SHA-256 is unchanged.)
RESUMABLE_CHANGES = ("run.production_steps", "output.keep_checkpoints", "guards.", "platform.properties",
                     "model.path")


MODEL_KINDS = ("mace", "amoeba")


@dataclass
class ModelConfig:
    # "mace": the MACE model of model.path; "amoeba": the embedded model's teacher, OpenMM's
    # AMOEBA water (amoeba2018.xml, PME 0.8 nm, extrapolated polarisation: the settings of its
    # own MD in systems/recipes/amoeba_data.py), so the teacher runs through the same recipes,
    # outputs and analysis as the model it taught (the closed loop). policy/backend/neighbour
    # keys do not apply to it.
    kind: str = "mace"
    path: str = "default"  # a MACE .model file, or "default" for the embedded water model
    policy: str = "fp32"  # one of openmm_mace_lp.policy.POLICIES
    backend: str = "auto"  # auto (cueq-fused on a GPU with cuEq kernels, else e3nn), cueq, cueq-fused, e3nn
    # On CUDA: fixed-capacity neighbour list and the step captured in a CUDA graph. "auto": up to
    # 15,000 atoms (openmm_mace_lp.potential.CUDA_GRAPH_MAX_ATOMS; above, a graph is no faster
    # and its capture needs twice the memory).
    cuda_graphs: bool | str = "auto"
    # auto (fixed-capacity with CUDA graphs, else dynamic), fixed, or dynamic (no CUDA graphs).
    neighbor_list: str = "auto"
    # Extra edge capacity of that list over the starting structure's edges (the barostat may
    # compress the box); 0: 0.1 for NPT, 0.05 otherwise (the run grows it when 97% is in use).
    neighbor_margin: float = 0.0
    # torchscript, or inductor: energy and forces compiled ahead of time by AOTInductor
    # (openmm_mace_lp/compiled.py: fixed-capacity list, e3nn backend, a compile of ~1 min at the
    # start and at each capacity growth; benchmarks/results/compiled_*_cpu.md has its speed).
    compiler: str = "torchscript"


@dataclass
class SystemConfig:
    water_molecules: int | None = None  # a cubic water box of this many molecules (default 64)
    pdb: str | None = None  # or a PDB/PDBx file (its CRYST1 box makes it periodic)
    state: str | None = None  # OpenMM State XML whose positions and box replace the file's
    density_g_cm3: float = 1.0  # of a built water box
    structure_seed: int = 0  # of a built water box (seed 0 + 64/343/1000 waters: committed PDBs)


@dataclass
class IntegratorConfig:
    timestep_fs: float = 0.5  # flexible water with MACE: 0.5 fs (O-H stretch period ~9 fs)
    temperature_K: float = 300.0
    friction_per_ps: float = 1.0  # Langevin collision rate (NVT/NPT, and NVE's equilibration)


@dataclass
class BarostatConfig:
    pressure_bar: float = 1.01325
    interval_steps: int = 25  # steps between Monte Carlo volume moves
    mode: str = "isotropic"  # isotropic | anisotropic (x, y, z scaled independently)
    # Let the barostat scale molecule centres instead of every atom: the System gets the
    # topology's bonds in a HarmonicBondForce with zero force constants (no energy), which is
    # how OpenMM finds molecules. Without it each volume trial stretches every O-H bond of a
    # MACE-only System (~7 kT for a 1 % trial at 1029 atoms), so trials must stay tiny.
    scale_molecules: bool = True


@dataclass
class RunConfig:
    seed: int = 1  # velocities, Langevin noise and barostat moves; 1 .. 2**31-1
    minimize: bool = True
    minimize_tolerance_kJ_mol_nm: float = 10.0
    minimize_max_iterations: int = 1000  # 0: until converged
    equilibration_steps: int = 1000  # NVT/NPT as configured; NVE equilibrates with Langevin
    production_steps: int = 10000


@dataclass
class OutputConfig:
    report_interval_steps: int = 100  # state.csv rows and guard checks
    trajectory_interval_steps: int = 500  # trajectory.dcd frames (production only)
    checkpoint_interval_steps: int = 5000  # at most this much work is lost by a kill
    keep_checkpoints: int = 2
    # Re-create the OpenMM context after each checkpoint so that an uninterrupted run and a
    # resumed one are the same computation (the barostat's adaptive step size and step counter
    # are not in OpenMM checkpoints). "auto": on the Reference platform only.
    reinitialize_on_checkpoint: str | bool = "auto"


@dataclass
class GuardsConfig:
    max_temperature_factor: float = 2.0  # stop when T > factor * target
    min_temperature_factor: float = 0.25  # stop when T < factor * target (production only)
    check_forces: bool = True  # stop on non-finite forces, not only energies


@dataclass
class PlatformConfig:
    name: str = "auto"  # auto (CUDA with a GPU, else Reference), Reference, CPU, CUDA, OpenCL
    device: str = "auto"  # torch device of the model: auto, cpu, cuda, cuda:N
    # torch intra-op threads for a model on the CPU; 0: torch's default (all cores). On a
    # shared or busy machine 1 can be many times faster (OpenMP threads spin waiting for
    # each other). The count can change the last bits of a sum, so a resume keeps it.
    cpu_threads: int = 0
    properties: dict[str, str] = field(default_factory=dict)  # e.g. Precision = "mixed"


@dataclass
class SimulationConfig:
    ensemble: str = "npt"
    model: ModelConfig = field(default_factory=ModelConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    integrator: IntegratorConfig = field(default_factory=IntegratorConfig)
    barostat: BarostatConfig = field(default_factory=BarostatConfig)
    run: RunConfig = field(default_factory=RunConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    guards: GuardsConfig = field(default_factory=GuardsConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        header = "# openmm-mace-lp simulation config (resolved). Repeat with:\n" \
                 "#   mace-lp simulate <ensemble> config.toml -o RUN_DIR\n"
        return header + tomli_w.dumps(_without_none(self.to_dict()))

    def copy(self) -> "SimulationConfig":
        return copy.deepcopy(self)

    @property
    def arm_name(self) -> str:
        return f"{self.model.policy}-seed{self.run.seed}"


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(SimulationConfig)
                             if f.default_factory is not dataclasses.MISSING}


# ----------------------------------------------------------------------------- reading


def _without_none(table: Mapping[str, Any]) -> dict[str, Any]:
    """TOML has no null: a key left out means "not set" when the file is read back."""
    return {key: _without_none(value) if isinstance(value, Mapping) else value
            for key, value in table.items() if value is not None}


def load_config(path: os.PathLike | None = None, overrides: Iterable[str] = (),
                ensemble: str | None = None, overrides_source: str = "--set") -> SimulationConfig:
    """Read a TOML config (or start from the defaults), apply ``--set`` overrides, validate.

    ``ensemble`` (from the command line) must agree with an ``ensemble`` key in the file. A bad
    key is reported where it was written: under the file's name, or ``overrides_source``.
    """
    data: dict[str, Any] = {}
    source = "--set"
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist; pass an existing TOML "
                                    "file or leave it out to use the defaults.")
        data = _read_toml(path)
        _resolve_relative_paths(data, path.parent)
        source = str(path)
    if ensemble is not None:
        stated = data.get("ensemble")
        if stated is not None and str(stated).lower() != ensemble:
            raise ValueError(f"{source} says ensemble = {stated!r} but the command asks for "
                             f"{ensemble!r}; change the command or the file.")
        data["ensemble"] = ensemble
    if path is not None:
        config_from_dict(data, source)  # the file's own keys, named under the file's name
    data = apply_overrides(data, overrides)
    # what is left to refuse came from the command line
    config = config_from_dict(data, overrides_source if overrides else source)
    validate(config)
    return config


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    for section, key in PATH_KEYS:
        table = data.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str):
            value = table[key]
            if value != "default" and not os.path.isabs(value):
                table[key] = str((base / value).resolve())


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"integrator.timestep_fs=1.0"`` -> (["integrator", "timestep_fs"], 1.0).

    The value is read as a TOML value (numbers, booleans, quoted strings); anything that is
    not valid TOML is taken as a plain string, so ``model.path=my.model`` needs no quotes.
    """
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE, e.g. --set integrator.timestep_fs=1.0.")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise ValueError(f"--set {text!r}: the key before '=' is empty.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``KEY=VALUE`` override set (paths relative to the cwd)."""
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of 'KEY=VALUE' strings, not one string: "
                        f"pass [{overrides!r}].")
    result = copy.deepcopy(dict(data))
    for text in overrides:
        keys, value = parse_override(text)
        table = result
        for part in keys[:-1]:
            nested = table.setdefault(part, {})
            if not isinstance(nested, dict):
                raise ValueError(f"--set {text!r}: {part!r} is a value, not a table.")
            table = nested
        if tuple(keys) in PATH_KEYS and isinstance(value, str) and value != "default":
            value = str(Path(value).resolve())
        table[keys[-1]] = value
    return result


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> SimulationConfig:
    """Build a config from parsed TOML, rejecting unknown keys and wrong types by name."""
    config = SimulationConfig()
    top_keys = ["ensemble", *SECTIONS]
    for key, value in data.items():
        if key == "ensemble":
            config.ensemble = str(_typed("ensemble", value, str)).lower()
        elif key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ValueError(f"{source}: [{key}] must be a table (a [{key}] section), "
                                 f"not {value!r}.")
            _fill_section(getattr(config, key), key, value, source)
        else:
            raise ValueError(f"{source}: unknown key {key!r}{_suggest(key, top_keys)}. "
                             f"Valid top-level keys: {', '.join(top_keys)}.")
    return config


def _fill_section(section: Any, name: str, values: Mapping[str, Any], source: str) -> None:
    hints = typing.get_type_hints(type(section))
    names = [f.name for f in dataclasses.fields(section)]
    for key, value in values.items():
        if key not in hints:
            raise ValueError(f"{source}: unknown key '{name}.{key}'{_suggest(key, names, name)}. "
                             f"Valid keys in [{name}]: {', '.join(names)}.")
        setattr(section, key, _typed(f"{name}.{key}", value, hints[key]))


def _suggest(key: str, choices: list[str], prefix: str | None = None) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)"


def _typed(key: str, value: Any, expected: Any) -> Any:
    """``value`` checked (and int widened to float) against the annotation ``expected``."""
    origin = typing.get_origin(expected)
    options = typing.get_args(expected) if origin in (typing.Union, types.UnionType) else (expected,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is type(None):
            continue
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is dict and isinstance(value, Mapping):
            return {str(k): _property_value(f"{key}.{k}", v) for k, v in value.items()}
    wanted = " or ".join(_type_name(o) for o in options if o is not type(None))
    raise ValueError(f"{key} = {value!r} has the wrong type: expected {wanted}, got "
                     f"{type(value).__name__}.")


def _property_value(key: str, value: Any) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{key} = {value!r}: platform properties are strings, e.g. "
                     "Precision = \"mixed\" or DeviceIndex = \"0\".")


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is dict:
        return "a table"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))


# ----------------------------------------------------------------------------- validation


def validate(config: SimulationConfig) -> None:
    """Check every value that can be checked without loading the model; raise ValueError or
    FileNotFoundError naming the key and the fix."""
    _check_types(config)
    _check_choice("ensemble", config.ensemble, ENSEMBLES)
    _validate_model(config.model)
    _validate_system(config.system)
    _validate_integrator(config.integrator)
    if config.ensemble == "npt":
        _validate_barostat(config.barostat)
    _validate_run(config.run)
    _validate_output(config.output, config.run)
    _validate_guards(config.guards)
    _check_choice("platform.name", config.platform.name, PLATFORM_NAMES)
    _check(config.platform.cpu_threads >= 0, "platform.cpu_threads", config.platform.cpu_threads,
           "must be >= 0 (0: torch's default)")
    device = config.platform.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ValueError(f"platform.device = {device!r}: use auto, cpu, cuda or cuda:N.")


# Measured cautions: combinations that run but are known to bias a result, with the evidence.
BF16_NPT_CAUTION = (
    "policy bf16 with the Monte Carlo barostat: the barostat accepts volume moves on energy "
    "differences, and bf16's are off by ~1.2 kT per 0.3 % move (a +780 bar pressure bias on the "
    "embedded model, all of it from the radial MLPs' bf16 GEMMs; benchmarks/results/"
    "barostat_precision_2026-12-01_cpu.md, barostat_precision_layers_2026-12-02_cpu.md); the precision study "
    "measured its density 1.5 % below fp64's (precision_study_2026-12-01_h200.md). Use fp32 for "
    "NPT (fp16's energy noise is five times smaller, its verdict still open), or bf16 for NVT.")


def cautions(config: SimulationConfig) -> list[str]:
    """What this config will run but should not be trusted for, as measured (logged at the start
    of a run and kept in its manifest); empty for a config with no known bias."""
    found = []
    if config.ensemble == "npt" and config.model.policy == "bf16":
        found.append(BF16_NPT_CAUTION)
    return found


def _check_types(config: SimulationConfig) -> None:
    """Every value has its declared type, also when it was set on the object (not read from TOML)."""
    _typed("ensemble", config.ensemble, str)
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        hints = typing.get_type_hints(type(value))
        for field_ in dataclasses.fields(value):
            _typed(f"{section.name}.{field_.name}", getattr(value, field_.name), hints[field_.name])


def _check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{key} = {value!r} is not one of {', '.join(map(str, choices))}"
                         f"{_suggest(str(value), [str(c) for c in choices])}.")


def _check(condition: bool, key: str, value: Any, requirement: str) -> None:
    if not condition:
        raise ValueError(f"{key} = {value!r}: {requirement}.")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _validate_model(model: ModelConfig) -> None:
    from openmm_mace_lp.backend import BACKENDS
    from openmm_mace_lp.policy import POLICIES

    _check_choice("model.kind", model.kind, MODEL_KINDS)
    if model.kind == "amoeba":
        return  # the teacher force field: no model file, policy or backend
    _check_choice("model.policy", model.policy, POLICIES)
    _check_choice("model.backend", model.backend, BACKENDS)
    _check_choice("model.cuda_graphs", model.cuda_graphs, ("auto", True, False))
    _check_choice("model.neighbor_list", model.neighbor_list, ("auto", "fixed", "dynamic"))
    from openmm_mace_lp.compiled import COMPILED_BACKENDS, COMPILERS, INDUCTOR

    _check_choice("model.compiler", model.compiler, COMPILERS)
    if model.compiler == INDUCTOR:
        _check(model.neighbor_list != "dynamic", "model.compiler", model.compiler,
               "compiles for fixed shapes: set model.neighbor_list to \"fixed\" or \"auto\"")
        _check(model.backend in (*COMPILED_BACKENDS, "auto"), "model.compiler", model.compiler,
               f"runs with model.backend {' or '.join(COMPILED_BACKENDS)} only (cuEquivariance packages crash; "
               f"openmm_mace_lp/compiled.py): set model.backend = \"e3nn\" or \"auto\"")
    _check(_finite(model.neighbor_margin) and 0 <= model.neighbor_margin <= 10, "model.neighbor_margin",
           model.neighbor_margin, "must be between 0 (automatic) and 10")
    if model.path == "default":
        from openmm_mace_lp.model_files import default_model_path

        try:
            default_model_path()
        except FileNotFoundError as error:
            raise FileNotFoundError(f"model.path = 'default': {error} Set model.path to a MACE "
                                    ".model file (--set model.path=my.model; `mace-lp run` takes "
                                    "--model my.model).") from None
    elif Path(model.path).is_dir():
        raise ValueError(f"model.path = {model.path!r} is a directory; give the path of a MACE .model "
                         "file inside it, or 'default' for the embedded water model.")
    elif not Path(model.path).is_file():
        raise FileNotFoundError(f"model.path = {model.path!r}: no such file; give the path of "
                                "a MACE .model file, or 'default' for the embedded water model.")


def _validate_system(system: SystemConfig) -> None:
    if system.water_molecules is not None and system.pdb is not None:
        raise ValueError("system.water_molecules and system.pdb are both set; keep one (a built "
                         "water box, or a structure file).")
    if system.water_molecules is not None:
        _check(system.water_molecules >= 1, "system.water_molecules", system.water_molecules,
               "must be at least 1")
    _check(_finite(system.density_g_cm3) and system.density_g_cm3 > 0, "system.density_g_cm3",
           system.density_g_cm3, "must be a positive density in g/cm^3 (water: 1.0)")
    _check(system.structure_seed >= 0, "system.structure_seed", system.structure_seed,
           "must be >= 0")
    for key in ("pdb", "state"):
        value = getattr(system, key)
        if value is not None and not Path(value).is_file():
            raise FileNotFoundError(f"system.{key} = {value!r}: no such file.")


def _validate_integrator(integrator: IntegratorConfig) -> None:
    _check(_finite(integrator.timestep_fs) and 0 < integrator.timestep_fs <= 10,
           "integrator.timestep_fs", integrator.timestep_fs,
           "must be in (0, 10] fs; flexible water needs about 0.5 fs")
    _check(_finite(integrator.temperature_K) and integrator.temperature_K > 0,
           "integrator.temperature_K", integrator.temperature_K, "must be a positive temperature in K")
    _check(_finite(integrator.friction_per_ps) and integrator.friction_per_ps > 0,
           "integrator.friction_per_ps", integrator.friction_per_ps,
           "must be a positive collision rate in 1/ps (typically 0.1 to 10)")


def _validate_barostat(barostat: BarostatConfig) -> None:
    _check(_finite(barostat.pressure_bar) and barostat.pressure_bar > 0, "barostat.pressure_bar",
           barostat.pressure_bar, "must be a positive pressure in bar (1 atm = 1.01325 bar)")
    _check(barostat.interval_steps >= 1, "barostat.interval_steps", barostat.interval_steps,
           "must be at least 1 step (typically 25)")
    _check_choice("barostat.mode", barostat.mode, BAROSTAT_MODES)


def _validate_run(run: RunConfig) -> None:
    _check(1 <= run.seed <= MAX_SEED, "run.seed", run.seed,
           f"must be in 1..{MAX_SEED} (OpenMM treats 0 as 'pick a random seed', which cannot be "
           "repeated)")
    _check(run.equilibration_steps >= 0, "run.equilibration_steps", run.equilibration_steps,
           "must be >= 0")
    _check(run.production_steps >= 1, "run.production_steps", run.production_steps, "must be >= 1")
    _check(_finite(run.minimize_tolerance_kJ_mol_nm) and run.minimize_tolerance_kJ_mol_nm > 0,
           "run.minimize_tolerance_kJ_mol_nm", run.minimize_tolerance_kJ_mol_nm, "must be > 0")
    _check(run.minimize_max_iterations >= 0, "run.minimize_max_iterations",
           run.minimize_max_iterations, "must be >= 0 (0: until converged)")


def _validate_output(output: OutputConfig, run: RunConfig) -> None:
    for key in ("report_interval_steps", "trajectory_interval_steps", "checkpoint_interval_steps"):
        value = getattr(output, key)
        _check(value >= 1, f"output.{key}", value, "must be at least 1 step")
    for key in ("report_interval_steps", "trajectory_interval_steps"):
        value = getattr(output, key)
        _check(value <= run.production_steps, f"output.{key}", value,
               f"is longer than run.production_steps = {run.production_steps}, so production "
               "would write nothing; lower it or run longer")
    _check(output.keep_checkpoints >= 1, "output.keep_checkpoints", output.keep_checkpoints,
           "must be at least 1")
    _check(output.reinitialize_on_checkpoint in ("auto", True, False),
           "output.reinitialize_on_checkpoint", output.reinitialize_on_checkpoint,
           'must be "auto", true or false')


def _validate_guards(guards: GuardsConfig) -> None:
    _check(_finite(guards.max_temperature_factor) and guards.max_temperature_factor > 1,
           "guards.max_temperature_factor", guards.max_temperature_factor,
           "must be > 1 (the run stops when T exceeds factor x target)")
    _check(_finite(guards.min_temperature_factor) and 0 <= guards.min_temperature_factor < 1,
           "guards.min_temperature_factor", guards.min_temperature_factor,
           "must be in [0, 1) (0 disables the low-temperature check)")


# ----------------------------------------------------------------------------- resolution


def resolved(config: SimulationConfig) -> SimulationConfig:
    """A copy with every "auto"/default made concrete: what config.toml records.

    Picks the platform, device and backend (this imports torch and OpenMM, and fails here, before any
    model work, if e.g. CUDA is asked for on a machine without it).
    """
    from .platforms import resolve_platform

    result = config.copy()
    if result.system.water_molecules is None and result.system.pdb is None:
        result.system.water_molecules = DEFAULT_WATER_MOLECULES
    if result.model.path != "default":
        result.model.path = str(Path(result.model.path).resolve())
    result.platform.name, result.platform.device = resolve_platform(result.platform.name,
                                                                    result.platform.device)
    if result.model.kind != "amoeba":
        _check_compiler_device(result.model.compiler, result.platform.device)
    result.model.backend = _resolve_backend(result.model.backend, result.platform.device, result.model.compiler)
    device = result.platform.device
    if result.platform.name in ("CUDA", "OpenCL") and ":" in device:
        # The model runs on cuda:N; OpenMM must use the same card.
        result.platform.properties.setdefault("DeviceIndex", device.split(":", 1)[1])
    return result


def _resolve_backend(backend: str, device: str, compiler: str) -> str:
    """auto -> cueq-fused or e3nn as the export would choose, recorded so a resume cannot switch."""
    import torch

    from openmm_mace_lp.backend import resolve_backend
    from openmm_mace_lp.compiled import backend_request

    return resolve_backend(backend_request(compiler, backend), torch.device(device))


def _check_compiler_device(compiler: str, device: str) -> None:
    """Before any model work: a compiled model refused on this device is named here."""
    import torch

    from openmm_mace_lp.compiled import check_compiled_device

    try:
        check_compiled_device(compiler, torch.device(device).type)
    except ValueError as error:
        raise ValueError(f"model.compiler = {compiler!r} with platform.device = {device!r}: {error}") from None


def differences(old: SimulationConfig, new: SimulationConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    changed: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict) and not prefix.endswith("properties"):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        elif a != b:
            changed.append(prefix)

    walk(old.to_dict(), new.to_dict(), "")
    return changed


def is_resumable_change(key: str) -> bool:
    """Whether changing ``key`` leaves the already computed part of a run valid."""
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed))
               for allowed in RESUMABLE_CHANGES)


def check_resume_changes(stored: SimulationConfig, requested: SimulationConfig) -> list[str]:
    """Keys changed on resume; raises if any of them would change the computed trajectory."""
    changed = differences(stored, requested)
    forbidden = [key for key in changed if not is_resumable_change(key)]
    if forbidden:
        raise ValueError(
            f"--resume with a config that differs from the run's config.toml in "
            f"{', '.join(forbidden)}; a resumed run must be the same simulation. Only "
            f"{', '.join(RESUMABLE_CHANGES)} may change. Start a new run directory instead.")
    return changed


def _read_toml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ValueError(f"config file {path} is a directory; pass a TOML file (see simulations/examples/).")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a TOML config (not UTF-8 text); pass a TOML file "
                         "(see simulations/examples/).") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}.") from None


def read_run_config(run_dir: os.PathLike, overrides: Iterable[str] = ()) -> SimulationConfig:
    """The resolved config stored in a run directory (with ``--set`` overrides, validated)."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a run directory of these "
                                "recipes (or was never started).")
    data = _read_toml(path)
    config = config_from_dict(apply_overrides(data, overrides), str(path))
    validate(config)
    return config
