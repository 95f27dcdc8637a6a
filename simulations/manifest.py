"""``manifest.json``: what the analysis layer and a person need to know about a run.

Schema ``openmm-mace-lp/run/1`` (read by ``openmm_mace_lp.analysis.rundir``). The manifest is
rewritten atomically at the start, at every checkpoint and at the end, so it always
describes the data up to the last checkpoint (or the finished run).

``status``: "running"; "paused" (``--max-minutes`` reached, at a checkpoint); "completed";
"interrupted" (stopped from outside: SIGTERM, SIGINT/Ctrl-C, a full disk; ``failure`` says
which; continue with ``--resume``); "failed" (a guard or an error; ``failure`` says why).
A "running" manifest whose directory lock is free belongs to a process that was killed.
"""
from __future__ import annotations

import errno
import json
import platform as host_platform
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import ModelConfig, SimulationConfig
from openmm_mace_lp.atomic import atomic_write_json, sync_handle

SCHEMA = "openmm-mace-lp/run/1"
MANIFEST = "manifest.json"


def versions() -> dict[str, str]:
    """Versions of everything that can change the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    import openmm

    found = {"python": sys.version.split()[0], "openmm": openmm.__version__}
    try:
        from openmm_mace_lp.export import library_versions

        found.update(library_versions())
    except Exception:  # noqa: BLE001 - versions are informative, never fatal
        pass
    for name in ("openmmtorch", "openmmml", "numpy", "mdtraj", "openmm-mace-lp"):
        try:
            found.setdefault(name, version(name))
        except PackageNotFoundError:
            pass
    return found


def model_record(model: ModelConfig) -> dict[str, str]:
    """What the run's energies come from: the MACE file (path, SHA-256, name), or for
    ``kind = "amoeba"`` the teacher's force-field file."""
    from openmm_mace_lp.model_files import default_model_path, sha256_of

    if model.kind == "amoeba":
        from openmm.app import forcefield

        path = Path(forcefield.__file__).parent / "data" / "amoeba2018.xml"
        return {"kind": "amoeba", "path": str(path), "sha256": sha256_of(path), "name": "amoeba2018.xml"}
    path = default_model_path() if model.path == "default" else Path(model.path)
    return {"path": str(path), "sha256": sha256_of(path),
            "name": "default" if model.path == "default" else path.name}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_manifest(config: SimulationConfig, *, arm: str, backend: str, n_atoms: int, device: str,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a run that is about to start."""
    ensemble = config.ensemble
    out = config.output
    manifest = {
        "schema": SCHEMA,
        "arm": arm,
        "policy": config.model.policy,
        "backend": backend,
        "seed": config.run.seed,
        "ensemble": ensemble,
        "temperature_K": config.integrator.temperature_K,
        "pressure_bar": config.barostat.pressure_bar if ensemble == "npt" else None,
        "barostat": config.barostat.mode if ensemble == "npt" else None,
        "timestep_fs": config.integrator.timestep_fs,
        "friction_per_ps": config.integrator.friction_per_ps if ensemble != "nve" else None,
        "n_atoms": n_atoms,
        "equilibration_steps": config.run.equilibration_steps,
        "production_steps": config.run.production_steps,
        "steps_completed": 0,
        "equilibration_steps_completed": 0,
        "report_interval_steps": out.report_interval_steps,
        "trajectory_interval_steps": out.trajectory_interval_steps,
        "checkpoint_interval_steps": out.checkpoint_interval_steps,
        "wall_time_s": 0.0,
        "ns_per_day": None,
        "device": device,
        "platform": config.platform.name,
        "platform_properties": dict(config.platform.properties),
        "model": model_record(config.model),
        "versions": versions(),
        "host": socket.gethostname(),
        "os": host_platform.platform(),
        "command": " ".join(sys.argv),
        "status": "running",
        "started": now(),
        "updated": now(),
        "checkpoint": None,
        "segments": 1,
    }
    manifest.update(extra or {})
    return manifest


def write_manifest(run_dir: Path, manifest: dict[str, Any], *, in_place_if_full: bool = False) -> None:
    """Replace manifest.json atomically.

    ``in_place_if_full`` (recording why a run stopped): when the disk is too full for the
    temporary copy, overwrite the file in place instead; the blocks it frees by truncation are
    what the new text needs. A kill during that write could leave half a manifest, which is
    why it is the fallback only.
    """
    manifest["updated"] = now()
    path = Path(run_dir) / MANIFEST
    try:
        atomic_write_json(path, manifest)
    except OSError as error:
        if not (in_place_if_full and error.errno in (errno.ENOSPC, errno.EDQUOT) and path.is_file()):
            raise
        with open(path, "r+") as handle:
            handle.truncate(0)
            handle.write(json.dumps(manifest, indent=2) + "\n")
            sync_handle(handle)


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
