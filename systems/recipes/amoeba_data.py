"""Water training data from AMOEBA's own ensemble: AMOEBA MD -> teacher labels -> splits.

Why: GFN2-xTB water expands under NPT (+0.2 to +0.3 GPa on its own relaxed frames), so a model
trained on it cannot hold the liquid's density.  AMOEBA water (OpenMM's ``amoeba2018.xml``,
flexible and polarizable) holds 1.00 g/cm^3 at 300 K and 1 bar in its own NPT, so the model is
retrained on frames from AMOEBA's MD labelled by AMOEBA (``--teacher amoeba``, the default;
``gfn2-xtb`` and ``gfn1-xtb`` relabel the same frames with tblite).

Stages (``--stage``; ``all`` runs them in order; each is resumable and writes atomically):

``generate``
    AMOEBA MD in OpenMM (extrapolated polarization, PME 0.8 nm, LangevinMiddle 1 fs, 1/ps) of
    periodic boxes of 216 waters: NPT (MonteCarloBarostat 1.01325 bar every 25 steps) at
    250-400 K and NVT at 0.90-1.10 g/cm^3 x 270/330 K, 17 *trajectories*.  Each: minimised,
    ~3 ps of equilibration, ~6 ps of sampling with 24 snapshots.  Kept per trajectory: 12
    periodic snapshots, 2 rattled periodic frames (RMS 0.05-0.15 A per atom), 1 box strained
    per axis by 0.95-1.05 with rigid molecules (what a barostat does), 10 whole-molecule
    clusters of 8-30 waters, 3 of 1-6 and 2 rattled ones, cut from the other snapshots
    (non-periodic).  Then ~60 close-contact dimers (O...O 2.0-2.6 A, H...O 0.9-1.6 A) built
    from the clusters' molecules, in groups that are trajectories of their own (``contactNN``).
    ``<workdir>/frames/<trajectory>.extxyz`` (+ ``.json``: the MD record).  ``--workers``
    (or ``--md-workers``) runs trajectories in parallel processes; ``--platform CUDA`` on a GPU.

``label``
    The teacher's energy, forces and (periodic) stress for every frame, in ``--workers``
    processes (``--label-platform Reference`` or ``CUDA``, double precision).  AMOEBA: mutual
    polarization to 1e-8, PME ``ewaldErrorTolerance`` 1e-5 and vdW cutoff 0.8 nm for every
    periodic frame (a box whose cutoff reaches half its width is refused), NoCutoff for
    clusters, stress from 12 strained energies (:func:`teachers.finite_difference_stress`).
    Close-contact frames also get ``interaction_energy_eV`` (dimer minus its two molecules).
    Frames are labelled most expensive first, round-robin over trajectories; each labelled
    frame is appended + fsynced to ``<workdir>/labels/<trajectory>.extxyz`` by the parent
    process, so a rerun skips it.  Also writes the stress check: the finite-difference stress
    against an analytic Lennard-Jones virial, and AMOEBA's stress at h and 2h.

``assemble``
    Splits trajectories 80/10/10 (stratified by npt/nvt/contact, fixed by ``--seed``) and
    writes ``systems/data/water_amoeba_{train,valid,test}.extxyz.xz`` (the writer of
    water_data.py; ``IsolatedAtom`` frames with the teacher's E0s, 0 eV for AMOEBA, lead the
    train file), ``water_amoeba_e0s.json`` and ``water_amoeba_manifest.json`` (settings, teacher
    settings, versions, counts, MD records, timings, the stress check).

``all`` with ``--workers`` > 1 overlaps the two first stages: each trajectory's frames are
labelled in the ``--workers`` pool while the MD of the others runs in the ``--md-workers`` pool
(same files as running them one after the other).

``time-label``
    Times one label (energy + forces + 12 strained energies) of an ``--n-molecules`` box on
    each ``--label-platform``: what sizes a labelling run.

``--scale tiny`` is the test preset (2 trajectories of 64 waters, tens of steps, cutoff 0.55 nm,
PME tolerance 1e-4); every count has its own option.  ``python -m
openmm_mace_lp.systems.recipes.amoeba_data --help``.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from openmm_mace_lp.atomic import atomic_write_bytes
from openmm_mace_lp.systems.recipes import teachers as T
from openmm_mace_lp.systems.recipes.water_data import (
    DATA_DIR, _append_block, _cut_cluster, _frame_id, _labelled_ids, _rattle, _strain_rigid, _versions,
    _water_density, blocks_from_text, format_frame, gather_labelled, isolated_atom_block, labelled_text, read_blocks,
    split_trajectories, summarise_timings, write_split_files)

PREFIX = "water_amoeba"
CONTACT_TYPE = "close_contact"
CLUSTER_TYPES = ("md_cluster", "small_cluster", "rattled_cluster", CONTACT_TYPE)


# ----------------------------------------------------------------------------- settings


@dataclass
class Settings:
    seed: int = 20261201
    teacher: str = "amoeba"
    n_molecules: int = 216
    # trajectories
    npt_temperatures_K: tuple = (250.0, 275.0, 300.0, 325.0, 350.0, 375.0, 400.0)
    npt_start_density_g_cm3: float = 1.0
    nvt_densities_g_cm3: tuple = (0.90, 0.95, 1.00, 1.05, 1.10)
    nvt_temperatures_K: tuple = (270.0, 330.0)
    # AMOEBA MD
    md_polarization: str = "extrapolated"
    md_ewald_error_tolerance: float = 1e-4
    pressure_bar: float = 1.01325
    barostat_interval: int = 25
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    minimise_steps: int = 200
    equilibration_steps: int = 3000
    sampling_steps: int = 6000
    n_snapshots: int = 24
    # frames per trajectory
    periodic_md_frames: int = 12
    rattled_periodic_frames: int = 2
    strained_periodic_frames: int = 1
    md_clusters: int = 10
    cluster_size: tuple = (8, 30)
    small_clusters: int = 3
    small_cluster_size: tuple = (1, 6)
    rattled_clusters: int = 2
    rattle_rms_A: tuple = (0.05, 0.15)
    strain_range: tuple = (0.95, 1.05)
    strain_rattle_rms_A: float = 0.02
    # close-contact dimers (closest intermolecular pair at the drawn distance)
    close_contacts: int = 60
    contacts_per_group: int = 5
    contact_ranges_A: dict = field(default_factory=lambda: {"O...O": (2.0, 2.6), "H...O": (0.9, 1.6)})
    # dimers further above their separated molecules are labelled but left out of the splits: AMOEBA gives
    # ~20 eV at H...O 0.965 A and ~53 eV at 0.92 A, forces that would swamp the loss
    max_contact_energy_eV: float = 25.0
    position_decimals: int = 6
    # labels (AMOEBA teacher); the same cutoff drives the MD
    cutoff_nm: float = 0.8
    ewald_error_tolerance: float = 1e-5
    mutual_epsilon: float = 1e-8
    mutual_max_iterations: int = 500
    stress_step: float = 1e-4
    split_fractions: tuple = (0.8, 0.1, 0.1)


SCALES = {
    "full": {},
    "tiny": dict(  # the tests' preset: seconds on one core
        n_molecules=64, npt_temperatures_K=(300.0,), nvt_densities_g_cm3=(1.0,), nvt_temperatures_K=(330.0,),
        minimise_steps=20, equilibration_steps=10, sampling_steps=30, n_snapshots=6, periodic_md_frames=1,
        rattled_periodic_frames=1, md_clusters=2, cluster_size=(4, 8), small_clusters=1, rattled_clusters=1,
        close_contacts=6, contacts_per_group=2, cutoff_nm=0.55, ewald_error_tolerance=1e-4),
}


def teacher_for(s: Settings, platform: str = "Reference") -> T.Teacher:
    """The labelling teacher; AMOEBA takes the recipe's electrostatics settings."""
    if s.teacher == "amoeba":
        return T.get_teacher("amoeba", **amoeba_options(s, platform))
    return T.get_teacher(s.teacher)


def amoeba_options(s: Settings, platform: str = "Reference") -> dict:
    return dict(cutoff_nm=s.cutoff_nm, mutual_epsilon=s.mutual_epsilon, mutual_max_iterations=s.mutual_max_iterations,
                ewald_error_tolerance=s.ewald_error_tolerance, stress_step=s.stress_step, platform=platform)


def trajectories(s: Settings) -> list[dict]:
    """MD trajectories (NPT, then NVT) and the close-contact groups, each with its seed."""
    out = [dict(trajectory_id=f"npt_T{int(round(t))}", ensemble="NPT", group="npt", n_molecules=s.n_molecules,
                temperature_K=float(t), density_g_cm3=float(s.npt_start_density_g_cm3))
           for t in s.npt_temperatures_K]
    out += [dict(trajectory_id=f"nvt_T{int(round(t))}_rho{d:.2f}", ensemble="NVT", group="nvt",
                 n_molecules=s.n_molecules, temperature_K=float(t), density_g_cm3=float(d))
            for d in s.nvt_densities_g_cm3 for t in s.nvt_temperatures_K]
    n_groups = -(-s.close_contacts // s.contacts_per_group) if s.close_contacts > 0 else 0
    out += [dict(trajectory_id=f"contact{g:02d}", ensemble="none", group="contact", n_molecules=2)
            for g in range(n_groups)]
    for i, tr in enumerate(out):
        tr["seed"] = s.seed + 1000 * (i + 1)
    return out


# ----------------------------------------------------------------------------- generate


def _platform(name: str):
    """OpenMM platform and properties for the teacher's MD (mixed precision on GPUs)."""
    import openmm as mm

    properties = {"CUDA": {"Precision": "mixed"}, "OpenCL": {"Precision": "mixed"}, "CPU": {"Threads": "1"}}
    return mm.Platform.getPlatformByName(name), properties.get(name, {})


def run_md(tr: dict, s: Settings, platform: str) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]], dict]:
    """AMOEBA MD of one trajectory: (symbols, [(positions A, box edges A)], record)."""
    import openmm as mm
    import openmm.unit as u

    from openmm_mace_lp.systems.builders import water_box

    start = time.time()
    teacher = T.AmoebaTeacher(**amoeba_options(s))
    structure = water_box(tr["n_molecules"], tr["density_g_cm3"], seed=tr["seed"])
    teacher.check_cutoff(structure.box * s.strain_range[0], f"{tr['trajectory_id']} (box at the smallest strain)")
    system = teacher.create_system(structure.topology, periodic=True, polarization=s.md_polarization,
                                   ewald_error_tolerance=s.md_ewald_error_tolerance)
    temperature = tr["temperature_K"] * u.kelvin
    if tr["ensemble"] == "NPT":
        barostat = mm.MonteCarloBarostat(s.pressure_bar * u.bar, temperature, s.barostat_interval)
        barostat.setRandomNumberSeed(tr["seed"] % 2**31)
        system.addForce(barostat)
    integrator = mm.LangevinMiddleIntegrator(temperature, s.friction_per_ps / u.picosecond, s.timestep_fs * u.femtosecond)
    integrator.setRandomNumberSeed(tr["seed"] % 2**31)
    platform_, properties = _platform(platform)
    context = mm.Context(system, integrator, platform_, properties)
    context.setPositions(structure.positions)
    mm.LocalEnergyMinimizer.minimize(context, 10.0, s.minimise_steps)
    context.setVelocitiesToTemperature(temperature, tr["seed"] % 2**31)
    set_up = time.time()
    integrator.step(s.equilibration_steps)
    interval = max(1, s.sampling_steps // s.n_snapshots)
    snapshots = []
    for _ in range(s.n_snapshots):
        integrator.step(interval)
        state = context.getState(getPositions=True, enforcePeriodicBox=True)
        box = np.diag(np.array(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.angstrom)))
        snapshots.append((np.array(state.getPositions(asNumpy=True).value_in_unit(u.angstrom)), box))
    steps = s.equilibration_steps + interval * s.n_snapshots
    md_seconds = time.time() - set_up
    densities = [_water_density(tr["n_molecules"], box) for _, box in snapshots]
    record = dict(platform=platform, steps=steps, setup_seconds=round(set_up - start, 2),
                  md_seconds=round(md_seconds, 2), ns_per_day=round(steps * s.timestep_fs * 1e-6 / md_seconds * 86400, 3),
                  snapshot_density_g_cm3=dict(mean=round(float(np.mean(densities)), 5),
                                              std=round(float(np.std(densities)), 5),
                                              first=round(float(densities[0]), 5), last=round(float(densities[-1]), 5)))
    symbols = [a.element.symbol for a in structure.topology.atoms()]
    return symbols, snapshots, record


def trajectory_frames(tr: dict, s: Settings, symbols: list[str], snapshots) -> str:
    """The kept frames of one trajectory as extxyz text (positions rounded before labelling)."""
    rng = np.random.default_rng(tr["seed"] + 7)
    teacher = T.AmoebaTeacher(**amoeba_options(s))
    n_mol, nd = tr["n_molecules"], s.position_decimals
    base = dict(trajectory_id=tr["trajectory_id"], ensemble=tr["ensemble"], temperature_K=tr["temperature_K"],
                density_g_cm3=tr["density_g_cm3"])
    texts = []

    def add(kind: str, index: int, xyz: np.ndarray, box: np.ndarray | None = None, n: int = n_mol) -> None:
        info = dict(config_type=kind, **base)
        if box is not None:
            box = np.round(box, nd)
            teacher.check_cutoff(np.diag(box) / 10.0, f"{tr['trajectory_id']}/{kind}{index:02d}")
            info["box_density_g_cm3"] = round(float(_water_density(n, box)), 6)
        info["frame_id"] = f"{tr['trajectory_id']}/{kind}{index:02d}"
        texts.append(format_frame(symbols[:3 * n], np.round(xyz, nd), info,
                                  cell=None if box is None else np.diag(box), pbc=(box is not None,) * 3,
                                  pos_decimals=nd))

    n_md = min(s.periodic_md_frames, len(snapshots))
    stride = max(1, len(snapshots) // max(n_md, 1))
    periodic_idx = list(range(stride - 1, len(snapshots), stride))[:n_md]
    other_idx = [i for i in range(len(snapshots)) if i not in periodic_idx] or list(range(len(snapshots)))
    for j, i in enumerate(periodic_idx):
        add("md_periodic", j, *snapshots[i])
    for j in range(s.rattled_periodic_frames):
        xyz, box = snapshots[periodic_idx[int(rng.integers(len(periodic_idx)))]]
        add("rattled_periodic", j, _rattle(xyz, rng.uniform(*s.rattle_rms_A), rng), box)
    for j in range(s.strained_periodic_frames):
        xyz, box = snapshots[periodic_idx[int(rng.integers(len(periodic_idx)))]]
        strained, new_box = _strain_rigid(xyz, box, rng.uniform(*s.strain_range, size=3), rng, s.strain_rattle_rms_A)
        add("strained_periodic", j, strained, new_box)
    kmin, kmax = (min(k, n_mol) for k in s.cluster_size)
    for j in range(s.md_clusters):
        xyz, box = snapshots[other_idx[j % len(other_idx)]]
        k = int(rng.integers(kmin, kmax + 1))
        add("md_cluster", j, _cut_cluster(xyz, box, k, rng), n=k)
    for j in range(s.small_clusters):
        xyz, box = snapshots[other_idx[int(rng.integers(len(other_idx)))]]
        k = int(rng.integers(s.small_cluster_size[0], min(s.small_cluster_size[1], n_mol) + 1))
        add("small_cluster", j, _cut_cluster(xyz, box, k, rng), n=k)
    for j in range(s.rattled_clusters):
        xyz, box = snapshots[other_idx[int(rng.integers(len(other_idx)))]]
        k = int(rng.integers(kmin, kmax + 1))
        add("rattled_cluster", j, _rattle(_cut_cluster(xyz, box, k, rng), rng.uniform(*s.rattle_rms_A), rng), n=k)
    return "".join(texts)


def generate_trajectory(tr: dict, s: Settings, workdir: str | Path, platform: str) -> dict:
    """MD and frames of one trajectory; skipped when its frames file exists."""
    path = Path(workdir) / "frames" / f"{tr['trajectory_id']}.extxyz"
    record_path = path.with_suffix(".json")
    if path.exists() and record_path.exists():
        return json.loads(record_path.read_text())
    symbols, snapshots, record = run_md(tr, s, platform)
    text = trajectory_frames(tr, s, symbols, snapshots)
    record["frames"] = len(blocks_from_text(text))
    atomic_write_bytes(record_path, json.dumps(record, indent=1).encode())
    atomic_write_bytes(path, text.encode())
    print(f"[generate] {tr['trajectory_id']}: {record['frames']} frames, MD {record['md_seconds']:.1f} s "
          f"({record['ns_per_day']} ns/day), density {record['snapshot_density_g_cm3']['mean']:.4f} g/cm3", flush=True)
    return record


def _header(block: str, key: str) -> str:
    return block.split("\n", 2)[1].split(f" {key}=", 1)[1].split()[0]


def _molecules(block: str) -> np.ndarray:
    lines = block.splitlines()
    n = int(lines[0])
    return np.array([[float(x) for x in line.split()[1:4]] for line in lines[2:2 + n]]).reshape(-1, 3, 3)


def contact_frames(s: Settings, trs: list[dict], workdir: Path) -> None:
    """Close-contact dimers from the MD clusters' molecules: a molecule and its nearest
    neighbour, the second turned at random and moved until the chosen pair (O...O or H...O)
    is the closest intermolecular pair, at a distance drawn from ``contact_ranges_A``."""
    from openmm_mace_lp.systems.recipes.close_contacts import contact_dimer

    groups = [tr for tr in trs if tr["group"] == "contact"]
    if not groups or all((workdir / "frames" / f"{g['trajectory_id']}.extxyz").exists() for g in groups):
        return
    sources = []
    for tr in trs:
        if tr["group"] == "contact":
            continue
        blocks = read_blocks(workdir / "frames" / f"{tr['trajectory_id']}.extxyz")
        sources.append([b for b in blocks if "config_type=md_cluster" in b and int(b.split("\n", 1)[0]) >= 6])
    if not any(sources):
        raise ValueError("no MD cluster of two or more molecules to build close contacts from: raise --md-clusters")
    kinds = list(s.contact_ranges_A)
    atoms_of = {"O...O": ((0,), 0), "H...O": ((1, 2), 0)}
    rng = np.random.default_rng(s.seed + 99)
    frames: dict[str, list[str]] = {g["trajectory_id"]: [] for g in groups}
    index, misses = 0, 0
    while index < s.close_contacts:
        pool = sources[index % len(sources)] or next(p for p in sources if p)
        source = pool[(index // len(sources)) % len(pool)]
        molecules = _molecules(source)
        first = int(rng.integers(len(molecules)))
        distances = np.linalg.norm(molecules[:, 0] - molecules[first, 0], axis=1)
        distances[first] = np.inf
        second = int(np.argmin(distances))
        kind = kinds[index % len(kinds)]
        low, high = s.contact_ranges_A[kind]
        first_atoms, atom_second = atoms_of.get(kind, ((0,), 0))
        distance = float(rng.uniform(low, high))
        xyz = contact_dimer(molecules[first], molecules[second], int(rng.choice(first_atoms)), atom_second, distance, rng)
        if xyz is None:
            misses += 1
            if misses > 20 * s.close_contacts:
                raise RuntimeError(f"could not place {kind} contacts at {low}-{high} A: widen contact_ranges_A")
            continue
        group = groups[index // s.contacts_per_group]
        info = dict(config_type=CONTACT_TYPE, trajectory_id=group["trajectory_id"], ensemble="none",
                    temperature_K=float(_header(source, "temperature_K")),
                    density_g_cm3=float(_header(source, "density_g_cm3")), contact=kind.replace("...", "-"),
                    contact_distance_A=round(distance, 6), source_frame_id=_frame_id(source),
                    frame_id=f"{group['trajectory_id']}/{CONTACT_TYPE}{index:02d}")
        frames[group["trajectory_id"]].append(format_frame(["O", "H", "H"] * 2, np.round(xyz, s.position_decimals),
                                                           info, pos_decimals=s.position_decimals))
        index += 1
    for tid, texts in frames.items():
        atomic_write_bytes(workdir / "frames" / f"{tid}.extxyz", "".join(texts).encode())
    print(f"[generate] {s.close_contacts} close-contact dimers in {len(groups)} groups", flush=True)


def _generate_task(args) -> dict:
    tr, s_dict, workdir, platform = args
    return generate_trajectory(tr, _settings_from(s_dict), workdir, platform)


def generate(workdir: Path, s: Settings, trs: list[dict], platform: str, workers: int = 1) -> None:
    (workdir / "frames").mkdir(parents=True, exist_ok=True)
    md = [tr for tr in trs if tr["group"] != "contact"]
    tasks = [(tr, asdict(s), str(workdir), platform) for tr in md]
    start = time.time()
    if workers <= 1:
        for task in tasks:
            _generate_task(task)
    else:
        with mp.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
            pool.map(_generate_task, tasks, chunksize=1)
    contact_frames(s, trs, workdir)
    print(f"[generate] {len(md)} trajectories in {time.time() - start:.1f} s", flush=True)


# ----------------------------------------------------------------------------- label

_TEACHER = None


def _init_label_worker(s_dict: dict, platform: str) -> None:
    global _TEACHER
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _TEACHER = teacher_for(_settings_from(s_dict), platform)


def label_frame(block: str, teacher: T.Teacher, pos_decimals: int = 6) -> str:
    """One frame labelled by ``teacher``; a close-contact dimer also gets its interaction energy."""
    import ase.io

    atoms = ase.io.read(io.StringIO(block), format="extxyz")
    labelled = teacher.label(atoms)
    extra = None
    if atoms.info.get("config_type") == CONTACT_TYPE:
        monomers = sum(teacher.label(atoms[3 * k:3 * k + 3]).info["REF_energy"] for k in range(len(atoms) // 3))
        extra = dict(interaction_energy_eV=labelled.info["REF_energy"] - monomers)
    return labelled_text(atoms, labelled, pos_decimals, extra)


def _label_task(item: tuple[str, str, str, int]):
    tid, fid, block, decimals = item
    start = time.time()
    try:
        text = label_frame(block, _TEACHER, decimals)
    except Exception as exc:  # an SCF that does not converge etc.: recorded, the rest goes on
        return tid, fid, None, f"{type(exc).__name__}: {exc}", time.time() - start
    return tid, fid, text, None, time.time() - start


def label_plan(workdir: Path, trs: list[dict]) -> list[tuple[str, str, str]]:
    """(trajectory_id, frame_id, block): periodic frames first (they cost ~13 energies each),
    round-robin over trajectories, then clusters and dimers, so workers end together."""
    per_traj = {tr["trajectory_id"]: read_blocks(workdir / "frames" / f"{tr['trajectory_id']}.extxyz") for tr in trs}
    periodic = {t: [b for b in blocks if "Lattice=" in b] for t, blocks in per_traj.items()}
    plan = []
    for j in range(max((len(v) for v in periodic.values()), default=0)):
        for t, blocks in periodic.items():
            if j < len(blocks):
                plan.append((t, _frame_id(blocks[j]), blocks[j]))
    for t, blocks in per_traj.items():
        plan += [(t, _frame_id(b), b) for b in blocks if "Lattice=" not in b]
    return plan


def stress_check(workdir: Path, s: Settings, platform: str, frame: str | None) -> dict:
    """The finite-difference stress against an analytic Lennard-Jones virial, and (AMOEBA)
    the teacher's stress at h and 2h on one periodic frame: equal to O(h^2) only when the
    PME grid stays fixed and the polarization is converged tightly enough."""
    path = workdir / "stress_check.json"
    if path.exists():
        return json.loads(path.read_text())
    result = dict(lennard_jones=T.lennard_jones_stress_check())
    if s.teacher == "amoeba" and frame is not None:
        import ase.io

        atoms = ase.io.read(io.StringIO(frame), format="extxyz")
        stresses = [T.AmoebaTeacher(**dict(amoeba_options(s, platform), stress_step=step)).label(atoms).info["REF_stress"]
                    for step in (s.stress_step, 2 * s.stress_step)]
        result["amoeba_step_doubling"] = dict(
            frame_id=atoms.info["frame_id"], steps=[s.stress_step, 2 * s.stress_step],
            stress_eV_A3=[x.tolist() for x in stresses],
            max_abs_difference_eV_A3=float(np.abs(stresses[0] - stresses[1]).max()),
            max_abs_stress_eV_A3=float(np.abs(stresses[0]).max()))
    atomic_write_bytes(path, json.dumps(result, indent=1).encode())
    print(f"[stress-check] LJ: max |FD - analytic| {result['lennard_jones']['max_abs_difference_eV_A3']:.2e} eV/A^3"
          + (f"; AMOEBA h vs 2h: {result['amoeba_step_doubling']['max_abs_difference_eV_A3']:.2e} eV/A^3"
             if "amoeba_step_doubling" in result else ""), flush=True)
    return result


def label(workdir: Path, s: Settings, trs: list[dict], platform: str = "Reference", workers: int = 1,
          max_frames: int | None = None, pool=None) -> None:
    """Labels the frames of ``trs`` not labelled yet, in ``workers`` processes (or in ``pool``,
    a process pool whose workers ran :func:`_init_label_worker`)."""
    labels = workdir / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    teacher = teacher_for(s, platform)
    if not (workdir / "e0s.json").exists():
        atomic_write_bytes(workdir / "e0s.json", json.dumps(teacher.e0s(), indent=1).encode())
    done = {tr["trajectory_id"]: _labelled_ids(labels / f"{tr['trajectory_id']}.extxyz") for tr in trs}
    failed_path = labels / "failed.txt"
    failed = {line.split("\t")[0] for line in failed_path.read_text().splitlines() if line} if failed_path.exists() else set()
    plan = label_plan(workdir, trs)
    todo = [(t, f, b, s.position_decimals) for t, f, b in plan if f not in done[t] and f not in failed]
    if max_frames is not None:
        todo = todo[:max_frames]
    print(f"[label] {sum(map(len, done.values()))} frames labelled, {len(todo)} to go ({workers} workers, "
          f"{teacher.name} on {platform})", flush=True)
    start = time.time()
    first_periodic = next((b for _, _, b in plan if "Lattice=" in b), None)

    def record(result) -> None:
        tid, fid, text, error, seconds = result
        if text is None:
            with open(failed_path, "a") as handle:
                handle.write(f"{fid}\t{error}\n")
            print(f"[label] FAILED {fid}: {error}", flush=True)
            return
        _append_block(labels / f"{tid}.extxyz", text)
        n_atoms = int(text.split("\n", 1)[0])
        _append_block(labels / "timings.tsv", f"{fid}\t{n_atoms}\t{int('Lattice=' in text)}\t{seconds:.3f}\n")

    def run(results) -> None:
        for count, result in enumerate(results, 1):
            record(result)
            if count % 50 == 0:
                print(f"[label] {count}/{len(todo)} in {time.time() - start:.0f} s", flush=True)

    if pool is None and workers <= 1:
        _init_label_worker(asdict(s), platform)
        run(map(_label_task, todo))
        stress_check(workdir, s, platform, first_periodic)
    elif pool is not None:
        check = pool.apply_async(stress_check, (workdir, s, platform, first_periodic))
        run(pool.imap_unordered(_label_task, todo, chunksize=1))
        check.get()
    else:
        with mp.get_context("spawn").Pool(workers, initializer=_init_label_worker, initargs=(asdict(s), platform)) as new:
            check = new.apply_async(stress_check, (workdir, s, platform, first_periodic))
            run(new.imap_unordered(_label_task, todo, chunksize=1))
            check.get()
    seconds = time.time() - start
    _append_block(labels / "runs.jsonl", json.dumps(dict(teacher=teacher.name, platform=platform, workers=workers,
                                                         frames=len(todo), seconds=round(seconds, 1),
                                                         finished=time.strftime("%Y-%m-%d %H:%M:%S"))) + "\n")
    print(f"[label] {len(todo)} frames in {seconds:.1f} s", flush=True)


def generate_and_label(workdir: Path, s: Settings, trs: list[dict], platform: str, label_platform: str,
                       workers: int, md_workers: int) -> None:
    """``generate`` then ``label``, overlapped: a trajectory's frames are labelled (``workers``
    processes) while the MD of the others runs (``md_workers`` processes), so a GPU node's
    cores label while its GPU integrates.  Same files as the two stages run one after the
    other; the close-contact dimers follow the last trajectory."""
    import queue
    import threading

    (workdir / "frames").mkdir(parents=True, exist_ok=True)
    by_id = {tr["trajectory_id"]: tr for tr in trs}
    md = [tr for tr in trs if tr["group"] != "contact"]
    finished: queue.Queue = queue.Queue()
    errors: list[BaseException] = []
    context = mp.get_context("spawn")
    start = time.time()
    with context.Pool(workers, initializer=_init_label_worker, initargs=(asdict(s), label_platform)) as label_pool:
        def labeller() -> None:
            done = False
            while not done:
                batch = [finished.get()]
                while not finished.empty():
                    batch.append(finished.get())
                done = None in batch
                batch = [by_id[t] for t in batch if t is not None]
                if batch and not errors:
                    try:
                        label(workdir, s, batch, label_platform, workers, pool=label_pool)
                    except BaseException as exc:  # handed to the main thread
                        errors.append(exc)

        thread = threading.Thread(target=labeller, name="labeller")
        thread.start()
        try:
            tasks = [(tr, asdict(s), str(workdir), platform) for tr in md]
            with context.Pool(max(1, min(md_workers, len(md)))) as md_pool:
                for tr, _ in zip(md, md_pool.imap(_generate_task, tasks, chunksize=1)):
                    finished.put(tr["trajectory_id"])
            contact_frames(s, trs, workdir)
            print(f"[generate] {len(md)} trajectories in {time.time() - start:.1f} s", flush=True)
            for tr in trs:
                if tr["group"] == "contact":
                    finished.put(tr["trajectory_id"])
        finally:
            finished.put(None)
            thread.join()
    if errors:
        raise errors[0]


# ----------------------------------------------------------------------------- assemble


def _contact_kept(block: str, s: Settings) -> bool:
    """False for a close-contact dimer more than ``max_contact_energy_eV`` above its molecules."""
    if f"config_type={CONTACT_TYPE}" not in block:
        return True
    return float(_header(block, "interaction_energy_eV")) <= s.max_contact_energy_eV


def assemble(workdir: Path, s: Settings, trs: list[dict], out_dir: Path, prefix: str = PREFIX) -> dict:
    split = split_trajectories(trs, s)
    e0s = json.loads((workdir / "e0s.json").read_text())
    texts = {"train": [], "valid": [], "test": []}
    for symbol, energy in e0s.items():
        texts["train"].append(isolated_atom_block(symbol, energy))
    counts, missing = gather_labelled(workdir, trs, split, texts, keep=lambda block: _contact_kept(block, s))
    if sum(c["frames"] for c in counts.values()) == 0:
        raise SystemExit(f"no labelled frames under {workdir / 'labels'}: run --stage label first")
    sizes = write_split_files(out_dir, prefix, texts)
    teacher = teacher_for(s)
    atomic_write_bytes(out_dir / f"{prefix}_e0s.json", json.dumps(dict(
        teacher=teacher.name, units="eV", E0s=e0s,
        source="AMOEBA: 0 eV for H and O (separated monomers at their minimum are AMOEBA's zero); "
               "mace: --E0s isolated reads the IsolatedAtom frames at the top of the train file, which carry "
               "these values" if teacher.name == "amoeba" else "isolated atoms labelled by the teacher"),
        indent=1).encode())
    for tr in trs:
        record = workdir / "frames" / f"{tr['trajectory_id']}.json"
        if record.exists():
            tr["md"] = json.loads(record.read_text())
    stress = workdir / "stress_check.json"
    failed = workdir / "labels" / "failed.txt"
    runs = workdir / "labels" / "runs.jsonl"
    manifest = dict(
        description=f"Water configurations from AMOEBA (amoeba2018.xml) MD, labelled by {teacher.name}, for the "
                    "embedded MACE model of openmm-mace-lp",
        recipe="openmm_mace_lp.systems.recipes.amoeba_data", settings=asdict(s),
        teacher=teacher.settings(), versions=_versions(), counts=counts,
        label_runs=[json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else [],
        compressed_bytes=sizes, unlabelled_frames_missing=missing,
        failed_frames=failed.read_text().splitlines() if failed.exists() else [],
        trajectories=trs, label_timings=summarise_timings(workdir),
        stress_check=json.loads(stress.read_text()) if stress.exists() else None,
        units=dict(energy="eV", forces="eV/A", stress="eV/A^3 (ASE sign, Voigt xx yy zz yz xz xy)",
                   positions="A", density="g/cm^3"),
        licence="CC0-1.0 (generated by this project with OpenMM's AMOEBA 2018 parameters)")
    atomic_write_bytes(out_dir / f"{prefix}_manifest.json", json.dumps(manifest, indent=1, default=str).encode())
    print(json.dumps(dict(counts=counts, compressed_bytes=sizes, missing=missing), indent=1), flush=True)
    return manifest


# ----------------------------------------------------------------------------- timing


def time_label(s: Settings, platforms: list[str], repeats: int = 2) -> dict:
    """Seconds per periodic label (energy + forces + 12 strained energies) of one box."""
    from ase import Atoms

    from openmm_mace_lp.systems.builders import water_box

    structure = water_box(s.n_molecules, 1.0, seed=s.seed)
    atoms = Atoms("OHH" * s.n_molecules, positions=structure.positions * 10, cell=structure.box * 10, pbc=True)
    out = {}
    for platform in platforms:
        teacher = teacher_for(s, platform)
        teacher.label(atoms)  # first call: System creation, kernels
        start = time.time()
        for _ in range(repeats):
            teacher.label(atoms)
        out[platform] = round((time.time() - start) / repeats, 3)
        print(f"[time-label] {s.n_molecules} waters, {teacher.name} on {platform}: {out[platform]:.3f} s a frame "
              f"(13 energies)", flush=True)
    return out


# ----------------------------------------------------------------------------- main


def _settings_from(d: dict) -> Settings:
    names = {f.name for f in fields(Settings)}
    return Settings(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})


def _floats(text: str) -> tuple:
    return tuple(float(x) for x in text.split(","))


OVERRIDES = {  # option -> (Settings field, type, help)
    "--n-molecules": ("n_molecules", int, "waters per periodic box (216)"),
    "--npt-temperatures": ("npt_temperatures_K", _floats, "NPT temperatures, K, comma-separated"),
    "--nvt-densities": ("nvt_densities_g_cm3", _floats, "NVT densities, g/cm^3, comma-separated"),
    "--nvt-temperatures": ("nvt_temperatures_K", _floats, "NVT temperatures, K, comma-separated"),
    "--equilibration-steps": ("equilibration_steps", int, "MD steps before sampling (3000 = 3 ps)"),
    "--sampling-steps": ("sampling_steps", int, "MD steps of sampling (6000 = 6 ps)"),
    "--snapshots": ("n_snapshots", int, "snapshots taken while sampling (24)"),
    "--periodic-frames": ("periodic_md_frames", int, "periodic MD frames kept per trajectory (12)"),
    "--rattled-periodic": ("rattled_periodic_frames", int, "rattled periodic frames per trajectory (2)"),
    "--strained-periodic": ("strained_periodic_frames", int, "strained periodic frames per trajectory (1)"),
    "--md-clusters": ("md_clusters", int, "clusters of 8-30 waters per trajectory (10)"),
    "--small-clusters": ("small_clusters", int, "clusters of 1-6 waters per trajectory (3)"),
    "--rattled-clusters": ("rattled_clusters", int, "rattled clusters per trajectory (2)"),
    "--close-contacts": ("close_contacts", int, "close-contact dimers in all (60)"),
    "--max-contact-energy": ("max_contact_energy_eV", float, "dimers above this interaction energy (eV) are "
                                                             "labelled but left out of the splits (25)"),
    "--cutoff-nm": ("cutoff_nm", float, "PME and vdW cutoff of the MD and the labels, nm (0.8)"),
}


def build_settings(args) -> Settings:
    s = Settings(seed=args.seed, teacher=args.teacher.lower(), **SCALES[args.scale])
    changes = {name: getattr(args, opt[2:].replace("-", "_")) for opt, (name, _, _) in OVERRIDES.items()}
    return replace(s, **{k: v for k, v in changes.items() if v is not None})


ASSEMBLE_ONLY = ("max_contact_energy_eV", "split_fractions")  # may change between runs in one workdir


def check_workdir_settings(path: Path, s: Settings) -> None:
    """Refuses a workdir made with other generation or labelling settings (frames and labels
    would mix); records the settings on first use."""
    new = json.loads(json.dumps(asdict(s)))
    if path.exists():
        old = json.loads(path.read_text())
        differ = sorted(k for k in set(old) | set(new) if k not in ASSEMBLE_ONLY and old.get(k) != new.get(k))
        if differ:
            raise SystemExit(f"{path} was made with other settings ({', '.join(differ)}): use another --workdir "
                             "or the options that made it")
    atomic_write_bytes(path, json.dumps(new, indent=1).encode())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["all", "generate", "label", "assemble", "time-label"], default="all")
    p.add_argument("--scale", choices=list(SCALES), default="full", help="full (default) or tiny (the tests' preset)")
    p.add_argument("--teacher", default=T.DEFAULT_TEACHER, help=f"labelling teacher: {', '.join(T.TEACHERS)}")
    p.add_argument("--workdir", type=Path, default=Path("build/amoeba_data"), help="intermediate files")
    p.add_argument("--out", type=Path, default=DATA_DIR, help="output folder (default systems/data)")
    p.add_argument("--prefix", default=None, help="output file prefix (default water_amoeba for the amoeba teacher, "
                                                   "water_<teacher>_amoeba_md otherwise)")
    p.add_argument("--seed", type=int, default=Settings.seed)
    p.add_argument("--workers", type=int, default=1, help="processes for labelling (and MD unless --md-workers)")
    p.add_argument("--md-workers", type=int, default=None, help="processes for the MD trajectories")
    p.add_argument("--platform", default="Reference", help="OpenMM platform of the MD: Reference, CPU, CUDA")
    p.add_argument("--label-platform", default="Reference", help="OpenMM platform of the AMOEBA labels: Reference "
                                                                  "or CUDA (double precision); comma-separated for time-label")
    p.add_argument("--max-frames", type=int, default=None, help="label at most this many frames now")
    for opt, (_, kind, text) in OVERRIDES.items():
        p.add_argument(opt, type=kind, default=None, help=text)
    a = p.parse_args(argv)
    if a.teacher.lower() not in T.TEACHERS:
        p.error(f"unknown teacher {a.teacher!r}: choose one of {', '.join(T.TEACHERS)}")
    s = build_settings(a)
    if a.stage == "time-label":
        time_label(s, a.label_platform.split(","))
        return 0
    prefix = a.prefix or (PREFIX if s.teacher == "amoeba" else f"water_{s.teacher.split('-')[0]}_amoeba_md")
    trs = trajectories(s)
    a.workdir.mkdir(parents=True, exist_ok=True)
    settings_path = a.workdir / "settings.json"
    check_workdir_settings(settings_path, s)
    start = time.time()
    if a.stage == "all" and a.workers > 1 and a.max_frames is None:
        generate_and_label(a.workdir, s, trs, a.platform, a.label_platform, a.workers, a.md_workers or a.workers)
    else:
        if a.stage in ("all", "generate"):
            generate(a.workdir, s, trs, a.platform, a.md_workers or a.workers)
        if a.stage in ("all", "label"):
            label(a.workdir, s, trs, a.label_platform, a.workers, a.max_frames)
    if a.stage in ("all", "assemble"):
        assemble(a.workdir, s, trs, a.out, prefix)
    print(f"[{a.stage}] done in {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
