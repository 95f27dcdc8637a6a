"""Deterministic MACE models built from mace-torch's own constructors (random weights).

Used for speed work (the MACE-OFF24(M) architecture, whose trained weights cannot be
downloaded here) and for tests (tiny models that evaluate in milliseconds on a CPU). Weights
come from a seeded generator, so the same call always gives the same model; none of these
weights are ever committed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

# MACE-OFF elements: H, C, N, O, F, P, S, Cl, Br, I.
MACE_OFF_ELEMENTS = (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)

# Rough isolated-atom energies (eV) so that E0 terms have realistic magnitudes.
_E0_EV = {1: -13.6, 6: -1029.0, 7: -1485.0, 8: -2042.0, 9: -2713.0, 15: -9285.0,
          16: -10830.0, 17: -12520.0, 35: -70040.0, 53: -193700.0}


@dataclass(frozen=True)
class Architecture:
    """Hyper-parameters of a ScaleShiftMACE model."""

    hidden_irreps: str = "128x0e+128x1o"
    max_ell: int = 3
    correlation: int = 3
    num_interactions: int = 2
    r_max: float = 6.0
    num_bessel: int = 8
    num_polynomial_cutoff: int = 5
    radial_mlp: Sequence[int] = (64, 64, 64)
    mlp_irreps: str = "16x0e"
    elements: Sequence[int] = MACE_OFF_ELEMENTS
    avg_num_neighbors: float = 30.0
    scale: float = 0.5
    shift: float = 0.0
    extra: dict = field(default_factory=dict)


MACE_OFF24_MEDIUM = Architecture()
TINY = Architecture(hidden_irreps="8x0e+8x1o", r_max=4.0, radial_mlp=(16, 16, 16),
                    mlp_irreps="8x0e", elements=(1, 6, 7, 8), avg_num_neighbors=8.0)


def build_mace(arch: Architecture = MACE_OFF24_MEDIUM, seed: int = 0, dtype: str = "float64"):
    """A ScaleShiftMACE with the given architecture and seeded random weights.

    Weights are drawn by mace's own initialisers from a generator seeded with ``seed``; then
    every parameter is perturbed by the same generator so that no weight is left at an
    exactly symmetric or zero initial value (which could hide layout bugs in tests).
    """
    import mace  # noqa: F401  (must precede e3nn: it sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD)
    import torch
    from e3nn import o3
    from mace import modules

    from openmm_mace_lp.backend import default_dtype

    torch_dtype = getattr(torch, dtype)
    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    with default_dtype(torch_dtype), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=arch.r_max,
            num_bessel=arch.num_bessel,
            num_polynomial_cutoff=arch.num_polynomial_cutoff,
            max_ell=arch.max_ell,
            interaction_cls=interaction,
            interaction_cls_first=interaction,
            num_interactions=arch.num_interactions,
            num_elements=len(arch.elements),
            hidden_irreps=o3.Irreps(arch.hidden_irreps),
            MLP_irreps=o3.Irreps(arch.mlp_irreps),
            gate=torch.nn.functional.silu,
            atomic_energies=np.array([_E0_EV.get(z, -100.0) for z in arch.elements]),
            avg_num_neighbors=arch.avg_num_neighbors,
            atomic_numbers=list(arch.elements),
            correlation=arch.correlation,
            radial_type="bessel",
            radial_MLP=list(arch.radial_mlp),
            atomic_inter_scale=arch.scale,
            atomic_inter_shift=arch.shift,
            **arch.extra,
        )
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def save_model(model, path) -> None:
    """Save like mace does (the whole module pickled), atomically."""
    import torch

    from openmm_mace_lp.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(model, tmp)
