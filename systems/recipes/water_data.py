"""Water training data for the embedded MACE model: classical MD -> GFN2-xTB labels -> splits.

Stages (``--stage``; ``all`` runs them in order, each one resumable):

``generate``
    Flexible-water (Amber14 TIP3P, ``rigidWater=False``, O-H bond force constant halved to
    widen the sampled bond lengths) NVT Langevin MD in OpenMM (CPU platform, one thread,
    0.5 fs) of periodic boxes of 32 and 64 molecules on a grid of temperatures
    (260-400 K) and densities (0.90-1.10 g/cm^3).  Each (size, T, density) run is one
    *trajectory*.  From each we keep periodic MD frames, clusters of whole molecules cut
    from other MD snapshots (8-16 molecules from the 32-boxes, 8-24 from the 64-boxes, plus a
    few 1-6-molecule clusters), randomly displaced frames (RMS 0.05-0.15 A per atom, periodic
    and cluster) and boxes compressed/stretched per axis by 0.95-1.05 with rigid molecules
    (what a Monte Carlo barostat does).  Unlabelled frames go to
    ``<workdir>/frames/<trajectory>.extxyz`` (one file per trajectory, written atomically;
    a trajectory whose file exists is skipped).  Positions are rounded to 1e-6 A *before*
    labelling, so the stored geometry is exactly the labelled one.

``stress-check``
    Checks tblite's stress against a central finite difference of the energy with respect
    to a homogeneous strain on a small periodic water box and records the result in
    ``<workdir>/stress_check.json`` (and in the manifest).

``label``
    GFN2-xTB single points through ``tblite.ase.TBLite`` (a fresh calculator per frame:
    accuracy 1.0, electronic temperature 300 K, charge 0, singlet) -> energy (eV), forces
    (eV/A) and, for periodic frames, stress (eV/A^3, ASE sign and Voigt order).  Frames are
    labelled cheapest-first and round-robin over trajectories (all clusters, then the first
    periodic frame of every trajectory, then the second, ...), so a run cut short still
    covers every trajectory.  Each labelled frame is appended (one write + fsync) to
    ``<workdir>/labels/<trajectory>.extxyz``; frames already there are skipped on restart
    and a torn last frame is dropped.  ``--workers N`` labels trajectories in N processes.
    Also computes the isolated-atom energies (H doublet, O triplet).

``assemble``
    Splits trajectories 80/10/10 into train/valid/test (stratified by box size,
    deterministic by ``--seed``), and writes ``systems/data/water_gfn2_{train,valid,test}
    .extxyz.xz`` (info ``REF_energy``, ``REF_stress`` (periodic only, Voigt xx yy zz yz xz
    xy), ``config_type``, ``trajectory_id``, ``temperature_K``, ``density_g_cm3``
    (nominal of the trajectory), ``box_density_g_cm3`` (periodic only, actual),
    ``frame_id``; arrays ``REF_forces``), ``water_gfn2_e0s.json`` and
    ``water_gfn2_manifest.json`` (all settings, versions, split, counts, timings, the
    stress check).  The isolated atoms are ``config_type=IsolatedAtom`` frames at the top
    of the train file (mace ``--E0s=isolated`` reads them there).  Every output is written
    to a temporary file and moved into place with ``os.replace``.

Run ``python -m openmm_mace_lp.systems.recipes.water_data --help``.  Long runs: one core,
``OMP_NUM_THREADS=1 nohup python -m openmm_mace_lp.systems.recipes.water_data > /tmp/wd.log``.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.constants import Avogadro as AVOGADRO  # the project's one N_A (CODATA)

from openmm_mace_lp.atomic import atomic_write_bytes

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE.parent / "data"
PREFIX = "water_gfn2"


# ----------------------------------------------------------------------------- settings


@dataclass
class Settings:
    seed: int = 20261127
    # Trajectory grid: (n_molecules, temperatures K, densities g/cm^3)
    grids: tuple = (
        (32, (260.0, 288.0, 316.0, 344.0, 372.0, 400.0), (0.90, 0.94, 0.98, 1.02, 1.06, 1.10)),
        (64, (270.0, 310.0, 350.0, 390.0), (0.92, 1.00, 1.08)),
    )
    # Classical MD
    water_forcefield: str = "amber14/tip3p.xml"
    bond_k_scale: float = 0.5  # O-H bond force constant multiplier (broader bond sampling)
    timestep_fs: float = 0.5
    friction_per_ps: float = 2.0
    cutoff_fraction_of_box: float = 0.49  # PME real-space cutoff = 0.49 * box edge (<= 0.9 nm)
    ewald_error_tolerance: float = 5e-4
    minimise_steps: int = 500
    equilibration_steps: int = 10000  # 5 ps
    snapshot_interval_steps: int = 250  # 0.125 ps
    n_snapshots: int = 40  # 5 ps of production
    # Frames per trajectory
    periodic_md_frames: dict = field(default_factory=lambda: {32: 9, 64: 6})  # evenly spaced snapshots
    rattled_periodic_frames: int = 1
    strained_periodic_frames: int = 1
    md_clusters: int = 20  # cut from the other snapshots
    small_clusters: int = 3  # 1-6 molecules
    rattled_clusters: int = 3
    cluster_size: dict = field(default_factory=lambda: {32: (8, 16), 64: (8, 24)})
    small_cluster_size: tuple = (1, 6)
    rattle_rms_A: tuple = (0.05, 0.15)  # RMS displacement per atom (3D), uniform range
    strain_range: tuple = (0.95, 1.05)  # per-axis box scale, molecules moved rigidly
    strain_rattle_rms_A: float = 0.02
    position_decimals: int = 6  # A; frames are rounded before labelling
    # Labelling (tblite.ase.TBLite)
    method: str = "GFN2-xTB"
    accuracy: float = 1.0
    electronic_temperature_K: float = 300.0
    max_iterations: int = 250
    e0_multiplicity: dict = field(default_factory=lambda: {"H": 2, "O": 3})
    # Split
    split_fractions: tuple = (0.8, 0.1, 0.1)


QUICK = dict(  # tiny settings for smoke tests (--quick)
    grids=((32, (300.0, 350.0), (1.0,)), (64, (300.0,), (1.0,))),
    equilibration_steps=400, n_snapshots=8, snapshot_interval_steps=50,
    periodic_md_frames={32: 2, 64: 2}, md_clusters=3, small_clusters=1, rattled_clusters=1,
)


def trajectories(s: Settings) -> list[dict]:
    out = []
    for n_mol, temps, dens in s.grids:
        for t in temps:
            for d in dens:
                tid = f"w{n_mol}_T{int(round(t))}_rho{d:.2f}"
                out.append(dict(trajectory_id=tid, n_molecules=n_mol, temperature_K=float(t),
                                density_g_cm3=float(d), group=f"w{n_mol}"))
    for i, tr in enumerate(out):
        tr["seed"] = s.seed + 1000 * (i + 1)
    return out


# ----------------------------------------------------------------------------- extxyz I/O
# A small writer so that the precision (and hence the file size) is under control; the
# files are standard extended XYZ (ase.io.read reads them, including from .xz, but see
# openmm_mace_lp.systems.extxyz.read_frames for the fast way to read the compressed ones).


def _fmt_value(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "T" if v else "F"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, (list, tuple, np.ndarray)):
        return '"' + " ".join(_fmt_value(x) for x in np.asarray(v).ravel()) + '"'
    s = str(v)
    if any(c in s for c in ' ="'):
        raise ValueError(f"info string with space/quote: {s!r}")
    return s


def format_frame(symbols, positions, info: dict, cell=None, pbc=(False, False, False),
                 forces=None, pos_decimals: int = 6, force_decimals: int = 6) -> str:
    """One extended-XYZ frame as text (ends with a newline)."""
    head = []
    if cell is not None and any(pbc):
        head.append('Lattice="' + " ".join(f"{x:.{pos_decimals}f}" for x in np.asarray(cell).ravel()) + '"')
    props = "species:S:1:pos:R:3" + (":REF_forces:R:3" if forces is not None else "")
    head.append(f"Properties={props}")
    for k, v in info.items():
        head.append(f"{k}={_fmt_value(v)}")
    head.append('pbc="' + " ".join("T" if p else "F" for p in pbc) + '"')
    lines = [str(len(symbols)), " ".join(head)]
    for i, sym in enumerate(symbols):
        row = f"{sym:2s} " + " ".join(f"{x:.{pos_decimals}f}" for x in positions[i])
        if forces is not None:
            row += " " + " ".join(f"{x:.{force_decimals}f}" for x in forces[i])
        lines.append(row)
    return "\n".join(lines) + "\n"


def read_blocks(path: Path) -> list[str]:
    """Complete frames (as text) of an extxyz file; a torn final frame is ignored."""
    if not path.exists():
        return []
    return blocks_from_text(path.read_text())


def blocks_from_text(text: str) -> list[str]:
    """Complete frames of extxyz text; a torn final frame is ignored."""
    lines = text.splitlines(keepends=True)
    blocks, i = [], 0
    while i < len(lines):
        try:
            n = int(lines[i].strip())
        except ValueError:
            break
        if i + 2 + n > len(lines) or not all(l.endswith("\n") for l in lines[i:i + 2 + n]):
            break
        body = lines[i + 2:i + 2 + n]
        if any(len(l.split()) < 4 for l in body):
            break
        blocks.append("".join(lines[i:i + 2 + n]))
        i += 2 + n
    return blocks


def _frame_id(block: str) -> str:
    header = block.split("\n", 2)[1]
    for tok in header.split():
        if tok.startswith("frame_id="):
            return tok.split("=", 1)[1]
    raise ValueError("frame without frame_id")


# ----------------------------------------------------------------------------- generate


def _run_md(tr: dict, s: Settings):
    """NVT MD of one trajectory; returns (symbols, list of positions (n,3) A, box edge A)."""
    import openmm as mm
    import openmm.app as app
    import openmm.unit as u

    from openmm_mace_lp.systems.builders import water_box

    st = water_box(tr["n_molecules"], tr["density_g_cm3"], seed=tr["seed"])
    L_nm = float(st.box[0, 0])
    ff = app.ForceField(s.water_forcefield)
    cutoff = min(0.9, s.cutoff_fraction_of_box * L_nm)
    system = ff.createSystem(st.topology, nonbondedMethod=app.PME, nonbondedCutoff=cutoff * u.nanometer,
                             rigidWater=False, constraints=None, ewaldErrorTolerance=s.ewald_error_tolerance)
    for f in system.getForces():
        if isinstance(f, mm.HarmonicBondForce):
            for i in range(f.getNumBonds()):
                a, b, r0, k = f.getBondParameters(i)
                f.setBondParameters(i, a, b, r0, k * s.bond_k_scale)
    integ = mm.LangevinMiddleIntegrator(tr["temperature_K"] * u.kelvin, s.friction_per_ps / u.picosecond,
                                        s.timestep_fs * u.femtosecond)
    integ.setRandomNumberSeed(tr["seed"] % 2**31)
    platform_ = mm.Platform.getPlatformByName("CPU")
    ctx = mm.Context(system, integ, platform_, {"Threads": "1"})
    ctx.setPositions(st.positions)
    mm.LocalEnergyMinimizer.minimize(ctx, 10.0, s.minimise_steps)
    ctx.setVelocitiesToTemperature(tr["temperature_K"] * u.kelvin, tr["seed"] % 2**31)
    integ.step(s.equilibration_steps)
    snaps = []
    for _ in range(s.n_snapshots):
        integ.step(s.snapshot_interval_steps)
        pos = ctx.getState(getPositions=True, enforcePeriodicBox=True).getPositions(asNumpy=True)
        snaps.append(np.array(pos.value_in_unit(u.angstrom)))
    symbols = [a.element.symbol for a in st.topology.atoms()]
    return symbols, snaps, L_nm * 10.0


def _whole_molecules_around(pos: np.ndarray, L: np.ndarray, centre_mol: int) -> np.ndarray:
    """Minimum-image copy of every (whole, O H H) molecule relative to one molecule's O."""
    mol = pos.reshape(-1, 3, 3)
    # make each molecule whole around its O
    mol = mol.copy()
    mol[:, 1:] -= L * np.round((mol[:, 1:] - mol[:, :1]) / L)
    shift = mol[:, 0] - mol[centre_mol, 0]
    shift = -L * np.round(shift / L)
    return mol + shift[:, None, :]


def _cut_cluster(pos, L, k, rng):
    n_mol = len(pos) // 3
    c = int(rng.integers(n_mol))
    mol = _whole_molecules_around(pos, L, c)
    d = np.linalg.norm(mol[:, 0] - mol[c, 0], axis=1)
    keep = np.sort(np.argsort(d, kind="stable")[:k])
    xyz = mol[keep].reshape(-1, 3)
    return xyz - xyz.mean(axis=0)


def _rattle(xyz, rms, rng):
    return xyz + rng.normal(scale=rms / np.sqrt(3.0), size=xyz.shape)


def _strain_rigid(pos, L, factors, rng, rattle_rms):
    """Scale the box per axis; molecules (made whole) move rigidly with their O."""
    mol = pos.reshape(-1, 3, 3).copy()
    mol[:, 1:] -= L * np.round((mol[:, 1:] - mol[:, :1]) / L)
    com_shift = mol[:, 0] * (factors - 1.0)
    mol += com_shift[:, None, :]
    return _rattle(mol.reshape(-1, 3), rattle_rms, rng), L * factors


def _water_density(n_mol, cell_lengths):
    return n_mol * 18.01528 / AVOGADRO / (np.prod(cell_lengths) * 1e-24)


def generate_trajectory(tr: dict, s: Settings, workdir: Path) -> Path:
    path = workdir / "frames" / f"{tr['trajectory_id']}.extxyz"
    if path.exists():
        return path
    t0 = time.time()
    symbols, snaps, L = _run_md(tr, s)
    rng = np.random.default_rng(tr["seed"] + 7)
    n_mol = tr["n_molecules"]
    nd = s.position_decimals
    Lvec = np.array([L, L, L])
    base = dict(trajectory_id=tr["trajectory_id"], temperature_K=tr["temperature_K"],
                density_g_cm3=tr["density_g_cm3"])
    frames = []  # (symbols, pos, info, cell or None)

    def add(kind, idx, xyz, cell=None, syms=None):
        info = dict(config_type=kind, **base)
        if cell is not None:
            info["box_density_g_cm3"] = round(float(_water_density(n_mol, cell)), 6)
        info["frame_id"] = f"{tr['trajectory_id']}/{kind}{idx:02d}"
        frames.append((syms or symbols, np.round(xyz, nd), info, None if cell is None else np.round(cell, nd)))

    n_md = s.periodic_md_frames[n_mol]
    stride = max(1, len(snaps) // n_md)
    periodic_idx = list(range(stride - 1, len(snaps), stride))[:n_md]
    other_idx = [i for i in range(len(snaps)) if i not in periodic_idx]
    for j, i in enumerate(periodic_idx):
        add("md_periodic", j, snaps[i], Lvec)
    for j in range(s.rattled_periodic_frames):
        src = snaps[periodic_idx[int(rng.integers(len(periodic_idx)))]]
        add("rattled_periodic", j, _rattle(src, rng.uniform(*s.rattle_rms_A), rng), Lvec)
    for j in range(s.strained_periodic_frames):
        src = snaps[periodic_idx[int(rng.integers(len(periodic_idx)))]]
        factors = rng.uniform(*s.strain_range, size=3)
        xyz, cell = _strain_rigid(src, Lvec, factors, rng, s.strain_rattle_rms_A)
        add("strained_periodic", j, xyz, cell)
    kmin, kmax = s.cluster_size[n_mol]
    for j in range(s.md_clusters):
        src = snaps[other_idx[j % len(other_idx)]]
        k = int(rng.integers(kmin, kmax + 1))
        xyz = _cut_cluster(src, Lvec, k, rng)
        add("md_cluster", j, xyz, syms=symbols[: 3 * k])
    for j in range(s.small_clusters):
        src = snaps[other_idx[int(rng.integers(len(other_idx)))]]
        k = int(rng.integers(s.small_cluster_size[0], s.small_cluster_size[1] + 1))
        add("small_cluster", j, _cut_cluster(src, Lvec, k, rng), syms=symbols[: 3 * k])
    for j in range(s.rattled_clusters):
        src = snaps[other_idx[int(rng.integers(len(other_idx)))]]
        k = int(rng.integers(kmin, kmax + 1))
        xyz = _rattle(_cut_cluster(src, Lvec, k, rng), rng.uniform(*s.rattle_rms_A), rng)
        add("rattled_cluster", j, xyz, syms=symbols[: 3 * k])
    text = "".join(
        format_frame(sy, xyz, info, cell=None if cell is None else np.diag(cell),
                     pbc=(cell is not None,) * 3, pos_decimals=nd)
        for sy, xyz, info, cell in frames
    )
    atomic_write_bytes(path, text.encode())
    print(f"[generate] {tr['trajectory_id']}: {len(frames)} frames, MD {time.time() - t0:.1f} s", flush=True)
    return path


# ----------------------------------------------------------------------------- label


def gfn_teacher(s: Settings):
    """The GFN-xTB teacher (tblite) that these settings describe."""
    from openmm_mace_lp.systems.recipes.teachers import GfnTeacher

    return GfnTeacher(method=s.method, accuracy=s.accuracy, electronic_temperature_K=s.electronic_temperature_K,
                      max_iterations=s.max_iterations, e0_multiplicity=s.e0_multiplicity)


def make_calculator(s: Settings, multiplicity: int = 1):
    return gfn_teacher(s).calculator(multiplicity=multiplicity)


def label_atoms(atoms, s: Settings):
    """(energy eV, forces eV/A, stress Voigt eV/A^3 or None) from GFN2-xTB."""
    out = gfn_teacher(s).label(atoms)
    return out.info["REF_energy"], out.arrays["REF_forces"], out.info.get("REF_stress")


def labelled_text(atoms, labelled, pos_decimals: int = 6, extra: dict | None = None) -> str:
    """extxyz text of ``atoms`` with the labels of ``labelled`` (a teacher's output, see
    teachers.py): REF_energy and REF_stress (periodic only) lead the header, ``extra`` follows,
    then the frame's own keys, and frame_id closes it (``_frame_id`` and the shard readers rely
    on that).  Positions are written back as read, so the stored geometry is the labelled one."""
    info = {k: v for k, v in atoms.info.items()}
    frame_id = info.pop("frame_id")
    out = dict(REF_energy=labelled.info["REF_energy"])
    if "REF_stress" in labelled.info:
        out["REF_stress"] = labelled.info["REF_stress"]
    out.update(extra or {})
    out.update(info)
    out["frame_id"] = frame_id
    return format_frame(atoms.get_chemical_symbols(), atoms.positions, out,
                        cell=np.array(atoms.cell) if atoms.pbc.any() else None,
                        pbc=tuple(bool(p) for p in atoms.pbc), forces=labelled.arrays["REF_forces"],
                        pos_decimals=pos_decimals)


def label_block(block: str, teacher, pos_decimals: int = 6) -> str:
    """One unlabelled extxyz frame labelled by ``teacher``, as extxyz text (:func:`labelled_text`)."""
    import ase.io

    atoms = ase.io.read(io.StringIO(block), format="extxyz")
    return labelled_text(atoms, teacher.label(atoms), pos_decimals)


def _label_one(block: str, s: Settings) -> str:
    return label_block(block, gfn_teacher(s), s.position_decimals)


def _append_block(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _labelled_ids(path: Path) -> set[str]:
    """Frame ids already labelled; rewrites the shard atomically if its end is torn."""
    if not path.exists():
        return set()
    blocks = read_blocks(path)
    good = "".join(blocks)
    if len(good.encode()) != path.stat().st_size:
        print(f"[label] dropping a torn frame at the end of {path.name}", flush=True)
        atomic_write_bytes(path, good.encode())
    return {_frame_id(b) for b in blocks}


_COST_RANK = {"small_cluster": 0, "md_cluster": 1, "rattled_cluster": 2}


def label_plan(workdir: Path, trs: list[dict]) -> list[tuple[str, str, str]]:
    """(trajectory_id, frame_id, block) in labelling order: clusters first, then periodic
    frames round-robin over trajectories (64-molecule boxes after 32-molecule ones)."""
    per_traj = {}
    for tr in trs:
        blocks = read_blocks(workdir / "frames" / f"{tr['trajectory_id']}.extxyz")
        per_traj[tr["trajectory_id"]] = blocks
    plan = []
    for tid, blocks in per_traj.items():
        for b in blocks:
            ct = b.split("config_type=", 1)[1].split()[0]
            if ct in _COST_RANK:
                plan.append((tid, _frame_id(b), b))
    for group in sorted({tr["group"] for tr in trs}, key=lambda g: int(g[1:])):
        tids = [tr["trajectory_id"] for tr in trs if tr["group"] == group]
        periodic = {t: [b for b in per_traj[t] if b.split("config_type=", 1)[1].split()[0] not in _COST_RANK]
                    for t in tids}
        for j in range(max((len(v) for v in periodic.values()), default=0)):
            for t in tids:
                if j < len(periodic[t]):
                    plan.append((t, _frame_id(periodic[t][j]), periodic[t][j]))
    return plan


def _label_worker(args):
    items, s_dict, workdir, wid = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    s = Settings(**s_dict)
    done = 0
    for tid, fid, block in items:
        t0 = time.time()
        try:
            text = _label_one(block, s)
        except Exception as exc:  # SCF failure etc.: record and go on
            with open(Path(workdir) / "labels" / "failed.txt", "a") as fh:
                fh.write(f"{fid}\t{type(exc).__name__}: {exc}\n")
            print(f"[label:{wid}] FAILED {fid}: {exc}", flush=True)
            continue
        _append_block(Path(workdir) / "labels" / f"{tid}.extxyz", text)
        done += 1
        n_atoms = int(block.split("\n", 1)[0])
        with open(Path(workdir) / "labels" / f"timings{wid}.tsv", "a") as fh:
            fh.write(f"{fid}\t{n_atoms}\t{int('Lattice=' in block)}\t{time.time() - t0:.3f}\n")
        print(f"[label:{wid}] {fid} ({n_atoms} atoms) {time.time() - t0:.2f} s", flush=True)
    return done


def isolated_atom_energies(s: Settings) -> dict:
    return gfn_teacher(s).isolated_atoms()


def label(workdir: Path, s: Settings, trs: list[dict], workers: int = 1, max_frames: int | None = None) -> None:
    (workdir / "labels").mkdir(parents=True, exist_ok=True)
    e0_path = workdir / "e0s.json"
    if not e0_path.exists():
        atomic_write_bytes(e0_path, json.dumps(isolated_atom_energies(s), indent=1).encode())
    done = {tr["trajectory_id"]: _labelled_ids(workdir / "labels" / f"{tr['trajectory_id']}.extxyz") for tr in trs}
    failed = set()
    fpath = workdir / "labels" / "failed.txt"
    if fpath.exists():
        failed = {l.split("\t")[0] for l in fpath.read_text().splitlines() if l}
    todo = [p for p in label_plan(workdir, trs) if p[1] not in done[p[0]] and p[1] not in failed]
    if max_frames is not None:
        todo = todo[:max_frames]
    print(f"[label] {sum(len(v) for v in done.values())} frames already labelled, {len(todo)} to go", flush=True)
    if not todo:
        return
    if workers <= 1:
        _label_worker((todo, asdict(s), str(workdir), 0))
        return
    # Several processes: give each trajectory to one worker (one writer per shard file).
    by_traj = {}
    for item in todo:
        by_traj.setdefault(item[0], []).append(item)
    chunks = [[] for _ in range(workers)]
    order = sorted(by_traj, key=lambda t: -len(by_traj[t]))
    for i, t in enumerate(order):
        chunks[i % workers].extend(by_traj[t])
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_label_worker, [(c, asdict(s), str(workdir), i) for i, c in enumerate(chunks) if c])


# ----------------------------------------------------------------------------- stress check


def stress_check(workdir: Path, s: Settings, h: float = 1e-4, n_waters: int = 8,
                 components=None) -> dict:
    """Compare tblite's stress with (1/V) dE/d(strain) by central differences (all nine
    components unless ``components`` lists (i, j) pairs)."""
    path = workdir / "stress_check.json"
    if path.exists() and components is None and n_waters == 8:
        return json.loads(path.read_text())
    from ase import Atoms

    from openmm_mace_lp.systems.builders import water_box

    st = water_box(n_waters, 1.0, seed=s.seed)
    atoms = Atoms([a.element.symbol for a in st.topology.atoms()], positions=st.positions * 10,
                  cell=st.box * 10, pbc=True)
    rng = np.random.default_rng(s.seed)
    # a slightly sheared, non-cubic cell so that off-diagonal terms are non-trivial
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.02 * rng.normal(size=(3, 3))), scale_atoms=True)
    atoms.calc = make_calculator(s)
    analytic = atoms.get_stress(voigt=False)
    V = atoms.get_volume()
    fd = np.full((3, 3), np.nan)
    cell0, pos0 = atoms.cell.array.copy(), atoms.positions.copy()
    for i in range(3):
        for j in range(3):
            if components is not None and (i, j) not in components:
                continue
            es = []
            for sgn in (1, -1):
                eps = np.zeros((3, 3))
                eps[i, j] += sgn * h / 2
                eps[j, i] += sgn * h / 2  # diagonal: eps_ii = +-h
                a = atoms.copy()
                a.set_cell(cell0 @ (np.eye(3) + eps), scale_atoms=False)
                a.positions = pos0 @ (np.eye(3) + eps)
                a.calc = make_calculator(s)
                es.append(a.get_potential_energy())
            fd[i, j] = (es[0] - es[1]) / (2 * h) / V  # d(eps_ij) = +-h (symmetrised)
    ok = ~np.isnan(fd)
    res = dict(
        system=f"{n_waters} waters, 1 g/cm3, sheared triclinic cell",
        strain_step=h,
        analytic_stress_eV_A3=analytic.tolist(),
        finite_difference_eV_A3=fd.tolist(),
        max_abs_difference_eV_A3=float(np.abs(analytic - fd)[ok].max()),
        max_abs_stress_eV_A3=float(np.abs(fd[ok]).max()),
        convention="tblite.ase stress = +(1/V) dE/d(strain) (ASE convention; positive = tensile), "
                   "Voigt order xx yy zz yz xz xy, eV/A^3; identical to what mace expects for REF_stress",
        agrees=bool(np.allclose(analytic[ok], fd[ok], atol=2e-5, rtol=1e-3)),
    )
    res["finite_difference_eV_A3"] = np.where(ok, fd, None).tolist()
    if components is None and n_waters == 8:
        atomic_write_bytes(path, json.dumps(res, indent=1).encode())
    print(f"[stress-check] max |analytic - FD| = {res['max_abs_difference_eV_A3']:.2e} eV/A^3 "
          f"(max |stress| {res['max_abs_stress_eV_A3']:.2e}); agrees={res['agrees']}", flush=True)
    return res


# ----------------------------------------------------------------------------- assemble


def split_trajectories(trs: list[dict], s: Settings) -> dict:
    rng = np.random.default_rng(s.seed)
    out = {}
    for group in sorted({tr["group"] for tr in trs}):
        tids = sorted(tr["trajectory_id"] for tr in trs if tr["group"] == group)
        perm = [tids[i] for i in rng.permutation(len(tids))]
        n = len(perm)
        n_test = max(1, int(round(s.split_fractions[2] * n))) if n >= 3 else 0
        n_valid = max(1, int(round(s.split_fractions[1] * n))) if n >= 3 else 0
        for t in perm[:n_test]:
            out[t] = "test"
        for t in perm[n_test:n_test + n_valid]:
            out[t] = "valid"
        for t in perm[n_test + n_valid:]:
            out[t] = "train"
    return out


def _versions() -> dict:
    import importlib.metadata as md

    v = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("tblite", "openmm", "ase", "numpy"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    return v


def isolated_atom_block(symbol: str, energy_eV: float, **info) -> str:
    """An ``IsolatedAtom`` frame (mace ``--E0s isolated`` reads these from the train file)."""
    return format_frame([symbol], np.zeros((1, 3)), dict(
        REF_energy=energy_eV, config_type="IsolatedAtom", trajectory_id="isolated_atoms", **info,
        frame_id=f"isolated_atoms/{symbol}"), forces=np.zeros((1, 3)))


def gather_labelled(workdir: Path, trs: list[dict], split: dict, texts: dict, keep=None) -> tuple[dict, dict]:
    """Appends each trajectory's labelled frames (in generation order) to ``texts[its split]``;
    returns (counts per split, unlabelled frames per trajectory) and records ``split`` and
    ``labelled_frames`` in each trajectory's dict.  ``keep(block) -> bool``, if given, leaves
    frames out (counted under ``left_out``; their labels stay in the workdir)."""
    counts = {k: dict(frames=0, atoms=0, trajectories=0, by_config_type={}) for k in texts}
    if keep is not None:
        for c in counts.values():
            c["left_out"] = 0
    missing = {}
    for tr in trs:
        tid = tr["trajectory_id"]
        order = [_frame_id(b) for b in read_blocks(workdir / "frames" / f"{tid}.extxyz")]
        got = {_frame_id(b): b for b in read_blocks(workdir / "labels" / f"{tid}.extxyz")}
        miss = [f for f in order if f not in got]
        if miss:
            missing[tid] = len(miss)
        part = split[tid]
        c = counts[part]
        c["trajectories"] += 1
        tr["split"] = part
        tr["labelled_frames"] = len(got)
        for fid in order:
            if fid in got:
                b = got[fid]
                if keep is not None and not keep(b):
                    c["left_out"] += 1
                    continue
                texts[part].append(b)
                c["frames"] += 1
                c["atoms"] += int(b.split("\n", 1)[0])
                ct = b.split("config_type=", 1)[1].split()[0]
                c["by_config_type"][ct] = c["by_config_type"].get(ct, 0) + 1
    return counts, missing


def write_split_files(out_dir: Path, prefix: str, texts: dict) -> dict:
    """``<prefix>_<split>.extxyz.xz`` for every split, each written atomically; returns bytes."""
    sizes = {}
    for part, blocks in texts.items():
        data = lzma.compress("".join(blocks).encode(), preset=9 | lzma.PRESET_EXTREME)
        atomic_write_bytes(out_dir / f"{prefix}_{part}.extxyz.xz", data)
        sizes[part] = len(data)
    return sizes


def assemble(workdir: Path, s: Settings, trs: list[dict], out_dir: Path, prefix: str = PREFIX) -> dict:
    split = split_trajectories(trs, s)
    e0 = json.loads((workdir / "e0s.json").read_text())
    texts = {"train": [], "valid": [], "test": []}
    for sym, d in e0.items():
        texts["train"].append(isolated_atom_block(sym, d["energy_eV"], multiplicity=d["multiplicity"]))
    counts, missing = gather_labelled(workdir, trs, split, texts)
    sizes = write_split_files(out_dir, prefix, texts)
    atomic_write_bytes(out_dir / f"{prefix}_e0s.json", json.dumps(
        {"method": s.method, "units": "eV", "source": "tblite single atoms (no spin polarisation term)",
         "E0s": {sym: d["energy_eV"] for sym, d in e0.items()},
         "multiplicity": {sym: d["multiplicity"] for sym, d in e0.items()}}, indent=1).encode())
    timings = summarise_timings(workdir)
    sc = workdir / "stress_check.json"
    manifest = dict(
        description="GFN2-xTB-labelled water configurations for the embedded MACE model of openmm-mace-lp",
        settings=asdict(s), versions=_versions(), counts=counts, compressed_bytes=sizes,
        unlabelled_frames_missing=missing, trajectories=trs, label_timings=timings,
        stress_check=json.loads(sc.read_text()) if sc.exists() else None,
        units=dict(energy="eV", forces="eV/A", stress="eV/A^3 (ASE sign, Voigt xx yy zz yz xz xy)",
                   positions="A", density="g/cm^3"),
        licence="CC0-1.0 (generated by this project; GFN2-xTB via tblite, LGPL-3.0 software)",
    )
    atomic_write_bytes(out_dir / f"{prefix}_manifest.json", json.dumps(manifest, indent=1, default=str).encode())
    print(json.dumps(dict(counts=counts, compressed_bytes=sizes, missing=missing), indent=1), flush=True)
    return manifest


def summarise_timings(workdir: Path) -> dict:
    """Labelling wall time per frame (seconds), by kind and size, from labels/timings*.tsv."""
    rows = []
    for f in sorted((workdir / "labels").glob("timings*.tsv")):
        for line in f.read_text().splitlines():
            fid, n_atoms, periodic, sec = line.split("\t")
            rows.append((n_atoms, periodic == "1", float(sec)))
    out = {}
    for n_atoms, periodic, sec in rows:
        key = f"{'periodic' if periodic else 'cluster'}_{n_atoms}_atoms" if periodic else "cluster"
        out.setdefault(key, []).append(sec)
    return {k: dict(frames=len(v), median_s=float(np.median(v)), total_s=float(np.sum(v)))
            for k, v in sorted(out.items())}


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["all", "generate", "stress-check", "label", "assemble"], default="all")
    p.add_argument("--workdir", type=Path, default=Path("build/water_data"),
                   help="intermediate files (default ./build/water_data)")
    p.add_argument("--out", type=Path, default=DATA_DIR, help="output folder (default systems/data)")
    p.add_argument("--prefix", default=PREFIX)
    p.add_argument("--seed", type=int, default=Settings.seed)
    p.add_argument("--workers", type=int, default=1, help="labelling processes (one thread each)")
    p.add_argument("--max-frames", type=int, default=None, help="label at most this many frames now")
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    a = p.parse_args(argv)
    s = Settings(seed=a.seed, **(QUICK if a.quick else {}))
    trs = trajectories(s)
    a.workdir.mkdir(parents=True, exist_ok=True)
    settings_path = a.workdir / "settings.json"
    if settings_path.exists():
        old = json.loads(settings_path.read_text())
        if old != json.loads(json.dumps(asdict(s))):
            raise SystemExit(f"{settings_path} holds different settings: use another --workdir")
    else:
        atomic_write_bytes(settings_path, json.dumps(asdict(s), indent=1).encode())
    t0 = time.time()
    if a.stage in ("all", "generate"):
        for tr in trs:
            generate_trajectory(tr, s, a.workdir)
    if a.stage in ("all", "stress-check"):
        stress_check(a.workdir, s)
    if a.stage in ("all", "label"):
        label(a.workdir, s, trs, workers=a.workers, max_frames=a.max_frames)
    if a.stage in ("all", "assemble"):
        assemble(a.workdir, s, trs, a.out, a.prefix)
    print(f"[{a.stage}] done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
