"""Does running out of GPU memory inside openmm-torch's CUDA-graph capture end the process?

The same ~10k-atom water box (MACE-OFF24(M) architecture, random weights, ``cueq-fused``, fp32)
under a cap on torch's memory (``torch.cuda.set_per_process_memory_fraction``), with
``cudaGraphs`` off and on. Run each case in its own process, because a failure here is a
segmentation fault:

    python benchmarks/graph_capture_memory.py off 0.19   # control: fits
    python benchmarks/graph_capture_memory.py on 0.19    # capture needs ~2x: does it fail cleanly?
    python benchmarks/graph_capture_memory.py on 0.5     # capture with room

Results: benchmarks/results/graph_capture_memory_2026-11-28_h100.md.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import tempfile


def main(graphs: bool, fraction: float) -> None:
    import torch

    import mace  # noqa: F401  (before e3nn)
    import openmm
    import openmm.unit as unit
    from openmmml import MLPotential

    from openmm_mace_lp.systems.architectures import MACE_OFF24_MEDIUM, build_mace, save_model
    from openmm_mace_lp.systems.builders import tiled_water_box

    path = os.path.join(tempfile.gettempdir(), "mace-off24-medium-random.model")
    if not os.path.exists(path):
        save_model(build_mace(MACE_OFF24_MEDIUM, seed=0, dtype="float64"), path)
    box, _, _ = tiled_water_box(10000)
    torch.cuda.set_per_process_memory_fraction(fraction)
    system = MLPotential("mace-lp", modelPath=path, policy="fp32").createSystem(
        box.topology, device="cuda", cudaGraphs=graphs, positions=box.positions)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CUDA"), {"Precision": "mixed"})
    context.setPeriodicBoxVectors(*box.box)
    context.setPositions(box.positions)
    label = f"graphs={graphs} cap={fraction} of {torch.cuda.get_device_name(0)}"
    try:
        energy = context.getState(getEnergy=True, getForces=True).getPotentialEnergy()
        integrator.step(15)
        print(f"{label}: ran, energy {energy}, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
    except Exception as error:  # noqa: BLE001 - the point is to see how it fails
        print(f"{label}: Python error {type(error).__name__}: {str(error)[:300]}", flush=True)


if __name__ == "__main__":
    faulthandler.enable()
    if len(sys.argv) != 3 or sys.argv[1] not in ("on", "off"):
        sys.exit(__doc__)
    main(sys.argv[1] == "on", float(sys.argv[2]))
