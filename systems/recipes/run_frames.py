"""Active learning from the plug-in's own NPT runs: frames of run directories, labelled by a teacher.

Why: the first AMOEBA model (SHA-256 bf5cd219) reproduces its teacher's virial pressure on the
teacher's own liquid frames to +122 +- 58 bar (SEM; valid and test splits,
benchmarks/results/energy_bias_2026-12-01_cpu.md), yet under NPT on the GPU (1029 atoms, 300 K, 1 bar) it compresses to ~1.13 g/cm^3 within 10 ps, where the teacher holds
1.005. The dense structures it reaches lie outside the teacher's ensemble, so the data set never
told it that they cost energy. This stage takes the configurations a model visited in its own
``mace-lp simulate`` runs (``trajectory.dcd`` of a run directory), labels them with the teacher
(energy, forces and finite-difference stress, the same settings as every periodic frame) and adds
them to the data set as ``config_type = model_npt_periodic``, each run as one trajectory of the
split it is given.

    python -m openmm_mace_lp.systems.recipes.run_frames build/closed_loop/model_300K:train \\
        build/closed_loop/model_350K:valid --workers 2

The frames keep the sampling model's SHA-256 and the run's temperature; labels are appended one
by one to ``<workdir>/labels.extxyz`` (resumable); the split files and the manifest are rewritten
atomically at the end. A run whose frames the data set already holds is refused.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from openmm_mace_lp.systems.recipes import teachers as T
from openmm_mace_lp.systems.recipes.low_density import SPLITS, label_all, read_split, write_stage
from openmm_mace_lp.systems.recipes.water_data import (
    DATA_DIR, _frame_id, _water_density, format_frame, labelled_text)

CONFIG_TYPE = "model_npt_periodic"
PREFIX = "water_amoeba"
_TEACHER = None


def run_trajectory_id(model_sha256: str, run_name: str, started: str | None) -> str:
    """``model-npt-<sha8>-<run name>[-<start, UTC>]``: one id per run.

    The start time keeps two runs of one model that share a directory name (each round of
    benchmarks/amoeba_active_learning_gpu.sh samples into ``model_300K``) apart; frames labelled
    before it was added keep their ids.
    """
    trajectory_id = f"model-npt-{model_sha256[:8]}-{run_name}"
    if started:
        trajectory_id += "-" + "".join(ch for ch in started.split("+")[0] if ch.isdigit() or ch == "T")
    return trajectory_id


def run_frames(run_dir: Path, stride: int = 1) -> list[str]:
    """Unlabelled extxyz blocks of every ``stride``-th production frame of a run directory."""
    import mdtraj

    run_dir = Path(run_dir)
    trajectory_file, topology_file = run_dir / "trajectory.dcd", run_dir / "topology.pdb"
    for needed in (trajectory_file, topology_file, run_dir / "manifest.json"):
        if not needed.is_file():
            raise SystemExit(f"{run_dir}: no {needed.name}; give the directory of a `mace-lp simulate` run "
                             f"that wrote a trajectory")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    model = manifest.get("model") or {}
    if "sha256" not in model:
        raise SystemExit(f"{run_dir}: not a MACE model's run (its manifest names no model file): a teacher's "
                         f"frames are its own ensemble already")
    temperature = float(manifest["temperature_K"])
    trajectory = mdtraj.load(str(trajectory_file), top=str(topology_file))
    symbols = [atom.element.symbol for atom in trajectory.topology.atoms]
    trajectory_id = run_trajectory_id(model["sha256"], run_dir.name, manifest.get("started"))
    blocks = []
    for index in range(0, trajectory.n_frames, stride):
        box = np.asarray(trajectory.unitcell_vectors[index], dtype=float) * 10.0  # nm -> A
        positions = np.asarray(trajectory.xyz[index], dtype=float) * 10.0
        info = dict(config_type=CONFIG_TYPE, trajectory_id=trajectory_id,
                    frame_id=f"{trajectory_id}-{index:05d}", temperature_K=temperature,
                    time_ps=round(float(trajectory.time[index]), 3),
                    density_g_cm3=round(_water_density(len(symbols) // 3, np.diag(box)), 4),
                    sampling_model_sha256=model["sha256"])
        blocks.append(format_frame(symbols, positions, info, cell=box, pbc=(True, True, True)))
    return blocks


def unused_stage_name(manifest_path: Path, stage: str) -> str:
    """``stage``, or ``stage_2``, ``stage_3``...: a second round of one model's frames must not
    replace the manifest's record of the first."""
    taken = set(json.loads(manifest_path.read_text())) if manifest_path.is_file() else set()
    name, number = stage, 1
    while name in taken:
        number += 1
        name = f"{stage}_{number}"
    return name


def _init_worker(teacher_name: str) -> None:
    global _TEACHER
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _TEACHER = T.get_teacher(teacher_name)


def _label(block: str) -> str:
    import ase.io

    atoms = ase.io.read(io.StringIO(block), format="extxyz")
    return labelled_text(atoms, _TEACHER.label(atoms))


def parse_run(text: str) -> tuple[Path, str]:
    """``DIR:split`` -> (DIR, split)."""
    path, _, split = text.rpartition(":")
    if not path or split not in SPLITS:
        raise SystemExit(f"{text!r}: give RUN_DIR:SPLIT with SPLIT one of {', '.join(SPLITS)}, "
                         f"e.g. build/closed_loop/model_300K:train")
    return Path(path), split


def extend(runs: list[tuple[Path, str]], data_dir: Path, workdir: Path, teacher: str, workers: int,
           stride: int = 1, prefix: str = PREFIX) -> dict:
    """Label the runs' frames and add them to the data set's split files."""
    blocks = {split: read_split(data_dir / f"{prefix}_{split}.extxyz.xz") for split in SPLITS}
    present = {block.split("trajectory_id=", 1)[1].split()[0] for b in blocks.values() for block in b
               if f"config_type={CONFIG_TYPE}" in block}
    frames = []
    for run_dir, split in runs:
        new = run_frames(run_dir, stride)
        trajectory_id = new[0].split("trajectory_id=", 1)[1].split()[0] if new else None
        if trajectory_id in present:
            raise SystemExit(f"{run_dir}: the data set already holds its frames ({trajectory_id})")
        frames += [(split, block) for block in new]
    if not frames:
        raise SystemExit("the runs hold no trajectory frames")
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    labelled = label_all(frames, workdir / "labels.extxyz", workers, tag="run-frames", label=_label,
                         initializer=_init_worker, initargs=(teacher,), start_method="spawn")
    counts = {split: 0 for split in SPLITS}
    for split, block in frames:
        blocks[split].append(labelled[_frame_id(block)])
        counts[split] += 1
    models = sorted({block.split("sampling_model_sha256=", 1)[1].split()[0] for _, block in frames})
    stage = unused_stage_name(data_dir / f"{prefix}_manifest.json",
                              f"model_npt_stage_{models[0][:8]}" if len(models) == 1 else "model_npt_stage")
    return write_stage(data_dir, prefix, blocks, stage, counts, start, dict(
        recipe="openmm_mace_lp.systems.recipes.run_frames", teacher=T.get_teacher(teacher).settings(),
        runs=[dict(run=str(path), split=split) for path, split in runs], stride=stride,
        sampling_models_sha256=models,
        why="the model compressed water under NPT to densities its teacher never visits: label the "
            "configurations its own barostat reached"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR:SPLIT")
    parser.add_argument("--teacher", default=T.DEFAULT_TEACHER)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--prefix", default=PREFIX)
    parser.add_argument("--workdir", type=Path, default=Path("build/run_frames"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--stride", type=int, default=1, help="every N-th trajectory frame")
    args = parser.parse_args(argv)
    extend([parse_run(r) for r in args.runs], args.data_dir, args.workdir, args.teacher, args.workers,
           args.stride, args.prefix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
