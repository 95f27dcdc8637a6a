"""Fused gather -> channel-wise TP -> scatter (openmm_mace_lp.fused_conv) against the unfused cuEq path.

On the CPU cuequivariance runs its naive method, whose indexed gather/scatter must reproduce
mace's ``conv_tp(x[sender]) -> scatter_sum`` to rounding, in float64 and float32, for energies and
autograd forces, eagerly and through the project's TorchScript export.
"""
from __future__ import annotations

import copy
import functools
import warnings
from typing import Tuple

import numpy as np
import pytest
import torch

from openmm_mace_lp.backend import default_dtype, make_scriptable
from openmm_mace_lp.export import MACEForce, build_force_module, check_elements, prepare_model
from openmm_mace_lp.fused_conv import FUSION_TAG, FusedChannelWiseConv, fuse_convolutions
from openmm_mace_lp.policy import get_policy

from . import helpers
from .helpers import ARCH_BOTH, acetamide, model, rel_error, water_box

pytest.importorskip("cuequivariance_torch")

TOLERANCE = {"fp64": 1e-12, "fp32": 1e-5}
SYSTEMS = {"water": lambda: water_box(), "acetamide": acetamide}


def _silence() -> None:
    warnings.filterwarnings("ignore", message=".*cuequivariance_ops_torch is not available.*")


@functools.lru_cache(maxsize=None)
def _plain_first_block_model() -> torch.nn.Module:
    """ARCH_BOTH with RealAgnosticInteractionBlock first (as in MACE-OFF23), residual after."""
    from e3nn import o3
    from mace import modules

    from openmm_mace_lp.systems.architectures import _E0_EV

    arch = ARCH_BOTH
    with default_dtype(torch.float64), torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        built = modules.ScaleShiftMACE(
            r_max=arch.r_max, num_bessel=arch.num_bessel, num_polynomial_cutoff=arch.num_polynomial_cutoff,
            max_ell=arch.max_ell, interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
            num_interactions=arch.num_interactions, num_elements=len(arch.elements),
            hidden_irreps=o3.Irreps(arch.hidden_irreps), MLP_irreps=o3.Irreps(arch.mlp_irreps),
            gate=torch.nn.functional.silu, atomic_energies=np.array([_E0_EV[z] for z in arch.elements]),
            avg_num_neighbors=arch.avg_num_neighbors, atomic_numbers=list(arch.elements),
            correlation=arch.correlation, radial_type="bessel", radial_MLP=list(arch.radial_mlp),
            atomic_inter_scale=arch.scale, atomic_inter_shift=arch.shift,
        )
        with torch.no_grad():
            for parameter in built.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
    return built.eval()


def _source_model(name: str) -> torch.nn.Module:
    return model("both") if name == "residual" else _plain_first_block_model()


@functools.lru_cache(maxsize=None)
def _prepared(name: str, policy: str) -> Tuple[torch.nn.Module, torch.nn.Module, int]:
    """(unfused, fused, blocks fused): the project's cuEq preparation, then fusion of a copy."""
    _silence()
    unfused, _ = prepare_model(_source_model(name), get_policy(policy), "cueq")
    fused = copy.deepcopy(unfused)
    count = fuse_convolutions(fused)
    return unfused, fused, count


def _force(prepared: torch.nn.Module, system: "helpers.TestSystem", dtype: torch.dtype) -> MACEForce:
    index = check_elements(prepared, system.atomic_numbers)
    attrs = torch.nn.functional.one_hot(torch.tensor(index), num_classes=len(prepared.atomic_numbers))
    return MACEForce(prepared, attrs, None, len(index), system.box is not None, dtype, "interaction_energy")


def _call(module: torch.nn.Module, system: "helpers.TestSystem") -> Tuple[float, np.ndarray]:
    pos = torch.tensor(system.positions, dtype=torch.float64)
    box = None if system.box is None else torch.tensor(system.box, dtype=torch.float64)
    energy, forces = module(pos, box)
    return float(energy), forces.detach().double().numpy()


def _compare(label: str, reference: Tuple[float, np.ndarray], value: Tuple[float, np.ndarray], tol: float) -> None:
    e_rel = abs(value[0] - reference[0]) / abs(reference[0])
    f_rel = rel_error(value[1], reference[1])
    print(f"\n{label}: E={reference[0]:.12g} kJ/mol  |dE|/|E|={e_rel:.3e}  |dF|/|F|={f_rel:.3e}")
    assert e_rel <= tol and f_rel <= tol


@pytest.mark.parametrize("name", ["residual", "plain-first"])
def test_every_interaction_block_is_fused(name):
    unfused, fused, count = _prepared(name, "fp64")
    assert count == len(fused.interactions) == 2
    first = "RealAgnosticResidualInteractionBlock" if name == "residual" else "RealAgnosticInteractionBlock"
    assert [type(b).__name__ for b in fused.interactions] == [first, "RealAgnosticResidualInteractionBlock"]
    for block in fused.interactions:
        assert isinstance(block.conv_tp, FusedChannelWiseConv)
        assert block.conv_fusion == FUSION_TAG
    assert not any(hasattr(block, "conv_fusion") for block in unfused.interactions)
    assert fuse_convolutions(fused) == 0  # idempotent


@pytest.mark.parametrize("name", ["residual", "plain-first"])
@pytest.mark.parametrize("policy", ["fp64", "fp32"])
@pytest.mark.parametrize("system_name", sorted(SYSTEMS))
def test_fused_matches_unfused_eager(name, policy, system_name):
    system = SYSTEMS[system_name]()
    unfused, fused, _ = _prepared(name, policy)
    dtype = get_policy(policy).model_dtype
    reference = _call(_force(unfused, system, dtype), system)
    value = _call(_force(fused, system, dtype), system)
    _compare(f"eager {name} {policy} {system_name}", reference, value, TOLERANCE[policy])


def test_mul_ir_layout_transposes():
    """A cuEq model converted with the mul_ir layout: the fused module's transposes are real."""
    from mace.cli.convert_e3nn_cueq import run as mace_convert_to_cueq

    _silence()
    with default_dtype(torch.float64):
        unfused = mace_convert_to_cueq(copy.deepcopy(model("both")), device="cpu", layout="mul_ir")
    unfused = make_scriptable(unfused.double()).eval()
    fused = copy.deepcopy(unfused)
    assert fuse_convolutions(fused) == 2
    # The second block's node features hold 1o irreps: its transposes actually permute.
    assert "(mul,irrep) -> (irrep,mul)" in repr(fused.interactions[1].conv_tp.transpose_in1)
    assert "(irrep,mul) -> (mul,irrep)" in repr(fused.interactions[1].conv_tp.transpose_out)
    system = water_box()
    reference = _call(_force(unfused, system, torch.float64), system)
    value = _call(_force(fused, system, torch.float64), system)
    _compare("eager residual fp64 water mul_ir", reference, value, TOLERANCE["fp64"])


@pytest.mark.parametrize("policy", ["fp64", "fp32"])
@pytest.mark.parametrize("system_name", sorted(SYSTEMS))
def test_fused_backend_scripts_through_export(policy, system_name):
    """The ``cueq-fused`` backend of build_force_module against ``cueq``, scripted."""
    _silence()
    system = SYSTEMS[system_name]()
    periodic = system.box is not None
    unfused = build_force_module(model("both"), policy, "cueq", system.atomic_numbers, periodic=periodic)
    fused = build_force_module(model("both"), policy, "cueq-fused", system.atomic_numbers, periodic=periodic)
    assert isinstance(fused, torch.jit.ScriptModule)
    for block in fused.model.interactions:
        # The scripted block took mace's conv_fusion branch: no scatter_sum left in its code.
        assert "scatter_sum" not in block.code
        assert "edge_index" in block.conv_tp.code
    for block in unfused.model.interactions:
        assert "scatter_sum" in block.code
    _compare(f"scripted residual {policy} {system_name}", _call(unfused, system), _call(fused, system),
             TOLERANCE[policy])


@pytest.mark.parametrize("num_edges", [0, 1, 40])
def test_fused_module_matches_gather_tp_scatter(num_edges):
    """The module alone, on random data: equal to conv_tp(x[sender], radial(f)) -> scatter_sum.

    No edges give zeros; 40 edges in chunks of 7 (the last one short) give the same sums."""
    from mace.tools.scatter import scatter_sum

    _silence()
    unfused, fused, _ = _prepared("residual", "fp64")
    block = unfused.interactions[1]
    conv_tp, mlp = block.conv_tp, block.conv_tp_weights
    generator = torch.Generator().manual_seed(num_edges)
    n = 9
    x = torch.randn(n, conv_tp.irreps_in1.dim, generator=generator, dtype=torch.float64)
    y = torch.randn(num_edges, conv_tp.irreps_in2.dim, generator=generator, dtype=torch.float64)
    edge_feats = torch.randn(num_edges, mlp.layers[0].weight.shape[0], generator=generator, dtype=torch.float64)
    edge_index = torch.randint(0, n, (2, num_edges), generator=generator)
    reference = scatter_sum(conv_tp(x[edge_index[0]], y, mlp(edge_feats)), edge_index[1], dim=0, dim_size=n)
    for chunk_edges in (0, 7):
        module = FusedChannelWiseConv(conv_tp, copy.deepcopy(mlp), chunk_edges)
        assert module.owns_radial and module.chunk_edges == (chunk_edges or 2**29 // conv_tp.weight_numel)
        value = module(x, y, edge_feats, edge_index)
        assert value.shape == reference.shape == (n, conv_tp.irreps_out.dim)
        torch.testing.assert_close(value, reference, rtol=1e-13, atol=1e-13)
        scripted = torch.jit.script(module)
        torch.testing.assert_close(scripted(x, y, edge_feats, edge_index), reference, rtol=1e-13, atol=1e-13)


def test_system_without_edges():
    """Atoms beyond each other's cutoff: the fused model gives the unfused (pure E0-free) result."""
    system = acetamide()
    system.positions = system.positions * 10.0  # all pairs far beyond r_max
    unfused, fused, _ = _prepared("residual", "fp64")
    reference = _call(_force(unfused, system, torch.float64), system)
    value = _call(_force(fused, system, torch.float64), system)
    assert value[0] == reference[0] and np.array_equal(value[1], reference[1])


def _chunked(name: str, policy: str, chunk_edges: int) -> torch.nn.Module:
    unfused, _, _ = _prepared(name, policy)
    fused = copy.deepcopy(unfused)
    assert fuse_convolutions(fused, chunk_edges=chunk_edges) == 2
    return fused


@pytest.mark.parametrize("policy", ["fp64", "fp32"])
def test_radial_mlp_moves_into_the_fused_module_and_chunks_add_up(policy):
    """Weights made and contracted 13 edges at a time: same energy and forces as unfused cuEq."""
    system = water_box()
    unfused, _, _ = _prepared("residual", policy)
    fused = _chunked("residual", policy, 13)
    for block in fused.interactions:
        assert type(block.conv_tp_weights).__name__ == "EdgeFeatures"
        assert block.conv_tp.owns_radial and block.conv_tp.chunk_edges == 13
        assert type(block.conv_tp.radial).__name__ == "RadialMLP"
    dtype = get_policy(policy).model_dtype
    reference = _call(_force(unfused, system, dtype), system)
    _compare(f"chunked {policy}", reference, _call(_force(fused, system, dtype), system), TOLERANCE[policy])


def test_blocks_that_multiply_the_cutoff_keep_their_mlp():
    """With ``apply_cutoff=False`` mace passes the cutoff to the block, which scales the MLP's
    output: the MLP must stay in the block (only the tensor product is fused and chunked)."""
    system = water_box()
    unfused, _, _ = _prepared("residual", "fp64")
    unfused = copy.deepcopy(unfused)
    unfused.radial_embedding.apply_cutoff = False
    fused = copy.deepcopy(unfused)
    assert fuse_convolutions(fused, chunk_edges=11) == 2
    for block in fused.interactions:
        assert not block.conv_tp.owns_radial and type(block.conv_tp_weights).__name__ == "RadialMLP"
    reference = _call(_force(unfused, system, torch.float64), system)
    _compare("cutoff in block", reference, _call(_force(fused, system, torch.float64), system), TOLERANCE["fp64"])


@pytest.mark.parametrize("policy", ["bf16", "fp16"])
def test_low_precision_policies_hand_rounded_weights_to_the_kernel(policy):
    """bf16/fp16: the radial MLP's (already rounded) output reaches the tensor product in that
    format; energies and forces equal the unfused cuEq model of the same policy, whose weights
    hold the same values in float32, to float32 rounding."""
    _silence()
    system = water_box()
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[policy]
    fused, counts = prepare_model(_source_model("residual"), get_policy(policy), "cueq-fused")
    unfused, _ = prepare_model(_source_model("residual"), get_policy(policy), "cueq")
    assert counts["low_precision_tp_weights"] == 2
    seen = []
    hooks = [b.conv_tp.radial.register_forward_hook(lambda m, i, o: seen.append(o.dtype)) for b in fused.interactions]
    value = _call(_force(fused, system, torch.float32), system)
    for hook in hooks:
        hook.remove()
    assert seen == [low, low]
    _compare(f"low weights {policy}", _call(_force(unfused, system, torch.float32), system), value, 2e-6)
    scripted = build_force_module(model("both"), policy, "cueq-fused", system.atomic_numbers, periodic=True)
    _compare(f"low weights {policy} scripted", value, _call(scripted, system), 1e-6)
