"""Precision policies: the one table that says what each policy changes.

A policy fixes two things: the dtype the MACE model is stored and evaluated in, and how the
dense matrix products (equivariant linear layers, the radial MLP, readouts) are computed, in
the forward pass and in the backward pass that gives the forces. Everything else in the model
(spherical harmonics, tensor products, the symmetric contraction, the neighbour list, the
force accumulation) runs in the model dtype. ``mace-lp policies`` prints this table as the
README shows it (``describe_policies``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

# How a dense matrix product is computed (plain ints so TorchScript can branch on them).
MATMUL_NATIVE = 0  # in the model dtype
MATMUL_TF32 = 1  # operands rounded to TF32 (10-bit mantissa), fp32 accumulation and result
MATMUL_BF16 = 2  # operands in bfloat16, fp32 accumulation and result
MATMUL_FP16 = 3  # operands in float16, fp32 accumulation and result

MATMUL_MODE_NAMES = {
    MATMUL_NATIVE: "native",
    MATMUL_TF32: "tf32",
    MATMUL_BF16: "bf16",
    MATMUL_FP16: "fp16",
}


@dataclass(frozen=True)
class Policy:
    """A named precision policy."""

    name: str
    model_dtype: torch.dtype
    matmul_mode: int
    summary: str  # the forward matrix products
    backward: str  # the matrix products of the backward pass (forces)

    @property
    def dtype_name(self) -> str:
        return str(self.model_dtype).replace("torch.", "")

    @property
    def matmul_name(self) -> str:
        return MATMUL_MODE_NAMES[self.matmul_mode]

    @property
    def unit_roundoff(self) -> float:
        """Relative rounding error of one operand of the policy's matrix products."""
        bits = {MATMUL_TF32: 10, MATMUL_BF16: 7, MATMUL_FP16: 10}.get(self.matmul_mode)
        if bits is None:
            return float(torch.finfo(self.model_dtype).eps) / 2
        return 2.0 ** -(bits + 1)


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("fp64", torch.float64, MATMUL_NATIVE, "float64 — the reference", "float64"),
        Policy("fp32", torch.float32, MATMUL_NATIVE, "float32", "float32"),
        Policy(
            "tf32",
            torch.float32,
            MATMUL_TF32,
            "operands rounded to TF32 (11 significant bits), float32 accumulation",
            "float32 gradients (not rounded) times the TF32-rounded weights, float32 accumulation",
        ),
        Policy(
            "bf16",
            torch.float32,
            MATMUL_BF16,
            "bfloat16 operands, float32 accumulation, result rounded to bfloat16",
            "gradients rounded to bfloat16 times the bfloat16 weights, float32 accumulation, "
            "result rounded to bfloat16",
        ),
        Policy(
            "fp16",
            torch.float32,
            MATMUL_FP16,
            "float16 operands, float32 accumulation, result rounded to float16",
            "gradients rounded to float16 times the float16 weights, float32 accumulation, "
            "result rounded to float16",
        ),
    )
}

DEFAULT_POLICY = "fp32"


def get_policy(name: str) -> Policy:
    """Look a policy up by name, failing with the list of valid names."""
    try:
        return POLICIES[name]
    except KeyError:
        valid = ", ".join(POLICIES)
        raise ValueError(
            f"Unknown precision policy {name!r}. Valid policies: {valid} "
            f"(run `mace-lp policies` for what each changes)."
        ) from None


def describe_policies() -> str:
    """The policy table as Markdown, exactly as the README's "Precision policies" shows it."""
    lines = [
        "| policy | model | dense matrix products (linear layers, radial MLP, readouts) | "
        "their backward products (forces) |",
        "| --- | --- | --- | --- |",
    ]
    for policy in POLICIES.values():
        lines.append(f"| `{policy.name}` | {policy.dtype_name} | {policy.summary} | {policy.backward} |")
    return "\n".join(lines)


def require_fp32_accumulation(policy: Policy) -> None:
    """Make cuBLAS sum bfloat16/float16 products in float32, as the bf16/fp16 rows promise.

    torch lets cuBLAS use reduced-precision reductions for bf16 and fp16 GEMMs by default
    (``torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction`` and
    ``allow_fp16_...`` are True), which can sum partial products in the low format. A module of
    these policies is only evaluated as the table says with both off. They are process-wide
    settings (they also make the rest of the process's bf16/fp16 GEMMs accumulate in float32);
    they have no effect off CUDA.
    """
    if policy.matmul_mode not in (MATMUL_BF16, MATMUL_FP16):
        return
    matmul = torch.backends.cuda.matmul
    if matmul.allow_bf16_reduced_precision_reduction or matmul.allow_fp16_reduced_precision_reduction:
        logger.info("policy %s: switching off cuBLAS's reduced-precision bf16/fp16 reductions for this "
                    "process (float32 accumulation)", policy.name)
        matmul.allow_bf16_reduced_precision_reduction = False
        matmul.allow_fp16_reduced_precision_reduction = False
