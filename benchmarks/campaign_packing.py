"""How many runs should share one GPU? Aggregate ns/day of N concurrent runs on one card.

Runs N copies of one config (seeds 1..N, one shared minimised start) at once through the campaign
code itself: a local Dask cluster pinned to one GPU with N worker processes, i.e. exactly what
``cluster.runs_per_gpu = N`` does. Every run carries a stopwatch reporter (a time stamp at each
report step of both phases); the aggregate speed is measured over the window in which all N runs
were stepping, so process start-up, model export and graph capture stay out of it::

    aggregate ns/day = sum over runs of (steps made in the window) x timestep / window length

The total work is the same for every N (``--steps`` production steps split over the N runs), so
each N takes about the same wall time if packing gains nothing.

    # on the GPU node (1029 and 3000 atoms; writes JSON and Markdown):
    python benchmarks/campaign_packing.py --waters 343,1000 --counts 1,2,4,8 -o $OUT/packing.json --max-minutes 9
    # CPU check of the plumbing (tiny model, Reference platform):
    python benchmarks/campaign_packing.py --smoke -o /tmp/packing.json

Not run by CI (it measures hardware); ``--smoke`` is tested.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "simulations" / "examples" / "water_1029_npt.toml"
SAMPLES_FILE = "{seed}.samples"
# Within this fraction of the best aggregate, the smallest N is recommended (fewer runs in flight
# means each finishes sooner and a crash costs less).
NEAR_BEST = 0.95


def _register_by_value() -> None:
    """Workers cannot import this script: send its reporter class by value."""
    if __name__ != "__main__":
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Stopwatch:
    """OpenMM reporter: appends ``<epoch seconds> <steps of both phases so far>`` at every
    ``interval`` steps (the run's report interval, so it adds no extra stop).

    With a ``barrier`` (a folder and the number of runs) its first report also waits until every
    run has reached its first report, i.e. has built its context and captured its step, so that
    the N runs step together: without it a run that exports or captures late can find the others
    already finished (measured on an H200: N = 2 and 8 then had no common window at all)."""

    def __init__(self, path: str, offset: int, interval: int, barrier: tuple[str, int] | None = None,
                 barrier_timeout_s: float = 120.0) -> None:
        self.path, self.offset, self.interval = path, offset, interval
        self.barrier, self.barrier_timeout_s = barrier, barrier_timeout_s

    def describeNextReport(self, simulation):  # noqa: N802 - OpenMM's reporter API
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": None, "include": []}

    def report(self, simulation, state) -> None:
        if self.barrier is not None:
            wait_for_all(*self.barrier, name=Path(self.path).name, timeout_s=self.barrier_timeout_s)
            self.barrier = None
        with open(self.path, "a") as handle:
            handle.write(f"{time.time():.6f} {self.offset + simulation.currentStep}\n")


def wait_for_all(folder: str, count: int, name: str, timeout_s: float) -> bool:
    """Mark ``name`` ready in ``folder`` and wait until ``count`` runs are (False on time-out)."""
    ready = Path(folder)
    ready.mkdir(parents=True, exist_ok=True)
    (ready / name).touch()
    deadline = time.time() + timeout_s
    while len(list(ready.iterdir())) < count:
        if time.time() >= deadline:
            return False
        time.sleep(0.02)
    return True


def read_samples(path: Path) -> list[tuple[float, int]]:
    if not path.is_file():
        return []
    samples = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            samples.append((float(parts[0]), int(parts[1])))
    return samples


def overlap_throughput(runs: Sequence[Sequence[tuple[float, int]]], timestep_fs: float) -> dict[str, Any]:
    """Aggregate ns/day over the window in which every run was stepping.

    Each run's (time, cumulative steps) samples are interpolated linearly at the window's ends.
    """
    import numpy as np

    if not runs or any(len(samples) < 2 for samples in runs):
        return {"window_s": 0.0, "aggregate_ns_day": None, "steps_in_window": []}
    start = max(samples[0][0] for samples in runs)
    end = min(samples[-1][0] for samples in runs)
    if end <= start:
        return {"window_s": 0.0, "aggregate_ns_day": None, "steps_in_window": []}
    steps = []
    for samples in runs:
        times = np.array([t for t, _ in samples])
        counts = np.array([s for _, s in samples], dtype=float)
        steps.append(float(np.interp(end, times, counts) - np.interp(start, times, counts)))
    ns = sum(steps) * timestep_fs * 1e-6
    return {"window_s": end - start, "aggregate_ns_day": ns / (end - start) * 86400.0, "steps_in_window": steps}


def recommend(results: Sequence[dict[str, Any]]) -> int | None:
    """The smallest N within NEAR_BEST of the best aggregate ns/day."""
    measured = [r for r in results if r.get("aggregate_ns_day")]
    if not measured:
        return None
    best = max(r["aggregate_ns_day"] for r in measured)
    return min(r["n"] for r in measured if r["aggregate_ns_day"] >= NEAR_BEST * best)


# ----------------------------------------------------------------------------- measuring


def smoke_settings(work: Path) -> list[str]:
    """A tiny model (random weights) and an 8-water box on the Reference platform."""
    import mace  # noqa: F401  (before e3nn)

    from openmm_mace_lp.systems.architectures import TINY, build_mace, save_model

    model = work / "tiny.model"
    save_model(build_mace(dataclasses.replace(TINY, max_ell=1, correlation=3), seed=1), model)
    return [f'model.path="{model}"', 'model.policy="fp64"', 'model.backend="e3nn"', "system.water_molecules=8",
            'platform.name="Reference"', 'platform.device="cpu"', "platform.cpu_threads=1",
            "run.minimize=true", "run.minimize_max_iterations=3", "output.report_interval_steps=2",
            "output.trajectory_interval_steps=2", "output.checkpoint_interval_steps=1000",
            "barostat.interval_steps=2", "guards.max_temperature_factor=10.0"]


def measure(client: Any, base: Path | None, settings: Sequence[str], n: int, steps: int, warmup: int,
            work: Path, start_from: Path | None, deadline: float | None) -> dict[str, Any]:
    """N concurrent runs of one config through the campaign code; their overlap throughput."""
    from openmm_mace_lp.simulations.campaign import STARTS_DIR, plan_from_dict, run_campaign
    from openmm_mace_lp.simulations.run import RunHooks

    per_run = max(1, math.ceil(steps / n))
    data: dict[str, Any] = {"set": [*settings, f"run.production_steps={per_run}",
                                    f"run.equilibration_steps={warmup}"]}
    if base is not None:
        data["base"] = str(base)
    probe = plan_from_dict(data, "campaign_packing", work)
    policy = next(iter(probe.systems.values())).model.policy  # the config's own policy
    data["axes"] = {"policies": [policy], "seeds": list(range(1, n + 1))}
    data["reference_policy"] = policy
    plan = plan_from_dict(data, "campaign_packing", work)
    out = work / f"n{n}"
    samples = work / f"n{n}-samples"
    samples.mkdir(parents=True)
    system = plan.points[0].system
    if start_from is not None:  # one minimised start for every N
        target = out / STARTS_DIR / system
        target.mkdir(parents=True)
        for name in ("start.pdb", "start_state.xml"):
            shutil.copy2(start_from / name, target / name)
    config = plan.points[0].config
    interval = config.output.report_interval_steps
    eq_steps = config.run.equilibration_steps

    def hooks_for(point):
        path = str(samples / SAMPLES_FILE.format(seed=point.seed))
        barrier = (str(work / f"n{n}-ready"), n)
        return RunHooks(reporters={"equilibration": [Stopwatch(path, 0, interval, barrier)],
                                   "production": [Stopwatch(path, eq_steps, interval)]})

    minutes = None if deadline is None else max(0.1, (deadline - time.time()) / 60.0)
    began = time.time()
    result = run_campaign(plan, out, client=client, max_minutes=minutes, quiet=True, report=False,
                          hooks_for=hooks_for)
    runs = [read_samples(samples / SAMPLES_FILE.format(seed=p.seed)) for p in plan.points]
    throughput = overlap_throughput(runs, config.integrator.timestep_fs)
    manifests = [json.loads((p.run_dir(out) / "manifest.json").read_text()) for p in plan.points
                 if (p.run_dir(out) / "manifest.json").is_file()]
    aggregate = throughput["aggregate_ns_day"]
    return {"n": n, "system": system, "atoms": manifests[0].get("n_atoms") if manifests else None,
            "policy": policy, "backend": manifests[0].get("backend") if manifests else None,
            "steps_per_run": per_run, "wall_s": time.time() - began, "window_s": throughput["window_s"],
            "aggregate_ns_day": aggregate, "per_run_ns_day": None if aggregate is None else aggregate / n,
            "manifest_ns_day": [m.get("ns_per_day") for m in manifests],
            "statuses": sorted(o.status for o in result.outcomes.values()),
            "failures": sorted({o.message for o in result.outcomes.values() if o.status == "failed"}),
            "start": str(out / STARTS_DIR / system)}


def card_name(gpu: str) -> str:
    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", gpu],
                                capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        return output or "cpu"
    except (OSError, subprocess.SubprocessError):
        return "cpu"


# ----------------------------------------------------------------------------- output


def table(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| system | atoms | N | aggregate ns/day | per run ns/day | x N=1 | window s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    first = {}
    for r in results:
        first.setdefault(r["system"], r.get("aggregate_ns_day"))
        ratio = (r["aggregate_ns_day"] / first[r["system"]]) if r.get("aggregate_ns_day") and first[r["system"]] else None
        lines.append(f"| {r['system']} | {r.get('atoms')} | {r['n']} | {_num(r.get('aggregate_ns_day'))} | "
                     f"{_num(r.get('per_run_ns_day'))} | {_num(ratio, '.2f')} | {_num(r.get('window_s'), '.1f')} |")
    return lines


def _num(value: Any, fmt: str = ".4g") -> str:
    return "n/a" if value is None else format(value, fmt)


def write_outputs(path: Path, record: dict[str, Any]) -> tuple[Path, Path]:
    from openmm_mace_lp.atomic import atomic_write_json, atomic_write_text

    markdown = path.with_suffix(".md")
    lines = [f"# Runs per GPU: aggregate ns/day of N concurrent runs ({record['card']}, {record['date']})", "",
             f"Config `{record['config']}`; {record['steps']} production steps in total per N, "
             f"{record['warmup_steps']} warm-up steps per run; measured over the window in which all N "
             "runs were stepping.", "", *table(record["results"]), ""]
    for system, n in record["recommended_runs_per_gpu"].items():
        lines.append(f"Recommended `runs_per_gpu` for {system}: {n} (smallest N within "
                     f"{NEAR_BEST:.0%} of the best aggregate).")
    atomic_write_json(path, record)
    atomic_write_text(markdown, "\n".join(lines) + "\n")
    return path, markdown


# ----------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help=f"run config (default {DEFAULT_CONFIG.relative_to(ROOT)})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--counts", default="1,2,4,8", help="concurrent runs to measure (default 1,2,4,8)")
    parser.add_argument("--waters", default="", help="water molecules, e.g. 343,1000 (default: the config's)")
    parser.add_argument("--steps", type=int, default=4000, help="production steps per N, split over the runs")
    parser.add_argument("--warmup-steps", type=int, default=400, help="equilibration steps of each run")
    parser.add_argument("--gpu", default="0", help="the device id to pack (default 0)")
    parser.add_argument("--scheduler", help="use this Dask scheduler's workers instead of starting a local cluster")
    parser.add_argument("-o", "--output", required=True, help="JSON path (a .md table is written beside it)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop measuring after M minutes")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the plumbing only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    counts = sorted({int(c) for c in args.counts.split(",") if c.strip()})
    if not counts or counts[0] < 1:
        raise SystemExit(f"--counts {args.counts!r}: give positive integers, e.g. 1,2,4,8.")
    waters = [int(w) for w in args.waters.split(",") if w.strip()] or [None]
    deadline = None if args.max_minutes is None else time.time() + 60.0 * args.max_minutes
    _register_by_value()
    from distributed import Client

    from openmm_mace_lp.simulations.campaign import local_cluster

    with tempfile.TemporaryDirectory(prefix="campaign-packing-") as scratch:
        work = Path(scratch)
        base: Path | None = Path(args.config).resolve() if args.config else DEFAULT_CONFIG
        settings = list(args.set)
        steps, warmup = args.steps, args.warmup_steps
        if args.smoke:
            base, settings = None, [*smoke_settings(work), *settings]
            counts = [c for c in counts if c <= 2] or [1]
            steps, warmup = min(steps, 16), min(warmup, 4)
        cluster = None
        if args.scheduler:
            client = Client(args.scheduler)
        else:
            cluster = local_cluster([args.gpu], runs_per_gpu=max(counts))
            client = Client(cluster)
        results: list[dict[str, Any]] = []
        try:
            for water in waters:
                system_settings = settings + ([f"system.water_molecules={water}"] if water else [])
                start = None
                for n in counts:
                    if deadline is not None and time.time() >= deadline:
                        print(f"time limit reached: N={n} not measured", file=sys.stderr)
                        continue
                    row = measure(client, base, system_settings, n, steps, warmup,
                                  work / f"w{water or 'config'}", start, deadline)
                    made = Path(row.pop("start"))
                    if start is None and (made / "start_state.xml").is_file():
                        start = made
                    results.append(row)
                    print(table(results)[-1], flush=True)
                    for failure in row["failures"]:
                        print(f"N={n}: a run failed: {failure}", file=sys.stderr, flush=True)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    recommended = {}
    for system in dict.fromkeys(r["system"] for r in results):
        n = recommend([r for r in results if r["system"] == system])
        if n is not None:
            recommended[system] = n
    record = {"schema": "openmm-mace-lp/campaign-packing/1", "date": date.today().isoformat(),
              "host": socket.gethostname(), "card": "cpu (smoke)" if args.smoke else card_name(args.gpu),
              "config": "smoke (tiny model)" if args.smoke else str(base), "set": list(args.set),
              "steps": steps, "warmup_steps": warmup, "counts": counts, "results": results,
              "recommended_runs_per_gpu": recommended}
    json_path, md_path = write_outputs(Path(args.output), record)
    print("\n".join(table(results)))
    for system, n in recommended.items():
        print(f"recommended runs_per_gpu for {system}: {n}")
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
