"""benchmarks/energy_bias.py's molecular-virial pressure against a toy water box worked out
independently: three flexible waters in a small periodic box under a pair potential (O-H and
H-H springs inside each water, Lennard-Jones O-O and a Gaussian O-H repulsion between waters),
with analytic forces and the atomic virial sum over pairs r_ij (x) f_ij at the minimum image.

The pressures are checked against finite differences of the energy itself: the atomic one
against -dE/dV under homogeneous strain of every atom, the molecular one against -dE/dV when
the box and the molecules' centres of mass are scaled and each water is moved rigidly (what
OpenMM's MonteCarloBarostat does). Two special cases are exact by construction: with springs
only the molecular pressure is zero (the atomic one is not), and with an O-O term only it is
sum over molecule pairs of R_IJ . F_IJ / (3V), R_IJ the centre-of-mass separation."""

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

MASS = {"O": 15.999, "H": 1.008}
CELL = np.diag([8.0, 8.5, 9.0])
SYMBOLS = ["O", "H", "H"] * 3
# (O position, two O->H vectors): bonds and angles off the springs' rest values, O-O about 3 A
# apart, and each water across a face of the box so that wrapping splits it
WATERS = [(np.array([0.15, 0.3, 0.6]), np.array([-0.98, 0.12, 0.05]), np.array([0.30, 0.93, -0.20])),
          (np.array([2.95, 0.4, 1.1]), np.array([0.20, -0.99, 0.10]), np.array([0.85, 0.10, 0.55])),
          (np.array([1.4, 2.6, 8.6]), np.array([0.10, -0.30, 0.92]), np.array([0.91, 0.25, 0.05]))]


@pytest.fixture(scope="module")
def energy_bias():
    return load_benchmark("energy_bias")


def whole_positions() -> np.ndarray:
    return np.concatenate([[o, o + h1, o + h2] for o, h1, h2 in WATERS])


def wrapped(positions, cell=CELL) -> np.ndarray:
    fractional = positions @ np.linalg.inv(cell)
    return (fractional - np.floor(fractional)) @ cell


def centres_of_mass(positions) -> np.ndarray:
    """Centres of whole waters (positions as built, not wrapped), molecule by molecule."""
    masses = np.array([MASS[s] for s in SYMBOLS]).reshape(-1, 3, 1)
    return (masses * positions.reshape(-1, 3, 3)).sum(axis=1) / masses.sum(axis=1)


def pair_terms(intra=True, oo=True, oh=True):
    """(i, j, u, du/dr) for every pair the toy potential couples."""
    terms = []
    spring = lambda k, r0: (lambda r: 0.5 * k * (r - r0) ** 2, lambda r: k * (r - r0))  # noqa: E731
    lj = (lambda r: 4 * 0.0067 * ((3.15 / r) ** 12 - (3.15 / r) ** 6),
          lambda r: 4 * 0.0067 * (-12 * 3.15 ** 12 / r ** 13 + 6 * 3.15 ** 6 / r ** 7))
    gauss = (lambda r: 0.3 * np.exp(-(r / 1.8) ** 2), lambda r: -0.3 * 2 * r / 1.8 ** 2 * np.exp(-(r / 1.8) ** 2))
    for m in range(3):
        o, h1, h2 = 3 * m, 3 * m + 1, 3 * m + 2
        if intra:
            terms += [(o, h1, *spring(40.0, 0.9572)), (o, h2, *spring(40.0, 0.9572)), (h1, h2, *spring(8.0, 1.5139))]
        for n in range(m + 1, 3):
            if oo:
                terms.append((o, 3 * n, *lj))
            if oh:
                terms += [(o, 3 * n + 1, *gauss), (o, 3 * n + 2, *gauss), (3 * n, h1, *gauss), (3 * n, h2, *gauss)]
    return terms


def toy(positions, cell=CELL, **which):
    """Energy (eV), forces (eV/A) and atomic virial tensor sum_pairs r_ij (x) f_i (eV), every pair
    at the minimum image (the box is large enough for it to be unique)."""
    energy, forces, virial = 0.0, np.zeros_like(positions), np.zeros((3, 3))
    inverse = np.linalg.inv(cell)
    for i, j, u, du in pair_terms(**which):
        fractional = (positions[i] - positions[j]) @ inverse
        rij = (fractional - np.round(fractional)) @ cell
        r = np.linalg.norm(rij)
        fi = -du(r) * rij / r
        energy += u(r)
        forces[i] += fi
        forces[j] -= fi
        virial += np.outer(rij, fi)
    return energy, forces, virial


def ase_stress(virial, cell=CELL) -> np.ndarray:
    """ASE's Voigt stress (xx, yy, zz, yz, xz, xy) of a potential with this virial: -W / V."""
    s = -virial / abs(np.linalg.det(cell))
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def minus_dE_dV_bar(energy_at_scale, h=1e-5) -> float:
    """-dE/dV (bar) by central differences over an isotropic scale factor s of the box."""
    volume = abs(np.linalg.det(CELL))
    d_energy = energy_at_scale(1 + h) - energy_at_scale(1 - h)
    d_volume = volume * ((1 + h) ** 3 - (1 - h) ** 3)
    return -d_energy / d_volume * 1.602176634e6


def test_toy_forces_are_minus_the_energy_gradient():
    x = whole_positions()
    forces = toy(x)[1]
    for atom, axis in ((0, 0), (4, 1), (8, 2)):
        step = np.zeros_like(x)
        step[atom, axis] = 1e-6
        assert -(toy(x + step)[0] - toy(x - step)[0]) / 2e-6 == pytest.approx(forces[atom, axis], rel=1e-6, abs=1e-8)


def test_atomic_pressure_is_minus_dE_dV_under_homogeneous_strain(energy_bias):
    x = whole_positions()
    _, forces, virial = toy(x)
    atomic, _ = energy_bias.pressures_bar(ase_stress(virial), forces, wrapped(x), CELL, SYMBOLS)
    expected = minus_dE_dV_bar(lambda s: toy(s * x, s * CELL)[0])
    assert abs(expected) > 100
    assert atomic == pytest.approx(expected, rel=1e-6)


def test_molecular_pressure_is_minus_dE_dV_scaling_rigid_molecules_centres(energy_bias):
    x = whole_positions()
    _, forces, virial = toy(x)
    atomic, molecular = energy_bias.pressures_bar(ase_stress(virial), forces, wrapped(x), CELL, SYMBOLS)
    centres = np.repeat(centres_of_mass(x), 3, axis=0)
    expected = minus_dE_dV_bar(lambda s: toy(s * centres + (x - centres), s * CELL)[0])
    assert molecular == pytest.approx(expected, rel=1e-6)
    assert abs(molecular - atomic) > 1e3  # the intramolecular term is not small here


def test_springs_alone_give_no_molecular_pressure(energy_bias):
    x = whole_positions()
    _, forces, virial = toy(x, oo=False, oh=False)
    atomic, molecular = energy_bias.pressures_bar(ase_stress(virial), forces, wrapped(x), CELL, SYMBOLS)
    assert abs(atomic) > 1e3
    assert abs(molecular) < 1e-9 * abs(atomic)


def test_oo_term_alone_gives_the_centre_to_centre_virial(energy_bias):
    x = whole_positions()
    _, forces, virial = toy(x, intra=False, oh=False)
    atomic, molecular = energy_bias.pressures_bar(ase_stress(virial), forces, wrapped(x), CELL, SYMBOLS)
    centres = centres_of_mass(x)
    w_mol = 0.0
    for i in range(3):
        for j in range(i + 1, 3):
            fractional = (centres[i] - centres[j]) @ np.linalg.inv(CELL)
            r_ij = (fractional - np.round(fractional)) @ CELL
            w_mol += r_ij @ pair_force(x, i, j)
    assert molecular == pytest.approx(w_mol / (3 * np.linalg.det(CELL)) * 1.602176634e6, rel=1e-10)
    assert abs(molecular - atomic) > 1.0


def pair_force(x, i, j) -> np.ndarray:
    """The LJ force on water i's O from water j's O (minimum image)."""
    fractional = (x[3 * i] - x[3 * j]) @ np.linalg.inv(CELL)
    rij = (fractional - np.round(fractional)) @ CELL
    r = np.linalg.norm(rij)
    du = 4 * 0.0067 * (-12 * 3.15 ** 12 / r ** 13 + 6 * 3.15 ** 6 / r ** 7)
    return -du * rij / r


def test_offsets_do_not_depend_on_wrapping_or_images(energy_bias):
    x = whole_positions()
    centres = np.repeat(centres_of_mass(x), 3, axis=0)
    shifted = x.copy()
    shifted[3:6] += CELL[0] - 2 * CELL[2]  # a whole water to another image
    shifted[7] += CELL[1]  # one H alone to another image
    for positions in (x, wrapped(x), shifted):
        offsets = energy_bias.offsets_from_molecule_centres(positions, CELL, SYMBOLS)
        np.testing.assert_allclose(offsets, x - centres, atol=1e-12)


def test_anything_but_whole_ohh_waters_is_refused(energy_bias):
    x = whole_positions()
    with pytest.raises(ValueError, match="not consecutive O, H, H"):
        energy_bias.offsets_from_molecule_centres(x, CELL, ["H", "O", "H"] * 3)
    with pytest.raises(ValueError, match="not consecutive O, H, H"):
        energy_bias.offsets_from_molecule_centres(x[:8], CELL, SYMBOLS[:8])
    far = x.copy()
    far[4] += np.array([2.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="water 1 has an O-H"):
        energy_bias.offsets_from_molecule_centres(far, CELL, SYMBOLS)


def test_summary_and_table_carry_the_molecular_error(energy_bias):
    rows = [dict(config_type="a", density_g_cm3=1.10, energy_error_meV_per_atom=-3.0, pressure_error_bar=100.0,
                 molecular_pressure_error_bar=m) for m in (-900.0, -1100.0)]
    (group,) = energy_bias.summarise(rows)
    assert group["molecular_pressure_error_bar"]["mean"] == pytest.approx(-1000.0)
    # SD of (-900, -1100) is 100 sqrt(2); SEM 100
    assert group["molecular_pressure_error_bar"]["sem"] == pytest.approx(100.0)
    record = dict(card="cpu", date="2026-12-01", splits=["valid"], models=[dict(sha256="ab" * 32, groups=[group])])
    assert "| +100 +- 0 | -1000 +- 100 |" in energy_bias.markdown(record)
