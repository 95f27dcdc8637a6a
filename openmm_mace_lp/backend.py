"""Backend stage: e3nn as trained, or converted to cuEquivariance, and made scriptable.

mace-torch 0.3.16 decides at run time whether a block uses cuEquivariance by looking at a
``cueq_config`` dataclass attribute (``hasattr(self, "cueq_config")``). TorchScript drops that
attribute, so a scripted cuEq model silently takes the e3nn branches: the product block feeds
one-hot attributes to the cuEq symmetric contraction (an error) and each interaction's
``reshape`` uses the mul_ir branch on ir_mul data (no error, wrong energies). We replace those
two modules, at export time and in our own code, by stand-ins that hold the decision as plain
bool attributes. Nothing inside mace is patched.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
from typing import Iterator, List, Optional

import torch

# "cueq-fused": cuEquivariance with each interaction's gather -> tensor product -> scatter in one
# indexed SegmentedPolynomial call (fused_conv.py). It is what "auto" picks on a GPU: on an H200
# (benchmarks/results/bench_2026-11-28_h200_fused_*.md, MACE-OFF24(M) architecture, fp32, CUDA graphs)
# 7.3 against 11.0 ms/step at 1029 atoms and 51 against 85 at 10k, at 40-50 % of the memory,
# with the same force error against fp64 eager mace (3.4e-6).
BACKENDS = ("auto", "cueq", "cueq-fused", "e3nn")
CUEQ_BACKENDS = ("cueq", "cueq-fused")


def cueq_kernels_available() -> bool:
    """True when cuEquivariance's CUDA ops import (else cuequivariance_torch runs its naive path)."""
    if not torch.cuda.is_available():
        return False
    try:
        import cuequivariance_ops_torch  # noqa: F401
        import cuequivariance_torch  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def resolve_backend(name: str, device: torch.device) -> str:
    """``auto`` picks fused cuEquivariance where its CUDA kernels are usable, else e3nn."""
    if name not in BACKENDS:
        raise ValueError(f"Unknown backend {name!r}. Valid backends: {', '.join(BACKENDS)}.")
    if name == "auto":
        return "cueq-fused" if device.type == "cuda" and cueq_kernels_available() else "e3nn"
    if name in CUEQ_BACKENDS and importlib.util.find_spec("cuequivariance_torch") is None:
        raise ValueError(
            f"backend={name!r} needs cuequivariance-torch (pip install cuequivariance-torch==0.13.0, "
            "plus cuequivariance-ops-torch-cu12/cu13 for the CUDA kernels), or use backend='e3nn'."
        )
    return name


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily make ``dtype`` torch's default (mace builds modules in the default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def model_layout(model: torch.nn.Module) -> str:
    """'ir_mul' for a cuEquivariance model converted with that layout, else e3nn's 'mul_ir'."""
    for module in model.modules():
        config = getattr(module, "cueq_config", None)
        if config is not None and getattr(config, "enabled", False):
            return getattr(config, "layout_str", "mul_ir")
    return "mul_ir"


def is_cueq_model(model: torch.nn.Module) -> bool:
    return any(type(m).__module__.startswith("cuequivariance_torch") for m in model.modules())


def convert_to_cueq(model: torch.nn.Module) -> torch.nn.Module:
    """Convert an e3nn MACE model to cuEquivariance (ir_mul layout) without conv fusion.

    mace's converter builds the cuEq modules with the *default* dtype as their math dtype, so
    the model is converted in its own dtype (and the global default restored afterwards).
    Conversion runs on the CPU: with ``device='cuda'`` mace enables conv fusion, which fails with
    cuequivariance 0.13 (FACTS.md); the converted model is moved to the GPU afterwards.
    """
    from .upstream import import_mace

    import_mace()
    from mace.cli.convert_e3nn_cueq import run as mace_convert_to_cueq

    if is_cueq_model(model):
        return model
    dtype = next(model.parameters()).dtype
    with default_dtype(dtype):
        converted = mace_convert_to_cueq(copy.deepcopy(model).cpu(), device="cpu", layout="ir_mul")
    return converted.to(dtype)


class ScriptableProductBasis(torch.nn.Module):
    """Stand-in for mace's EquivariantProductBasisBlock with the cuEq choice as plain bools."""

    def __init__(self, block: torch.nn.Module, use_cueq: bool, mul_ir: bool) -> None:
        super().__init__()
        self.symmetric_contractions = block.symmetric_contractions
        self.linear = block.linear
        self.use_sc = bool(block.use_sc)
        self.use_agnostic_product = bool(getattr(block, "use_agnostic_product", False))
        self.use_cueq = use_cueq
        self.mul_ir = mul_ir

    def forward(self, node_feats: torch.Tensor, sc: Optional[torch.Tensor], node_attrs: torch.Tensor) -> torch.Tensor:
        if self.use_agnostic_product:
            node_attrs = torch.ones(
                (node_feats.shape[0], 1), dtype=node_feats.dtype, device=node_feats.device
            )
        if self.use_cueq:
            if self.mul_ir:
                node_feats = torch.transpose(node_feats, 1, 2)
            element_index = torch.argmax(node_attrs, dim=-1).to(torch.int32)
            node_feats = self.symmetric_contractions(node_feats.flatten(1), element_index)
        else:
            node_feats = self.symmetric_contractions(node_feats, node_attrs)
        if self.use_sc and sc is not None:
            return self.linear(node_feats) + sc
        return self.linear(node_feats)


class ScriptableReshapeIrreps(torch.nn.Module):
    """Stand-in for mace's reshape_irreps: [n, dim] -> [n, mul, 2l+1] (mul_ir) or [n, 2l+1, mul].

    In the ir_mul layout (cuEquivariance) every irrep has the same multiplicity (mace's cat
    along the component axis requires it), and irrep i's block [n, d_i * mul] is already its
    [n, d_i, mul]: the whole result is one view of the input, with no kernel forward or backward.
    In mul_ir (e3nn) the blocks are transposed; one split feeds them (its backward is one
    concatenation, where slicing each block costs a zero-filled copy of the input per block).
    """

    def __init__(self, block: torch.nn.Module, ir_mul: bool) -> None:
        super().__init__()
        self.muls: List[int] = list(block.muls)
        self.dims: List[int] = list(block.dims)
        self.sizes: List[int] = [mul * d for mul, d in zip(self.muls, self.dims)]
        self.ir_mul = ir_mul
        if ir_mul and len(set(self.muls)) > 1:
            raise ValueError(f"reshape_irreps in the ir_mul layout needs one multiplicity, got {self.muls}")

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        batch = tensor.shape[0]
        if self.ir_mul:
            return tensor.reshape(batch, -1, self.muls[0])
        fields: List[torch.Tensor] = []
        for field, mul, d in zip(torch.split(tensor, self.sizes, dim=1), self.muls, self.dims):
            fields.append(field.reshape(batch, mul, d))
        return torch.cat(fields, dim=-1)


def _replace_modules(model: torch.nn.Module, type_name: str, make) -> int:
    """Replace every submodule whose class is called ``type_name`` by ``make(module)``."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == type_name:
                setattr(parent, name, make(child))
                count += 1
    return count


def _product_standin(block: torch.nn.Module, layout: str) -> ScriptableProductBasis:
    config = getattr(block, "cueq_config", None)
    uses_cueq = bool(
        config is not None and config.enabled and (config.optimize_all or config.optimize_symmetric)
    )
    return ScriptableProductBasis(block, uses_cueq, layout == "mul_ir")


def make_scriptable(model: torch.nn.Module) -> torch.nn.Module:
    """Swap the blocks that branch on ``cueq_config`` at run time for scriptable stand-ins."""
    layout = model_layout(model)
    _replace_modules(model, "EquivariantProductBasisBlock", lambda block: _product_standin(block, layout))
    _replace_modules(model, "reshape_irreps", lambda block: ScriptableReshapeIrreps(block, layout == "ir_mul"))
    return model
