"""Teachers: the level of theory whose energies, forces and stresses the water model learns.

A teacher turns an ``ase.Atoms`` frame into a labelled copy (``info["REF_energy"]`` in eV,
``arrays["REF_forces"]`` in eV/A and, for periodic frames, ``info["REF_stress"]`` in eV/A^3,
Voigt order xx yy zz yz xz xy, ASE sign: +(1/V) dE/d(strain), positive = tensile), says which
settings define its labels and gives the isolated-atom energies (E0s) that mace subtracts.

* ``amoeba`` (default): OpenMM's ``amoeba2018.xml`` water (residue ``HOH``; flexible,
  polarizable), PME and vdW cutoff 0.8 nm for every periodic frame, no cutoff for clusters,
  mutual polarization converged to 1e-8.  OpenMM gives no virial, so the stress is a central
  finite difference of the energy under homogeneous strain (:func:`finite_difference_stress`).
  AMOEBA's zero of energy is the set of separated monomers at their minimum geometry (no
  intramolecular electrostatics; bond and angle terms vanish), so its E0s are 0 eV.
* ``gfn2-xtb`` / ``gfn1-xtb``: tblite single points (``tblite.ase.TBLite``, a new calculator
  per frame); E0s from the isolated atoms (H doublet, O triplet).

``get_teacher(name, **options)`` builds one by name.  A teacher is rebuilt in a worker process
from ``get_teacher(teacher.name, **teacher.options())``.
"""
from __future__ import annotations

import functools
from typing import Protocol

import numpy as np

from openmm_mace_lp.neighbors import face_distances

KJ_PER_MOL_PER_EV = 96.48533212331002  # CODATA 2018: e * N_A / 1000
VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))  # xx yy zz yz xz xy
DEFAULT_TEACHER = "amoeba"


class Teacher(Protocol):
    name: str

    def label(self, atoms):  # -> ase.Atoms
        """Copy of ``atoms`` with REF_energy, REF_forces and (periodic only) REF_stress."""

    def settings(self) -> dict:
        """Everything that defines the labels (for the manifest and the model card)."""

    def e0s(self) -> dict[str, float]:
        """Isolated-atom energies (eV) by element symbol."""

    def options(self) -> dict:
        """Keyword arguments that rebuild this teacher with :func:`get_teacher`."""


# ----------------------------------------------------------------------------- strain and stress


def _energy_ev(context) -> float:
    import openmm.unit as u

    energy = context.getState(getEnergy=True).getPotentialEnergy()
    return energy.value_in_unit(u.kilojoule_per_mole) / KJ_PER_MOL_PER_EV


def finite_difference_stress(context, positions: np.ndarray, box: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """Stress (eV/A^3, Voigt xx yy zz yz xz xy, ASE sign) of any periodic OpenMM Context.

    ``positions`` (n, 3) and ``box`` (rows a, b, c) are in nm.  Each of the six components is
    (E(+h) - E(-h)) / (2 h V) under r' = (I + D) r with the box scaled the same way, D holding
    +-h in one upper-triangular entry: that keeps OpenMM's reduced box form (a along x, b in
    the xy plane), and for an energy invariant under rotation dE/dD_ij = V sigma_ij also off the
    diagonal.  Twelve energies on the same Context, so its PME grid and Ewald parameter stay
    fixed across them; the Context's box and positions are restored at the end."""
    import openmm as mm

    positions = np.asarray(positions, float)
    box = np.asarray(box, float)
    volume_a3 = abs(np.linalg.det(box)) * 1e3
    stress = np.zeros(6)
    try:
        for k, (i, j) in enumerate(VOIGT_PAIRS):
            energies = []
            for sign in (1.0, -1.0):
                deform = np.eye(3)
                deform[i, j] += sign * h
                strained_box = box @ deform.T
                context.setPeriodicBoxVectors(*(mm.Vec3(*row) for row in strained_box))
                context.setPositions(positions @ deform.T)
                energies.append(_energy_ev(context))
            stress[k] = (energies[0] - energies[1]) / (2.0 * h) / volume_a3
    finally:
        context.setPeriodicBoxVectors(*(mm.Vec3(*row) for row in box))
        context.setPositions(positions)
    return stress


def lennard_jones_stress_check(seed: int = 20261201, h: float = 1e-4) -> dict:
    """:func:`finite_difference_stress` against the analytic pair virial of a Lennard-Jones
    liquid (OpenMM CustomNonbondedForce, switched to zero at the cutoff, triclinic box).

    sigma_ab = (1/V) sum_pairs (dE/dr) r_a r_b / r, with E = U_LJ(r) S(r) and OpenMM's switch
    S(x) = 1 - 10 x^3 + 15 x^4 - 6 x^5, x = (r - r_switch) / (r_cut - r_switch)."""
    import openmm as mm

    sigma, epsilon, r_cut, r_switch = 0.30, 0.6, 0.65, 0.55  # nm, kJ/mol
    box = np.array([[1.60, 0.0, 0.0], [0.35, 1.55, 0.0], [-0.30, 0.40, 1.50]])  # OpenMM's reduced form
    rng = np.random.default_rng(seed)
    fractional = (np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) / 4
    positions = fractional @ box + rng.normal(scale=0.02, size=fractional.shape)
    if r_cut >= 0.5 * face_distances(box).min():
        raise AssertionError("the check's own box is too small for its cutoff")
    system = mm.System()
    system.setDefaultPeriodicBoxVectors(*(mm.Vec3(*row) for row in box))
    force = mm.CustomNonbondedForce(f"4*{epsilon}*(({sigma}/r)^12-({sigma}/r)^6)")
    force.setNonbondedMethod(mm.CustomNonbondedForce.CutoffPeriodic)
    force.setCutoffDistance(r_cut)
    force.setUseSwitchingFunction(True)
    force.setSwitchingDistance(r_switch)
    force.setUseLongRangeCorrection(False)
    for _ in positions:
        system.addParticle(39.948)
        force.addParticle([])
    system.addForce(force)
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    fd = finite_difference_stress(context, positions, box, h)
    virial = np.zeros((3, 3))
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)]) @ box
    for i in range(len(positions) - 1):
        d = (positions[i + 1:, None, :] - positions[i] + shifts[None]).reshape(-1, 3)
        r = np.linalg.norm(d, axis=1)
        d, r = d[r < r_cut], r[r < r_cut]
        u6 = (sigma / r) ** 6
        energy = 4 * epsilon * (u6 * u6 - u6)
        d_energy = 4 * epsilon * (-12 * u6 * u6 + 6 * u6) / r
        x = np.clip((r - r_switch) / (r_cut - r_switch), 0.0, None)
        switch = 1 - 10 * x**3 + 15 * x**4 - 6 * x**5
        d_switch = (-30 * x**2 + 60 * x**3 - 30 * x**4) / (r_cut - r_switch)
        d_total = d_energy * switch + energy * d_switch
        virial += np.einsum("p,pa,pb->ab", d_total / r, d, d)
    analytic = virial / (abs(np.linalg.det(box)) * 1e3) / KJ_PER_MOL_PER_EV  # kJ/mol/nm^3 -> eV/A^3 (1 nm^3 = 1e3 A^3)
    analytic_voigt = np.array([analytic[i, j] for i, j in VOIGT_PAIRS])
    return dict(system=f"{len(positions)} Lennard-Jones particles, triclinic box, switched cutoff {r_cut} nm",
                strain_step=h, finite_difference_eV_A3=fd.tolist(), analytic_eV_A3=analytic_voigt.tolist(),
                max_abs_difference_eV_A3=float(np.abs(fd - analytic_voigt).max()),
                max_abs_stress_eV_A3=float(np.abs(analytic_voigt).max()))


# ----------------------------------------------------------------------------- AMOEBA


def _water_molecules(atoms) -> int:
    """Number of waters; refuses anything that is not O H H, O H H, ..."""
    symbols = atoms.get_chemical_symbols()
    if len(symbols) == 0 or len(symbols) % 3 or symbols != ["O", "H", "H"] * (len(symbols) // 3):
        raise ValueError(f"the AMOEBA teacher labels water only, atoms in O H H order per molecule; "
                         f"got {len(symbols)} atoms starting {' '.join(symbols[:6])}")
    return len(symbols) // 3


class AmoebaTeacher:
    """AMOEBA water in OpenMM (``amoeba2018.xml``), labels in eV, eV/A, eV/A^3.

    ``cutoff_nm`` is the PME real-space and vdW cutoff of every periodic frame (one
    electrostatics setting for the whole set); clusters use NoCutoff.  ``platform`` is
    ``Reference`` or ``CUDA``/``OpenCL`` (run in double precision); ``CPU`` runs AMOEBA's
    reference kernels too."""

    name = "amoeba"

    def __init__(self, cutoff_nm: float = 0.8, polarization: str = "mutual", mutual_epsilon: float = 1e-8,
                 mutual_max_iterations: int = 500, ewald_error_tolerance: float = 1e-5, stress_step: float = 1e-4,
                 platform: str = "Reference", forcefield: str = "amoeba2018.xml",
                 use_dispersion_correction: bool = True):
        if polarization not in ("mutual", "extrapolated", "direct"):
            raise ValueError(f"polarization must be mutual, extrapolated or direct, not {polarization!r}")
        self.cutoff_nm = float(cutoff_nm)
        self.polarization = polarization
        self.mutual_epsilon = float(mutual_epsilon)
        self.mutual_max_iterations = int(mutual_max_iterations)
        self.ewald_error_tolerance = float(ewald_error_tolerance)
        self.stress_step = float(stress_step)
        self.platform = platform
        self.forcefield = forcefield
        self.use_dispersion_correction = bool(use_dispersion_correction)
        self._systems: dict[tuple[int, bool], object] = {}

    def options(self) -> dict:
        return dict(cutoff_nm=self.cutoff_nm, polarization=self.polarization, mutual_epsilon=self.mutual_epsilon,
                    mutual_max_iterations=self.mutual_max_iterations,
                    ewald_error_tolerance=self.ewald_error_tolerance, stress_step=self.stress_step,
                    platform=self.platform, forcefield=self.forcefield,
                    use_dispersion_correction=self.use_dispersion_correction)

    def settings(self) -> dict:
        import openmm

        return dict(
            teacher=self.name, **self.options(), openmm=openmm.__version__,
            periodic=dict(nonbondedMethod="PME", nonbondedCutoff_nm=self.cutoff_nm, vdwCutoff_nm=self.cutoff_nm,
                          ewaldErrorTolerance=self.ewald_error_tolerance,
                          useDispersionCorrection=self.use_dispersion_correction),
            clusters=dict(nonbondedMethod="NoCutoff"),
            createSystem_arguments="nonbondedMethod, nonbondedCutoff, vdwCutoff, ewaldErrorTolerance, polarization, "
                                   "mutualInducedTargetEpsilon, mutualInducedMaxIterations, useDispersionCorrection, "
                                   "rigidWater=False, constraints=None (OpenMM's ArgTracker refuses any other)",
            stress="central finite differences of the energy under homogeneous strain r' = (I + D) r, box scaled "
                   "with it, D one upper-triangular entry +-stress_step (12 energies on one Context per frame)",
            e0s="0 eV for H and O: AMOEBA's zero is separated monomers at their minimum geometry",
            precision="double" if self.platform in ("CUDA", "OpenCL") else "double (Reference kernels)",
        )

    def e0s(self) -> dict[str, float]:
        return {"H": 0.0, "O": 0.0}

    def create_system(self, topology, periodic: bool, polarization: str | None = None,
                      ewald_error_tolerance: float | None = None):
        """OpenMM System of the teacher for ``topology`` (also used for the teacher's own MD,
        with ``polarization="extrapolated"`` for speed)."""
        import openmm.app as app
        import openmm.unit as u

        forcefield = _forcefield(self.forcefield)
        cutoff = self.cutoff_nm * u.nanometer
        if periodic and topology.getPeriodicBoxVectors() is None:
            raise ValueError("a periodic AMOEBA system needs a topology with box vectors")
        system = forcefield.createSystem(
            topology, nonbondedMethod=app.PME if periodic else app.NoCutoff, nonbondedCutoff=cutoff,
            vdwCutoff=cutoff, ewaldErrorTolerance=ewald_error_tolerance or self.ewald_error_tolerance,
            polarization=polarization or self.polarization, mutualInducedTargetEpsilon=self.mutual_epsilon,
            mutualInducedMaxIterations=self.mutual_max_iterations,
            useDispersionCorrection=self.use_dispersion_correction, rigidWater=False, constraints=None)
        return drop_empty_forces(system)

    def check_cutoff(self, box_nm: np.ndarray, what: str = "frame") -> None:
        """Refuses a box in which the cutoff would see two images of one atom."""
        widths = face_distances(box_nm)
        if self.cutoff_nm >= 0.5 * widths.min():
            raise ValueError(
                f"{what}: the PME/vdW cutoff {self.cutoff_nm:.4g} nm is not below half the smallest perpendicular "
                f"box width ({widths.min():.4g} nm, half {0.5 * widths.min():.4g} nm); use a bigger box (more "
                f"molecules) or a smaller cutoff (cutoff_nm < {0.5 * widths.min():.4g})")

    def _system(self, n_molecules: int, box_nm: np.ndarray | None):
        """The System for n waters (cached; a periodic one gets each frame's box later)."""
        key = (n_molecules, box_nm is not None)
        if key not in self._systems:
            from openmm_mace_lp.systems.builders import water_topology

            self._systems[key] = self.create_system(water_topology(n_molecules, box_nm), box_nm is not None)
        return self._systems[key]

    def context(self, system, box_nm: np.ndarray | None = None):
        """A fresh Context; for periodic systems the default box is set first, because OpenMM
        picks the PME grid from it when the Context is created."""
        import openmm as mm

        if box_nm is not None:
            system.setDefaultPeriodicBoxVectors(*(mm.Vec3(*row) for row in box_nm))
        properties = {"Precision": "double"} if self.platform in ("CUDA", "OpenCL") else {}
        return mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName(self.platform),
                          properties)

    def label(self, atoms):
        import openmm.unit as u

        n_molecules = _water_molecules(atoms)
        periodic = bool(np.any(atoms.pbc))
        if periodic and not np.all(atoms.pbc):
            raise ValueError(f"periodic in all three directions or none, not pbc={atoms.pbc.tolist()}")
        positions = atoms.positions / 10.0
        box = None
        if periodic:
            box = np.array(atoms.cell.array) / 10.0
            if abs(box[0, 1]) > 0 or abs(box[0, 2]) > 0 or abs(box[1, 2]) > 0:
                raise ValueError("cell rows must be in OpenMM's reduced form (a along x, b in the xy plane): "
                                 f"got {atoms.cell.array.tolist()}")
            self.check_cutoff(box, f"frame {atoms.info.get('frame_id', '(no frame_id)')}")
        context = self.context(self._system(n_molecules, box), box)
        if periodic:
            import openmm as mm

            context.setPeriodicBoxVectors(*(mm.Vec3(*row) for row in box))
        context.setPositions(positions)
        state = context.getState(getEnergy=True, getForces=True)
        out = atoms.copy()
        out.calc = None
        out.info["REF_energy"] = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) / KJ_PER_MOL_PER_EV
        forces = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
        out.arrays["REF_forces"] = np.array(forces) / KJ_PER_MOL_PER_EV / 10.0
        if periodic:
            out.info["REF_stress"] = finite_difference_stress(context, positions, box, self.stress_step)
        return out


def drop_empty_forces(system):
    """Removes forces with no terms (water has no torsions, in-plane angles, ...).

    The energy is unchanged, and a Context is created in milliseconds instead of seconds: on
    the Reference platform each empty in-plane-angle CustomCompoundBondForce of amoeba2018.xml
    still compiles its expression (~2 s each, measured with openmm 8.6.1)."""
    counters = ("getNumBonds", "getNumAngles", "getNumTorsions", "getNumTorsionTorsions")
    for index in reversed(range(system.getNumForces())):
        force = system.getForce(index)
        counter = next((getattr(force, name) for name in counters if hasattr(force, name)), None)
        if counter is not None and counter() == 0:
            system.removeForce(index)
    return system


@functools.lru_cache(maxsize=4)
def _forcefield(name: str):
    import openmm.app as app

    return app.ForceField(name)


# ----------------------------------------------------------------------------- GFN-xTB (tblite)


class GfnTeacher:
    """GFN1-/GFN2-xTB through ``tblite.ase.TBLite`` (a new calculator per frame, neutral
    singlet); stress is tblite's analytic one (ASE convention, checked by water_data's
    stress-check)."""

    def __init__(self, method: str = "GFN2-xTB", accuracy: float = 1.0, electronic_temperature_K: float = 300.0,
                 max_iterations: int = 250, e0_multiplicity: dict | None = None):
        if method not in ("GFN1-xTB", "GFN2-xTB"):
            raise ValueError(f"method must be GFN1-xTB or GFN2-xTB, not {method!r}")
        self.method = method
        self.name = method.lower()
        self.accuracy = float(accuracy)
        self.electronic_temperature_K = float(electronic_temperature_K)
        self.max_iterations = int(max_iterations)
        self.e0_multiplicity = dict(e0_multiplicity or {"H": 2, "O": 3})

    def options(self) -> dict:
        return dict(accuracy=self.accuracy, electronic_temperature_K=self.electronic_temperature_K,
                    max_iterations=self.max_iterations, e0_multiplicity=self.e0_multiplicity)

    def settings(self) -> dict:
        import importlib.metadata as md

        try:
            version = md.version("tblite")
        except md.PackageNotFoundError:
            version = None
        return dict(teacher=self.name, method=self.method, **self.options(), charge=0, tblite=version,
                    e0s="isolated atoms, multiplicity e0_multiplicity (tblite uhf = multiplicity - 1)")

    def calculator(self, multiplicity: int = 1):
        from tblite.ase import TBLite

        return TBLite(method=self.method, accuracy=self.accuracy, electronic_temperature=self.electronic_temperature_K,
                      max_iterations=self.max_iterations, charge=0, multiplicity=multiplicity, verbosity=0)

    def label(self, atoms):
        work = atoms.copy()
        work.calc = self.calculator()
        energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces())
        stress = np.array(work.get_stress(voigt=True)) if atoms.pbc.any() else None
        out = atoms.copy()
        out.calc = None
        out.info["REF_energy"] = energy
        out.arrays["REF_forces"] = forces
        if stress is not None:
            out.info["REF_stress"] = stress
        return out

    def isolated_atoms(self) -> dict:
        """{symbol: {energy_eV, multiplicity, uhf}} of the single atoms."""
        from ase import Atoms

        out = {}
        for symbol, multiplicity in self.e0_multiplicity.items():
            atom = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
            atom.calc = self.calculator(multiplicity=multiplicity)
            out[symbol] = dict(energy_eV=float(atom.get_potential_energy()), multiplicity=multiplicity,
                               uhf=multiplicity - 1)
        return out

    def e0s(self) -> dict[str, float]:
        return {symbol: d["energy_eV"] for symbol, d in self.isolated_atoms().items()}


# ----------------------------------------------------------------------------- registry

TEACHERS = {
    "amoeba": AmoebaTeacher,
    "gfn2-xtb": functools.partial(GfnTeacher, "GFN2-xTB"),
    "gfn1-xtb": functools.partial(GfnTeacher, "GFN1-xTB"),
}


def get_teacher(name: str = DEFAULT_TEACHER, **options) -> Teacher:
    """The teacher called ``name`` (case-insensitive), built with ``options``."""
    key = name.lower()
    if key not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}: choose one of {', '.join(TEACHERS)}")
    try:
        return TEACHERS[key](**options)
    except TypeError as exc:
        raise TypeError(f"teacher {key!r} does not take these options ({exc}); see "
                        f"openmm_mace_lp.systems.recipes.teachers for its arguments") from exc
