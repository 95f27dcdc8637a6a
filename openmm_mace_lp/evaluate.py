"""Evaluate the exported module on stored frames (no OpenMM): the static precision errors' input."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np


def evaluate_frames(
    model_path: Optional[str],
    policy: str,
    backend: str,
    atomic_numbers: Sequence[int],
    positions_nm: np.ndarray,
    boxes_nm: Optional[np.ndarray],
    device: str = "cpu",
    energy_type: str = "interaction_energy",
) -> Tuple[np.ndarray, np.ndarray]:
    """Energies (kJ/mol) [n_frames] and forces (kJ/mol/nm) [n_frames, n_atoms, 3] of a policy.

    The same TorchScript module OpenMM would run is built once (or taken from the export
    cache) and called frame by frame; ``model_path=None`` means the embedded default model.
    ``energy_type='energy'`` includes the atomic reference energies (E0s).
    """
    import torch

    from .export import export_to_file
    from .model_files import default_model_path

    path = default_model_path() if model_path is None else model_path
    positions_nm = np.asarray(positions_nm, dtype=np.float64)
    if positions_nm.ndim != 3 or positions_nm.shape[1:] != (len(atomic_numbers), 3):
        raise ValueError(
            f"positions must have shape (n_frames, {len(atomic_numbers)}, 3); got {positions_nm.shape}."
        )
    periodic = boxes_nm is not None
    module_file = export_to_file(path, policy, backend, list(atomic_numbers), periodic=periodic, device=device,
                                 energy_type=energy_type)
    module = torch.jit.load(os.fspath(module_file), map_location=device)
    energies = np.empty(len(positions_nm))
    forces = np.empty_like(positions_nm)
    for i, frame in enumerate(positions_nm):
        pos = torch.tensor(frame, dtype=torch.float64, device=device)
        box = torch.tensor(boxes_nm[i], dtype=torch.float64, device=device) if periodic else None
        energy, frame_forces = module(pos, box)
        energies[i] = float(energy)
        forces[i] = frame_forces.double().cpu().numpy()
    return energies, forces
