"""Precision arms: the same system in several policies x several seeds, one run directory each.

All arms start from one shared structure, minimised once with the reference policy (fp64 by
default) and stored as ``ARMS_DIR/start.pdb`` + ``start_state.xml``; every arm skips its
own minimisation and draws velocities from its seed, so arms with the same seed start from
bit-identical positions, box and velocities whatever their policy. The differences between
arms are then the policy's alone (plus the chaotic growth of rounding differences).

Arms run one after another in this process by default. To spread them over GPUs, prepare
the start once and give each process its own arms and card::

    mace-lp arms water.toml --policies fp64,bf16 --seeds 1,2 -o arms --prepare-only
    CUDA_VISIBLE_DEVICES=0 mace-lp arms water.toml --policies fp64,bf16 --seeds 1,2 -o arms --only fp64/1 --only fp64/2 &
    CUDA_VISIBLE_DEVICES=1 mace-lp arms water.toml --policies fp64,bf16 --seeds 1,2 -o arms --only bf16/1 --only bf16/2 &

(``--prepare-only`` is optional: a process that finds no start prepares it under a file
lock while the others wait.) Finished arms are skipped when the command is run again;
``--resume`` continues unfinished ones from their checkpoints. Each arm directory is a
:class:`~openmm_mace_lp.simulations.rundir.RunDirectory`, locked by the process running it:
a process whose ``--only`` overlaps another's skips the arm the other is writing (and says
so) instead of writing it twice.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import SimulationConfig, config_from_dict, differences, is_resumable_change
from openmm_mace_lp.atomic import atomic_write_json, atomic_write_text
from .rundir import FOREIGN, RunDirectory, RunDirectoryBusy

logger = logging.getLogger("openmm_mace_lp.simulations")

DEFAULT_POLICIES = ("fp64", "fp32", "bf16", "fp16")
START_PDB = "start.pdb"
START_STATE = "start_state.xml"
ARMS_JSON = "arms.json"


@dataclass(frozen=True)
class Arm:
    policy: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.policy}-seed{self.seed}"


def parse_policies(text: str | Sequence[str]) -> list[str]:
    from openmm_mace_lp.policy import POLICIES

    items = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    unknown = [p for p in items if p not in POLICIES]
    if not items or unknown:
        raise ValueError(f"--policies {','.join(items) or '(empty)'}: unknown {', '.join(unknown) or 'list'}; "
                         f"choose from {', '.join(POLICIES)}.")
    return list(dict.fromkeys(items))


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        seeds = [int(str(s).strip()) for s in items if str(s).strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: give integers separated by commas, e.g. 1,2,3.") from None
    if not seeds or any(s < 1 for s in seeds):
        raise ValueError(f"--seeds {text!r}: seeds must be integers >= 1.")
    return list(dict.fromkeys(seeds))


def parse_only(items: Sequence[str], arms: Sequence[Arm]) -> list[Arm]:
    """``--only fp64/1`` or ``--only fp64-seed1`` selects arms (several allowed)."""
    if not items:
        return list(arms)
    by_name = {arm.name: arm for arm in arms}
    chosen = []
    for item in items:
        name = item.replace("/", "-seed") if "/" in item else item
        if name not in by_name:
            raise ValueError(f"--only {item!r} is not one of the arms ({', '.join(by_name)}); "
                             "write POLICY/SEED, e.g. --only bf16/2.")
        chosen.append(by_name[name])
    return chosen


def plan_arms(policies: Sequence[str], seeds: Sequence[int]) -> list[Arm]:
    return [Arm(policy, seed) for policy in policies for seed in seeds]


def arm_config(config: SimulationConfig, arm: Arm, arms_dir: Path) -> SimulationConfig:
    """The config of one arm: the shared start, no minimisation, its policy and seed."""
    result = config.copy()
    result.model.policy = arm.policy
    result.run.seed = arm.seed
    result.run.minimize = False
    result.system.pdb = str((arms_dir / START_PDB).resolve())
    result.system.state = str((arms_dir / START_STATE).resolve())
    result.system.water_molecules = None
    return result


# ----------------------------------------------------------------------------- shared start


def prepare_start(config: SimulationConfig, arms_dir: Path, reference_policy: str) -> None:
    """Write ``start.pdb`` and ``start_state.xml`` once (minimised with ``reference_policy``)."""
    from io import StringIO

    import openmm
    from openmm import unit
    from openmm.app import PDBFile

    from .openmm_setup import LANGEVIN, create_simulation, create_system, set_box_and_positions
    from .structure import check_structure, load_structure

    arms_dir = Path(arms_dir)
    RunDirectory(arms_dir).create()
    with RunDirectory(arms_dir).lock(wait=True):  # the other processes wait for the start
        if (arms_dir / START_STATE).is_file() and (arms_dir / START_PDB).is_file():
            logger.info("arms: using the existing shared start in %s", arms_dir)
            return
        start_config = config.copy()
        start_config.model.policy = reference_policy
        structure = load_structure(start_config.system)
        check_structure(structure, start_config.ensemble)
        logger.info("arms: minimising the shared start (%s, %d atoms) with policy %s",
                    structure.source, structure.n_atoms, reference_policy)
        system = create_system(start_config, structure)
        simulation = create_simulation(start_config, structure.topology, system, LANGEVIN)
        set_box_and_positions(simulation.context, structure.box, structure.positions)
        if config.run.minimize:
            simulation.minimizeEnergy(
                tolerance=config.run.minimize_tolerance_kJ_mol_nm * unit.kilojoule_per_mole / unit.nanometer,
                maxIterations=config.run.minimize_max_iterations)
        state = simulation.context.getState(getPositions=True)
        if structure.topology.getPeriodicBoxVectors() is not None:
            structure.topology.setPeriodicBoxVectors(state.getPeriodicBoxVectors())
        text = StringIO()
        PDBFile.writeFile(structure.topology, state.getPositions(), text, keepIds=True)
        atomic_write_text(arms_dir / START_PDB, text.getvalue())
        # The state file is written last: its presence means the start is complete.
        atomic_write_text(arms_dir / START_STATE, openmm.XmlSerializer.serialize(state))


# ----------------------------------------------------------------------------- running


def run_arms(config: SimulationConfig, arms_dir: str | Path, policies: Sequence[str] = DEFAULT_POLICIES,
             seeds: Sequence[int] = (1,), *, only: Sequence[str] = (), reference_policy: str = "fp64",
             resume: bool = False, quiet: bool = False, prepare_only: bool = False,
             deadline: float | None = None) -> list[Path]:
    """Run every selected arm in turn; returns the arm directories run or found complete.

    With a ``deadline`` (``time.monotonic()``) the arm running when it passes is paused at a
    checkpoint and no further arm starts; run again with ``resume`` to go on. An arm that
    another process is writing (its directory is locked) is skipped with a line on stderr
    and left out of the result.

    Every arm's config is validated before anything is built, so a typo fails at once
    rather than after hours of the first arm.
    """
    from .run import prepare_config, simulate

    arms_dir = Path(arms_dir)
    config = prepare_config(config)
    policies, seeds = parse_policies(policies), parse_seeds(seeds)
    parse_policies([reference_policy])
    selected = parse_only(only, plan_arms(policies, seeds))
    configs = {arm: arm_config(config, arm, arms_dir) for arm in selected}
    for arm in configs:
        _check_arm_dir(RunDirectory(arms_dir / arm.name), resume)
    RunDirectory(arms_dir).create()
    with RunDirectory(arms_dir).lock(wait=True):
        _write_arms_json(arms_dir, config, policies, seeds, reference_policy)
    _with_console_logging(quiet, lambda: prepare_start(config, arms_dir, reference_policy))
    if prepare_only:
        return []
    done = []
    for arm, arm_cfg in configs.items():
        directory = RunDirectory(arms_dir / arm.name)
        manifest = directory.manifest()
        if manifest and manifest.get("status") == "completed" and \
                manifest.get("steps_completed") == arm_cfg.run.production_steps:
            logger.info("arms: %s is complete, skipped", arm.name)
            done.append(directory.path)
            continue
        if not quiet:
            print(f"arms: {arm.name} -> {directory.path}", flush=True)
        # _check_arm_dir has refused unfinished arms without --resume; resume=True starts a new
        # arm directory, restarts one that never checkpointed, or extends a finished one.
        try:
            result = simulate(arm_cfg, directory.path, resume=True, quiet=quiet, deadline=deadline)
        except RunDirectoryBusy as busy:
            print(f"arms: {arm.name} skipped: {busy}", file=sys.stderr, flush=True)
            continue
        done.append(directory.path)
        if result.status == "paused":
            logger.info("arms: time limit reached during %s; run again with --resume", arm.name)
            break
    return done


def _check_arm_dir(directory: RunDirectory, resume: bool) -> None:
    """Refuse, before anything runs, an arm directory that this command must not write."""
    kind = directory.kind()
    if kind == FOREIGN:
        raise ValueError(f"{directory.path} is not empty and is not a run directory of these recipes; "
                         "move it away or use a new -o directory for the arms.")
    status = directory.status()
    if status is None or resume or status in ("completed", "paused") or directory.holder() is not None:
        return  # (an arm another process is writing is skipped when its turn comes)
    raise ValueError(f"{directory.path} holds an unfinished arm (status {status!r}); pass --resume to "
                     "continue it from its checkpoint.")


def _write_arms_json(arms_dir: Path, config: SimulationConfig, policies: Sequence[str],
                     seeds: Sequence[int], reference_policy: str) -> None:
    path = arms_dir / ARMS_JSON
    record = {"schema": "openmm-mace-lp/arms/1", "policies": list(policies), "seeds": list(seeds),
              "reference_policy": reference_policy, "start": {"pdb": START_PDB, "state": START_STATE},
              "config": config.to_dict()}
    if path.is_file():
        old = json.loads(path.read_text())
        changed = [key for key in differences(config_from_dict(old.get("config", {}), str(path)), config)
                   if not is_resumable_change(key)]
        if changed or old.get("reference_policy") != reference_policy:
            what = ", ".join(changed) if changed else "reference policy"
            raise ValueError(f"{arms_dir} was set up with a different {what} (see {path}); use a "
                             "new -o directory for a different experiment.")
        record["policies"] = list(dict.fromkeys([*old.get("policies", []), *policies]))
        record["seeds"] = list(dict.fromkeys([*old.get("seeds", []), *seeds]))
    atomic_write_json(path, record)


def _with_console_logging(quiet: bool, work) -> None:
    """Show the start preparation's log lines on the terminal unless quiet."""
    import sys

    handler = None
    if not quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        previous = logger.level
        logger.setLevel(logging.INFO)
    try:
        work()
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(previous)
