"""Extends the stored water set below the liquid's density: expanded boxes and boxes with a cavity.

Why: the models trained on the first set (periodic boxes at 0.90-1.10 g/cm^3 only) under-bind
the liquid below 0.9 g/cm^3.  A 64-water test box scaled with rigid molecules costs, from
1.0 to 0.8 g/cm^3, +1.46 eV in GFN2-xTB but only +0.89 eV in the model, and under NPT at
1 bar (1029 atoms, H200) the box expanded from 0.99 to 0.29 g/cm^3 as a foam of intact,
four-coordinated molecules whose model energy *fell* as it grew.  A barostat takes the
liquid exactly there, so the set gets frames there:

* ``expanded_periodic``: a labelled MD box of the trajectory scaled isotropically with rigid
  molecules (oxygens move with the box) to a density drawn from 0.55-0.80 and 0.80-0.92 g/cm^3;
* ``cavity_periodic``: the same box with the 20-40 % of its molecules nearest a random point
  removed, i.e. a liquid-vapour interface around a bubble.

Each new frame derives from a periodic MD frame of one trajectory and joins that trajectory's
split, so the split by trajectory holds.  Everything is fixed by ``--seed``; labels go one by
one (append + fsync) to ``<workdir>/labels.extxyz`` and a rerun skips what is there; the split
files and the manifest are rewritten atomically, and a set that already has these frames is
refused rather than extended twice.

    OMP_NUM_THREADS=1 python -m openmm_mace_lp.systems.recipes.low_density --workers 2
"""
from __future__ import annotations

import argparse
import io
import json
import lzma
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy.constants import Avogadro as AVOGADRO  # the project's one N_A (CODATA)

from openmm_mace_lp.atomic import atomic_write_bytes
from openmm_mace_lp.systems.recipes.water_data import (
    DATA_DIR, PREFIX, Settings, _append_block, _frame_id, _water_density, blocks_from_text, format_frame, label_atoms,
    read_blocks)

SPLITS = ("train", "valid", "test")
CONFIG_TYPES = ("expanded_periodic", "cavity_periodic")
EXPANDED_DENSITIES = ((0.55, 0.80), (0.80, 0.92))
CAVITY_FRACTION = (0.20, 0.40)
SEED = 20261128


def read_split(path: Path) -> list[str]:
    with lzma.open(path, "rt") as handle:
        return blocks_from_text(handle.read())


def read_set_without(data_dir: Path, prefix: str, config_types: tuple[str, ...]) -> dict[str, list[str]]:
    """The split files' frames, refused when a stage already added frames of these types."""
    blocks = {split: read_split(data_dir / f"{prefix}_{split}.extxyz.xz") for split in SPLITS}
    if any(f"config_type={kind}" in block for kind in config_types for b in blocks.values() for block in b):
        raise SystemExit(f"{data_dir} already holds {'/'.join(config_types)} frames: start from the set before "
                         f"this stage (git checkout the split files) to rebuild it")
    return blocks


def write_set(data_dir: Path, prefix: str, blocks: dict[str, list[str]], stage: str, record: dict) -> None:
    """Split files and the manifest's entry for this stage, each written atomically."""
    for split in SPLITS:
        data = lzma.compress("".join(blocks[split]).encode(), preset=9 | lzma.PRESET_EXTREME)
        atomic_write_bytes(data_dir / f"{prefix}_{split}.extxyz.xz", data)
    manifest_path = data_dir / f"{prefix}_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest[stage] = record
    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1, default=str).encode())


def write_stage(data_dir: Path, prefix: str, blocks: dict[str, list[str]], stage: str, counts: dict,
                started: float, record: dict) -> dict:
    """``write_set`` for a stage that added labelled frames: the record gets the counts and the
    labelling time; the counts are printed and returned."""
    write_set(data_dir, prefix, blocks, stage,
              dict(record, frames_added=counts, label_seconds=round(time.time() - started, 1)))
    print(json.dumps(counts), flush=True)
    return counts


def _header_value(block: str, key: str) -> str:
    header = block.split("\n", 2)[1]
    return header.split(f"{key}=", 1)[1].split()[0].strip('"')


def _parse_periodic(block: str) -> tuple[list[str], np.ndarray, float]:
    lines = block.splitlines()
    n = int(lines[0])
    lattice = np.array(block.split('Lattice="', 1)[1].split('"', 1)[0].split(), dtype=float).reshape(3, 3)
    if not np.allclose(lattice, np.diag(np.diag(lattice))) or np.ptp(np.diag(lattice)) > 1e-6:
        raise ValueError(f"{_frame_id(block)}: only cubic boxes are expanded here")
    box = float(lattice[0, 0])
    rows = [line.split() for line in lines[2:2 + n]]
    return [r[0] for r in rows], np.array([[float(x) for x in r[1:4]] for r in rows]), box


def _whole_molecules(positions: np.ndarray, box: float) -> np.ndarray:
    molecules = positions.reshape(-1, 3, 3).copy()
    molecules[:, 1:] -= box * np.round((molecules[:, 1:] - molecules[:, :1]) / box)
    return molecules


def expanded(positions: np.ndarray, box: float, density: float) -> tuple[np.ndarray, float]:
    """Rigid molecules, oxygens scaled with a cubic box to the target density."""
    molecules = _whole_molecules(positions, box)
    n_molecules = len(molecules)
    new_box = (n_molecules * 18.01528 / AVOGADRO / density) ** (1 / 3) * 1e8
    scale = new_box / box
    molecules += (molecules[:, :1] * (scale - 1.0))
    return molecules.reshape(-1, 3), new_box


def with_cavity(positions: np.ndarray, box: float, fraction: float, rng) -> np.ndarray:
    """The box without the whole molecules nearest a random point (minimum image)."""
    molecules = _whole_molecules(positions, box)
    centre = rng.uniform(0.0, box, size=3)
    delta = molecules[:, 0] - centre
    delta -= box * np.round(delta / box)
    distance = np.linalg.norm(delta, axis=1)
    n_remove = int(round(fraction * len(molecules)))
    keep = np.sort(np.argsort(distance, kind="stable")[n_remove:])
    return molecules[keep].reshape(-1, 3)


def new_frames(blocks_by_split: dict[str, list[str]], seed: int) -> list[tuple[str, str]]:
    """(split, unlabelled extxyz block) for every trajectory, deterministic in ``seed``."""
    out = []
    for split in SPLITS:
        sources: dict[str, list[str]] = {}
        for block in blocks_by_split[split]:
            if "config_type=md_periodic" in block:
                sources.setdefault(_header_value(block, "trajectory_id"), []).append(block)
        for trajectory in sorted(sources):
            md_frames = sorted(sources[trajectory], key=_frame_id)
            rng = np.random.default_rng([seed, *map(ord, trajectory)])
            for index, (kind, low_high) in enumerate(
                    [("expanded_periodic", EXPANDED_DENSITIES[0]), ("expanded_periodic", EXPANDED_DENSITIES[1]),
                     ("cavity_periodic", CAVITY_FRACTION)]):
                source = md_frames[index % len(md_frames)]
                symbols, positions, box = _parse_periodic(source)
                value = float(rng.uniform(*low_high))
                if kind == "expanded_periodic":
                    xyz, new_box = expanded(positions, box, value)
                else:
                    xyz, new_box = with_cavity(positions, box, value, rng), box
                n_molecules = len(xyz) // 3
                info = dict(config_type=kind, trajectory_id=trajectory,
                            temperature_K=float(_header_value(source, "temperature_K")),
                            density_g_cm3=float(_header_value(source, "density_g_cm3")),
                            box_density_g_cm3=round(float(_water_density(n_molecules, [new_box] * 3)), 6),
                            source_frame_id=_frame_id(source), frame_id=f"{trajectory}/{kind}{index:02d}")
                text = format_frame(["O", "H", "H"] * n_molecules, np.round(xyz, 6), info,
                                    cell=np.eye(3) * round(new_box, 6), pbc=(True, True, True))
                out.append((split, text))
    return out


def _label(block: str) -> str:
    import ase.io

    settings = Settings()
    atoms = ase.io.read(io.StringIO(block), format="extxyz")
    energy, forces, stress = label_atoms(atoms, settings)
    info = dict(atoms.info)
    frame_id = info.pop("frame_id")
    out = dict(REF_energy=energy, REF_stress=stress, **info, frame_id=frame_id)
    return format_frame(atoms.get_chemical_symbols(), atoms.positions, out, cell=np.array(atoms.cell),
                        pbc=(True, True, True), forces=forces, pos_decimals=settings.position_decimals)


def label_all(frames: list[tuple[str, str]], labels: Path, workers: int, tag: str = "low-density",
              label=_label, initializer=None, initargs: tuple = (), start_method: str | None = None) -> dict[str, str]:
    """Labelled blocks by frame id, ``label`` applied in ``workers`` processes (each set up by
    ``initializer(*initargs)``, started by ``start_method``: "spawn" where the parent may hold
    threads, e.g. OpenMM's or torch's, that a fork would copy mid-lock); frames already in
    ``labels`` are kept, new ones appended one by one."""
    done = {_frame_id(b): b for b in read_blocks(labels)}
    todo = [block for _, block in frames if _frame_id(block) not in done]
    print(f"[{tag}] {len(done)} labelled, {len(todo)} to label", flush=True)
    start = time.time()
    with get_context(start_method).Pool(workers, initializer=initializer, initargs=initargs) as pool:
        for count, block in enumerate(pool.imap(label, todo), 1):
            _append_block(labels, block)
            done[_frame_id(block)] = block
            if count % 10 == 0 or count == len(todo):
                print(f"[{tag}] {count}/{len(todo)} in {time.time() - start:.0f} s", flush=True)
    return done


def extend(data_dir: Path, workdir: Path, workers: int, seed: int, prefix: str = PREFIX) -> dict:
    blocks = read_set_without(data_dir, prefix, CONFIG_TYPES)
    workdir.mkdir(parents=True, exist_ok=True)
    frames = new_frames(blocks, seed)
    start = time.time()
    labelled = label_all(frames, workdir / "labels.extxyz", workers)
    counts = {split: {} for split in SPLITS}
    for split, block in frames:
        blocks[split].append(labelled[_frame_id(block)])
        kind = _header_value(block, "config_type")
        counts[split][kind] = counts[split].get(kind, 0) + 1
    return write_stage(data_dir, prefix, blocks, "low_density_stage", counts, start, dict(
        recipe="openmm_mace_lp.systems.recipes.low_density", seed=seed,
        expanded_densities_g_cm3=EXPANDED_DENSITIES, cavity_fraction=CAVITY_FRACTION,
        why="models trained on 0.90-1.10 g/cm3 boxes only under-bound the liquid below 0.9 g/cm3 and "
            "expanded without limit under NPT"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--workdir", type=Path, default=Path("build/water_low_density"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    extend(args.data_dir, args.workdir, args.workers, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
