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


# --- Every rebuilt layer runs its policy's arithmetic, checked against an independent emulation.
#
# The emulation uses only NumPy and the original (e3nn or cuEquivariance) layer: the layer's
# matrix is read off the original in float64, operands and results are rounded with NumPy
# (significand rounding by frexp/ldexp, numpy's float16 for fp16) and summed exactly in float64.
# A rebuilt layer that ran plain float32 would differ from it by about the unit roundoff on most
# entries; one that runs the policy agrees on most entries exactly (or to float32 summation).

def _round_significand(values: np.ndarray, bits: int) -> np.ndarray:
    mantissa, exponent = np.frexp(values)
    return np.ldexp(np.round(mantissa * 2.0 ** bits) / 2.0 ** bits, exponent)


def _operand(values: np.ndarray, policy: str) -> np.ndarray:
    if policy == "tf32":
        return _round_significand(values, 11)
    if policy == "bf16":
        return _round_significand(values, 8)
    if policy == "fp16":
        return values.astype(np.float16).astype(np.float64)
    return values


def _result(values: np.ndarray, policy: str) -> np.ndarray:
    return _operand(values, policy) if policy in ("bf16", "fp16") else values


def _relative_differences(value: np.ndarray, reference: np.ndarray) -> np.ndarray:
    scale = np.abs(reference) + 1e-3 * np.sqrt(np.mean(reference ** 2))
    return np.abs(value - reference) / scale


# (median, largest) relative difference allowed between a rebuilt layer and the emulation.
AGREEMENT = {"fp32": (1e-6, 1e-3), "tf32": (1e-6, 1e-3), "bf16": (2.0 ** -8 / 50, 2 * 2.0 ** -8),
             "fp16": (2.0 ** -11 / 50, 2 * 2.0 ** -11)}


def _matrix_of(layer: torch.nn.Module, dim_in: int) -> tuple:
    probe = copy.deepcopy(layer).double()
    with torch.no_grad():
        bias = probe(torch.zeros(1, dim_in, dtype=torch.float64))[0].numpy()
        matrix = probe(torch.eye(dim_in, dtype=torch.float64)).numpy() - bias
    return matrix, bias


def _emulate_linear(layer: torch.nn.Module, x: np.ndarray, policy: str) -> np.ndarray:
    matrix, bias = _matrix_of(layer, x.shape[1])
    return (_result(_operand(x, policy) @ _operand(matrix, policy), policy) + bias).astype(np.float32)


def _emulate_radial_mlp(net: torch.nn.Module, x: np.ndarray, policy: str) -> np.ndarray:
    """e3nn's FullyConnectedNet: per layer a linear map (read off with its activation removed)
    in the policy's arithmetic, then the original activation in float64."""
    h = x.astype(np.float64)
    layers = [getattr(net, f"layer{i}") for i in range(len(net.hs) - 1)]
    for layer in layers:
        linear = copy.deepcopy(layer).double()
        act, linear.act = linear.act, None  # hidden layers have var_out 1: the same linear map
        with torch.no_grad():
            matrix = linear(torch.eye(h.shape[1], dtype=torch.float64)).numpy()
            h = _result(_operand(h.astype(np.float32).astype(np.float64), policy) @ _operand(matrix, policy), policy)
            if act is not None:
                h = act(torch.tensor(h)).numpy() * layer.var_out ** 0.5
    return h


def _policy_model(backend: str, policy_name: str):
    """(the model before the policy layers, the same model after them)."""
    policy = get_policy(policy_name)
    source = copy.deepcopy(model()).float()
    if backend == "cueq":
        source = convert_to_cueq(source)
    source = make_scriptable(source)
    rebuilt = copy.deepcopy(source)
    apply_policy_layers(rebuilt, policy.matmul_mode, policy.model_dtype, model_layout(rebuilt))
    return source, rebuilt


@pytest.mark.parametrize("backend", ["e3nn", "cueq"])
@pytest.mark.parametrize("policy_name", ["fp32", "tf32", "bf16", "fp16"])
def test_every_rebuilt_layer_runs_the_policy_arithmetic(backend, policy_name):
    from openmm_mace_lp.linears import IrrepsLinear, PolicyDense, RadialMLP

    source, rebuilt = _policy_model(backend, policy_name)
    originals = dict(source.named_modules())
    mode = get_policy(policy_name).matmul_mode
    rng = np.random.default_rng(11)
    checked = {"linear": 0, "radial_mlp": 0}
    for name, layer in rebuilt.named_modules():
        if not isinstance(layer, (IrrepsLinear, RadialMLP)):
            continue
        denses = [m for m in layer.modules() if isinstance(m, PolicyDense)]
        assert denses and all(d.mode == mode for d in denses), name
        original = originals[name]
        if isinstance(layer, RadialMLP):
            x = rng.normal(size=(64, original.hs[0])).astype(np.float32)
            expected = _emulate_radial_mlp(original, x, policy_name)
            checked["radial_mlp"] += 1
        else:
            x = rng.normal(size=(16, _dim(original.irreps_in))).astype(np.float32)
            expected = _emulate_linear(original, x, policy_name)
            checked["linear"] += 1
        with torch.no_grad():
            got = layer(torch.tensor(x)).double().numpy()
        differences = _relative_differences(got, expected)
        median, largest = AGREEMENT[policy_name]
        assert np.median(differences) <= median and differences.max() <= largest, (
            name, np.median(differences), differences.max())
        if policy_name != "fp32":
            # ... and the check can tell: plain float32 would be far from the policy's numbers.
            plain = (_emulate_radial_mlp(original, x, "fp32") if isinstance(layer, RadialMLP)
                     else _emulate_linear(original, x, "fp32"))
            assert np.median(_relative_differences(plain, expected)) > 20 * median, name
    assert checked["radial_mlp"] == 2 and checked["linear"] == len(_linear_modules(source)) > 0


@pytest.mark.parametrize("policy_name", ["tf32", "bf16", "fp16"])
def test_backward_products_follow_the_policy_table(policy_name):
    """Forces come from the backward pass: tf32 multiplies float32 gradients by the TF32
    weights; bf16/fp16 round the gradient to their format first and the result after."""
    policy = get_policy(policy_name)
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.normal(size=(40, 48)), dtype=torch.float32, requires_grad=True)
    upstream = rng.normal(size=(40, 24)).astype(np.float32)
    weight64 = rng.normal(size=(48, 24))
    from openmm_mace_lp.linears import PolicyDense

    dense = PolicyDense(torch.tensor(weight64), policy.matmul_mode, torch.float32)
    (grad,) = torch.autograd.grad(dense(x), x, torch.tensor(upstream))
    weight = _operand(weight64.astype(np.float32).astype(np.float64), policy_name)
    gradient = upstream.astype(np.float64) if policy_name == "tf32" else _operand(upstream.astype(np.float64), policy_name)
    expected = _result(gradient @ weight.T, policy_name)
    differences = _relative_differences(grad.double().numpy(), expected)
    median, largest = AGREEMENT[policy_name]
    assert np.median(differences) <= median and differences.max() <= largest


def test_low_precision_exports_make_cublas_accumulate_in_float32(tmp_path_factory):
    """torch lets cuBLAS reduce bf16/fp16 GEMMs in reduced precision by default; the bf16 and
    fp16 rows of the table promise float32 accumulation, so their exports switch that off."""
    from openmm_mace_lp.export import export_to_file

    from .helpers import model_file

    matmul = torch.backends.cuda.matmul
    saved = (matmul.allow_bf16_reduced_precision_reduction, matmul.allow_fp16_reduced_precision_reduction)
    path = model_file(tmp_path_factory.getbasetemp())
    numbers = water_box(1).atomic_numbers
    try:
        matmul.allow_bf16_reduced_precision_reduction = matmul.allow_fp16_reduced_precision_reduction = True
        export_to_file(path, "fp32", "e3nn", numbers, periodic=True)
        assert matmul.allow_bf16_reduced_precision_reduction and matmul.allow_fp16_reduced_precision_reduction
        export_to_file(path, "bf16", "e3nn", numbers, periodic=True)
        assert not matmul.allow_bf16_reduced_precision_reduction
        assert not matmul.allow_fp16_reduced_precision_reduction
    finally:
        matmul.allow_bf16_reduced_precision_reduction, matmul.allow_fp16_reduced_precision_reduction = saved
