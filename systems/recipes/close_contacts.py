"""Water dimers pushed into close contact: the repulsive wall the liquid's frames never show.

Why: the models trained on liquid, cluster and gently displaced frames learn no wall below
~1.5 A between molecules, and theirs turns over. The model 6019ec71 (SHA-256 6019ec71) put a
head-on H...H contact at 0.6 A 0.28 eV *below* 2 A, where GFN2-xTB is +3.7 eV
(`benchmarks/model_density.py`, section 6), and its 1029-atom NPT runs blew up (every O-H bond
broken) after tens of picoseconds. A hole like that is found by MD sooner or later. Trained
with these frames (model 6a4d37cf) the wall rises monotonically: +2.2 eV at 0.6 A.

Each frame takes two molecules of one ``small_cluster`` frame (1-6 molecules, cut from the
trajectory's MD), turns the second rigidly at random, and moves it along the line between a
chosen atom of each molecule until that pair is at the drawn distance and no other
intermolecular pair is closer:

* ``O...H`` 0.85-1.60 A, ``H...H`` 0.60-1.50 A, ``O...O`` 1.70-2.50 A (GFN2-xTB's wall rises by
  1-10 eV over these ranges; deeper frames would weigh hundreds of eV and swamp the loss).

Frames whose GFN2-xTB energy lies more than ``MAX_INTERACTION_EV`` above the two separated
molecules are dropped after labelling. New frames (config type ``close_contact``, non-periodic)
join their trajectory's split; train with ``config_type_weights`` 0.1 for them, like the
displaced frames. Deterministic in ``--seed``; labels are appended with fsync to
``<workdir>/labels.extxyz`` and skipped on a rerun; split files and manifest are rewritten
atomically; a set that already has these frames is refused.

    OMP_NUM_THREADS=1 python -m openmm_mace_lp.systems.recipes.close_contacts
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

from openmm_mace_lp.systems.recipes.low_density import SPLITS, _header_value, read_set_without, write_set
from openmm_mace_lp.systems.recipes.water_data import (
    DATA_DIR, PREFIX, Settings, _append_block, _frame_id, format_frame, label_atoms, read_blocks)

CONFIG_TYPE = "close_contact"
CONTACTS = {"O...H": (0, 1, (0.85, 1.60)), "H...H": (1, 1, (0.60, 1.50)), "O...O": (0, 0, (1.70, 2.50))}
FRAMES_PER_TRAJECTORY = 6
MAX_INTERACTION_EV = 12.0
SEED = 20261129


def _molecules(block: str) -> np.ndarray:
    lines = block.splitlines()
    n = int(lines[0])
    rows = [line.split() for line in lines[2:2 + n]]
    if [r[0] for r in rows] != ["O", "H", "H"] * (n // 3):
        raise ValueError(f"{_frame_id(block)}: atoms are not in O H H order")
    return np.array([[float(x) for x in r[1:4]] for r in rows]).reshape(-1, 3, 3)


def _random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array([[a*a + b*b - c*c - d*d, 2*(b*c - a*d), 2*(b*d + a*c)],
                     [2*(b*c + a*d), a*a - b*b + c*c - d*d, 2*(c*d - a*b)],
                     [2*(b*d - a*c), 2*(c*d + a*b), a*a - b*b - c*c + d*d]])


def contact_dimer(first: np.ndarray, second: np.ndarray, atom_first: int, atom_second: int,
                  distance: float, rng) -> np.ndarray | None:
    """Second molecule turned at random and placed so the chosen pair is the closest, at ``distance``.

    None when no direction along which it could be placed that way was found."""
    centred = second - second.mean(axis=0)
    for _ in range(50):
        turned = centred @ _random_rotation(rng).T
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        placed = turned + (first[atom_first] + distance * direction - turned[atom_second])
        pairs = np.linalg.norm(first[:, None, :] - placed[None, :, :], axis=-1)
        if pairs.min() >= distance - 1e-9 and abs(pairs[atom_first, atom_second] - distance) < 1e-9:
            return np.concatenate([first, placed])
    return None


def new_frames(blocks_by_split: dict[str, list[str]], seed: int) -> list[tuple[str, str]]:
    """(split, unlabelled extxyz block) for every trajectory with a multi-molecule small cluster."""
    out = []
    names = list(CONTACTS)
    for split in SPLITS:
        sources: dict[str, list[str]] = {}
        for block in blocks_by_split[split]:
            if "config_type=small_cluster" in block and int(block.split("\n", 1)[0]) >= 6:
                sources.setdefault(_header_value(block, "trajectory_id"), []).append(block)
        for trajectory in sorted(sources):
            clusters = sorted(sources[trajectory], key=_frame_id)
            rng = np.random.default_rng([seed, *map(ord, trajectory)])
            for index in range(FRAMES_PER_TRAJECTORY):
                source = clusters[index % len(clusters)]
                molecules = _molecules(source)
                contact = names[index % len(names)]
                atom_first, atom_second, (low, high) = CONTACTS[contact]
                distance = float(rng.uniform(low, high))
                xyz = contact_dimer(molecules[0], molecules[1], atom_first, atom_second, distance, rng)
                if xyz is None:
                    continue
                info = dict(config_type=CONFIG_TYPE, trajectory_id=trajectory,
                            temperature_K=float(_header_value(source, "temperature_K")),
                            density_g_cm3=float(_header_value(source, "density_g_cm3")),
                            contact=contact.replace("...", "-"), contact_distance_A=round(distance, 4),
                            source_frame_id=_frame_id(source), frame_id=f"{trajectory}/{CONFIG_TYPE}{index:02d}")
                out.append((split, format_frame(["O", "H", "H"] * 2, np.round(xyz, 6), info)))
    return out


def _label(block: str) -> str:
    """Labels the dimer and records its energy above the two separated molecules."""
    import ase.io

    settings = Settings()
    atoms = ase.io.read(io.StringIO(block), format="extxyz")
    energy, forces, _ = label_atoms(atoms, settings)
    monomers = sum(label_atoms(atoms[3 * k:3 * k + 3], settings)[0] for k in range(2))
    info = dict(atoms.info)
    frame_id = info.pop("frame_id")
    out = dict(REF_energy=energy, interaction_energy_eV=energy - monomers, **info, frame_id=frame_id)
    return format_frame(atoms.get_chemical_symbols(), atoms.positions, out, forces=forces,
                        pos_decimals=settings.position_decimals)


def extend(data_dir: Path, workdir: Path, seed: int, prefix: str = PREFIX) -> dict:
    blocks = read_set_without(data_dir, prefix, (CONFIG_TYPE,))
    workdir.mkdir(parents=True, exist_ok=True)
    labels = workdir / "labels.extxyz"
    done = {_frame_id(b): b for b in read_blocks(labels)}
    frames = new_frames(blocks, seed)
    start = time.time()
    for _, block in frames:
        if _frame_id(block) not in done:
            labelled = _label(block)
            _append_block(labels, labelled)
            done[_frame_id(block)] = labelled
    counts = {split: {"kept": 0, "dropped": 0} for split in SPLITS}
    for split, block in frames:
        labelled = done[_frame_id(block)]
        keep = float(_header_value(labelled, "interaction_energy_eV")) <= MAX_INTERACTION_EV
        counts[split]["kept" if keep else "dropped"] += 1
        if keep:
            blocks[split].append(labelled)
    write_set(data_dir, prefix, blocks, "close_contact_stage", dict(
        recipe="openmm_mace_lp.systems.recipes.close_contacts", seed=seed,
        contacts={k: v[2] for k, v in CONTACTS.items()}, max_interaction_eV=MAX_INTERACTION_EV,
        frames=counts, label_seconds=round(time.time() - start, 1)))
    print(json.dumps(counts), flush=True)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--workdir", type=Path, default=Path("build/water_close_contacts"))
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    extend(args.data_dir, args.workdir, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
