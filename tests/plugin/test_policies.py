"""Each precision policy changes the numbers by what its arithmetic predicts, and no more."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from openmm_mace_lp.backend import convert_to_cueq, make_scriptable, model_layout
from openmm_mace_lp.linears import (apply_policy_layers, irreps_linear_from, policy_matmul,
                                    radial_mlp_from, round_to_tf32)
from openmm_mace_lp.policy import MATMUL_BF16, MATMUL_FP16, MATMUL_NATIVE, POLICIES, get_policy

from .helpers import acetamide, evaluate, model, rel_error, water_box

LOW_POLICIES = ["tf32", "bf16", "fp16"]


def _tf32_reference(values: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to 10 explicit mantissa bits by integer arithmetic on the bits."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    lsb = (bits >> 13) & 1
    rounded = ((bits + 0xFFF + lsb) & ~np.uint64(0x1FFF)).astype(np.uint32)
    return rounded.view(np.float32)


def test_tf32_rounding_matches_bit_arithmetic():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=5000) * 10.0 ** rng.integers(-20, 20, 5000),
                             [0.0, 1.0, -1.0, 1.0 + 2**-11, 1.0 + 3 * 2**-11]]).astype(np.float32)
    ours = round_to_tf32(torch.tensor(values)).numpy()
    assert np.array_equal(ours, _tf32_reference(values))


@pytest.mark.parametrize("mode,low", [(MATMUL_BF16, torch.bfloat16), (MATMUL_FP16, torch.float16)])
def test_low_precision_matmul_is_rounded_operands_with_fp32_accumulation(mode, low):
    """Operands rounded to the low format, products summed in float32, the sum rounded once."""
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(64, 96)), dtype=torch.float32)
    w = torch.tensor(rng.normal(size=(96, 32)), dtype=torch.float32)
    w_low = w.to(low)
    result = policy_matmul(x, w_low.float(), w_low, mode)
    exact = x.to(low).double() @ w_low.double()  # products of rounded operands, summed exactly
    assert result.dtype == torch.float32
    # the float32 sum differs from the exact one by far less than a low-precision ulp, so
    # rounding it to the low format gives the correctly rounded exact result almost always
    assert torch.equal(result.to(low), result.to(low).float().to(low))
    assert (result.double() == exact.to(low).double()).float().mean() > 0.99
    assert torch.allclose(result.double(), exact, rtol=2.0 ** -7 if low == torch.bfloat16 else 2.0 ** -10, atol=0)
    assert not torch.allclose(result, x @ w, rtol=1e-4)  # and it is not plain fp32


def _linear_modules(m):
    return [mod for mod in m.modules() if type(mod).__name__ == "Linear"]


@pytest.mark.parametrize("backend", ["e3nn", "cueq"])
def test_rebuilt_linear_layers_equal_the_originals(backend):
    source = model().double()
    if backend == "cueq":
        source = convert_to_cueq(source)
    ir_mul = model_layout(source) == "ir_mul"
    linears = _linear_modules(source)
    assert linears
    rng = np.random.default_rng(2)
    for layer in linears:
        rebuilt = irreps_linear_from(layer, layer.irreps_in, layer.irreps_out,
                                     ir_mul and "cuequivariance" in type(layer).__module__, MATMUL_NATIVE, torch.float64)
        x = torch.tensor(rng.normal(size=(7, _dim(layer.irreps_in))))
        assert torch.allclose(rebuilt(x), layer(x), rtol=1e-13, atol=1e-13)


def _dim(irreps) -> int:
    return sum((item.mul * item.ir.dim) for item in irreps)


def test_rebuilt_radial_mlp_equals_e3nn():
    source = model().double()
    mlp = source.interactions[0].conv_tp_weights
    rebuilt = radial_mlp_from(mlp, MATMUL_NATIVE, torch.float64)
    x = torch.randn(50, mlp.hs[0], dtype=torch.float64)
    assert torch.allclose(rebuilt(x), mlp(x), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("backend", ["e3nn", "cueq"])
def test_policy_reaches_every_dense_layer(backend):
    prepared = copy.deepcopy(model()).float()
    if backend == "cueq":
        prepared = convert_to_cueq(prepared)
    prepared = make_scriptable(prepared)
    expected_linears = len(_linear_modules(prepared))
    counts = apply_policy_layers(prepared, MATMUL_BF16, torch.float32, model_layout(prepared))
    assert counts == {"linear": expected_linears, "radial_mlp": 2}
    assert not _linear_modules(prepared)


@pytest.mark.parametrize("backend", ["e3nn", "cueq"])
@pytest.mark.parametrize("system_name", ["water", "acetamide"])
def test_policy_errors_scale_with_their_unit_roundoff(backend, system_name):
    """fp32 stays at single-precision level; TF32/fp16/bf16 land within [0.1u, 20u] of fp64.

    A policy rounds one operand per GEMM to relative accuracy u (2^-11 for TF32 and fp16,
    2^-8 for bf16). This model chains ~16 GEMMs; first-order, independent roundings add in
    quadrature, so the relative force error is a few u; 20u leaves room for the amplification
    of a random-weight model. A policy that silently did nothing would sit at fp32's ~1e-6,
    far below 0.1u (5e-5 for TF32/fp16, 4e-4 for bf16).
    """
    system = water_box(2) if system_name == "water" else acetamide()
    _, reference = evaluate(system, "fp64", backend)
    _, fp32 = evaluate(system, "fp32", backend)
    assert 1e-12 < rel_error(fp32, reference) < 1e-5
    errors = {}
    for name in LOW_POLICIES:
        _, forces = evaluate(system, name, backend)
        u = get_policy(name).unit_roundoff
        errors[name] = rel_error(forces, reference)
        assert 0.1 * u <= errors[name] <= 20 * u, (name, errors[name], u)
        assert rel_error(forces, fp32) > 0.1 * u  # differs from plain fp32
    # bf16 has 3 fewer mantissa bits than fp16: its error is ~8x larger.
    assert 3 < errors["bf16"] / errors["fp16"] < 25


def test_unknown_policy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Valid policies: " + ", ".join(POLICIES)):
        get_policy("int8")
