"""Teachers: the finite-difference stress against an analytic virial, AMOEBA labels against
OpenMM evaluated directly, and the refusals."""

import ase.units
import numpy as np

from openmm_mace_lp.neighbors import face_distances
import pytest
from ase import Atoms

from openmm_mace_lp.systems.builders import water_box
from openmm_mace_lp.systems.recipes import teachers as T

EV_PER_KJ_MOL = ase.units.kJ / ase.units.mol  # independent of teachers.KJ_PER_MOL_PER_EV


# ----------------------------------------------------------------------------- stress


def _lennard_jones_context(positions, box, sigma, epsilon, r_cut, r_switch):
    """OpenMM NonbondedForce (not the recipe's CustomNonbondedForce) with zero charges."""
    import openmm as mm

    system = mm.System()
    system.setDefaultPeriodicBoxVectors(*(mm.Vec3(*row) for row in box))
    force = mm.NonbondedForce()
    force.setNonbondedMethod(mm.NonbondedForce.CutoffPeriodic)
    force.setCutoffDistance(r_cut)
    force.setUseSwitchingFunction(True)
    force.setSwitchingDistance(r_switch)
    force.setUseDispersionCorrection(False)
    for _ in positions:
        system.addParticle(20.0)
        force.addParticle(0.0, sigma, epsilon)
    system.addForce(force)
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    return context


def _analytic_virial_stress(positions, box, sigma, epsilon, r_cut, r_switch):
    """(1/V) sum over pairs of dE/dr r_a r_b / r, looping over pairs and images by hand (eV/A^3)."""
    n = len(positions)
    virial = np.zeros((3, 3))
    images = [np.array([i, j, k]) @ box for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)]
    for a in range(n):
        for b in range(a + 1, n):
            for shift in images:
                d = positions[b] - positions[a] + shift
                r = np.linalg.norm(d)
                if r >= r_cut:
                    continue
                sr6 = (sigma / r) ** 6
                u = 4 * epsilon * (sr6**2 - sr6)
                du = 24 * epsilon * (sr6 - 2 * sr6**2) / r
                if r > r_switch:
                    x = (r - r_switch) / (r_cut - r_switch)
                    s, ds = 1 - 10 * x**3 + 15 * x**4 - 6 * x**5, (-30 * x**2 + 60 * x**3 - 30 * x**4) / (r_cut - r_switch)
                else:
                    s, ds = 1.0, 0.0
                virial += (du * s + u * ds) * np.outer(d, d) / r
    sigma_nm = virial / abs(np.linalg.det(box))  # kJ/mol/nm^3
    full = sigma_nm * EV_PER_KJ_MOL / 1000.0
    return np.array([full[0, 0], full[1, 1], full[2, 2], full[1, 2], full[0, 2], full[0, 1]])


def test_finite_difference_stress_equals_analytic_lennard_jones_virial():
    rng = np.random.default_rng(3)
    box = np.array([[1.50, 0.0, 0.0], [-0.40, 1.45, 0.0], [0.25, -0.30, 1.55]])  # triclinic, reduced form
    frac = rng.permutation(np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3))
    positions = (frac + 0.5 + rng.normal(scale=0.08, size=frac.shape)) / 3 @ box
    sigma, epsilon, r_cut, r_switch = 0.34, 0.8, 0.6, 0.45
    context = _lennard_jones_context(positions, box, sigma, epsilon, r_cut, r_switch)
    fd = T.finite_difference_stress(context, positions, box, 1e-4)
    ref = _analytic_virial_stress(positions, box, sigma, epsilon, r_cut, r_switch)
    assert np.abs(ref[3:]).min() > 1e-6  # the shear components are not trivially zero
    assert np.abs(fd - ref).max() < 1e-9 * max(1.0, np.abs(ref).max() / 1e-3), (fd, ref)
    state = context.getState(getPositions=True)  # the Context is handed back unstrained
    assert np.allclose(state.getPositions(asNumpy=True)._value, positions, atol=1e-12)
    assert np.allclose(np.array(state.getPeriodicBoxVectors(asNumpy=True)._value), box, atol=1e-12)


def test_recipe_lennard_jones_check_agrees():
    res = T.lennard_jones_stress_check()
    assert res["max_abs_difference_eV_A3"] < 1e-9 and res["max_abs_stress_eV_A3"] > 1e-5


def test_face_distances_of_a_sheared_cell():
    box = np.array([[2.0, 0.0, 0.0], [1.0, 1.5, 0.0], [0.0, 0.0, 3.0]])
    # face b-c: the distance between the planes through b and c is a's component along y x z normal
    assert np.allclose(face_distances(box), [2.0 * 1.5 / np.hypot(1.0, 1.5), 1.5, 3.0])


# ----------------------------------------------------------------------------- AMOEBA


def _direct_openmm(topology, positions_nm, periodic, cutoff_nm, tolerance, all_forces=True):
    """Energy (eV) and forces (eV/A) from ForceField('amoeba2018.xml') evaluated here, with
    every force createSystem makes, or (``all_forces=False``, 4 s faster to set up) without
    the empty compound-bond forces that water has no terms of."""
    import openmm as mm
    import openmm.app as app
    import openmm.unit as u

    system = app.ForceField("amoeba2018.xml").createSystem(
        topology, nonbondedMethod=app.PME if periodic else app.NoCutoff, nonbondedCutoff=cutoff_nm * u.nanometer,
        vdwCutoff=cutoff_nm * u.nanometer, ewaldErrorTolerance=tolerance, polarization="mutual",
        mutualInducedTargetEpsilon=1e-8, mutualInducedMaxIterations=500, rigidWater=False, constraints=None)
    if not all_forces:
        for index in reversed(range(system.getNumForces())):
            force = system.getForce(index)
            if isinstance(force, mm.CustomCompoundBondForce) and force.getNumBonds() == 0:
                system.removeForce(index)
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions_nm)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) * EV_PER_KJ_MOL
    forces = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer) * EV_PER_KJ_MOL / 10
    return energy, np.array(forces)


def test_amoeba_periodic_labels_equal_openmm_directly():
    st = water_box(64, 1.0, seed=4)
    atoms = Atoms("OHH" * 64, positions=st.positions * 10, cell=st.box * 10, pbc=True)
    teacher = T.AmoebaTeacher(cutoff_nm=0.55, ewald_error_tolerance=1e-4)
    labelled = teacher.label(atoms)
    energy, forces = _direct_openmm(st.topology, atoms.positions / 10, True, 0.55, 1e-4)
    assert abs(labelled.info["REF_energy"] - energy) < 1e-7 and abs(energy) > 1.0  # mutual SCF to 1e-8
    assert np.abs(labelled.arrays["REF_forces"] - forces).max() < 1e-6
    stress = labelled.info["REF_stress"]
    assert stress.shape == (6,) and np.isfinite(stress).all() and np.abs(stress).max() > 1e-4
    assert "REF_energy" not in atoms.info  # a copy is labelled


def test_amoeba_cluster_labels_equal_openmm_directly():
    from openmm_mace_lp.systems.builders import water_topology

    st = water_box(8, 1.0, seed=2)
    xyz = st.positions[:15] * 10  # five whole molecules, no box
    atoms = Atoms("OHH" * 5, positions=xyz)
    labelled = T.AmoebaTeacher().label(atoms)
    assert "REF_stress" not in labelled.info
    energy, forces = _direct_openmm(water_topology(5), xyz / 10, False, 0.8, 1e-5, all_forces=False)
    assert abs(labelled.info["REF_energy"] - energy) < 1e-7
    assert np.abs(labelled.arrays["REF_forces"] - forces).max() < 1e-6
    assert np.abs(forces.sum(axis=0)).max() < 1e-6  # an isolated cluster feels no net force


def test_amoeba_refuses_cutoff_beyond_half_the_box():
    st = water_box(32, 1.0, seed=1)  # edge 0.985 nm
    atoms = Atoms("OHH" * 32, positions=st.positions * 10, cell=st.box * 10, pbc=True, info={"frame_id": "w32/x"})
    with pytest.raises(ValueError, match=r"cutoff 0\.55 nm.*0\.98\d* nm.*bigger box.*smaller cutoff"):
        T.AmoebaTeacher(cutoff_nm=0.55).label(atoms)


def test_amoeba_refuses_what_is_not_water():
    with pytest.raises(ValueError, match="water only"):
        T.AmoebaTeacher().label(Atoms("OHHH", positions=np.eye(4, 3)))


def test_drop_empty_forces_keeps_every_term():
    import openmm.app as app

    from openmm_mace_lp.systems.builders import water_topology

    system = app.ForceField("amoeba2018.xml").createSystem(water_topology(2), nonbondedMethod=app.NoCutoff)
    before = system.getNumForces()
    kept = [type(f).__name__ for f in T.drop_empty_forces(system).getForces()]
    assert len(kept) < before
    assert {"AmoebaMultipoleForce", "AmoebaVdwForce", "HarmonicBondForce", "CustomBondForce", "CustomAngleForce"} <= set(kept)


# ----------------------------------------------------------------------------- registry and GFN


def test_get_teacher_by_name_and_refusals():
    assert isinstance(T.get_teacher(), T.AmoebaTeacher)
    assert T.get_teacher("AMOEBA", cutoff_nm=0.7).cutoff_nm == 0.7
    assert T.get_teacher("gfn1-xtb").method == "GFN1-xTB" and T.get_teacher("gfn2-xtb").name == "gfn2-xtb"
    with pytest.raises(ValueError, match="amoeba, gfn2-xtb, gfn1-xtb"):
        T.get_teacher("tip3p")
    with pytest.raises(TypeError, match="amoeba"):
        T.get_teacher("amoeba", cutof_nm=0.7)
    rebuilt = T.get_teacher("amoeba", **T.AmoebaTeacher(cutoff_nm=0.6, platform="CPU").options())
    assert rebuilt.options() == T.AmoebaTeacher(cutoff_nm=0.6, platform="CPU").options()
    assert T.AmoebaTeacher().e0s() == {"H": 0.0, "O": 0.0}
    assert T.AmoebaTeacher().settings()["periodic"]["ewaldErrorTolerance"] == 1e-5


def test_gfn_teacher_labels_equal_tblite_directly():
    pytest.importorskip("tblite")
    from tblite.ase import TBLite

    st = water_box(8, 1.0, seed=11)
    atoms = Atoms("OHHOHH", positions=st.positions[:6] * 10)
    labelled = T.get_teacher("gfn2-xtb").label(atoms)
    ref = atoms.copy()
    ref.calc = TBLite(method="GFN2-xTB", accuracy=1.0, electronic_temperature=300.0, max_iterations=250, verbosity=0)
    assert abs(labelled.info["REF_energy"] - ref.get_potential_energy()) < 1e-9
    assert np.abs(labelled.arrays["REF_forces"] - ref.get_forces()).max() < 1e-9
    assert "REF_stress" not in labelled.info
