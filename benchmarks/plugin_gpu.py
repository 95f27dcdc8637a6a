"""GPU check of the plug-in: one MD step per policy x backend, forces vs fp64 eager, ms/step vs anchor.

Runs on the GPU node (see README "GPU node"); writes a JSON and a Markdown table. Model: the
MACE-OFF24(M) architecture with seeded random weights (trained weights cannot be downloaded
here). System: water at 1 g/cm3 (systems/structures). For each backend x policy it builds the
TorchForce through ``MLPotential("mace-lp", ...)`` on the CUDA platform, runs LangevinMiddle
steps at 1 fs and reports the median step time, and compares the forces at the starting
positions with mace's own eager float64 evaluation. The anchor, measured in the same run, is
openmm-ml 1.8's ``MLPotential("mace", modelPath=...)`` (a PythonForce) in single precision.

    python benchmarks/plugin_gpu.py --atoms 1029 3000 --out benchmarks/results/plugin_gpu.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np


def card_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def eager_reference(model_path: str, numbers, positions_nm, box_nm, device: str):
    """mace-torch's eager float64 evaluation (matscipy neighbour list)."""
    import torch
    from mace.data.neighborhood import get_neighborhood
    from mace.tools import atomic_numbers_to_indices, to_one_hot, utils

    from openmm_mace_lp.export import EV_TO_KJ_PER_MOL

    # Load on the CPU, then move: e3nn rebuilds some constants on unpickling (on the CPU).
    model = torch.load(model_path, map_location="cpu", weights_only=False).to(device).double()
    table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    attrs = to_one_hot(torch.tensor(atomic_numbers_to_indices(numbers, z_table=table)).unsqueeze(-1), len(table))
    # OpenMM's CUDA platform (mixed precision) hands TorchForce float32 positions: compare the
    # model, not that input rounding.
    pos = positions_nm.astype(np.float32).astype(np.float64) * 10.0
    cell = box_nm * 10.0
    edges, shifts, _, _ = get_neighborhood(pos, float(model.r_max), [True] * 3, cell)
    data = {
        "positions": torch.tensor(pos, device=device),
        "node_attrs": attrs.double().to(device),
        "edge_index": torch.tensor(edges, dtype=torch.long, device=device),
        "shifts": torch.tensor(shifts, device=device),
        "batch": torch.zeros(len(numbers), dtype=torch.long, device=device),
        "ptr": torch.tensor([0, len(numbers)], device=device),
        "cell": torch.tensor(cell, device=device),
    }
    out = model(data, compute_force=True)
    forces = out["forces"].detach().cpu().numpy() * EV_TO_KJ_PER_MOL * 10.0
    del model
    return forces


def time_steps(context, integrator, target_s: float = 3.0, max_steps: int = 200) -> tuple[float, int]:
    """Median ms/step over blocks of steps (each block ends with a state read, i.e. a sync)."""
    integrator.step(5)  # warm-up (TorchScript profiling runs)
    context.getState(getEnergy=True)
    start = time.perf_counter()
    integrator.step(5)
    context.getState(getEnergy=True)
    per_step = (time.perf_counter() - start) / 5
    block = max(5, min(50, int(0.5 / max(per_step, 1e-4))))
    n_blocks = max(3, min(max_steps // block, int(target_s / (per_step * block)) + 1))
    samples = []
    for _ in range(n_blocks):
        start = time.perf_counter()
        integrator.step(block)
        context.getState(getEnergy=True)
        samples.append((time.perf_counter() - start) / block * 1000)
    return statistics.median(samples), n_blocks * block


def measure(system, structure, dt_fs: float, first_call_start: float, device: str) -> dict:
    import openmm
    import openmm.unit as unit
    import torch

    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, dt_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(1)
    if device == "cuda":
        context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CUDA"), {"Precision": "mixed"})
        torch.cuda.reset_peak_memory_stats()
    else:
        context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPeriodicBoxVectors(*structure.box)
    context.setPositions(structure.positions)
    state = context.getState(getForces=True, getEnergy=True)
    first_call_s = time.perf_counter() - first_call_start
    forces = np.asarray(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    ms, steps = time_steps(context, integrator)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    del context, integrator
    return {"forces": forces, "ms_per_step": ms, "steps_timed": steps, "first_call_s": first_call_s,
            "peak_gib": peak, "energy_kJ_mol": state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--atoms", type=int, nargs="+", default=[1029, 3000])
    parser.add_argument("--policies", default="fp64,fp32,tf32,bf16,fp16")
    parser.add_argument("--backends", default="cueq,e3nn")
    parser.add_argument("--dt-fs", type=float, default=1.0)
    parser.add_argument("--out", default="benchmarks/results/plugin_gpu.json")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU dry run of this script with a tiny model (checks the script, times nothing useful)")
    args = parser.parse_args(argv)

    import torch

    import mace  # noqa: F401
    from openmmml import MLPotential

    from openmm_mace_lp.backend import cueq_kernels_available
    from openmm_mace_lp.export import library_versions
    from openmm_mace_lp.systems.architectures import MACE_OFF24_MEDIUM, build_mace, save_model
    from openmm_mace_lp.systems.builders import load_water_box

    from openmm_mace_lp.systems.architectures import TINY

    device = "cpu" if args.smoke else "cuda"
    workdir = Path(tempfile.mkdtemp())
    model_path = str(workdir / "mace-off24m-random.model")
    save_model(build_mace(TINY if args.smoke else MACE_OFF24_MEDIUM, seed=0, dtype="float64"), model_path)
    report = {"card": card_name(device), "driver": torch.version.cuda, "versions": library_versions(),
              "cueq_kernels": cueq_kernels_available(),
              "model": "tiny smoke-test model" if args.smoke else "MACE-OFF24(M) architecture, random weights (seed 0)",
              "dt_fs": args.dt_fs, "integrator": "LangevinMiddle 300 K, CUDA platform mixed precision", "rows": []}
    import openmm

    report["versions"]["openmm"] = openmm.__version__
    for n_atoms in args.atoms:
        structure = load_water_box(n_atoms)
        numbers = [a.element.atomic_number for a in structure.topology.atoms()]
        reference = eager_reference(model_path, numbers, structure.positions, structure.box, device)
        # Anchor: openmm-ml 1.8's MACE (PythonForce), same model, single precision.
        anchor = None
        try:
            start = time.perf_counter()
            system = MLPotential("mace", modelPath=model_path).createSystem(structure.topology, precision="single")
            anchor = measure(system, structure, args.dt_fs, start, device)
            anchor_row = {"atoms": len(numbers), "backend": "openmm-ml-1.8", "policy": "single",
                          **{k: v for k, v in anchor.items() if k != "forces"},
                          "force_rel_err_vs_fp64_eager": float(np.linalg.norm(anchor["forces"] - reference) / np.linalg.norm(reference))}
            report["rows"].append(anchor_row)
            print(f"[{len(numbers)} atoms] anchor openmm-ml 1.8: {anchor['ms_per_step']:.2f} ms/step", flush=True)
        except Exception:  # noqa: BLE001 - record and go on
            report["rows"].append({"atoms": len(numbers), "backend": "openmm-ml-1.8", "error": traceback.format_exc()[-2000:]})
        for backend in args.backends.split(","):
            for policy in args.policies.split(","):
                row = {"atoms": len(numbers), "backend": backend, "policy": policy}
                try:
                    start = time.perf_counter()
                    potential = MLPotential("mace-lp", modelPath=model_path, policy=policy, backend=backend)
                    system = potential.createSystem(structure.topology, device=device)
                    result = measure(system, structure, args.dt_fs, start, device)
                    forces = result.pop("forces")
                    row.update(result)
                    row["force_rel_err_vs_fp64_eager"] = float(np.linalg.norm(forces - reference) / np.linalg.norm(reference))
                    row["force_max_abs_err_kJ_mol_nm"] = float(np.abs(forces - reference).max())
                    row["ns_per_day"] = args.dt_fs * 1e-6 * 86400 / (row["ms_per_step"] / 1000)
                    if anchor is not None:
                        row["anchor_ms_per_step"] = anchor["ms_per_step"]
                        row["speedup_vs_anchor"] = anchor["ms_per_step"] / row["ms_per_step"]
                    print(f"[{len(numbers)} atoms] {backend:5s} {policy:5s} {row['ms_per_step']:8.2f} ms/step "
                          f"rel.err {row['force_rel_err_vs_fp64_eager']:.2e} first {row['first_call_s']:.1f}s", flush=True)
                except Exception:  # noqa: BLE001
                    row["error"] = traceback.format_exc()[-3000:]
                    print(f"[{len(numbers)} atoms] {backend} {policy} FAILED\n{row['error']}", flush=True)
                report["rows"].append(row)
                write_report(report, Path(args.out))  # after every row: a cut-off run keeps its rows
                if device == "cuda":
                    torch.cuda.empty_cache()
    print(write_report(report, Path(args.out)))
    return 0


def write_report(report: dict, out: Path) -> str:
    from openmm_mace_lp.atomic import atomic_write_text

    table = markdown_table(report)
    atomic_write_text(out, json.dumps(report, indent=1))
    atomic_write_text(out.with_suffix(".md"), table)
    return table


def markdown_table(report: dict) -> str:
    lines = [f"Card: {report['card']} (CUDA {report['driver']}); {report['model']}; {report['integrator']}, "
             f"{report['dt_fs']} fs; cuEq kernels: {report['cueq_kernels']}", "",
             "| atoms | backend | policy | ms/step | ns/day | speed-up vs anchor | force rel. err vs fp64 eager | first call s | peak GiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['atoms']} | {row['backend']} | {row.get('policy', '')} | failed | | | | | |")
            continue
        lines.append(
            f"| {row['atoms']} | {row['backend']} | {row['policy']} | {row['ms_per_step']:.2f} | "
            f"{row.get('ns_per_day', 1e-6 * report['dt_fs'] * 86400 / (row['ms_per_step'] / 1000)):.3f} | "
            f"{row.get('speedup_vs_anchor', 1.0):.2f} | {row['force_rel_err_vs_fp64_eager']:.2e} | "
            f"{row['first_call_s']:.1f} | {row['peak_gib']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
