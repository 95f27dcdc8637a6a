"""Precision policies: the one table that says what each policy changes.

A policy fixes two things: the dtype the MACE model is stored and evaluated in, and how the
dense matrix products (equivariant linear layers, the radial MLP, readouts) are computed.
Everything else in the model (spherical harmonics, tensor products, the symmetric contraction,
the neighbour list, the force accumulation) runs in the model dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

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
    summary: str

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
        Policy("fp64", torch.float64, MATMUL_NATIVE, "reference: whole model in float64"),
        Policy("fp32", torch.float32, MATMUL_NATIVE, "whole model in float32"),
        Policy(
            "tf32",
            torch.float32,
            MATMUL_TF32,
            "float32 model; linear layers and radial MLP take TF32-rounded operands, "
            "float32 accumulation (TF32 numerics on every device)",
        ),
        Policy(
            "bf16",
            torch.float32,
            MATMUL_BF16,
            "float32 model; linear layers and radial MLP take bfloat16 operands, "
            "float32 accumulation, results rounded to bfloat16 and continued in float32",
        ),
        Policy(
            "fp16",
            torch.float32,
            MATMUL_FP16,
            "float32 model; linear layers and radial MLP take float16 operands, "
            "float32 accumulation, results rounded to float16 and continued in float32",
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
    """A table of the policies for people."""
    lines = [f"{'policy':<7} {'model':<8} {'matmuls':<8} what it changes"]
    for policy in POLICIES.values():
        lines.append(
            f"{policy.name:<7} {policy.dtype_name:<8} {policy.matmul_name:<8} {policy.summary}"
        )
    return "\n".join(lines)
