"""Fused message passing for cuEquivariance MACE models (the ``cueq-fused`` backend).

In every MACE interaction block the message is ``scatter_sum(conv_tp(x[sender], Y, w), receiver)``:
the node features are gathered to the edges, the channel-wise tensor product is evaluated per
edge and the result is summed back onto the receiving nodes. Done that way, two edge-sized
tensors of width ``irreps_mid.dim`` are materialised (the gathered features and the messages),
which dominate memory traffic for MACE-OFF sized models.

``cuequivariance_torch.SegmentedPolynomial`` accepts gather indices for its inputs and scatter
indices for its outputs, so the same tensor product can run as *one* call that reads
``x[sender]`` and accumulates into ``out[receiver]`` inside the kernel (method ``uniform_1d`` on a
GPU). On the CPU the ``naive`` method does the gather/scatter with ordinary indexing and gives
the same numbers as the unfused path.

mace 0.3.16 already routes every interaction block through
``self.conv_tp(node_feats, edge_attrs, tp_weights, edge_index)`` when the block has a
``conv_fusion`` attribute (``hasattr`` is resolved at compile time by TorchScript), but its own
cuEq fused module cannot be built with cuequivariance 0.13's CPU fallback (it reads
``.m.buffer_num_segments``, which ``SegmentedPolynomialNaive`` lacks). We therefore build our own
fused module from the converted ``ChannelWiseTensorProduct`` (re-using its polynomial module,
math dtype and layout transposes) and set ``conv_fusion`` on the block. Nothing in mace is
edited; the block's own ``forward`` is used unchanged.
"""
from __future__ import annotations

import inspect
from typing import Dict, List

import torch

# Value stored in the block's ``conv_fusion`` attribute: any string makes mace take its fused
# branch; this one tells a reader of the model who set it.
FUSION_TAG = "openmm_mace_lp.fused_conv"


class FusedChannelWiseConv(torch.nn.Module):
    """``(node_feats, edge_attrs, tp_weights, edge_index) -> per-node message sums`` in one call.

    Equivalent to ``scatter_sum(conv_tp(node_feats[edge_index[0]], edge_attrs, tp_weights),
    edge_index[1], dim_size=len(node_feats))`` for the wrapped cuEq ``ChannelWiseTensorProduct``
    ``conv_tp``, but the gather and the scatter are handed to ``SegmentedPolynomial`` as
    input/output indices, so no edge-sized feature or message tensor is created by us.
    """

    def __init__(self, conv_tp: torch.nn.Module) -> None:
        super().__init__()
        if type(conv_tp).__name__ != "ChannelWiseTensorProduct":
            raise TypeError(f"expected cuequivariance_torch.ChannelWiseTensorProduct, got {type(conv_tp).__name__}")
        if getattr(conv_tp, "weight", None) is not None:
            raise ValueError("conv_tp has internal weights; MACE's conv_tp takes per-edge weights")
        # The polynomial module already holds the channel-wise descriptor (operands: weights,
        # lhs (node feats), rhs (edge attrs), output), its method and its math dtype.
        self.poly = conv_tp.f
        # The descriptor's operands are ir_mul. For a mul_ir model these transposes are real;
        # applied to node-sized tensors they commute with the gather and the scatter.
        self.transpose_in1 = conv_tp.transpose_in1
        self.transpose_in2 = conv_tp.transpose_in2
        self.transpose_out = conv_tp.transpose_out
        self.weight_numel = int(conv_tp.weight_numel)
        self.irreps_in1 = conv_tp.irreps_in1
        self.irreps_in2 = conv_tp.irreps_in2
        self.irreps_out = conv_tp.irreps_out
        self.out_dim = int(conv_tp.irreps_out.dim)
        self.method = str(getattr(self.poly, "method", ""))

    @torch.jit.ignore
    def extra_repr(self) -> str:
        return f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out}, method={self.method}"

    def forward(self, node_feats: torch.Tensor, edge_attrs: torch.Tensor, tp_weights: torch.Tensor,
                edge_index: torch.Tensor) -> torch.Tensor:
        x1 = self.transpose_in1(node_feats)
        x2 = self.transpose_in2(edge_attrs)
        if edge_index.shape[1] == 0:
            # cuequivariance's naive method reads an empty index as "not indexed" and fails, so
            # take the plain per-edge route: zero edges, nothing materialised, and the result
            # stays attached to the autograd graph (forces need that). Host-side shape test only.
            messages = self.poly([tp_weights, x1[edge_index[0]], x2])[0]
            empty = messages.new_zeros((x1.shape[0], self.out_dim))
            return self.transpose_out(empty.index_add(0, edge_index[1], messages))
        input_indices: Dict[int, torch.Tensor] = {1: edge_index[0]}
        output_indices: Dict[int, torch.Tensor] = {0: edge_index[1]}
        # Only ``.shape[0]`` of a shape tensor is read: the node features themselves give the
        # number of receivers without allocating anything (CUDA-graph friendly).
        output_shapes: Dict[int, torch.Tensor] = {0: x1}
        out: List[torch.Tensor] = self.poly(
            [tp_weights, x1, x2],
            input_indices=input_indices,
            output_shapes=output_shapes,
            output_indices=output_indices,
        )
        return self.transpose_out(out[0])


def _forward_honours_conv_fusion(block: torch.nn.Module) -> bool:
    """True when the block's own forward dispatches on ``hasattr(self, "conv_fusion")``."""
    try:
        source = inspect.getsource(type(block).forward)
    except (OSError, TypeError):
        return False
    return 'hasattr(self, "conv_fusion")' in source or "hasattr(self, 'conv_fusion')" in source


def fuse_convolutions(model: torch.nn.Module) -> int:
    """Give every cuEq interaction block of ``model`` a fused gather-TP-scatter; return how many.

    Works in place on a model converted to cuEquivariance (``backend.convert_to_cueq``), before
    or after ``make_scriptable``. A block is fused only if its ``conv_tp`` is a
    ``ChannelWiseTensorProduct`` and its class's forward takes mace's ``conv_fusion`` branch
    (all of mace 0.3.16's interaction blocks, among them RealAgnosticInteractionBlock and
    RealAgnosticResidualInteractionBlock used by MACE-OFF). Already fused blocks are skipped.
    """
    fused = 0
    for block in model.modules():
        conv_tp = getattr(block, "conv_tp", None)
        if not isinstance(conv_tp, torch.nn.Module) or isinstance(conv_tp, FusedChannelWiseConv):
            continue
        if type(conv_tp).__name__ != "ChannelWiseTensorProduct":
            continue
        if hasattr(block, "conv_fusion"):
            raise ValueError(f"{type(block).__name__} already has conv_fusion={block.conv_fusion!r}")
        if not _forward_honours_conv_fusion(block):
            raise NotImplementedError(
                f"{type(block).__name__}.forward has no conv_fusion branch; cannot fuse it")
        block.conv_tp = FusedChannelWiseConv(conv_tp)
        # A plain str attribute survives TorchScript, so the scripted block keeps the fused branch.
        block.conv_fusion = FUSION_TAG
        fused += 1
    return fused
