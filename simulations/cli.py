"""``mace-lp simulate``, ``mace-lp arms`` and ``mace-lp run`` (the main job).

Registered by the ``mace-lp`` dispatcher (openmm_mace_lp/cli.py) through :func:`register`.
User errors are raised as ValueError/FileNotFoundError/RuntimeError with a message that
names the problem and the fix; the dispatcher prints them without a traceback. OS errors
(full or read-only disk, no permission) and Ctrl-C/SIGTERM are turned into one line here,
with what to do next.
"""
from __future__ import annotations

import argparse
import errno
import functools
import signal
import sys
from pathlib import Path
from typing import Callable

from .config import ENSEMBLES

_SET_HELP = ("override a config key, e.g. --set integrator.timestep_fs=1.0 "
             "--set platform.properties.Precision=mixed (repeatable)")


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_simulate(subparsers)
    _register_arms(subparsers)
    _register_run(subparsers)


# ----------------------------------------------------------------------------- parsers


def _register_simulate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate", help="NVT, NPT or NVE MD from a TOML config, with checkpoints and --resume",
        description="Minimise, equilibrate and run production MD with a MACE model; writes "
                    "manifest.json, state.csv, trajectory.dcd, topology.pdb, config.toml, run.log "
                    "and checkpoints to RUN_DIR. Without CONFIG the defaults are used (64 waters, "
                    "embedded model); see simulations/examples/*.toml.")
    parser.add_argument("ensemble", choices=ENSEMBLES)
    parser.add_argument("config", nargs="?", metavar="CONFIG.toml", help="run config (TOML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    parser.add_argument("-o", "--output", required=True, metavar="RUN_DIR")
    parser.add_argument("--resume", action="store_true",
                        help="continue RUN_DIR from its last checkpoint; without CONFIG its own "
                             "config.toml is used. With CONFIG a missing or empty RUN_DIR (or one "
                             "killed before its first checkpoint) is started. Never deletes: it "
                             "refuses when config.toml or every checkpoint is missing")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run in RUN_DIR (in a directory that is not a run, "
                             "only the files named like a run's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log on the terminal")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config and print it resolved; run nothing")
    _add_max_minutes(parser)
    parser.set_defaults(func=cmd_simulate)


def _register_arms(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "arms", help="the same system in several precision policies x seeds (one run dir each)",
        description="Run CONFIG once per policy and seed into ARMS_DIR/<policy>-seed<k>/, all from "
                    "one shared minimised start (ARMS_DIR/start_state.xml) with identical starting "
                    "velocities per seed. Arms run one after another; to use several GPUs run one "
                    "process per card with --only and CUDA_VISIBLE_DEVICES (see "
                    "openmm_mace_lp.simulations.arms). Compare with `mace-lp compare ARMS_DIR`.")
    parser.add_argument("config", metavar="CONFIG.toml")
    parser.add_argument("--policies", default="fp64,fp32,bf16,fp16", metavar="LIST",
                        help="comma-separated policies (default fp64,fp32,bf16,fp16)")
    parser.add_argument("--seeds", default="1", metavar="LIST", help="comma-separated seeds (default 1)")
    parser.add_argument("-o", "--output", required=True, metavar="ARMS_DIR")
    parser.add_argument("--only", action="append", default=[], metavar="POLICY/SEED",
                        help="run only these arms, e.g. --only bf16/2 (repeatable)")
    parser.add_argument("--reference-policy", default="fp64",
                        help="policy that minimises the shared start (default fp64)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="write the shared start and stop (before launching --only processes)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    parser.add_argument("--resume", action="store_true", help="continue unfinished arms from their checkpoints")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or logs on the terminal")
    _add_max_minutes(parser)
    parser.set_defaults(func=cmd_arms)


def _register_run(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="the main job: a short NPT water run with the embedded model, then a summary",
        description="Short NPT simulation of 64 waters (192 atoms) with the embedded default "
                    "water model, policy fp32, on CUDA if available else the CPU (Reference "
                    "platform); sized to finish in a couple of minutes on a 2-core CPU. Prints "
                    "ns/day, mean temperature and density, energy drift and where the files are. "
                    "Run again, it writes a new directory (runs/main-2, ...) rather than touch "
                    "runs/main; --resume continues runs/main, --overwrite replaces it.")
    parser.add_argument("-o", "--output", default=None, metavar="RUN_DIR",
                        help="run directory (default runs/main; when that already holds a run and "
                             "neither --resume nor --overwrite is given, the next free one of "
                             "runs/main-2, runs/main-3, ...)")
    parser.add_argument("--model", default=None, metavar="PATH", help="MACE .model file instead of the embedded one")
    parser.add_argument("--policy", default="fp32", help="precision policy (default fp32)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--steps", type=int, default=None, metavar="N", help="production steps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted or paused run in RUN_DIR (default runs/main)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in RUN_DIR (default runs/main)")
    parser.add_argument("--quiet", action="store_true", help="only the summary")
    _add_max_minutes(parser)
    parser.set_defaults(func=cmd_run)


def _add_max_minutes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-minutes", type=float, default=None, metavar="M",
                        help="pause cleanly (checkpoint, status 'paused') once M minutes have passed; "
                             "continue with --resume. For job time limits: leave a margin for the "
                             "last checkpoint")


def _deadline(args: argparse.Namespace) -> float | None:
    import time

    if args.max_minutes is None:
        return None
    if args.max_minutes <= 0:
        raise ValueError(f"--max-minutes {args.max_minutes}: give a positive number of minutes.")
    return time.monotonic() + 60.0 * args.max_minutes


# ----------------------------------------------------------------------------- commands


def _one_line_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """OS errors and interrupts as one line with what to do next, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except KeyboardInterrupt as stop:
            name = getattr(stop, "signal_name", "SIGINT")
            print(f"mace-lp {args.command}: interrupted ({name}); the run directory keeps its last "
                  f"checkpoint: continue with --resume{_output_hint(args)}.", file=sys.stderr)
            return 128 + int(getattr(signal.Signals, name, signal.SIGINT))
        except OSError as error:
            if error.errno is None:  # ours (e.g. a missing config file): already one sentence
                raise
            print(f"mace-lp {args.command}: error: {os_error_line(error, args)}", file=sys.stderr)
            return 1

    return wrapper


def os_error_line(error: OSError, args: argparse.Namespace) -> str:
    """What went wrong and what to do, for an OS error during a command."""
    where = f" ({error.filename})" if error.filename else ""
    what = f"{error.strerror or error}{where}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{what}: the disk is full. The run directory keeps its last checkpoint; free space "
                f"and continue with --resume{_output_hint(args)}.")
    if error.errno == errno.EROFS:
        return f"{what}: the file system is read-only; write to another -o directory."
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"{what}: no permission to write there; choose another -o directory."
    if error.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return f"{what}: -o must name a directory (it is created if missing)."
    return f"{what}."


def _output_hint(args: argparse.Namespace) -> str:
    output = getattr(args, "output", None)
    return f" -o {output}" if output else ""


@_one_line_errors
def cmd_simulate(args: argparse.Namespace) -> int:
    from .config import load_config, read_run_config
    from .run import prepare_config, simulate
    from .rundir import RunDirectory

    directory = RunDirectory(args.output)
    directory.check_is_directory()
    if args.resume and args.config is None:
        config = None  # simulate() says what is missing when there is no config.toml
        if directory.has_config():
            config = read_run_config(args.output, args.set)
            if config.ensemble != args.ensemble:
                raise ValueError(f"{args.output} is a {config.ensemble} run; resume it with "
                                 f"`mace-lp simulate {config.ensemble} --resume -o {args.output}`.")
        elif args.dry_run:
            raise FileNotFoundError(f"--dry-run --resume: {directory.config_path} not found, so there "
                                    "is no config to show; check -o, or pass the config file.")
    else:
        config = load_config(args.config, args.set, ensemble=args.ensemble)
    if args.dry_run:
        print(prepare_config(config).to_toml(), end="")
        return 0
    result = simulate(config, args.output, resume=args.resume, quiet=args.quiet, overwrite=args.overwrite,
                      deadline=_deadline(args))
    _print_summary(result.run_dir, args.quiet)
    return 0


@_one_line_errors
def cmd_arms(args: argparse.Namespace) -> int:
    from .arms import run_arms
    from .config import load_config
    from .summary import summarize

    config = load_config(args.config, args.set)
    run_dirs = run_arms(config, args.output, args.policies, args.seeds, only=args.only,
                        reference_policy=args.reference_policy, resume=args.resume, quiet=args.quiet,
                        prepare_only=args.prepare_only, deadline=_deadline(args))
    if args.prepare_only:
        print(f"shared start written to {Path(args.output) / 'start_state.xml'}")
        return 0
    print(f"{'arm':<16} {'status':<10} {'ns/day':>10} {'T mean/K':>9} {'rho g/cm3':>10}")
    for run_dir in run_dirs:
        info = summarize(run_dir)
        print(f"{info.get('arm') or run_dir.name:<16} {str(info.get('status')):<10} "
              f"{_num(info.get('ns_per_day'), '.4g'):>10} {_num(info.get('temperature_mean_K'), '.1f'):>9} "
              f"{_num(info.get('density_mean_g_cm3'), '.4f'):>10}")
    print(f"compare the arms with: mace-lp compare {args.output}")
    return 0


@_one_line_errors
def cmd_run(args: argparse.Namespace) -> int:
    from .platforms import resolve_platform
    from .presets import main_config
    from .run import simulate

    _, device = resolve_platform("auto", args.device)
    config = main_config(device, model=args.model, policy=args.policy, production_steps=args.steps,
                         overrides=args.set)
    output = Path(args.output) if args.output else main_run_directory(args.resume, args.overwrite)
    args.output = str(output)
    result = simulate(config, output, resume=args.resume, quiet=args.quiet, overwrite=args.overwrite,
                      deadline=_deadline(args))
    from .summary import REPORT_DIR

    analysis = _write_main_report(result.run_dir) if result.status == "completed" else None
    _print_summary(result.run_dir, quiet=False, analysis=analysis)
    if analysis is not None:
        print(f"report: {result.run_dir / REPORT_DIR / 'report.md'} (and report.html, figures/); "
              f"`mace-lp analyze {result.run_dir}` prints the analysis again.")
    if device == "cpu":
        from .presets import CPU_NOTE

        print(CPU_NOTE)
    return 0


def _write_main_report(run_dir: Path):
    """The single-run report of the main job (plots and what the data supports); returns the
    run's analysis so that the summary does not analyse the run a second time."""
    from openmm_mace_lp.analysis.analyze import analyze_run
    from openmm_mace_lp.analysis.report import write_run_analysis_report

    analysis = analyze_run(run_dir)
    from .summary import REPORT_DIR

    write_run_analysis_report(analysis, run_dir / REPORT_DIR)
    return analysis


def main_run_directory(resume: bool, overwrite: bool, base: Path | None = None) -> Path:
    """Where ``mace-lp run`` writes without ``-o``: runs/main, or (when that already holds
    something and neither --resume nor --overwrite asks for it) the first free runs/main-N,
    N >= 2, with a line on stderr saying so and how to continue or replace runs/main."""
    from .presets import DEFAULT_MAIN_DIR
    from .rundir import EMPTY, FOREIGN, MISSING, RunDirectory

    base = Path(base or DEFAULT_MAIN_DIR)
    if resume or overwrite or RunDirectory(base).kind() in (MISSING, EMPTY):
        return base
    taken = RunDirectory(base)
    number = 2
    while RunDirectory(f"{base}-{number}").kind() not in (MISSING, EMPTY):
        number += 1
    chosen = Path(f"{base}-{number}")
    if taken.status() == "completed":
        then = f"to replace {base} instead use `mace-lp run --overwrite`"
    else:
        then = (f"to continue that run instead use `mace-lp run --resume`, to replace it "
                "`mace-lp run --overwrite`")
    held = "files that are not a run" if taken.kind() == FOREIGN else taken.describe()
    print(f"mace-lp run: {base} already holds {held}; this run goes to {chosen} ({then}).", file=sys.stderr)
    return chosen


def _print_summary(run_dir: Path, quiet: bool, analysis=None) -> None:
    from .summary import format_summary, summarize

    summary = summarize(run_dir, analysis)
    if quiet:
        print(f"{run_dir}: {summary.get('status')}")
    else:
        print(format_summary(summary))
    if summary.get("status") == "paused":
        print(f"paused at a checkpoint (time limit); continue with --resume -o {run_dir}")


def _num(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)
