"""Dense layers rebuilt so a precision policy controls their arithmetic.

MACE's equivariant linear layers (e3nn ``o3.Linear`` or cuEquivariance ``cuet.Linear``) and its
radial MLP (e3nn ``FullyConnectedNet``) are replaced at export time by the modules below. They
compute exactly the same function (checked against the original at float64 on construction),
but as one plain GEMM per irrep type, which (a) lets the policy choose the operand precision
(TF32/bf16/fp16 with fp32 accumulation) and (b) hands tensor cores well-shaped matrices: in the
cuEquivariance ``ir_mul`` layout an irrep block of N atoms is a contiguous (N*(2l+1), mul) matrix.
The original layers hide the GEMM inside einsum/segmented-polynomial code whose dtype follows
the model, so a policy could not reach it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from .policy import MATMUL_BF16, MATMUL_FP16, MATMUL_NATIVE, MATMUL_TF32

assert (MATMUL_NATIVE, MATMUL_TF32) == (0, 1)  # literals in policy_matmul


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to TF32 (11 significant bits), nearest-even; gradient passes straight.

    The rounding correction is computed without autograd and added as a constant: the
    straight-through form ``x + (r - x).detach()`` lost its gradient inside TorchScript's CUDA
    fuser (forces came out zero on an H200).
    """
    with torch.no_grad():
        mantissa, exponent = torch.frexp(x)  # mantissa in [0.5, 1)
        rounded = torch.ldexp(torch.round(mantissa * 2048.0) / 2048.0, exponent.to(x.dtype))
        correction = rounded - x
    return x + correction


def policy_matmul(
    x: torch.Tensor, weight: torch.Tensor, weight_low: torch.Tensor, mode: int, keep_low: bool = False
) -> torch.Tensor:
    """x @ weight with the operand precision of ``mode`` and a result in x's dtype.

    bf16/fp16: both operands in the low format, products summed in float32 (cuBLAS on CUDA),
    and the result rounded to the low format before it continues in float32. The rounding of
    the result is what cuBLAS returns for low-precision operands; its float32-output variant
    (``torch.mm(..., out_dtype=)``) has no autograd formula in torch 2.11, and forces need the
    backward pass. Off CUDA the same arithmetic is emulated exactly (the product of two
    bf16/fp16 numbers is exact in float32, so only the summation order differs), which is what
    the CPU tests check. TF32: operands rounded to TF32, float32 accumulation and result.
    ``keep_low`` (bf16/fp16 only) returns the rounded result in the low format itself: the same
    values in half the memory, for a consumer that reads that format (fused_conv.py).
    """
    # TorchScript cannot read module constants: 0 and 1 are policy.MATMUL_NATIVE and MATMUL_TF32.
    if mode == 0:
        return torch.mm(x, weight)
    if mode == 1:
        return torch.mm(round_to_tf32(x), weight)
    low = weight_low.dtype
    if x.is_cuda:
        product = torch.mm(x.to(low), weight_low)
    else:
        product = torch.mm(x.to(low).to(x.dtype), weight).to(low)
    return product if keep_low else product.to(x.dtype)


def _low_dtype(mode: int) -> torch.dtype:
    return {MATMUL_BF16: torch.bfloat16, MATMUL_FP16: torch.float16}.get(mode, torch.float32)


def _policy_weights(weight: torch.Tensor, mode: int, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight as used by the emulated/native path, weight in the low format)."""
    weight = weight.to(dtype)
    if mode == MATMUL_TF32:
        weight = round_to_tf32(weight)
    if mode in (MATMUL_BF16, MATMUL_FP16):
        low = weight.to(_low_dtype(mode))
        return low.to(dtype), low
    return weight, weight.new_zeros(0)


class PolicyDense(torch.nn.Module):
    """x @ W with W stored in the forms a policy needs (no bias).

    ``native_tf32`` (set by ``use_native_tf32``; a constant, so TorchScript compiles only the
    chosen call): the tf32 GEMM goes through ``mace_lp::tf32_mm`` (native/tf32_mm.cpp), TF32
    tensor cores on CUDA, instead of the emulation (the same numbers, without tensor cores).
    """

    __constants__ = ["native_tf32"]

    def __init__(self, weight: torch.Tensor, mode: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.mode = mode
        self.native_tf32 = False
        used, low = _policy_weights(weight, mode, dtype)
        self.register_buffer("weight", used)
        self.register_buffer("weight_low", low)

    def forward(self, x: torch.Tensor, keep_low: bool = False) -> torch.Tensor:
        if self.native_tf32:
            return torch.ops.mace_lp.tf32_mm(x, self.weight)
        return policy_matmul(x, self.weight, self.weight_low, self.mode, keep_low)


# How the tf32 policy's GEMMs run in an export (ExportSpec.tf32_impl): "native" (mace_lp::tf32_mm)
# or "emulated" (round_to_tf32 + a float32 GEMM); "" for the other policies.
TF32_NATIVE, TF32_EMULATED = "native", "emulated"


def resolve_tf32_impl(mode: int, device_type: str, requested: Optional[str] = None) -> str:
    """How an export's tf32 GEMMs run: ``requested`` when given, else native TF32 GEMMs on CUDA
    where the native library is loaded and the emulation elsewhere (on the CPU the two give the
    same numbers, and the emulation needs no library); "" for the other policies."""
    if requested not in (None, TF32_NATIVE, TF32_EMULATED):
        raise ValueError(f"tf32_impl={requested!r}: use {TF32_NATIVE!r}, {TF32_EMULATED!r} or None (automatic).")
    if mode != MATMUL_TF32:
        return ""
    if requested is not None:
        return requested
    from . import native

    return TF32_NATIVE if device_type == "cuda" and native.available("cpu") else TF32_EMULATED


def use_native_tf32(model: torch.nn.Module) -> int:
    """Route every tf32 PolicyDense of ``model`` through ``mace_lp::tf32_mm``; how many."""
    layers = [m for m in model.modules() if isinstance(m, PolicyDense) and m.mode == MATMUL_TF32]
    for layer in layers:
        layer.native_tf32 = True
    return len(layers)


@dataclass
class _Slot:
    start: int
    mul: int
    dim: int  # 2l+1
    key: str  # irrep name, e.g. "1o"


def _irrep_slots(irreps) -> List[_Slot]:
    """Slots of e3nn ``o3.Irreps`` or cuEquivariance ``cue.Irreps`` as (start, mul, dim, key)."""
    slots, start = [], 0
    for item in irreps:
        mul, ir = (item.mul, item.ir) if hasattr(item, "mul") else item
        dim = ir.dim
        slots.append(_Slot(start, mul, dim, str(ir)))
        start += mul * dim
    return slots


class _IrrepGroupMatmul(torch.nn.Module):
    """One GEMM for all input/output slots of one irrep type.

    It takes the input already split into its slots (``IrrepsLinear`` splits once for all
    groups): slicing each slot out of the whole input instead costs, in the backward pass, a
    zero-filled gradient of the whole input per slot plus the additions that merge them, where a
    split's backward is one concatenation (on an H200 at 1029 atoms slice backwards took 0.84 of
    6.8 ms per energy+force call, mostly these layers':
    benchmarks/results/kernel_profile_2026-12-01_h200_launchers.md). A single output slot is
    used whole: even a full-width slice has a zero-filling backward.
    """

    def __init__(self, in_slots: List[_Slot], in_pieces: List[int], out_muls: List[int], weight: torch.Tensor,
                 mode: int, dtype: torch.dtype, ir_mul: bool) -> None:
        super().__init__()
        self.dim = in_slots[0].dim
        self.in_pieces = in_pieces
        self.in_muls = [s.mul for s in in_slots]
        self.out_muls = out_muls
        self.ir_mul = ir_mul
        self.dense = PolicyDense(weight, mode, dtype)

    def forward(self, pieces: List[torch.Tensor]) -> List[torch.Tensor]:
        n, d = pieces[0].shape[0], self.dim
        blocks: List[torch.Tensor] = []
        for index, mul in zip(self.in_pieces, self.in_muls):
            block = pieces[index]
            if self.ir_mul:
                blocks.append(block.reshape(n, d, mul))
            else:
                blocks.append(block.reshape(n, mul, d).transpose(1, 2))
        stacked = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2)
        y = self.dense(stacked.reshape(n * d, -1))
        y = y.reshape(n, d, -1)
        parts: List[torch.Tensor] = [y]
        if len(self.out_muls) > 1:
            parts = torch.split(y, self.out_muls, dim=2)
        outs: List[torch.Tensor] = []
        for part, mul in zip(parts, self.out_muls):
            if self.ir_mul:
                outs.append(part.reshape(n, d * mul))
            else:
                outs.append(part.transpose(1, 2).reshape(n, mul * d))
        return outs


class IrrepsLinear(torch.nn.Module):
    """Equivariant linear layer as one GEMM per irrep type, in a policy's arithmetic."""

    def __init__(self, groups: List[_IrrepGroupMatmul], in_sizes: List[int], out_order: List[Tuple[int, int]],
                 out_dims: List[int], bias: torch.Tensor) -> None:
        super().__init__()
        self.groups = torch.nn.ModuleList(groups)
        self.in_sizes = in_sizes  # every input slot's width, in order: one split feeds all groups
        self.out_group = [g for g, _ in out_order]  # -1: slot with no path (zeros)
        self.out_index = [i for _, i in out_order]
        self.out_dims = out_dims
        self.has_bias = bool(bias.abs().max() > 0) if bias.numel() else False
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces: List[torch.Tensor] = [x]
        if len(self.in_sizes) > 1:
            pieces = torch.split(x, self.in_sizes, dim=1)
        results: List[List[torch.Tensor]] = []
        for group in self.groups:
            results.append(group(pieces))
        outputs: List[torch.Tensor] = []
        for g, i, dim in zip(self.out_group, self.out_index, self.out_dims):
            if g < 0:
                outputs.append(x.new_zeros(x.shape[0], dim))
            else:
                outputs.append(results[g][i])
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        if self.has_bias:
            out = out + self.bias
        return out


def _probe(module: torch.nn.Module, dim_in: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The layer's matrix and bias, read off by evaluating it on basis vectors in float64."""
    probe = copy.deepcopy(module).to(torch.float64)
    with torch.no_grad():
        bias = probe(torch.zeros(1, dim_in, dtype=torch.float64))[0]
        matrix = probe(torch.eye(dim_in, dtype=torch.float64)) - bias
    return matrix, bias


def irreps_linear_from(module: torch.nn.Module, irreps_in, irreps_out, ir_mul: bool,
                       mode: int, dtype: torch.dtype) -> IrrepsLinear:
    """Build an IrrepsLinear computing the same map as ``module`` (e3nn or cuEq Linear)."""
    in_slots, out_slots = _irrep_slots(irreps_in), _irrep_slots(irreps_out)
    dim_in = sum(s.mul * s.dim for s in in_slots)
    matrix, bias = _probe(module, dim_in)

    def channel_index(slot: _Slot, component: int) -> torch.Tensor:
        u = torch.arange(slot.mul)
        return slot.start + (component * slot.mul + u if ir_mul else u * slot.dim + component)

    groups: List[_IrrepGroupMatmul] = []
    out_order: List[Tuple[int, int]] = [(-1, 0)] * len(out_slots)
    rebuilt = torch.zeros_like(matrix)
    for key in dict.fromkeys(s.key for s in out_slots):
        ins = [s for s in in_slots if s.key == key]
        outs = [j for j, s in enumerate(out_slots) if s.key == key]
        if not ins:
            continue
        blocks = []
        for s_in in ins:
            row = [matrix[channel_index(s_in, 0)][:, channel_index(out_slots[j], 0)] for j in outs]
            blocks.append(torch.cat(row, dim=1))
        weight = torch.cat(blocks, dim=0)  # [sum in muls, sum out muls]
        for m in range(ins[0].dim):  # the same weight acts on every component m
            rows = torch.cat([channel_index(s, m) for s in ins])
            cols = torch.cat([channel_index(out_slots[j], m) for j in outs])
            rebuilt[rows.unsqueeze(1), cols.unsqueeze(0)] = weight
        for position, j in enumerate(outs):
            out_order[j] = (len(groups), position)
        pieces = [in_slots.index(slot) for slot in ins]
        groups.append(_IrrepGroupMatmul(ins, pieces, [out_slots[j].mul for j in outs], weight, mode, dtype, ir_mul))
    scale = matrix.abs().max().clamp_min(1e-300)
    if (rebuilt - matrix).abs().max() > 1e-10 * scale:
        raise RuntimeError(
            f"{type(module).__name__} ({irreps_in} -> {irreps_out}) is not a per-irrep linear map "
            f"in the {'ir_mul' if ir_mul else 'mul_ir'} layout; cannot rebuild it for a precision policy."
        )
    out_dims = [s.mul * s.dim for s in out_slots]
    return IrrepsLinear(groups, [s.mul * s.dim for s in in_slots], out_order, out_dims, bias.to(dtype))


class RadialMLP(torch.nn.Module):
    """e3nn's FullyConnectedNet (the radial MLP) with its scale factors folded into the weights."""

    def __init__(self, weights: List[torch.Tensor], act_scale: float, mode: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.act_scale = act_scale
        self.num_layers = len(weights)
        self.layers = torch.nn.ModuleList([PolicyDense(w, mode, dtype) for w in weights])
        # Set by fused_conv.keep_weights_low: under bf16/fp16 the output (the tensor-product
        # weights, already rounded to that format) stays in it instead of widening to float32.
        self.low_output = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            if i < self.num_layers - 1:
                x = torch.nn.functional.silu(layer(x)) * self.act_scale
            else:
                x = layer(x, self.low_output)
        return x


def radial_mlp_from(net: torch.nn.Module, mode: int, dtype: torch.dtype) -> RadialMLP:
    """Rebuild e3nn ``FullyConnectedNet`` (SiLU hidden layers, linear output) as a RadialMLP."""
    layers = [getattr(net, f"layer{i}") for i in range(len(net.hs) - 1)]
    hidden, last = layers[:-1], layers[-1]
    scales = set()
    for layer in hidden:
        act = layer.act
        f = getattr(act, "f", None)
        if f is not torch.nn.functional.silu or layer.var_out != 1:
            raise RuntimeError(f"Unsupported radial MLP layer {layer!r}: only SiLU hidden layers are rebuilt.")
        scales.add(1.0 if act._is_id else float(act.cst))
    if last.act is not None or len(scales) > 1:
        raise RuntimeError("Unsupported radial MLP: expected a linear output layer and one activation.")
    weights = [
        layer.weight.detach().to(torch.float64) / (layer.h_in * layer.var_in) ** 0.5 for layer in hidden
    ]
    weights.append(
        last.weight.detach().to(torch.float64) / (last.h_in * last.var_in / last.var_out) ** 0.5
    )
    return RadialMLP(weights, scales.pop() if scales else 1.0, mode, dtype)


def _is_e3nn_linear(module: torch.nn.Module) -> bool:
    return type(module).__module__.startswith("e3nn.o3") and type(module).__name__ == "Linear"


def _is_cueq_linear(module: torch.nn.Module) -> bool:
    return type(module).__module__.startswith("cuequivariance_torch") and type(module).__name__ == "Linear"


def _is_radial_mlp(module: torch.nn.Module) -> bool:
    return type(module).__module__.startswith("e3nn.nn") and type(module).__name__ == "FullyConnectedNet"


def apply_policy_layers(model: torch.nn.Module, mode: int, dtype: torch.dtype, layout: str) -> dict:
    """Replace every linear layer and radial MLP of ``model`` by its policy-controlled twin.

    Returns how many modules of each kind were replaced, so a caller can check that a policy
    reached the layers it is meant to change.
    """
    counts = {"linear": 0, "radial_mlp": 0}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_e3nn_linear(child):  # e3nn layers always use mul_ir
                new = irreps_linear_from(child, child.irreps_in, child.irreps_out, False, mode, dtype)
                counts["linear"] += 1
            elif _is_cueq_linear(child):
                new = irreps_linear_from(child, child.irreps_in, child.irreps_out, layout == "ir_mul", mode, dtype)
                counts["linear"] += 1
            elif _is_radial_mlp(child):
                new = radial_mlp_from(child, mode, dtype)
                counts["radial_mlp"] += 1
            else:
                continue
            setattr(parent, name, new)
    return counts
