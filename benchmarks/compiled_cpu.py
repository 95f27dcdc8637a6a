"""TorchScript against AOTInductor (``compiler="inductor"``) for MD on OpenMM's CPU platform.

Why: the README's main job runs on a CPU; this measures what the compiled energy+force graph
changes there, through the public API (``MLPotential("mace-lp", ...).createSystem(...,
compiler=...)``), on the embedded model and a water box at 1 g/cm3, in one process:

* ``first_call_s``: createSystem (export or compile, with an empty export cache and an empty
  Inductor cache of its own) plus the first step, and the same again with the export cache
  filled (a second process's start);
* ``ms_per_step``: median of alternating blocks of LangevinMiddle steps (1 fs, 300 K), so that
  both compilers see the same machine load; the ratio is TorchScript ms / Inductor ms.

    python benchmarks/compiled_cpu.py --atoms 192 --blocks 6 --steps 10 \\
        -o benchmarks/results/compiled_2026-12-01_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

COMPILERS = ("torchscript", "inductor")


def make_context(structure, compiler: str, threads: int):
    import openmm
    from openmm import unit
    from openmmml import MLPotential

    system = MLPotential("mace-lp").createSystem(structure.topology, device="cpu", platform="CPU",
                                                 fixedNeighborList=True, positions=structure.positions,
                                                 compiler=compiler)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
    integrator.setRandomNumberSeed(1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": str(threads)})
    context.setPeriodicBoxVectors(*structure.box)
    context.setPositions(structure.positions)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    return context, integrator


def first_call(structure, compiler: str, threads: int):
    started = time.perf_counter()
    context, integrator = make_context(structure, compiler, threads)
    integrator.step(1)
    context.getState(getEnergy=True)
    return context, integrator, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--atoms", type=int, default=192)
    parser.add_argument("--blocks", type=int, default=6, help="timed blocks per compiler, alternating")
    parser.add_argument("--steps", type=int, default=10, help="MD steps per block")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)
    inductor_cache = tempfile.TemporaryDirectory(prefix="mace-lp-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache.name  # a cold compile, read before torch
    import torch

    from openmm_mace_lp.model_files import default_model_path, sha256_of
    from openmm_mace_lp.systems.builders import load_water_box

    torch.set_num_threads(args.threads)
    structure = load_water_box(args.atoms)
    result = {"card": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "atoms": args.atoms, "threads": args.threads, "model_sha256": sha256_of(default_model_path()),
              "torch": torch.__version__, "steps_per_block": args.steps, "rows": {}}
    contexts = {}
    with tempfile.TemporaryDirectory(prefix="mace-lp-cache-") as cache:
        os.environ["OPENMM_MACE_LP_CACHE"] = cache
        for compiler in COMPILERS:
            context, integrator, cold = first_call(structure, compiler, args.threads)
            _, _, warm = first_call(structure, compiler, args.threads)
            contexts[compiler] = (context, integrator)
            result["rows"][compiler] = {"first_call_s": cold, "first_call_cached_s": warm, "block_ms_per_step": []}
            print(f"{compiler}: first call {cold:.1f} s, from the cache {warm:.1f} s", flush=True)
        for _ in range(args.blocks):
            for compiler in COMPILERS:
                context, integrator = contexts[compiler]
                started = time.perf_counter()
                integrator.step(args.steps)
                context.getState(getEnergy=True)
                result["rows"][compiler]["block_ms_per_step"].append(
                    (time.perf_counter() - started) * 1000.0 / args.steps)
    for row in result["rows"].values():
        row["ms_per_step"] = statistics.median(row["block_ms_per_step"])
    ts, ind = result["rows"]["torchscript"]["ms_per_step"], result["rows"]["inductor"]["ms_per_step"]
    result["speedup_inductor_vs_torchscript"] = ts / ind
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    lines = [f"Card: {result['card']}; embedded model (SHA-256 {result['model_sha256'][:8]}), {args.atoms} atoms "
             f"of water, OpenMM CPU platform, {args.threads} threads, torch {torch.__version__}, fixed-capacity "
             f"neighbour list; median of {args.blocks} alternating blocks of {args.steps} steps", "",
             "| compiler | ms/step | first call s (empty cache) | first call s (cached) |", "| --- | --- | --- | --- |"]
    for compiler, row in result["rows"].items():
        lines.append(f"| {compiler} | {row['ms_per_step']:.1f} | {row['first_call_s']:.1f} | "
                     f"{row['first_call_cached_s']:.1f} |")
    lines += ["", f"Inductor is {result['speedup_inductor_vs_torchscript']:.2f}x TorchScript's speed."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
