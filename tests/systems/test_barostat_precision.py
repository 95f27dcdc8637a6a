"""benchmarks/barostat_precision.py: the barostat's volume move and the pressure from energy
differences, against geometry worked out by hand and an energy error linear in the volume
(whose pressure error is known exactly)."""
import numpy as np
import pytest
from ase import Atoms

from tests.benchmark_scripts import load_benchmark

CELL = np.diag([7.0, 7.5, 8.0])
MASSES = np.array([15.999, 1.008, 1.008])


@pytest.fixture(scope="module")
def bp():
    return load_benchmark("barostat_precision")


def two_waters() -> Atoms:
    """Two waters, the second across the x face of the box (its H atoms wrapped to the far side)."""
    whole = np.array([[1.0, 1.0, 1.0], [1.9, 1.2, 1.1], [0.8, 1.9, 0.7],
                      [0.2, 4.0, 5.0], [-0.6, 4.4, 5.2], [0.5, 4.6, 4.4]])
    fractional = whole @ np.linalg.inv(CELL)
    return Atoms("OH2OH2", positions=(fractional - np.floor(fractional)) @ CELL, cell=CELL, pbc=True)


def whole_waters(positions, cell) -> np.ndarray:
    water = positions.reshape(-1, 3, 3)
    bonds = water[:, 1:] - water[:, :1]
    fractional = bonds @ np.linalg.inv(cell)
    return np.concatenate([water[:, :1], water[:, :1] + (fractional - np.round(fractional)) @ cell], axis=1)


def test_the_volume_move_scales_box_and_centres_and_keeps_each_water_rigid(bp):
    atoms = two_waters()
    positions, cell = bp.molecular_scaling(atoms, 0.01)
    assert abs(np.linalg.det(cell)) / atoms.get_volume() == pytest.approx(1.01, rel=1e-12)
    before, after = whole_waters(atoms.positions, atoms.cell.array), whole_waters(positions, cell)
    # internal geometry: every intramolecular vector unchanged
    np.testing.assert_allclose(after - after[:, :1], before - before[:, :1], atol=1e-12)
    centre = lambda w: (MASSES[None, :, None] * w).sum(axis=1) / MASSES.sum()  # noqa: E731
    np.testing.assert_allclose(centre(after), 1.01 ** (1 / 3) * centre(before), atol=1e-12)


def test_configurations_hold_the_frame_first_in_nm(bp):
    atoms = two_waters()
    positions, boxes = bp.configurations(atoms, [0.003, -0.003])
    assert positions.shape == (3, 6, 3) and boxes.shape == (3, 3, 3)
    np.testing.assert_allclose(positions[0], atoms.positions / 10.0)
    np.testing.assert_allclose([abs(np.linalg.det(b)) for b in boxes] / np.linalg.det(CELL / 10.0),
                               [1.0, 1.003, 0.997], rtol=1e-12)


def test_an_energy_error_linear_in_the_volume_is_a_known_pressure_error(bp):
    # policy = fp64 + a * V: its barostat pressure is off by -a (P = -dE/dV), the same on every
    # frame; each move's energy change is off by a * V * dV/V
    frames = [Atoms("OH2", positions=np.zeros((3, 3)), cell=np.diag([s, s, s]), pbc=True) for s in (9.0, 10.0, 11.0)]
    step, a = 0.003, 0.02  # kJ/mol per A^3
    volumes = np.array([f.get_volume() for f in frames])
    configuration_volumes = volumes[:, None] * np.array([1.0, 1 + step, 1 - step])[None, :]
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(3, 3)) * 50.0
    energies = {"fp64": reference, "bf16": reference + a * configuration_volumes}
    (row,) = bp.summarise(energies, frames, step, 300.0)
    expected_bar = -a / bp.KJ_PER_MOL_PER_EV * bp.BAR_PER_EV_A3
    assert row["policy"] == "bf16" and row["frames"] == 3
    assert row["pressure_error_bar"] == pytest.approx(expected_bar, rel=1e-9)
    assert row["pressure_error_sem_bar"] == pytest.approx(0.0, abs=1e-6)
    kT = bp.BOLTZMANN_KJ_PER_MOL_K * 300.0
    moves = a * volumes[:, None] * np.array([step, -step])[None, :] / kT
    assert row["dE_error_mean_kT"] == pytest.approx(moves.mean(), abs=1e-9)
    assert row["dE_error_sd_kT"] == pytest.approx(moves.std(ddof=1), rel=1e-9)
    assert row["implied_density_change_percent"] == pytest.approx(-100 * 4.5e-5 * expected_bar, rel=1e-9)


# --bf16-layers: bf16 in one kind of layer only, on a tiny model (e3nn backend)

@pytest.fixture(scope="module")
def tiny():
    from tests.plugin.helpers import model, water_box

    return model("both"), water_box()


def policy_modes(prepared) -> dict:
    """{PolicyDense module name: its matmul mode}."""
    from openmm_mace_lp.linears import PolicyDense

    return {name: m.mode for name, m in prepared.named_modules() if isinstance(m, PolicyDense)}


def test_every_kind_in_bf16_is_the_bf16_policy_to_the_bit(bp, tiny):
    import torch

    from openmm_mace_lp.export import build_force_module

    model, system = tiny
    numbers = system.atomic_numbers
    positions, boxes = bp.configurations(
        Atoms(numbers=numbers, positions=system.positions * 10, cell=system.box * 10, pbc=True), [0.003])
    variant, _ = bp.bf16_layers_module(model, ("radial_mlp", "linear"), "e3nn", numbers)
    energies = {name: [float(module(torch.from_numpy(p), torch.from_numpy(b))[0]) for p, b in zip(positions, boxes)]
                for name, module in [("variant", variant)] + [
                    (policy, build_force_module(model, policy, "e3nn", numbers, periodic=True))
                    for policy in ("bf16", "fp32")]}
    assert energies["variant"] == energies["bf16"]
    assert all(abs(v - f) > 1e-5 * abs(f) for v, f in zip(energies["variant"], energies["fp32"]))


def test_a_kind_in_bf16_changes_only_its_own_layers(bp, tiny):
    from openmm_mace_lp.policy import MATMUL_BF16, MATMUL_NATIVE

    model, _ = tiny
    seen = {}
    for kind in bp.LAYER_KINDS:
        prepared, gemms = bp.bf16_layers_model(model, (kind,))
        modes = policy_modes(prepared)
        bf16 = {name for name, mode in modes.items() if mode == MATMUL_BF16}
        assert set(modes.values()) == {MATMUL_NATIVE, MATMUL_BF16}
        assert bf16 == {name for name in modes if any(name.startswith(layer + ".") for layer in gemms)}
        assert len(bf16) == sum(gemms.values()) and all(gemms.values())
        seen[kind] = bf16
    assert seen["radial_mlp"] == {name for name in modes if ".conv_tp_weights.layers." in name}
    assert seen["linear"] == set(modes) - seen["radial_mlp"]
    split = [seen[kind] for kind in bp.SPLIT_LINEAR_KINDS]
    assert set().union(*split) == seen["linear"] and sum(map(len, split)) == len(seen["linear"])
    assert seen["interaction_linear"] and not any("linear_up" in name for name in seen["interaction_linear"])


def test_an_unknown_kind_is_refused_naming_the_valid_ones(bp, capsys):
    assert bp.parse_bf16_layers(" radial_mlp, linear_up+readout ,") == [("radial_mlp",), ("linear_up", "readout")]
    with pytest.raises(ValueError, match="'skip_tp'") as refused:
        bp.parse_bf16_layers("radial_mlp,skip_tp")
    assert all(kind in str(refused.value) for kind in bp.LAYER_KINDS)
    with pytest.raises(SystemExit):
        bp.main(["--policies", "fp64,bf16", "--bf16-layers", "readouts", "-o", "unused.json"])
    assert "valid kinds: radial_mlp, linear," in capsys.readouterr().err
