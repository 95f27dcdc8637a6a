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

Two more things happen here, both for memory:

* **Chunks of edges.** The radial MLP's output (the per-edge tensor-product weights, 512 and
  1280 numbers per edge for MACE-OFF24(M)) is the largest tensor of a step. With the MLP moved
  into the fused module (``radial``; the block's ``conv_tp_weights`` becomes a pass-through), the
  weights and the tensor product are evaluated for at most ``chunk_edges`` edges at a time, so
  the backward pass holds one chunk's weight gradient instead of all of them (at 50k atoms and
  fp32, 2 GiB instead of 20 by arithmetic), and no operand of the cuEq kernel exceeds 2**29 elements (unchunked,
  a 50k-atom box hands it 5.4e9, more than 32-bit offsets can address; whether the kernel
  copes was not tested). Boxes up to ~3000 atoms stay one chunk. This needs
  a block whose weights are a function of the edge features alone, i.e. mace's radial
  embedding multiplying in the cutoff itself (``apply_cutoff``); otherwise the block keeps its
  MLP and only the tensor product is chunked.
* **Low-precision weights.** Under the bf16/fp16 policies the MLP's output is rounded to that
  format anyway (policy.py); ``keep_weights_low`` hands it to the kernel in that format (same
  values, half the bytes), with float32 arithmetic inside the kernel and a float32 result.
"""
from __future__ import annotations

import inspect
from typing import Dict, List, Optional

import torch

# Value stored in the block's ``conv_fusion`` attribute: any string makes mace take its fused
# branch; this one tells a reader of the model who set it.
FUSION_TAG = "openmm_mace_lp.fused_conv"
# Largest number of tensor-product weights (edges x weights per edge) evaluated at once: 2 GiB
# in float32, far below 2**31, and one chunk for every interaction up to ~3000 water atoms with
# MACE-OFF24(M) (255k edges x 1280 weights = 3.3e8).
CHUNK_WEIGHT_ELEMENTS = 2**29


class EdgeFeatures(torch.nn.Module):
    """Stands in for a block's ``conv_tp_weights`` when the fused module owns the radial MLP."""

    def forward(self, edge_feats: torch.Tensor) -> torch.Tensor:
        return edge_feats


class FusedChannelWiseConv(torch.nn.Module):
    """``(node_feats, edge_attrs, tp_weights or edge features, edge_index) -> per-node message sums``.

    Equivalent to ``scatter_sum(conv_tp(node_feats[edge_index[0]], edge_attrs, tp_weights),
    edge_index[1], dim_size=len(node_feats))`` for the wrapped cuEq ``ChannelWiseTensorProduct``
    ``conv_tp``, but the gather and the scatter are handed to ``SegmentedPolynomial`` as
    input/output indices, so no edge-sized feature or message tensor is created by us. With a
    ``radial`` MLP the third argument is the edge features and the weights are ``radial(...)``
    of them, made chunk by chunk.
    """

    def __init__(self, conv_tp: torch.nn.Module, radial: Optional[torch.nn.Module] = None,
                 chunk_edges: int = 0) -> None:
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
        self.owns_radial = radial is not None
        self.radial = radial if radial is not None else torch.nn.Identity()
        self.chunk_edges = int(chunk_edges) if chunk_edges > 0 else max(1, CHUNK_WEIGHT_ELEMENTS // self.weight_numel)
        # True where the kernel cannot read low-precision weights itself (see below).
        self.widen_weights = False

    def read_weights_in_own_dtype(self) -> None:
        """Let the kernel read the weights in their own dtype (math and result: the model's).

        cuequivariance's default gives the output the dtype of the first input (the weights);
        rebuilding the polynomial with ``output_dtype_map=[1]`` ties it to the node features.
        The CPU fallback (method ``naive``) would round each path's result to the weights' dtype,
        so there the weights are widened back to the model dtype first (exactly, no rounding).
        """
        import cuequivariance_torch as cuet

        if self.method == "naive":
            self.widen_weights = True
            return
        # The constructor arguments as cuequivariance 0.13.0 (pinned) keeps them for pickling.
        math_dtype = self.poly._math_dtype_orig
        self.poly = cuet.SegmentedPolynomial(
            self.poly._polynomial_orig, method=self.method, math_dtype=math_dtype, output_dtype_map=[1],
            name="fused_conv_tp",
        )

    @torch.jit.ignore
    def extra_repr(self) -> str:
        return (f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out}, method={self.method}, "
                f"chunk_edges={self.chunk_edges}")

    def _messages(self, edge_input: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                  sender: torch.Tensor, receiver: torch.Tensor) -> torch.Tensor:
        """Summed messages of one chunk of edges, as a node-sized tensor."""
        tp_weights = self.radial(edge_input) if self.owns_radial else edge_input
        if self.widen_weights:
            tp_weights = tp_weights.to(x1.dtype)
        input_indices: Dict[int, torch.Tensor] = {1: sender}
        output_indices: Dict[int, torch.Tensor] = {0: receiver}
        # Only ``.shape[0]`` of a shape tensor is read: the node features themselves give the
        # number of receivers without allocating anything (CUDA-graph friendly).
        output_shapes: Dict[int, torch.Tensor] = {0: x1}
        out: List[torch.Tensor] = self.poly(
            [tp_weights, x1, x2],
            input_indices=input_indices,
            output_shapes=output_shapes,
            output_indices=output_indices,
        )
        return out[0]

    def forward(self, node_feats: torch.Tensor, edge_attrs: torch.Tensor, edge_input: torch.Tensor,
                edge_index: torch.Tensor) -> torch.Tensor:
        x1 = self.transpose_in1(node_feats)
        x2 = self.transpose_in2(edge_attrs)
        n_edges = edge_index.shape[1]
        if n_edges == 0:
            # cuequivariance's naive method reads an empty index as "not indexed" and fails, so
            # take the plain per-edge route: zero edges, nothing materialised, and the result
            # stays attached to the autograd graph (forces need that). Host-side shape test only.
            tp_weights = self.radial(edge_input) if self.owns_radial else edge_input
            messages = self.poly([tp_weights, x1[edge_index[0]], x2])[0]
            empty = messages.new_zeros((x1.shape[0], self.out_dim))
            return self.transpose_out(empty.index_add(0, edge_index[1], messages))
        # The chunk bounds depend on the edge count only, which is fixed under a neighbour-list
        # capacity, so the loop unrolls the same way on every step (CUDA-graph friendly).
        stop = min(self.chunk_edges, n_edges)
        out = self._messages(edge_input[:stop], x1, x2[:stop], edge_index[0, :stop], edge_index[1, :stop])
        for start in range(self.chunk_edges, n_edges, self.chunk_edges):
            stop = min(start + self.chunk_edges, n_edges)
            out = out + self._messages(edge_input[start:stop], x1, x2[start:stop], edge_index[0, start:stop],
                                       edge_index[1, start:stop])
        return self.transpose_out(out)


def _forward_honours_conv_fusion(block: torch.nn.Module) -> bool:
    """True when the block's own forward dispatches on ``hasattr(self, "conv_fusion")``."""
    try:
        source = inspect.getsource(type(block).forward)
    except (OSError, TypeError):
        return False
    return 'hasattr(self, "conv_fusion")' in source or "hasattr(self, 'conv_fusion')" in source


def _weights_depend_on_edge_features_only(model: torch.nn.Module) -> bool:
    """True when blocks get ``cutoff=None`` (the radial embedding multiplies the cutoff in)."""
    radial = getattr(model, "radial_embedding", None)
    return radial is not None and bool(getattr(radial, "apply_cutoff", True))


def fuse_convolutions(model: torch.nn.Module, chunk_edges: int = 0) -> int:
    """Give every cuEq interaction block of ``model`` a fused gather-TP-scatter; return how many.

    Works in place on a model converted to cuEquivariance (``backend.convert_to_cueq``), before
    or after ``make_scriptable``. A block is fused only if its ``conv_tp`` is a
    ``ChannelWiseTensorProduct`` and its class's forward takes mace's ``conv_fusion`` branch
    (all of mace 0.3.16's interaction blocks, among them RealAgnosticInteractionBlock and
    RealAgnosticResidualInteractionBlock used by MACE-OFF). Already fused blocks are skipped.
    The radial MLP moves into the fused module when the weights depend on the edge features
    only; ``chunk_edges`` (0: from ``CHUNK_WEIGHT_ELEMENTS``) is for tests.
    """
    owns_radial = _weights_depend_on_edge_features_only(model)
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
        radial = block.conv_tp_weights if owns_radial else None
        block.conv_tp = FusedChannelWiseConv(conv_tp, radial, chunk_edges)
        if owns_radial:
            block.conv_tp_weights = EdgeFeatures()
        # A plain str attribute survives TorchScript, so the scripted block keeps the fused branch.
        block.conv_fusion = FUSION_TAG
        fused += 1
    return fused


def keep_weights_low(model: torch.nn.Module) -> int:
    """Hand each fused block's (already rounded) bf16/fp16 MLP output to the kernel as is; how many.

    Only for fused modules that own their radial MLP (a RadialMLP of the bf16/fp16 policy).
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, FusedChannelWiseConv) and module.owns_radial and hasattr(module.radial, "low_output"):
            module.radial.low_output = True
            module.read_weights_in_own_dtype()
            changed += 1
    return changed
