"""One round of active learning: frames of the model's own NPT MD, labelled with GFN2-xTB.

Why: the models trained on classical (TIP3P) frames, expanded boxes and cavities reproduce
GFN2-xTB's static virial pressure on those frames to ~0.1 GPa, yet under NPT they expand from
0.98 to 0.87 g/cm^3 within 0.2 ps (`benchmarks/model_density.py`, section 3) and keep going.
What drives that lies in configurations the model reaches itself and no classical force field
samples. So this stage runs the model: from the first ``md_periodic`` frame of every
trajectory, Berendsen NPT at 1 bar and the trajectory's temperature (ASE, 0.5 fs), and keeps
the boxes at ``SNAPSHOT_STEPS``, i.e. along the path the model's barostat takes. Each frame
(config type ``model_md_periodic``) joins its trajectory's split and gets GFN2-xTB energy,
forces and stress like every periodic frame.

Two stages, because the MD wants a GPU and the labels want CPU cores:

* ``sample`` (eager mace-torch, float32; ~1 s per Berendsen step for 96 atoms on one CPU
  core, about two model calls of ~0.5 s: the stored frames, 36 boxes x 160 steps, took 48 min
  on 2 cores; ``--device cuda`` is accepted, but a try on the GPU node, 48 boxes x 500 steps
  with 8 workers, did not finish within 150 s) writes ``<workdir>/sampled.extxyz`` atomically,
  with the sampling model's SHA-256 in every frame. MD is not bit-reproducible across machines:
  the sampled frames, not the MD, are what the labels and the split files record.
* ``label`` (CPU, ``--workers``) labels them one by one (append + fsync, resumable) and
  rewrites the split files and the manifest atomically; a set that already has
  ``model_md_periodic`` frames is refused.

    OMP_NUM_THREADS=1 python -m openmm_mace_lp.systems.recipes.model_md --stage sample --workers 2 --molecules 32
    OMP_NUM_THREADS=1 python -m openmm_mace_lp.systems.recipes.model_md --stage label --workers 2
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from openmm_mace_lp.atomic import atomic_write_bytes
from openmm_mace_lp.systems.recipes.low_density import (
    SPLITS, _header_value, _parse_periodic, label_all, read_set_without, write_stage)
from openmm_mace_lp.systems.recipes.water_data import DATA_DIR, PREFIX, _frame_id, _water_density, format_frame, read_blocks

CONFIG_TYPE = "model_md_periodic"
SNAPSHOT_STEPS = (50, 100, 160)
TIMESTEP_FS = 0.5
PRESSURE_BAR = 1.0
TAUT_FS = 50.0
TAUP_FS = 100.0  # short: the 80 fs run should move the box the way the model's barostat would
COMPRESSIBILITY_PER_BAR = 4.5e-5  # liquid water
MAX_FORCE_EV_A = 50.0  # a sampled frame beyond this is a blow-up, not a state to learn
SEED = 20261130
BAR_IN_EV_A3 = 1e5 / 1.602176634e-19 * 1e-30


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def start_frames(blocks_by_split: dict[str, list[str]], molecules: int | None = None) -> list[tuple[str, str]]:
    """(split, first md_periodic frame) of every trajectory (of ``molecules`` waters), in a fixed order."""
    out = []
    for split in SPLITS:
        first: dict[str, str] = {}
        for block in blocks_by_split[split]:
            if "config_type=md_periodic" in block and molecules in (None, int(block.split("\n", 1)[0]) // 3):
                trajectory = _header_value(block, "trajectory_id")
                if trajectory not in first or _frame_id(block) < _frame_id(first[trajectory]):
                    first[trajectory] = block
        out += [(split, first[t]) for t in sorted(first)]
    return out


_CALCULATOR = None


def _init_worker(model_path: str, device: str) -> None:
    global _CALCULATOR
    import warnings

    warnings.filterwarnings("ignore")
    import mace  # noqa: F401  (sets the torch.load default e3nn needs)
    import torch
    from mace.calculators import MACECalculator

    from openmm_mace_lp.model_files import load_mace_model

    if device == "cpu":
        torch.set_num_threads(1)  # one process per core: ~1.6x the steps/s of one process on two threads
    _CALCULATOR = MACECalculator(models=[load_mace_model(model_path)], device=device, default_dtype="float32")


def run_npt(block: str, calculator, steps: tuple[int, ...], seed: int) -> list[tuple[int, np.ndarray, float]]:
    """(step, positions, cubic box edge) at each of ``steps``; stops early at a blow-up."""
    import ase
    from ase.md.nptberendsen import NPTBerendsen
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.units import fs

    symbols, positions, box = _parse_periodic(block)
    atoms = ase.Atoms(symbols, positions=positions, cell=[box] * 3, pbc=True)
    atoms.calc = calculator
    temperature = float(_header_value(block, "temperature_K"))
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dynamics = NPTBerendsen(atoms, timestep=TIMESTEP_FS * fs, temperature_K=temperature,
                            pressure_au=PRESSURE_BAR * BAR_IN_EV_A3, taut=TAUT_FS * fs, taup=TAUP_FS * fs,
                            compressibility_au=COMPRESSIBILITY_PER_BAR / BAR_IN_EV_A3)
    snapshots, done = [], 0
    for step in sorted(steps):
        dynamics.run(step - done)
        done = step
        forces = atoms.get_forces()
        if not np.all(np.isfinite(forces)) or np.abs(forces).max() > MAX_FORCE_EV_A:
            break
        cell = np.array(atoms.cell)
        snapshots.append((step, atoms.get_positions(wrap=True), float(np.cbrt(abs(np.linalg.det(cell))))))
    return snapshots


def _sample_one(task: tuple[str, str, int, str, tuple[int, ...]]) -> list[tuple[str, str]]:
    split, block, seed, model_sha, steps = task
    trajectory = _header_value(block, "trajectory_id")
    out = []
    for index, (step, positions, box) in enumerate(run_npt(block, _CALCULATOR, steps, seed)):
        n_molecules = len(positions) // 3
        info = dict(config_type=CONFIG_TYPE, trajectory_id=trajectory,
                    temperature_K=float(_header_value(block, "temperature_K")),
                    density_g_cm3=float(_header_value(block, "density_g_cm3")),
                    box_density_g_cm3=round(float(_water_density(n_molecules, [box] * 3)), 6),
                    md_step=step, sampling_model_sha256=model_sha[:16], source_frame_id=_frame_id(block),
                    split=split, frame_id=f"{trajectory}/{CONFIG_TYPE}{index:02d}")
        out.append((split, format_frame(["O", "H", "H"] * n_molecules, np.round(positions, 6), info,
                                        cell=np.eye(3) * round(box, 6), pbc=(True, True, True))))
    return out


def sample(data_dir: Path, model_path: Path, workdir: Path, device: str, workers: int, seed: int,
           steps: tuple[int, ...] = SNAPSHOT_STEPS, limit: int | None = None, molecules: int | None = None,
           prefix: str = PREFIX) -> Path:
    """The model's NPT snapshots of every trajectory, written atomically to ``sampled.extxyz``."""
    if not Path(model_path).is_file():
        # checked here: a worker whose initializer fails is respawned by the pool, forever
        raise SystemExit(f"sampling model {model_path} not found: pass an existing MACE .model file with --model")
    blocks = read_set_without(data_dir, prefix, (CONFIG_TYPE,))
    starts = start_frames(blocks, molecules)[:limit]
    model_sha = sha256(model_path)
    tasks = [(split, block, seed + index, model_sha, tuple(steps)) for index, (split, block) in enumerate(starts)]
    started = time.time()
    context = get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(str(model_path), device)) as pool:
        results = []
        for count, result in enumerate(pool.imap(_sample_one, tasks), 1):
            results.append(result)
            print(f"[model-md] {count}/{len(tasks)} trajectories in {time.time() - started:.0f} s", flush=True)
    frames = [text for result in results for _, text in result]
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "sampled.extxyz"
    atomic_write_bytes(path, "".join(frames).encode())
    short = sum(len(steps) - len(r) for r in results)
    record = dict(model_sha256=model_sha, device=device, trajectories=len(tasks), frames=len(frames),
                  stopped_early_snapshots=short, seconds=round(time.time() - started, 1))
    atomic_write_bytes(workdir / "sampled.json", json.dumps(record, indent=1).encode())
    print(f"[model-md] {json.dumps(record)}", flush=True)
    return path


def extend(data_dir: Path, workdir: Path, workers: int, prefix: str = PREFIX) -> dict:
    """Labels ``sampled.extxyz`` and adds the frames to their trajectories' splits."""
    blocks = read_set_without(data_dir, prefix, (CONFIG_TYPE,))
    sampled = read_blocks(workdir / "sampled.extxyz")
    if not sampled:
        raise SystemExit(f"{workdir / 'sampled.extxyz'} holds no frames: run --stage sample first "
                         f"(on the GPU node: --device cuda)")
    known = {_header_value(b, "trajectory_id"): split for split, bl in blocks.items() for b in bl
             if "config_type=md_periodic" in b}
    frames = []
    for block in sampled:
        trajectory, split = _header_value(block, "trajectory_id"), _header_value(block, "split")
        if known.get(trajectory) != split:
            raise SystemExit(f"{_frame_id(block)} says split {split}, but trajectory {trajectory} is in "
                             f"{known.get(trajectory)}: the sample belongs to another data set; sample again")
        frames.append((split, block))
    start = time.time()
    labelled = label_all(frames, workdir / "labels.extxyz", workers, tag="model-md")
    counts = {split: 0 for split in SPLITS}
    for split, block in frames:
        blocks[split].append(labelled[_frame_id(block)])
        counts[split] += 1
    record = json.loads((workdir / "sampled.json").read_text()) if (workdir / "sampled.json").exists() else {}
    return write_stage(data_dir, prefix, blocks, "model_md_stage", counts, start, dict(
        recipe="openmm_mace_lp.systems.recipes.model_md", sampling=record, snapshot_steps=SNAPSHOT_STEPS,
        timestep_fs=TIMESTEP_FS, pressure_bar=PRESSURE_BAR, taut_fs=TAUT_FS, taup_fs=TAUP_FS,
        why="the model reproduced GFN2-xTB's pressure on classical frames but expanded under NPT: "
            "label the configurations its own barostat visits"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=("sample", "label"), required=True)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--model", type=Path, default=None, help="sampling model (default: the shipped one)")
    parser.add_argument("--workdir", type=Path, default=Path("build/water_model_md"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--limit", type=int, default=None, help="only the first N trajectories (a dry run)")
    parser.add_argument("--molecules", type=int, default=None, help="only the boxes of this many waters (32 or 64)")
    args = parser.parse_args(argv)
    if args.stage == "sample":
        from openmm_mace_lp.model_files import default_model_path

        sample(args.data_dir, args.model or default_model_path(), args.workdir, args.device, args.workers,
               args.seed, limit=args.limit, molecules=args.molecules)
    else:
        extend(args.data_dir, args.workdir, args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
