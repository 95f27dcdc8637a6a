"""``mace-lp campaign``: precision arms x seeds x temperatures x pressures x systems on Dask.

A plan (TOML) names a base run config and the axes to sweep. Every point of the sweep is a run
directory made by the existing recipes: one shared start per system, minimised once with the
reference policy (:func:`arms.prepare_start`), and each run's config from :func:`arms.arm_config`,
so runs of one seed start from bit-identical positions, box and velocities whatever their
policy. Each run is one Dask task, "simulate this run directory, resuming if it has a
checkpoint" (:func:`run_task`); everything that makes that safe already exists:

* a worker that dies loses at most one checkpoint interval: Dask reschedules its task on
  another worker (up to ``cluster.allowed_failures`` deaths per run) and the run resumes;
* a job near its wall time pauses its run at a checkpoint and the task is handed on;
* the run directory's lock (:class:`rundir.RunDirectory`) keeps a second writer out: a task that
  finds its run busy is submitted again after ``cluster.busy_retry_seconds``;
* running the same command again continues the campaign (finished runs are skipped).

Workers: a local cluster with ``runs_per_gpu`` worker processes per visible GPU, each pinned to
its card through ``CUDA_VISIBLE_DEVICES``; an existing scheduler; or SLURM/PBS jobs of one GPU
each through dask-jobqueue (imported only then). A worker offers one ``GPU`` resource: one run
at a time. More GPUs need nothing but more workers.

Campaign directory::

    campaign.json                  the plan as run: axes, cluster, every run's config
    starts/<system>/start.pdb      shared starts (start_state.xml is written last; may be put
                                   there before the first command, else minimised on a worker)
    <group>/<policy>-seed<k>/      run directories; <group> = <system>-<T>K[-<P>bar]
    reports/<group>/report.md      the analysis layer's verdicts for each group
    report.md                      index: every group's verdicts and every run's status
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from openmm_mace_lp.atomic import atomic_write_json, atomic_write_text
from .arms import DEFAULT_POLICIES, START_PDB, START_STATE, Arm, arm_config
from .config import (SimulationConfig, SystemConfig, config_from_dict, differences,
                     is_resumable_change, load_config, validate)

logger = logging.getLogger("openmm_mace_lp.simulations")

SCHEMA = "openmm-mace-lp/campaign/1"
CAMPAIGN_JSON = "campaign.json"
STARTS_DIR = "starts"
REPORTS_DIR = "reports"
REPORT_INDEX = "report.md"
# The Dask resource a worker offers per run it may hold at once (one worker = one run).
GPU_RESOURCE = "GPU"
# Epoch seconds at which a worker's job ends (set by the job script of SLURM/PBS workers).
WORKER_END_ENV = "OPENMM_MACE_LP_WORKER_END"
EVENT_TOPIC = "openmm-mace-lp-campaign"
CLUSTER_KINDS = ("local", "scheduler", "slurm", "pbs")
PLAN_KEYS = ("base", "set", "reference_policy", "axes", "cluster")
AXES_KEYS = ("policies", "seeds", "temperatures_K", "pressures_bar", "systems")
SYSTEM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Outcomes of one task.
COMPLETED, PAUSED, FAILED, BUSY, NOT_STARTED = "completed", "paused", "failed", "busy", "not-started"


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ClusterSettings:
    """Where the runs go (the plan's ``[cluster]`` table)."""

    kind: str = "local"  # local | scheduler | slurm | pbs
    gpus: str | tuple[str, ...] = "auto"  # local: "auto" (every visible GPU) or device ids; () = CPU
    # Worker processes sharing one GPU (local and jobqueue). 4: on one H200 (2026-12-01) four
    # concurrent 1029-atom runs of the embedded model gave 1.44x the aggregate ns/day of one run
    # (24.2 vs 16.8), eight no more (24.4); benchmarks/results/campaign_packing_2026-12-01_h200.md.
    runs_per_gpu: int = 4
    cpu_workers: int = 0  # local with gpus = []: worker processes, one run each
    address: str = ""  # scheduler: e.g. tcp://10.0.0.5:8786
    jobs: int = 1  # slurm/pbs: one-GPU jobs kept running
    allowed_failures: int = 3  # worker deaths a run survives before it is reported failed
    busy_retry_seconds: float = 60.0  # wait before retrying a run another process is writing
    stop_margin_minutes: float = 5.0  # slurm/pbs: pause runs this long before the wall time
    jobqueue: Mapping[str, Any] = field(default_factory=dict)  # dask_jobqueue.*Cluster(**jobqueue)

    @property
    def uses_gpu_resource(self) -> bool:
        """Whether tasks ask for the GPU resource (CPU-only local workers offer none)."""
        return not (self.kind == "local" and self.gpus == ())


@dataclass(frozen=True)
class RunPoint:
    """One run of the campaign: a policy and seed in one group (system x temperature x pressure)."""

    group: str
    system: str
    temperature_K: float
    pressure_bar: float | None
    policy: str
    seed: int
    config: SimulationConfig  # before arm_config: the group's config with this policy and seed

    @property
    def arm(self) -> Arm:
        return Arm(self.policy, self.seed)

    @property
    def name(self) -> str:
        return f"{self.group}/{self.arm.name}"

    def run_dir(self, out_dir: Path) -> Path:
        return Path(out_dir) / self.group / self.arm.name

    def run_config(self, out_dir: Path) -> SimulationConfig:
        """The config the run directory gets: the system's shared start, no minimisation."""
        return arm_config(self.config, self.arm, start_dir(out_dir, self.system))

    @property
    def total_steps(self) -> int:
        return self.config.run.equilibration_steps + self.config.run.production_steps


@dataclass
class CampaignPlan:
    source: str
    reference_policy: str
    policies: list[str]
    seeds: list[int]
    temperatures_K: list[float]
    pressures_bar: list[float | None]
    systems: dict[str, SimulationConfig]  # name -> base config with that system (minimises the start)
    cluster: ClusterSettings
    points: list[RunPoint]

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(point.group for point in self.points))

    def axes_record(self) -> dict[str, Any]:
        return {"policies": self.policies, "seeds": self.seeds, "temperatures_K": self.temperatures_K,
                "pressures_bar": self.pressures_bar, "systems": list(self.systems)}


def start_dir(out_dir: Path, system: str) -> Path:
    return Path(out_dir) / STARTS_DIR / system


def load_plan(path: str | os.PathLike, overrides: Sequence[str] = (),
              cluster_overrides: Mapping[str, Any] | None = None) -> CampaignPlan:
    """Read and check a campaign plan; ``overrides`` are ``--set`` strings for the base config,
    ``cluster_overrides`` replace ``[cluster]`` keys (from the command line).

    Every run's config is built and validated here, so a typo fails before anything runs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"campaign plan {path} does not exist; see "
                                "simulations/examples/*campaign*.toml for examples.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}.") from None
    if cluster_overrides:
        data.setdefault("cluster", {})
        if not isinstance(data["cluster"], dict):
            raise ValueError(f"{path}: [cluster] must be a table.")
        data["cluster"] = {**data["cluster"], **cluster_overrides}
    return plan_from_dict(data, str(path), path.parent, overrides)


def plan_from_dict(data: Mapping[str, Any], source: str, base_dir: Path,
                   overrides: Sequence[str] = ()) -> CampaignPlan:
    """A checked plan from parsed TOML (relative paths are relative to ``base_dir``)."""
    _check_keys(data, PLAN_KEYS, source, "")
    base = _base_config(data, source, base_dir, overrides)
    reference = _typed_value(data.get("reference_policy", "fp64"), str, f"{source}: reference_policy")
    axes = data.get("axes", {})
    if not isinstance(axes, Mapping):
        raise ValueError(f"{source}: axes must be a table ([axes]), not {axes!r}.")
    _check_keys(axes, AXES_KEYS, source, "axes")
    policies = _policies(axes.get("policies", list(DEFAULT_POLICIES)), source)
    _check_reference(reference, policies, source)
    seeds = _seeds(axes.get("seeds", [1]), source)
    temperatures = _positive_numbers(axes.get("temperatures_K", [base.integrator.temperature_K]),
                                     f"{source}: axes.temperatures_K", "temperature in K")
    if base.ensemble == "npt":
        pressures: list[float | None] = list(_positive_numbers(
            axes.get("pressures_bar", [base.barostat.pressure_bar]), f"{source}: axes.pressures_bar",
            "pressure in bar"))
    elif "pressures_bar" in axes:
        raise ValueError(f"{source}: axes.pressures_bar is set but the base config's ensemble is "
                         f"{base.ensemble!r}; pressures need ensemble = \"npt\" (or drop the axis).")
    else:
        pressures = [None]
    systems = _systems(axes.get("systems"), base, source, base_dir)
    cluster = cluster_settings(data.get("cluster", {}), source)
    points = _points(base, systems, temperatures, pressures, policies, seeds, source)
    return CampaignPlan(source, reference, policies, seeds, temperatures, pressures, systems, cluster,
                        points)


def _check_keys(table: Mapping[str, Any], allowed: Sequence[str], source: str, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
            dotted = f"{prefix}.{key}" if prefix else key
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
            where = f"[{prefix}]" if prefix else "a campaign plan"
            raise ValueError(f"{source}: unknown key '{dotted}'{hint}. Valid keys in {where}: "
                             f"{', '.join(allowed)}.")


def _typed_value(value: Any, kind: type, key: str) -> Any:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        names = {str: "a string", int: "an integer", float: "a number", bool: "true/false", list: "a list"}
        raise ValueError(f"{key} = {value!r} has the wrong type: expected {names.get(kind, kind.__name__)}.")
    return float(value) if kind is float else value


def _base_config(data: Mapping[str, Any], source: str, base_dir: Path,
                 overrides: Sequence[str]) -> SimulationConfig:
    settings = data.get("set", [])
    if not isinstance(settings, list) or not all(isinstance(item, str) for item in settings):
        raise ValueError(f"{source}: set = {settings!r}: give a list of \"key=value\" strings, e.g. "
                         "set = [\"run.production_steps=20000\"].")
    base = data.get("base")
    path = None
    if base is not None:
        _typed_value(base, str, f"{source}: base")
        path = Path(base) if os.path.isabs(base) else base_dir / base
        if not path.is_file():
            raise FileNotFoundError(f"{source}: base = {base!r}: no such run config ({path}); give the "
                                    "path of a run config TOML, relative to the plan.")
    try:
        return load_config(path, [*settings, *overrides], overrides_source="its set or axes")
    except (ValueError, FileNotFoundError) as error:
        raise type(error)(f"{source}: base config: {error}") from None


def _policies(value: Any, source: str) -> list[str]:
    from openmm_mace_lp.policy import POLICIES

    key = f"{source}: axes.policies"
    items = _typed_value(value, list, key)
    if not items or not all(isinstance(item, str) for item in items):
        raise ValueError(f"{key} = {value!r}: give a non-empty list of policy names, e.g. "
                         "[\"fp64\", \"bf16\"].")
    unknown = [item for item in items if item not in POLICIES]
    if unknown:
        raise ValueError(f"{key}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(POLICIES)}.")
    return list(dict.fromkeys(items))


def _check_reference(reference: str, policies: Sequence[str], source: str) -> None:
    if reference not in policies:
        raise ValueError(f"{source}: reference_policy = {reference!r} is not in axes.policies "
                         f"({', '.join(policies)}); the verdicts compare every policy with it, so add "
                         "it to the policies or choose one of them.")


def _seeds(value: Any, source: str) -> list[int]:
    from .config import MAX_SEED

    key = f"{source}: axes.seeds"
    items = _typed_value(value, list, key)
    if not items or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_SEED for s in items):
        raise ValueError(f"{key} = {value!r}: give a non-empty list of integers in 1..{MAX_SEED} "
                         "(OpenMM's 0 means a random seed, which cannot be repeated).")
    return list(dict.fromkeys(items))


def _positive_numbers(value: Any, key: str, what: str) -> list[float]:
    items = _typed_value(value, list, key)
    numbers = []
    for item in items:
        number = _typed_value(item, float, key)
        if not (math.isfinite(number) and number > 0):
            raise ValueError(f"{key}: {item!r} is not a positive {what}.")
        numbers.append(number)
    if not numbers:
        raise ValueError(f"{key} is empty; give at least one {what} (or drop the key for the base config's).")
    return list(dict.fromkeys(numbers))


def _systems(value: Any, base: SimulationConfig, source: str, base_dir: Path) -> dict[str, SimulationConfig]:
    """Named ``[system]`` tables; without the axis, the base config's own system."""
    if value is None:
        return {_system_name(base.system): base.copy()}
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{source}: axes.systems must hold named [system] tables, e.g. "
                         "[axes.systems.water343] with water_molecules = 343.")
    systems = {}
    for name, table in value.items():
        key = f"{source}: axes.systems.{name}"
        if not SYSTEM_NAME.match(name):
            raise ValueError(f"{key}: a system name becomes a directory name; use letters, digits, "
                             "'_', '.' and '-' only.")
        if not isinstance(table, Mapping):
            raise ValueError(f"{key} must be a table of [system] keys (water_molecules, pdb, ...).")
        table = dict(table)
        for path_key in ("pdb", "state"):
            if isinstance(table.get(path_key), str) and not os.path.isabs(table[path_key]):
                table[path_key] = str((base_dir / table[path_key]).resolve())
        config = base.copy()
        try:
            config.system = config_from_dict({"system": table}, key).system
            validate(config)
        except (ValueError, FileNotFoundError) as error:
            raise type(error)(f"{key}: {error}" if not str(error).startswith(key) else str(error)) from None
        systems[name] = config
    return systems


def _system_name(system: SystemConfig) -> str:
    if system.pdb:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(system.pdb).stem)
    from .config import DEFAULT_WATER_MOLECULES

    return f"water{system.water_molecules or DEFAULT_WATER_MOLECULES}"


def group_name(system: str, temperature_K: float, pressure_bar: float | None) -> str:
    """``water343-300K-1.01325bar`` (no pressure part outside NPT)."""
    name = f"{system}-{temperature_K:g}K"
    return name if pressure_bar is None else f"{name}-{pressure_bar:g}bar"


def _points(base: SimulationConfig, systems: Mapping[str, SimulationConfig], temperatures: Sequence[float],
            pressures: Sequence[float | None], policies: Sequence[str], seeds: Sequence[int],
            source: str) -> list[RunPoint]:
    """Seed-major order, so that every policy of a seed is done before the next seed starts."""
    points, groups = [], {}
    for seed in seeds:
        for system, system_config in systems.items():
            for temperature in temperatures:
                for pressure in pressures:
                    group = group_name(system, temperature, pressure)
                    if groups.setdefault(group, (system, temperature, pressure)) != (system, temperature, pressure):
                        raise ValueError(f"{source}: two points share the directory name {group!r}; give "
                                         "temperatures and pressures that differ in their printed form.")
                    for policy in policies:
                        config = system_config.copy()
                        config.integrator.temperature_K = temperature
                        if pressure is not None:
                            config.barostat.pressure_bar = pressure
                        config.model.policy = policy
                        config.run.seed = seed
                        try:
                            validate(config)
                        except (ValueError, FileNotFoundError) as error:
                            raise type(error)(f"{source}: run {group}/{policy}-seed{seed}: {error}") from None
                        points.append(RunPoint(group, system, temperature, pressure, policy, seed, config))
    return points


def cluster_settings(table: Any, source: str) -> ClusterSettings:
    """The ``[cluster]`` table, checked (dask-jobqueue's presence too, without importing it)."""
    if not isinstance(table, Mapping):
        raise ValueError(f"{source}: cluster must be a table ([cluster]), not {table!r}.")
    fields = {f.name: f for f in dataclasses.fields(ClusterSettings)}
    _check_keys(table, list(fields), source, "cluster")
    values: dict[str, Any] = {}
    kinds = {"kind": str, "runs_per_gpu": int, "cpu_workers": int, "address": str, "jobs": int,
             "allowed_failures": int, "busy_retry_seconds": float, "stop_margin_minutes": float}
    for key, kind in kinds.items():
        if key in table:
            values[key] = _typed_value(table[key], kind, f"{source}: cluster.{key}")
    if "gpus" in table:
        values["gpus"] = _gpus(table["gpus"], f"{source}: cluster.gpus")
    if "jobqueue" in table:
        if not isinstance(table["jobqueue"], Mapping):
            raise ValueError(f"{source}: cluster.jobqueue must be a table of dask-jobqueue cluster "
                             "arguments (cores, memory, walltime, queue, account, ...).")
        values["jobqueue"] = dict(table["jobqueue"])
    settings = ClusterSettings(**values)
    _check_cluster(settings, f"{source}: cluster")
    return settings


def _gpus(value: Any, key: str) -> str | tuple[str, ...]:
    if value == "auto":
        return "auto"
    if isinstance(value, list) and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
        gpus = tuple(str(v).strip() for v in value)
        if len(set(gpus)) != len(gpus) or any(not g for g in gpus):
            raise ValueError(f"{key} = {value!r}: list each device once, e.g. [0, 1].")
        return gpus
    raise ValueError(f"{key} = {value!r}: use \"auto\" (every visible GPU), a list of device ids "
                     "such as [0, 1], or [] for CPU workers (with cluster.cpu_workers).")


def _check_cluster(settings: ClusterSettings, key: str) -> None:
    if settings.kind not in CLUSTER_KINDS:
        close = difflib.get_close_matches(settings.kind, CLUSTER_KINDS, n=1)
        raise ValueError(f"{key}.kind = {settings.kind!r} is not one of {', '.join(CLUSTER_KINDS)}"
                         f"{f' (did you mean {close[0]!r}?)' if close else ''}.")
    for name in ("runs_per_gpu", "jobs"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{key}.{name} = {getattr(settings, name)}: must be at least 1.")
    for name in ("cpu_workers", "allowed_failures"):
        if getattr(settings, name) < 0:
            raise ValueError(f"{key}.{name} = {getattr(settings, name)}: must be >= 0.")
    if not (settings.busy_retry_seconds > 0 and math.isfinite(settings.busy_retry_seconds)):
        raise ValueError(f"{key}.busy_retry_seconds = {settings.busy_retry_seconds}: must be a positive "
                         "number of seconds.")
    if not (settings.stop_margin_minutes >= 0 and math.isfinite(settings.stop_margin_minutes)):
        raise ValueError(f"{key}.stop_margin_minutes = {settings.stop_margin_minutes}: must be >= 0.")
    if settings.kind == "local" and settings.gpus == () and settings.cpu_workers < 1:
        raise ValueError(f"{key}.gpus = [] asks for CPU workers; set {key}.cpu_workers to how many "
                         "runs may go at once (e.g. 2).")
    if settings.kind == "scheduler" and not settings.address:
        raise ValueError(f"{key}.kind = \"scheduler\" needs {key}.address (e.g. \"tcp://host:8786\"; "
                         "or pass --scheduler ADDRESS).")
    if settings.kind in ("slurm", "pbs"):
        import importlib.util

        if importlib.util.find_spec("dask_jobqueue") is None:
            raise RuntimeError(f"{key}.kind = {settings.kind!r} needs dask-jobqueue; install it with "
                               "pip install \"openmm-mace-lp[campaign]\".")
        for required in ("walltime", "memory"):
            if required not in settings.jobqueue:
                raise ValueError(f"{key}.jobqueue.{required} is missing: a {settings.kind.upper()} job "
                                 "needs it (e.g. walltime = \"04:00:00\", memory = \"32GB\").")
        walltime = parse_walltime(settings.jobqueue["walltime"], f"{key}.jobqueue.walltime")
        if walltime <= 60 * settings.stop_margin_minutes * 1.5:
            raise ValueError(f"{key}.jobqueue.walltime = {settings.jobqueue['walltime']!r} leaves no time "
                             f"to run with stop_margin_minutes = {settings.stop_margin_minutes}; ask for "
                             "a longer wall time or a smaller margin.")


def parse_walltime(text: Any, key: str = "walltime") -> int:
    """``"HH:MM:SS"``, ``"MM:SS"`` or ``"D-HH:MM:SS"`` -> seconds."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", str(text).strip())
    if not match:
        raise ValueError(f"{key} = {text!r}: write the wall time as HH:MM:SS (or D-HH:MM:SS).")
    days, hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


# ----------------------------------------------------------------------------- the directory


def check_campaign_dir(plan: CampaignPlan, out_dir: Path) -> dict[str, Any] | None:
    """Refuse a directory the plan cannot use, before anything runs; returns the old record.

    A campaign directory may be continued by the same plan, extended (more axes values, longer
    production) and never silently changed: a run or start whose config differs in a key that
    alters what was already computed is refused, naming the keys.
    """
    from .rundir import FOREIGN, RunDirectory

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"-o {out_dir} is a file; give a campaign directory (created if missing).")
    record_path = out_dir / CAMPAIGN_JSON
    old = None
    if record_path.is_file():
        try:
            old = json.loads(record_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{record_path} is damaged ({error}); it is only replaced atomically. "
                             "Restore it or use a new -o directory.") from None
        if old.get("schema") != SCHEMA:
            raise ValueError(f"{record_path} is not a campaign record of this version (schema "
                             f"{old.get('schema')!r}); use a new -o directory.")
        _check_against_record(plan, old, record_path)
    elif out_dir.is_dir() and any(path.name != STARTS_DIR for path in out_dir.iterdir()):
        # (starts/ alone is accepted: shared starts may be put there before the first command)
        raise ValueError(f"-o {out_dir} is not empty and holds no {CAMPAIGN_JSON}: it is not a campaign "
                         "directory. Give a new or empty directory (nothing was changed).")
    for point in plan.points:
        run_dir = RunDirectory(point.run_dir(out_dir))
        if run_dir.kind() == FOREIGN:
            raise ValueError(f"{run_dir.path} holds files that are not a run of these recipes; move them "
                             "away or use a new -o directory (nothing was changed).")
    return old


def _check_against_record(plan: CampaignPlan, old: Mapping[str, Any], path: Path) -> None:
    if old.get("reference_policy") != plan.reference_policy:
        raise ValueError(f"{path.parent} was run with reference_policy = {old.get('reference_policy')!r}, "
                         f"the plan says {plan.reference_policy!r}; the shared starts were minimised with "
                         "the old one. Use a new -o directory for a different reference.")
    changes = []
    for system, config in plan.systems.items():
        stored = (old.get("starts") or {}).get(system)
        if stored is not None:
            changes += [f"starts/{system}: {key}" for key in _start_changes(stored, config, str(path))]
    for point in plan.points:
        stored = (old.get("runs") or {}).get(point.name)
        if stored is not None:
            changed = differences(config_from_dict(stored["config"], str(path)), point.config)
            changes += [f"{point.name}: {key}" for key in changed if not is_resumable_change(key)]
    if changes:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise ValueError(f"the plan changes what {path.parent} already computed ({shown}). A campaign "
                         "may only be continued or extended (more seeds, temperatures, systems, longer "
                         "production); use a new -o directory for a different experiment.")


def _start_changes(stored: Mapping[str, Any], config: SimulationConfig, source: str) -> list[str]:
    """Keys of a start's config that change the minimised structure."""
    changed = differences(config_from_dict(stored, source), config)
    matters = ("model.", "system.", "run.minimize", "platform.properties")
    return [key for key in changed if key.startswith(matters)]


def write_campaign_record(plan: CampaignPlan, out_dir: Path, old: Mapping[str, Any] | None) -> Path:
    """``campaign.json``: the axes, the cluster and every run's config (old runs are kept)."""
    runs = dict((old or {}).get("runs") or {})
    starts = dict((old or {}).get("starts") or {})
    for point in plan.points:
        runs[point.name] = {"group": point.group, "system": point.system, "temperature_K": point.temperature_K,
                            "pressure_bar": point.pressure_bar, "policy": point.policy, "seed": point.seed,
                            "config": point.config.to_dict()}
    for system, config in plan.systems.items():
        starts[system] = config.to_dict()
    source = Path(plan.source)
    record = {"schema": SCHEMA, "plan": str(source.resolve()) if source.is_file() else plan.source,
              "reference_policy": plan.reference_policy,
              "axes": plan.axes_record(), "cluster": _jsonable(dataclasses.asdict(plan.cluster)),
              "created": (old or {}).get("created") or _now(), "updated": _now(),
              "starts": starts, "runs": runs}
    return atomic_write_json(Path(out_dir) / CAMPAIGN_JSON, record)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_complete(point: RunPoint, out_dir: Path) -> bool:
    from .manifest import read_manifest

    manifest = read_manifest(point.run_dir(out_dir))
    return bool(manifest and manifest.get("status") == COMPLETED
                and manifest.get("steps_completed") == point.config.run.production_steps)


def start_ready(out_dir: Path, system: str) -> bool:
    directory = start_dir(out_dir, system)
    return (directory / START_STATE).is_file() and (directory / START_PDB).is_file()


# ----------------------------------------------------------------------------- tasks (on workers)


def prepare_task(config_data: Mapping[str, Any], directory: str, reference_policy: str) -> str:
    """Write one system's shared start (minimised with the reference policy), on a worker."""
    from .arms import prepare_start
    from .run import prepare_config

    _announce(f"start:{Path(directory).name}")
    with _quiet_library_warnings():
        config = prepare_config(config_from_dict(config_data, "campaign start"))
        prepare_start(config, Path(directory), reference_policy)
    return directory


def run_task(config_data: Mapping[str, Any], run_dir: str, name: str, deadline: float | None = None,
             stop_margin_s: float = 0.0, hooks: Any = None) -> dict[str, Any]:
    """Simulate one run directory, resuming it if it has a checkpoint; returns its outcome.

    ``deadline`` (epoch seconds) pauses the run at a checkpoint; a job's end (``$WORKER_END_ENV``,
    less ``stop_margin_s``) does the same. ``hooks``: a :class:`run.RunHooks`, or one pickled by
    cloudpickle. Errors come back as outcomes rather than exceptions:
    they are the run's, and the campaign goes on with the others.
    """
    from .rundir import RunDirectoryBusy
    from .run import simulate

    _announce(name)
    if isinstance(hooks, bytes):
        import cloudpickle

        hooks = cloudpickle.loads(hooks)
    ends = [deadline] if deadline is not None else []
    if os.environ.get(WORKER_END_ENV):
        ends.append(float(os.environ[WORKER_END_ENV]) - stop_margin_s)
    until = min(ends) if ends else None
    outcome = {"run": name, "worker": f"{os.uname().nodename}:{os.getpid()}",
               "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if until is not None and time.time() >= until:
        return {**outcome, "outcome": NOT_STARTED, "message": "no time left before the deadline"}
    config = config_from_dict(config_data, f"campaign run {name}")
    monotonic_until = None if until is None else time.monotonic() + (until - time.time())
    try:
        with _quiet_library_warnings():
            result = simulate(config, run_dir, resume=True, quiet=True, deadline=monotonic_until, hooks=hooks)
    except RunDirectoryBusy as error:
        return {**outcome, "outcome": BUSY, "message": str(error)}
    except Exception as error:  # noqa: BLE001 - the run's failure, reported with the others
        return {**outcome, "outcome": FAILED, "message": f"{type(error).__name__}: {error}"}
    status = result.status
    return {**outcome, "outcome": COMPLETED if status == COMPLETED else PAUSED if status == PAUSED else FAILED,
            "message": "" if status in (COMPLETED, PAUSED) else f"status {status!r}",
            "ns_per_day": result.manifest.get("ns_per_day")}


def _announce(name: str) -> None:
    """Tell the campaign's live view that this task started (an event through the scheduler)."""
    try:
        from distributed import get_worker

        get_worker().log_event(EVENT_TOPIC, {"started": name})
    except (ImportError, ValueError):  # not inside a Dask worker
        pass


@contextmanager
def _quiet_library_warnings() -> Iterator[None]:
    """TorchScript and e3nn warn at every export; on a worker they would flood the terminal."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|e3nn)\b")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


# ----------------------------------------------------------------------------- clusters


def visible_gpus() -> list[str]:
    """Device ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else nvidia-smi's list."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [item.strip() for item in env.split(",") if item.strip() and not item.strip().startswith("-")]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in output.splitlines() if line.strip().isdigit()]


def local_gpus(settings: ClusterSettings) -> tuple[str, ...]:
    """The cards of a local cluster; "auto" with none visible is an error naming the fix."""
    if settings.gpus != "auto":
        return tuple(settings.gpus)
    gpus = tuple(visible_gpus())
    if not gpus:
        raise RuntimeError("cluster.gpus = \"auto\" but no GPU is visible (CUDA_VISIBLE_DEVICES, "
                           "nvidia-smi); for CPU runs set cluster.gpus = [] and cluster.cpu_workers = N "
                           "(or --gpus none --cpu-workers N).")
    return gpus


def local_worker_specs(gpus: Sequence[str], runs_per_gpu: int, cpu_workers: int = 0) -> dict[str, dict]:
    """SpecCluster worker specs: ``runs_per_gpu`` Nanny processes per GPU, each pinned to its card
    by ``CUDA_VISIBLE_DEVICES`` (set before the worker process imports anything), one run each."""
    from distributed import Nanny

    common = {"nthreads": 1, "memory_limit": 0, "host": "127.0.0.1", "silence_logs": logging.WARNING}
    specs = {}
    for gpu in gpus:
        for slot in range(runs_per_gpu):
            specs[f"gpu{gpu}-{slot}"] = {"cls": Nanny, "options": {
                **common, "resources": {GPU_RESOURCE: 1}, "env": {"CUDA_VISIBLE_DEVICES": str(gpu)}}}
    if not gpus:
        for index in range(cpu_workers):
            specs[f"cpu-{index}"] = {"cls": Nanny, "options": {**common, "env": {"CUDA_VISIBLE_DEVICES": ""}}}
    return specs


def local_cluster(gpus: Sequence[str], runs_per_gpu: int = 1, cpu_workers: int = 0,
                  allowed_failures: int = 3):
    """A Dask cluster on this machine (scheduler in this process, workers in their own)."""
    import dask
    from distributed import Scheduler, SpecCluster

    specs = local_worker_specs(gpus, runs_per_gpu, cpu_workers)
    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
        return SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options": {
            "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", "dashboard": False}},
            silence_logs=logging.ERROR, name="mace-lp-campaign")


def jobqueue_cluster(settings: ClusterSettings):
    """SLURM/PBS jobs of one GPU each with ``runs_per_gpu`` workers; imports dask-jobqueue only here.

    Each job script exports its end time (``$WORKER_END_ENV``): runs pause at a checkpoint
    ``stop_margin_minutes`` before it, and the worker retires before the queue kills it.
    """
    import dask
    import dask_jobqueue

    kwargs = jobqueue_arguments(settings)
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[settings.kind]
    with dask.config.set({"distributed.scheduler.allowed-failures": settings.allowed_failures}):
        cluster = cls(**kwargs)
    cluster.adapt(minimum_jobs=settings.jobs, maximum_jobs=settings.jobs)
    return cluster


def jobqueue_arguments(settings: ClusterSettings) -> dict[str, Any]:
    """dask-jobqueue cluster arguments: the plan's ``[cluster.jobqueue]`` plus what a campaign needs."""
    kwargs = dict(settings.jobqueue)
    walltime = parse_walltime(kwargs["walltime"], "cluster.jobqueue.walltime")
    margin = 60.0 * settings.stop_margin_minutes
    kwargs["processes"] = settings.runs_per_gpu
    kwargs.setdefault("cores", settings.runs_per_gpu)
    kwargs["worker_extra_args"] = [*kwargs.get("worker_extra_args", []), "--resources", f"{GPU_RESOURCE}=1",
                                   "--lifetime", f"{int(walltime - margin / 2)}s"]
    kwargs["job_script_prologue"] = [*kwargs.get("job_script_prologue", []),
                                     f"export {WORKER_END_ENV}=$(( $(date +%s) + {walltime} ))"]
    directives = list(kwargs.get("job_extra_directives", []))
    if settings.kind == "slurm" and not any("gpu" in str(d) for d in directives):
        directives.append("--gres=gpu:1")
    kwargs["job_extra_directives"] = directives
    return kwargs


@contextmanager
def open_client(settings: ClusterSettings) -> Iterator[Any]:
    """A Dask client for the plan's cluster, closed (with the cluster we started) at the end."""
    from distributed import Client

    cluster = None
    if settings.kind == "scheduler":
        client = Client(settings.address)
    else:
        cluster = (local_cluster(local_gpus(settings), settings.runs_per_gpu, settings.cpu_workers,
                                 settings.allowed_failures) if settings.kind == "local"
                   else jobqueue_cluster(settings))
        client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ----------------------------------------------------------------------------- the driver


@dataclass
class RunOutcome:
    name: str
    status: str  # completed | paused | failed | queued (never started: the deadline passed)
    message: str = ""
    worker: str = ""


@dataclass
class CampaignResult:
    out_dir: Path
    outcomes: dict[str, RunOutcome]
    report: Path | None = None

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes.values() if o.status == FAILED]

    @property
    def complete(self) -> bool:
        return all(o.status == COMPLETED for o in self.outcomes.values())


HooksFor = Callable[[RunPoint], Any]


def run_campaign(plan: CampaignPlan, out_dir: str | os.PathLike, *, client: Any = None,
                 max_minutes: float | None = None, quiet: bool = False, report: bool = True,
                 hooks_for: HooksFor | None = None, poll_seconds: float = 1.0) -> CampaignResult:
    """Run every point of ``plan`` into ``out_dir`` on Dask; continue what an earlier call left.

    ``client``: an existing ``distributed.Client`` (else the plan's cluster is started and closed
    here). ``max_minutes`` pauses running runs at a checkpoint after that long and starts no
    more. ``hooks_for(point)`` gives the :class:`run.RunHooks` a run's task takes along (extra
    reporters or forces; it is pickled to the worker). ``report`` writes the verdicts.
    """
    out_dir = Path(out_dir)
    old = check_campaign_dir(plan, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_campaign_record(plan, out_dir, old)
    deadline = None if max_minutes is None else time.time() + 60.0 * _positive(max_minutes, "--max-minutes")
    todo = [point for point in plan.points if not is_complete(point, out_dir)]
    waiting = {point.name for point in todo}
    outcomes = {point.name: RunOutcome(point.name, COMPLETED, "finished earlier") for point in plan.points
                if point.name not in waiting}
    if todo:
        view = LiveView(plan.points, out_dir, quiet)
        with (_borrowed(client) if client is not None else open_client(plan.cluster)) as active:
            driver = _Driver(active, plan, out_dir, todo, deadline, hooks_for, view)
            outcomes.update(driver.run(poll_seconds))
    result = CampaignResult(out_dir, {p.name: outcomes[p.name] for p in plan.points})
    if report:
        result.report = write_campaign_report(plan, out_dir, result.outcomes)
    return result


@contextmanager
def _borrowed(client: Any) -> Iterator[Any]:
    yield client


def _positive(value: float, name: str) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} {value}: give a positive number of minutes.")
    return float(value)


@dataclass
class _Task:
    kind: str  # "start" or "run"
    key: str  # system name or run name


class _Driver:
    """Submits starts, then runs, and handles each outcome (retry later, record, or continue)."""

    def __init__(self, client: Any, plan: CampaignPlan, out_dir: Path, todo: list[RunPoint],
                 deadline: float | None, hooks_for: HooksFor | None, view: "LiveView") -> None:
        self.client, self.plan, self.out_dir = client, plan, out_dir
        self.points = {point.name: point for point in todo}
        self.order = {point.name: index for index, point in enumerate(todo)}
        self.deadline, self.hooks_for, self.view = deadline, hooks_for, view
        self.resources = {GPU_RESOURCE: 1} if plan.cluster.uses_gpu_resource else None
        self.margin_s = 60.0 * plan.cluster.stop_margin_minutes
        self.pending: dict[Any, _Task] = {}
        self.later: list[tuple[float, _Task]] = []
        self.outcomes: dict[str, RunOutcome] = {}
        self.waiting: dict[str, list[RunPoint]] = {}  # system -> runs waiting for its start
        self.started: set[str] = set()
        self.submissions = 0

    def run(self, poll_seconds: float) -> dict[str, RunOutcome]:
        self._subscribe()
        try:
            self._check_workers()
            for point in self.points.values():
                if start_ready(self.out_dir, point.system):
                    self._submit(_Task("run", point.name))
                else:
                    if point.system not in self.waiting:
                        self._submit(_Task("start", point.system))
                    self.waiting.setdefault(point.system, []).append(point)
            self._loop(poll_seconds)
        finally:
            self._unsubscribe()
        self.view.close(self._state)
        return self.outcomes

    def _loop(self, poll_seconds: float) -> None:
        from distributed import wait

        while self.pending or self.later:
            self._submit_due()
            if self.pending:
                try:
                    wait(list(self.pending), timeout=poll_seconds, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    pass
                for future in [future for future in self.pending if future.done()]:
                    self._handle(future, self.pending.pop(future))
            else:
                time.sleep(min(poll_seconds, max(0.0, min(t for t, _ in self.later) - time.time())))
            self.view.refresh(self._state)

    def _subscribe(self) -> None:
        def started(event: Any) -> None:
            message = event[1] if isinstance(event, tuple) else event
            if isinstance(message, Mapping) and "started" in message:
                self.started.add(str(message["started"]))

        try:
            self.client.subscribe_topic(EVENT_TOPIC, started)
        except Exception as error:  # noqa: BLE001 - the live view then shows no "running" count
            logger.warning("campaign: no task events from the scheduler (%s)", error)

    def _unsubscribe(self) -> None:
        try:
            self.client.unsubscribe_topic(EVENT_TOPIC)
        except Exception:  # noqa: BLE001 - the client may be closing
            pass

    def _check_workers(self) -> None:
        """Say so when no worker can take a run yet (tasks would wait without a word)."""
        if self.resources is None:
            return
        try:
            workers = self.client.scheduler_info().get("workers", {}).values()
        except Exception:  # noqa: BLE001 - informative only
            return
        if not any(info.get("resources", {}).get(GPU_RESOURCE, 0) >= 1 for info in workers):
            self.view.note(f"campaign: no worker offers the {GPU_RESOURCE} resource yet; runs wait for one "
                           f"(start workers with `dask worker ADDRESS --nthreads 1 --resources {GPU_RESOURCE}=1`, "
                           "or wait for the queued jobs)")

    def _submit(self, task: _Task) -> None:
        self.submissions += 1
        # Unique across commands: the scheduler may still hold an earlier command's result of a key.
        key = f"mace-lp-{task.kind}-{task.key}-{uuid.uuid4().hex[:12]}"
        if task.kind == "start":
            config = self.plan.systems[task.key]
            future = self.client.submit(prepare_task, config.to_dict(), str(start_dir(self.out_dir, task.key)),
                                        self.plan.reference_policy, key=key, pure=False,
                                        resources=self.resources, priority=10**6)
        else:
            point = self.points[task.key]
            hooks = self.hooks_for(point) if self.hooks_for is not None else None
            if hooks is not None:
                # cloudpickle itself, so that classes registered to travel by value do (Dask's
                # serializer would send them by reference when plain pickle accepts them).
                import cloudpickle

                hooks = cloudpickle.dumps(hooks)
            future = self.client.submit(run_task, point.run_config(self.out_dir).to_dict(),
                                        str(point.run_dir(self.out_dir)), point.name, self.deadline,
                                        self.margin_s, hooks, key=key, pure=False, resources=self.resources,
                                        priority=-self.order[task.key])
        self.pending[future] = task

    def _submit_due(self) -> None:
        now = time.time()
        due = [item for item in self.later if item[0] <= now]
        self.later = [item for item in self.later if item[0] > now]
        for _, task in due:
            self._submit(task)

    def _handle(self, future: Any, task: _Task) -> None:
        try:
            result = future.result()
        except Exception as error:  # noqa: BLE001 - KilledWorker and friends: the run's failure
            result = {"outcome": FAILED, "message": _dask_error(error, self.plan.cluster.allowed_failures)}
        if task.kind == "start":
            self._start_done(task.key, result)
            return
        self.started.discard(task.key)
        outcome = result.get("outcome", FAILED)
        deadline_passed = self.deadline is not None and time.time() >= self.deadline
        if outcome == BUSY:
            logger.info("campaign: %s is busy, retried in %.0f s", task.key, self.plan.cluster.busy_retry_seconds)
            self.later.append((time.time() + self.plan.cluster.busy_retry_seconds, task))
        elif outcome in (PAUSED, NOT_STARTED) and not deadline_passed:
            # The worker's job is ending: hand the run to another worker.
            self.later.append((time.time() + (0.0 if outcome == PAUSED else 10.0), task))
        else:
            status = {COMPLETED: COMPLETED, PAUSED: PAUSED, NOT_STARTED: "queued"}.get(outcome, FAILED)
            self.outcomes[task.key] = RunOutcome(task.key, status, result.get("message", ""),
                                                 result.get("worker", ""))

    def _start_done(self, system: str, result: Any) -> None:
        waiting = self.waiting.pop(system, [])
        if isinstance(result, Mapping) and result.get("outcome") == FAILED:
            for point in waiting:
                self.outcomes[point.name] = RunOutcome(point.name, FAILED, "the shared start could not be "
                                                       f"prepared: {result.get('message')}")
            return
        for point in waiting:
            self._submit(_Task("run", point.name))

    def _state(self) -> dict[str, Any]:
        names = set(self.points)
        started = set(self.started)  # a copy: the event handler adds from another thread
        running = {name for name in started if name in names and name not in self.outcomes}
        return {"done": sum(o.status == COMPLETED for o in self.outcomes.values()),
                "failed": sum(o.status == FAILED for o in self.outcomes.values()),
                "running": running, "queued": len(names) - len(self.outcomes) - len(running),
                "workers": _worker_count(self.client)}


def _dask_error(error: BaseException, allowed_failures: int) -> str:
    if type(error).__name__ == "KilledWorker":
        return (f"the worker running it died {allowed_failures + 1} times (out of memory, a crash, or "
                "killed); its checkpoints are kept: rerun the campaign to continue it.")
    return f"{type(error).__name__}: {error}"


def _worker_count(client: Any) -> int | None:
    try:
        return len(client.scheduler_info().get("workers", {}))
    except Exception:  # noqa: BLE001 - informative only
        return None


# ----------------------------------------------------------------------------- live view


def last_step(path: Path) -> int:
    """The step of the last complete row of a state CSV (0 when there is none); a row a writer
    has not finished (no newline yet) does not count."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            tail = handle.read()
    except OSError:
        return 0
    for line in reversed(tail.split(b"\n")[:-1]):
        try:
            return int(line.split(b",", 1)[0])
        except ValueError:
            continue
    return 0


def steps_done(point: RunPoint, out_dir: Path) -> int:
    """Steps of both phases a run has made so far (from its CSVs, finer than its checkpoints)."""
    run_dir = point.run_dir(out_dir)
    production = last_step(run_dir / "state.csv")
    if production:
        return point.config.run.equilibration_steps + production
    return last_step(run_dir / "equilibration.csv")


class LiveView:
    """One line: runs done / running / queued, aggregate ns/day and ETA (from the run CSVs)."""

    def __init__(self, points: Sequence[RunPoint], out_dir: Path, quiet: bool, window_s: float = 600.0,
                 stream: Any = None) -> None:
        self.points, self.out_dir, self.quiet = list(points), out_dir, quiet
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 2.0 if self.tty else 60.0
        self.samples: deque[tuple[float, float]] = deque()
        self.window_s = window_s
        self.last_print = -math.inf
        self.finished: set[str] = set()  # runs found complete (their files are not read again)

    def simulated_ns(self) -> tuple[float, float]:
        """(ns simulated so far, ns the whole campaign needs), both phases."""
        done = total = 0.0
        for point in self.points:
            ns_per_step = point.config.integrator.timestep_fs * 1e-6
            if point.name not in self.finished:
                steps = steps_done(point, self.out_dir)
                if steps == point.total_steps and is_complete(point, self.out_dir):
                    self.finished.add(point.name)
            done += (point.total_steps if point.name in self.finished else steps) * ns_per_step
            total += point.total_steps * ns_per_step
        return done, total

    def line(self, state: Mapping[str, Any], now: float | None = None) -> str:
        now = time.time() if now is None else now
        done_ns, total_ns = self.simulated_ns()
        self.samples.append((now, done_ns))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window_s:
            self.samples.popleft()
        rate = aggregate_ns_per_day(list(self.samples))
        eta = "n/a" if not rate else format_duration(86400.0 * max(0.0, total_ns - done_ns) / rate)
        workers = state.get("workers")
        failed = f", {state['failed']} failed" if state["failed"] else ""
        on = f" on {workers} workers" if workers is not None else ""
        speed = "n/a" if rate is None else f"{rate:.3g}"
        return (f"campaign: {state['done']} done, {len(state['running'])} running, {state['queued']} queued"
                f"{failed}{on} | {speed} ns/day aggregate | ETA {eta}")

    def refresh(self, state: Callable[[], Mapping[str, Any]]) -> None:
        """Print the line if it is due; ``state()`` (the driver's counts) is asked only then."""
        if self.quiet or time.monotonic() - self.last_print < self.interval:
            return
        self.last_print = time.monotonic()
        text = self.line(state())
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own (a warning), even when quiet."""
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self, state: Callable[[], Mapping[str, Any]]) -> None:
        if not self.quiet:
            self.stream.write(("\r\033[K" if self.tty else "") + self.line(state()) + "\n")
            self.stream.flush()


def aggregate_ns_per_day(samples: Sequence[tuple[float, float]]) -> float | None:
    """Simulated ns per wall day between the first and last (time s, ns) sample."""
    if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
        return None
    return max(0.0, samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0]) * 86400.0


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s"


# ----------------------------------------------------------------------------- the report


def write_campaign_report(plan: CampaignPlan, out_dir: Path, outcomes: Mapping[str, RunOutcome]) -> Path:
    """The verdicts of every group (the analysis layer's compare_arms + write_report in
    ``reports/<group>/``) and ``report.md``, an index of them with every run's status."""
    from openmm_mace_lp.analysis.compare import compare_arms
    from openmm_mace_lp.analysis.report import write_report

    from .manifest import read_manifest

    out_dir = Path(out_dir)
    lines = [f"# Campaign {out_dir.name}", "",
             f"Plan `{plan.source}`, written {_now()}. Reference policy `{plan.reference_policy}`; "
             f"policies {', '.join(plan.policies)}; seeds {', '.join(map(str, plan.seeds))}.", "",
             "## Verdicts per group", "",
             "| group | system | T (K) | P (bar) | runs completed | verdicts |", "| --- | --- | --- | --- | --- | --- |"]
    for group in plan.groups:
        members = [point for point in plan.points if point.group == group]
        first = members[0]
        completed = sum(outcomes[p.name].status == COMPLETED for p in members)
        try:
            comparison = compare_arms(out_dir / group, plan.reference_policy)
            paths = write_report(comparison, out_dir / REPORTS_DIR / group)
            verdict = f"[report]({paths['markdown'].relative_to(out_dir)})"
        except Exception as error:  # noqa: BLE001 - the runs are done; say why their verdicts are not
            verdict = f"not analysable: {_cell(f'{type(error).__name__}: {error}')}"
        pressure = "-" if first.pressure_bar is None else f"{first.pressure_bar:g}"
        lines.append(f"| {group} | {first.system} | {first.temperature_K:g} | {pressure} | "
                     f"{completed}/{len(members)} | {verdict} |")
    lines += ["", "## Runs", "", "| run | status | ns/day | note |", "| --- | --- | --- | --- |"]
    for point in plan.points:
        outcome = outcomes[point.name]
        manifest = read_manifest(point.run_dir(out_dir)) or {}
        speed = manifest.get("ns_per_day")
        lines.append(f"| {point.name} | {outcome.status} | {'n/a' if speed is None else f'{speed:.4g}'} | "
                     f"{_cell(outcome.message)} |")
    unfinished = [o for o in outcomes.values() if o.status != COMPLETED]
    if unfinished:
        lines += ["", f"{len(unfinished)} run(s) unfinished: run the same `mace-lp campaign` command again "
                  "to continue them from their checkpoints."]
    return atomic_write_text(out_dir / REPORT_INDEX, "\n".join(lines) + "\n")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# ----------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "campaign", help="policies x seeds x temperatures x pressures x systems on Dask (GPUs, nodes)",
        description="Run every point of PLAN.toml (a base run config and the axes to sweep) into "
                    "DIR/<group>/<policy>-seed<k>/ on a Dask cluster: one worker per visible GPU "
                    "(runs_per_gpu per card), an existing scheduler, or SLURM/PBS jobs. Runs of one "
                    "seed share their start and velocities; a killed worker's run resumes elsewhere; "
                    "running the command again continues the campaign. Ends with the verdicts "
                    "(DIR/report.md). See simulations/examples/*campaign*.toml.")
    parser.add_argument("plan", metavar="PLAN.toml")
    parser.add_argument("-o", "--output", required=True, metavar="DIR")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the base run config, e.g. --set run.production_steps=2000")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="use this running Dask scheduler")
    parser.add_argument("--gpus", metavar="LIST", help="local cluster: device ids (e.g. 0,1), or 'none' for CPU workers")
    parser.add_argument("--runs-per-gpu", type=int, metavar="N", help="worker processes per GPU (default 4: measured on an H200 for ~1000-atom runs)")
    parser.add_argument("--cpu-workers", type=int, metavar="N", help="local CPU workers (with --gpus none)")
    parser.add_argument("--max-minutes", type=float, metavar="M",
                        help="pause running runs at a checkpoint after M minutes and start no more")
    parser.add_argument("--no-report", action="store_true", help="skip the verdicts at the end")
    parser.add_argument("--dry-run", action="store_true", help="check the plan and list the runs; run nothing")
    parser.add_argument("--quiet", action="store_true", help="no live view")
    parser.set_defaults(func=cmd_campaign)


def cluster_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``[cluster]`` keys the command line overrides."""
    overrides: dict[str, Any] = {}
    if args.scheduler:
        overrides.update(kind="scheduler", address=args.scheduler)
    if args.gpus is not None:
        text = args.gpus.strip()
        overrides["gpus"] = [] if text.lower() == "none" else "auto" if text == "auto" else \
            [item.strip() for item in text.split(",") if item.strip()]
    if args.runs_per_gpu is not None:
        overrides["runs_per_gpu"] = args.runs_per_gpu
    if args.cpu_workers is not None:
        overrides["cpu_workers"] = args.cpu_workers
    return overrides


def cmd_campaign(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan, args.set, cluster_arguments(args))
    if args.dry_run:
        check_campaign_dir(plan, Path(args.output))
        print(describe_plan(plan, Path(args.output)))
        return 0
    result = run_campaign(plan, args.output, max_minutes=args.max_minutes, quiet=args.quiet,
                          report=not args.no_report)
    counts: dict[str, int] = {}
    for outcome in result.outcomes.values():
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    print(f"campaign {args.output}: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    for outcome in result.failed:
        print(f"  failed {outcome.name}: {outcome.message}")
    if result.report is not None:
        print(f"verdicts: {result.report}")
    if not result.complete:
        print("run the same command again to continue the unfinished runs from their checkpoints")
    return 1 if result.failed else 0


def describe_plan(plan: CampaignPlan, out_dir: Path) -> str:
    cluster = plan.cluster
    gpus = cluster.gpus if cluster.gpus == "auto" else ",".join(cluster.gpus)
    where = {"local": f"{cluster.cpu_workers} local CPU workers" if cluster.gpus == () else
             f"local workers: gpus {gpus}, {cluster.runs_per_gpu} per GPU",
             "scheduler": f"scheduler {cluster.address}",
             "slurm": f"{cluster.jobs} SLURM job(s)", "pbs": f"{cluster.jobs} PBS job(s)"}[cluster.kind]
    lines = [f"{len(plan.points)} runs in {len(plan.groups)} groups ({where}); reference {plan.reference_policy}"]
    for point in plan.points:
        state = "done" if is_complete(point, out_dir) else "to run"
        lines.append(f"  {point.name:<48} {point.total_steps:>8} steps  {state}")
    return "\n".join(lines)
