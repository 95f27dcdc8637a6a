"""``mace-lp analyze | compare | report | static``: the analysis sub-commands.

Heavy imports (numpy, MDTraj, matplotlib, the evaluator) happen inside the commands so
that registering them costs nothing. Errors meant for the user are ValueError /
FileNotFoundError / RuntimeError with the fix in the message.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from .analyze import AnalysisOptions

DEFAULT_ALPHA = 0.05


def register(subparsers: Any) -> None:
    """Add the analysis sub-commands to the ``mace-lp`` parser."""
    _register_analyze(subparsers)
    _register_compare(subparsers)
    _register_report(subparsers)
    _register_static(subparsers)


# --------------------------------------------------------------------------------------
# Argument groups
# --------------------------------------------------------------------------------------


def _add_analysis_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("observables")
    group.add_argument("--equilibration", default="auto", metavar="auto|none|PS",
                       help="discard the transient: 'auto' (max effective samples, default), "
                            "'none', or a time in ps")
    group.add_argument("--no-trajectory", action="store_true",
                       help="state-CSV observables only (skip RDF and MSD)")
    group.add_argument("--stride", type=int, default=1, help="read every N-th trajectory frame")
    group.add_argument("--rdf-rmax", type=float, default=1.0, metavar="NM",
                       help="RDF range in nm (capped at half the box; default 1.0)")
    group.add_argument("--rdf-bin", type=float, default=0.005, metavar="NM",
                       help="RDF bin width in nm (default 0.005)")
    group.add_argument("--rdf-pair", action="append", nargs=3, metavar=("NAME", "SEL_A", "SEL_B"),
                       help="RDF between two MDTraj selections, repeatable (default: water "
                            "O-O, O-H, H-H, else all atoms)")
    group.add_argument("--msd-selection", metavar="SEL",
                       help="MDTraj selection for the MSD (default: water oxygens)")
    group.add_argument("--msd-fit", type=float, nargs=2, metavar=("START", "END"),
                       help="MSD fit window in ps (default: 10-50%% of the longest lag)")


def _add_verdict_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("verdicts")
    group.add_argument("--reference", default="fp64",
                       help="reference policy (default fp64)")
    group.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                       help="family-wise significance level per arm, Holm-corrected "
                            "(default 0.05: TOST with 90%% intervals)")
    group.add_argument("--margin", action="append", default=[], metavar="NAME=VALUE[%]",
                       help="equivalence margin, repeatable: absolute in the observable's "
                            "unit, or VALUE%% of the reference mean (e.g. density=0.5%%, "
                            "temperature=0.2, rdf=0.02, rdf:O-H=0.03); defaults in "
                            "openmm_mace_lp.analysis.margins")
    group.add_argument("--margins", metavar="FILE",
                       help="TOML file with a [margins] table of the same NAME = VALUE pairs")


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("precision study record")
    group.add_argument("--study-json", metavar="PATH",
                       help="also write the study record: PATH.json, or a folder that gets "
                            "precision_study_<date>_<card>.json (plus the same name .md with "
                            "the thesis' Tables 4.4 and 4.5)")
    group.add_argument("--card", metavar="NAME",
                       help="the card the arms ran on, e.g. 'NVIDIA H200' (needed with "
                            "--study-json)")
    group.add_argument("--date", metavar="YYYY-MM-DD",
                       help="date of the study record (default today)")


def _register_analyze(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "analyze", help="observables of one run with uncertainties",
        description="Observables of one run directory (equilibration cut, means with "
                    "statistical-inefficiency and block errors, RDFs, MSD/D, NVE drift).")
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="JSON output (default RUN_DIR/analysis.json)")
    _add_analysis_options(parser)
    parser.set_defaults(func=cmd_analyze)


def _register_compare(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare", help="every precision arm against the FP64 reference",
        description="Compare every policy under ARMS_DIR with the reference policy: "
                    "differences, combined uncertainties and verdicts (JSON + Markdown). "
                    "Several ARMS_DIRs are one set of arms (e.g. one seed per campaign "
                    "directory); an arm found twice is refused.")
    parser.add_argument("arms_dir", metavar="ARMS_DIR", nargs="+")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="JSON output; Markdown goes next to it with .md "
                             "(default: the first ARMS_DIR/comparison.json)")
    _add_verdict_options(parser)
    _add_study_options(parser)
    _add_analysis_options(parser)
    parser.set_defaults(func=cmd_compare)


def _register_report(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="Markdown + HTML report with plots (arms, or one run)",
        description="ARMS_DIR: compare every policy with the reference and write "
                    "REPORT_DIR/report.md, report.html, comparison.json and figures/*.png "
                    "(what the data cannot support first, then verdicts, tables and plots). "
                    "RUN_DIR (a single run directory): the same kind of report for one run: "
                    "what it measured with SEM, what it is too short to say, and its plots. "
                    "Several ARMS_DIRs are one set of arms, as with compare.")
    parser.add_argument("arms_dir", metavar="ARMS_DIR|RUN_DIR", nargs="+")
    parser.add_argument("-o", "--output", metavar="REPORT_DIR",
                        help="report folder (default: the first ARMS_DIR/report, or RUN_DIR/report)")
    _add_verdict_options(parser)
    _add_study_options(parser)
    _add_analysis_options(parser)
    parser.set_defaults(func=cmd_report)


def _register_static(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "static", help="static energy/force errors of each policy vs fp64",
        description="Evaluate the same model at every policy on fixed structures and report "
                    "AE_E, RAE_E, AE_F, RAE_F and force cosine similarity against fp64.")
    parser.add_argument("--model", metavar="PATH", help="MACE model file")
    parser.add_argument("--structures", metavar="FILE", required=True,
                        help=".xyz/.extxyz, or a trajectory (with --top)")
    parser.add_argument("--top", metavar="TOP", help="topology for a trajectory (PDB)")
    parser.add_argument("--policies", required=True, metavar="LIST",
                        help="comma-separated policies, e.g. fp64,fp32,bf16")
    parser.add_argument("--reference", default="fp64")
    parser.add_argument("--backend", default="e3nn", choices=("e3nn", "cueq"))
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--max-frames", type=int, metavar="N")
    parser.add_argument("-o", "--output", metavar="OUT", default="static_errors.json",
                        help="JSON output; Markdown next to it (default static_errors.json)")
    parser.set_defaults(func=cmd_static)


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


def _equilibration_setting(text: str) -> str | float:
    if text in ("auto", "none"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--equilibration {text!r}: use 'auto', 'none' or a time in ps.") \
            from None
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"--equilibration {text}: the time to discard must be >= 0 ps.")
    return value


def analysis_options(args: argparse.Namespace) -> "AnalysisOptions":
    """AnalysisOptions from the command line, validated."""
    from .analyze import AnalysisOptions

    if args.stride < 1:
        raise ValueError(f"--stride {args.stride}: must be 1 or more.")
    if args.rdf_bin <= 0 or args.rdf_rmax <= args.rdf_bin:
        raise ValueError("--rdf-bin must be > 0 and smaller than --rdf-rmax.")
    if args.msd_fit and not 0 <= args.msd_fit[0] < args.msd_fit[1]:
        raise ValueError(f"--msd-fit {args.msd_fit[0]} {args.msd_fit[1]}: need 0 <= START < END.")
    return AnalysisOptions(
        equilibration=_equilibration_setting(args.equilibration),
        trajectory=not args.no_trajectory, stride=args.stride,
        rdf_pairs=tuple(tuple(p) for p in args.rdf_pair) if args.rdf_pair else None,
        rdf_r_max_nm=args.rdf_rmax, rdf_bin_width_nm=args.rdf_bin,
        msd_selection=args.msd_selection,
        msd_fit_ps=tuple(args.msd_fit) if args.msd_fit else None)


def _check_verdict_options(args: argparse.Namespace) -> None:
    if not 0.0 < args.alpha < 0.5:
        raise ValueError(f"--alpha {args.alpha}: use a significance level such as 0.05.")
    if getattr(args, "study_json", None) and not args.card:
        raise ValueError("--study-json needs --card NAME (the card the arms ran on, e.g. "
                         "--card 'NVIDIA H200'): the record is named and keyed by it.")


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze_run
    from .atomic import write_json
    from .report import run_headline
    from .tables import markdown_table, run_table, support_table

    analysis = analyze_run(args.run_dir, analysis_options(args))
    output = Path(args.output) if args.output else Path(args.run_dir) / "analysis.json"
    write_json(output, analysis.to_dict())
    eq = analysis.equilibration
    print(run_headline(analysis))
    print(f"kept data from {eq['t0_ps']:.4g} ps ({100 * eq['discarded_fraction']:.0f}% "
          f"discarded; {eq['method']})")
    print(markdown_table(*run_table(analysis)))
    support = support_table(analysis)
    if support[1]:
        print("What the data cannot support:")
        print(markdown_table(*support))
    for warning in analysis.warnings:
        print(f"warning: {warning}")
    print(f"wrote {output}")
    return 0


def _comparison(args: argparse.Namespace, path: str | Path):
    from .compare import compare_arms
    from .margins import resolve_margins

    _check_verdict_options(args)
    margins = resolve_margins(args.margin, args.margins)
    return compare_arms(path, args.reference, analysis_options(args), args.alpha, margins)


def _write_study(args: argparse.Namespace, comparison) -> None:
    if not args.study_json:
        return
    from .study import write_study

    json_path, markdown_path = write_study(comparison, args.study_json, args.card, args.date)
    print(f"wrote {json_path} and {markdown_path}")


def cmd_compare(args: argparse.Namespace) -> int:
    from .atomic import write_json, write_text
    from .compare import criteria_text
    from .report import headline
    from .tables import (differences_table, limitations_table, markdown_table, means_table,
                         rdf_table, speed_table, verdict_details_table, verdict_table)

    comparison = _comparison(args, args.arms_dir)
    output = Path(args.output) if args.output else Path(args.arms_dir[0]) / "comparison.json"
    limitations = limitations_table(comparison)
    markdown = "\n\n".join(
        [f"# Precision arms vs {comparison.reference}", headline(comparison)]
        + (["## What the data cannot support", markdown_table(*limitations)]
           if limitations[1] else [])
        + ["## Verdicts", markdown_table(*verdict_table(comparison)),
           criteria_text(comparison.alpha, comparison.reference),
           "## The numbers behind each verdict",
           markdown_table(*verdict_details_table(comparison)),
           "## Final means per precision (Table 4.4, mean ± SEM)",
           markdown_table(*means_table(comparison)),
           f"## Absolute differences to {comparison.reference}, MSteps/day and speed-up "
           "(Table 4.5)", markdown_table(*differences_table(comparison)),
           "## RDF differences", markdown_table(*rdf_table(comparison)),
           "## Speed", markdown_table(*speed_table(comparison))]
        + (["## Warnings", "\n".join(f"- {w}" for w in comparison.warnings)]
           if comparison.warnings else [])) + "\n"
    write_json(output, comparison.to_dict())
    markdown_path = write_text(output.with_suffix(".md"), markdown)
    _write_study(args, comparison)
    print(headline(comparison))
    print(markdown_table(*verdict_table(comparison)))
    print(f"wrote {output} and {markdown_path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import headline, run_headline, write_report, write_run_analysis_report
    from .rundir import MANIFEST

    paths_in = [Path(p) for p in args.arms_dir]
    path = paths_in[0]
    output = Path(args.output) if args.output else path / "report"
    runs_given = [p for p in paths_in if (p / MANIFEST).is_file()]
    if runs_given and len(paths_in) > 1:
        raise ValueError(f"{runs_given[0]} is a single run directory: report one run alone, or pass "
                         "only arms directories (folders that hold fp64-seed1/, ...).")
    if runs_given:  # a single run directory
        from .analyze import analyze_run

        if args.study_json:
            raise ValueError(f"--study-json needs arms to compare; {path} is a single run "
                             "directory. Pass the folder that holds fp64-seed1/, ...")
        analysis = analyze_run(path, analysis_options(args))
        paths = write_run_analysis_report(analysis, output)
        print(run_headline(analysis))
    else:
        comparison = _comparison(args, paths_in)
        paths = write_report(comparison, output)
        _write_study(args, comparison)
        print(headline(comparison))
    print(f"wrote {paths['markdown']} and {paths['html']} "
          f"({sum(1 for k in paths if k.startswith('figure:'))} figures)")
    return 0


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_evaluator(model: str | None, backend: str, device: str) -> Callable:
    """``evaluate(policy, structure_set)`` backed by ``openmm_mace_lp.evaluate``."""
    try:
        from openmm_mace_lp.evaluate import evaluate_frames
    except ImportError as error:
        raise RuntimeError(f"cannot import openmm_mace_lp.evaluate ({error}); install the "
                           "full openmm-mace-lp package (with torch and mace-torch) to "
                           "evaluate policies.") from error
    device = _resolve_device(device)

    def evaluate(policy: str, structures) -> tuple[Any, Any]:
        import numpy as np

        energies, forces = evaluate_frames(model, policy, backend, structures.atomic_numbers,
                                           structures.positions_nm, structures.boxes_nm, device)
        return np.asarray(energies, dtype=float), np.asarray(forces, dtype=float)

    return evaluate


def _card_name(device: str) -> str:
    """What ran the numbers: the GPU's name, or the CPU with its emulated low precision."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return "CPU (bf16/fp16/TF32 arithmetic emulated exactly, up to summation order)"


def _model_identity(model: str | None) -> dict[str, str]:
    """The model file's path, name and SHA-256 (the embedded model's when none was given)."""
    from openmm_mace_lp.model_files import default_model_path, sha256_of

    path = Path(model) if model else default_model_path()
    return {"model": str(path), "model_name": path.name if model else f"embedded ({path.name})",
            "model_sha256": sha256_of(path)}


def cmd_static(args: argparse.Namespace) -> int:
    from .atomic import write_json, write_text
    from .static_errors import evaluate_static_errors, static_table
    from .structures import load_structures
    from .tables import markdown_table

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if args.stride < 1 or (args.max_frames is not None and args.max_frames < 1):
        raise ValueError("--stride and --max-frames must be 1 or more.")
    if args.model and not Path(args.model).is_file():
        raise FileNotFoundError(f"model file {args.model} not found; pass --model PATH.")
    structures = load_structures(args.structures, args.top, args.stride, args.max_frames)
    evaluate = load_evaluator(args.model, args.backend, args.device)
    result = evaluate_static_errors(structures, policies, evaluate, args.reference)
    output = Path(args.output)
    data = result.to_dict()
    card = _card_name(_resolve_device(args.device))
    data.update({**_model_identity(args.model), "structures": str(args.structures),
                 "backend": args.backend, "card": card,
                 "n_structures": int(sum(s.n_frames for s in structures))})
    table = markdown_table(*static_table(result))
    write_json(output, data)
    markdown_path = write_text(output.with_suffix(".md"), (
        f"# Static errors vs {result.reference}\n\n{data['n_structures']} structures from "
        f"{args.structures}, model {data['model_name']} (SHA-256 {data['model_sha256'][:16]}), backend "
        f"{args.backend}, on {card}.\n\n{table}\n"))
    print(table)
    print(f"wrote {output} and {markdown_path}")
    return 0
