"""The AMOEBA data recipe end to end on its tiny preset (2 trajectories of 64 waters, Reference
platform): generate -> label -> assemble, the stored labels against OpenMM evaluated directly,
the split by trajectory, the manifest's stress check, resuming, and the refusals."""

import json
import subprocess
import sys

import ase.units
import numpy as np
import pytest

from openmm_mace_lp.systems.extxyz import read_frames
from openmm_mace_lp.systems.recipes import amoeba_data as A

SPLITS = ("train", "valid", "test")
EV_PER_KJ_MOL = ase.units.kJ / ase.units.mol


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("amoeba_tiny")
    work, out = root / "work", root / "out"
    assert A.main(["--scale", "tiny", "--workers", "2", "--md-workers", "1", "--workdir", str(work),
                   "--out", str(out)]) == 0
    frames = {s: read_frames(out / f"{A.PREFIX}_{s}.extxyz.xz") for s in SPLITS}
    manifest = json.loads((out / f"{A.PREFIX}_manifest.json").read_text())
    return dict(work=work, out=out, frames=frames, manifest=manifest)


def _direct_amoeba(atoms, cutoff_nm, tolerance):
    """Energy (eV) and forces (eV/A) from ForceField('amoeba2018.xml') built here, Reference."""
    import openmm as mm
    import openmm.app as app
    import openmm.unit as u

    from openmm_mace_lp.systems.builders import water_topology

    n = len(atoms) // 3
    periodic = bool(atoms.pbc.any())
    topology = water_topology(n, atoms.cell.array / 10 if periodic else None)
    system = app.ForceField("amoeba2018.xml").createSystem(
        topology, nonbondedMethod=app.PME if periodic else app.NoCutoff, nonbondedCutoff=cutoff_nm * u.nanometer,
        vdwCutoff=cutoff_nm * u.nanometer, ewaldErrorTolerance=tolerance, polarization="mutual",
        mutualInducedTargetEpsilon=1e-8, mutualInducedMaxIterations=500, rigidWater=False, constraints=None)
    for index in reversed(range(system.getNumForces())):  # water has no terms in these; they cost seconds to set up
        force = system.getForce(index)
        if isinstance(force, mm.CustomCompoundBondForce) and force.getNumBonds() == 0:
            system.removeForce(index)
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions / 10)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) * EV_PER_KJ_MOL
    forces = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer) * EV_PER_KJ_MOL / 10
    return energy, np.array(forces)


def test_every_frame_has_its_labels_and_keys(tiny):
    for split, frames in tiny["frames"].items():
        assert frames, split
        for at in frames:
            ct = at.info["config_type"]
            assert np.isfinite(at.info["REF_energy"]) and at.arrays["REF_forces"].shape == (len(at), 3)
            if ct == "IsolatedAtom":
                assert split == "train" and len(at) == 1 and at.info["REF_energy"] == 0.0
                continue
            assert at.get_chemical_symbols() == ["O", "H", "H"] * (len(at) // 3)
            assert {"trajectory_id", "temperature_K", "density_g_cm3", "frame_id"} <= set(at.info)
            if at.pbc.any():
                assert at.pbc.all() and len(at) == 192 and at.info["REF_stress"].shape == (6,)
                assert 0.9 < at.info["box_density_g_cm3"] < 1.1
            else:
                assert "REF_stress" not in at.info
    kinds = {at.info["config_type"] for fr in tiny["frames"].values() for at in fr}
    assert kinds == {"IsolatedAtom", "md_periodic", "rattled_periodic", "strained_periodic", "md_cluster",
                     "small_cluster", "rattled_cluster", "close_contact"}
    train = tiny["frames"]["train"]
    assert [a.info["config_type"] for a in train[:2]] == ["IsolatedAtom"] * 2  # mace --E0s isolated
    e0s = json.loads((tiny["out"] / f"{A.PREFIX}_e0s.json").read_text())["E0s"]
    assert e0s == {"H": 0.0, "O": 0.0} == {a.get_chemical_symbols()[0]: a.info["REF_energy"] for a in train[:2]}


def test_stored_labels_equal_openmm_evaluated_directly(tiny):
    s = A.Settings(**A.SCALES["tiny"])
    frames = [a for fr in tiny["frames"].values() for a in fr if a.info["config_type"] != "IsolatedAtom"]
    periodic = next(a for a in frames if a.info["config_type"] == "strained_periodic")
    cluster = next(a for a in frames if a.info["config_type"] == "md_cluster")
    for at in (periodic, cluster):
        energy, forces = _direct_amoeba(at, s.cutoff_nm, s.ewald_error_tolerance)
        # mutual induced dipoles converge to 1e-8 (RMS, Debye): the energy agrees to ~1e-8 relative
        assert abs(at.info["REF_energy"] - energy) < 2e-8 * abs(energy) + 1e-8, at.info["frame_id"]
        assert np.abs(at.arrays["REF_forces"] - forces).max() < 2e-6  # stored with 6 decimals
    lengths = periodic.cell.lengths()
    assert np.ptp(lengths) > 1e-3  # strained per axis: no longer a cube


def test_split_is_by_trajectory_and_contacts_have_their_own(tiny):
    ids = {s: {a.info["trajectory_id"] for a in fr if a.info["config_type"] != "IsolatedAtom"}
           for s, fr in tiny["frames"].items()}
    assert not ids["train"] & ids["valid"] and not ids["train"] & ids["test"] and not ids["valid"] & ids["test"]
    assert {"npt_T300", "nvt_T330_rho1.00"} <= ids["train"]
    contacts = [a for fr in tiny["frames"].values() for a in fr if a.info["config_type"] == "close_contact"]
    assert {a.info["trajectory_id"] for a in contacts} == {"contact00", "contact01", "contact02"}
    assert all(ids[s] & {"contact00", "contact01", "contact02"} for s in SPLITS)
    frame_ids = [a.info["frame_id"] for fr in tiny["frames"].values() for a in fr]
    assert len(frame_ids) == len(set(frame_ids))


def test_close_contacts_are_at_their_drawn_distance(tiny):
    contacts = [a for fr in tiny["frames"].values() for a in fr if a.info["config_type"] == "close_contact"]
    assert contacts
    for at in contacts:
        d = np.linalg.norm(at.positions[:3, None] - at.positions[None, 3:], axis=-1)
        assert abs(d.min() - at.info["contact_distance_A"]) < 5e-6  # positions stored to 1e-6 A
        a, b = at.info["contact"].split("-")
        i, j = np.unravel_index(np.argmin(d), d.shape)
        assert {at.get_chemical_symbols()[i], at.get_chemical_symbols()[3 + j]} == {a, b}
        assert at.info["interaction_energy_eV"] <= A.Settings().max_contact_energy_eV
        low, high = A.Settings().contact_ranges_A[at.info["contact"].replace("-", "...")]
        assert low <= at.info["contact_distance_A"] <= high


def test_manifest_records_settings_md_and_the_stress_check(tiny):
    m = tiny["manifest"]
    assert m["teacher"]["teacher"] == "amoeba" and m["teacher"]["mutual_epsilon"] == 1e-8
    assert m["settings"]["cutoff_nm"] == 0.55 and m["unlabelled_frames_missing"] == {} and m["failed_frames"] == []
    sc = m["stress_check"]
    assert sc["lennard_jones"]["max_abs_difference_eV_A3"] < 1e-9
    step = sc["amoeba_step_doubling"]
    assert step["max_abs_difference_eV_A3"] < 0.01 * step["max_abs_stress_eV_A3"]
    md = {t["trajectory_id"]: t for t in m["trajectories"] if t["group"] != "contact"}
    assert all(t["md"]["steps"] > 0 and t["split"] == "train" for t in md.values())
    assert m["label_timings"] and m["label_runs"][0]["platform"] == "Reference"
    assert sum(c["frames"] for c in m["counts"].values()) + 2 == sum(len(f) for f in tiny["frames"].values())


def test_rerun_resumes_without_relabelling_and_refuses_other_settings(tiny, capsys):
    shard = tiny["work"] / "labels" / "npt_T300.extxyz"
    before = shard.read_bytes()
    assert A.main(["--scale", "tiny", "--stage", "label", "--workdir", str(tiny["work"]), "--out", str(tiny["out"])]) == 0
    assert "0 to go" in capsys.readouterr().out and shard.read_bytes() == before
    with pytest.raises(SystemExit, match="cutoff_nm.*another --workdir"):
        A.main(["--scale", "tiny", "--cutoff-nm", "0.5", "--stage", "label", "--workdir", str(tiny["work"])])


def test_one_process_relabels_a_trajectory_byte_for_byte(tiny, tmp_path):
    """The fixture ran the GPU node's path (MD and labels in spawned pools, labels overlapping
    the MD); labelling one of its trajectories again in this process gives the same frames,
    byte for byte."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(tiny["work"], work)
    shard = work / "labels" / "npt_T300.extxyz"
    shard.unlink()
    s = A.Settings(**A.SCALES["tiny"])
    A.label(work, s, [t for t in A.trajectories(s) if t["trajectory_id"] == "npt_T300"], "Reference", workers=1)
    pooled = A.read_blocks(tiny["work"] / "labels" / "npt_T300.extxyz")  # in the order the workers finished
    assert sorted(A.read_blocks(shard)) == sorted(pooled) and len(pooled) == 7
    runs = tiny["manifest"]["label_runs"]
    assert len(runs) >= 2 and all(r["workers"] == 2 for r in runs)  # batches labelled while MD ran
    assert sum(r["frames"] for r in runs) == sum(len(f) for f in tiny["frames"].values()) - 2


def test_generate_refuses_a_box_too_small_for_the_cutoff():
    s = A.Settings(**dict(A.SCALES["tiny"], n_molecules=32))
    tr = A.trajectories(s)[0]
    with pytest.raises(ValueError, match=r"cutoff 0\.55 nm.*bigger box"):
        A.run_md(tr, s, "Reference")


def test_full_preset_has_the_seventeen_trajectories_and_sixty_contacts():
    s = A.Settings()
    trs = A.trajectories(s)
    md = [t for t in trs if t["group"] != "contact"]
    assert len(md) == 17 and sum(t["ensemble"] == "NPT" for t in md) == 7
    assert {t["temperature_K"] for t in md if t["ensemble"] == "NPT"} == {250, 275, 300, 325, 350, 375, 400}
    assert {(t["temperature_K"], t["density_g_cm3"]) for t in md if t["ensemble"] == "NVT"} == {
        (t, d) for t in (270.0, 330.0) for d in (0.90, 0.95, 1.00, 1.05, 1.10)}
    assert s.close_contacts == 60 and s.n_molecules == 216 and s.cutoff_nm == 0.8
    split = A.split_trajectories(trs, s)
    for group in ("npt", "nvt", "contact"):
        parts = [split[t["trajectory_id"]] for t in trs if t["group"] == group]
        assert parts.count("valid") >= 1 and parts.count("test") >= 1 and parts.count("train") >= 0.6 * len(parts)


def test_help_runs_as_a_module():
    res = subprocess.run([sys.executable, "-m", "openmm_mace_lp.systems.recipes.amoeba_data", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--label-platform" in res.stdout and "--scale" in res.stdout
