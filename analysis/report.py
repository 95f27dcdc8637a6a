"""The report: one Markdown and one HTML file with PNG figures, verdicts first.

The document is built once as a list of blocks (heading, paragraph, table, figure) and
rendered to both formats, so that they never disagree.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Union

from . import tables
from .atomic import write_json, write_text
from .compare import Comparison, criteria_text
from .equivalence import DIFFERENT, EQUIVALENT, INCONCLUSIVE
from .plots import make_figures, make_run_figures

if TYPE_CHECKING:  # pragma: no cover
    from .analyze import AnalysisOptions, RunAnalysis


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class TableBlock:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    path: str  # relative to the report
    caption: str


Block = Union[Heading, Paragraph, Bullets, TableBlock, Figure]

FIGURE_CAPTIONS = {
    "verdicts": "Every observable of every arm: difference / margin with its interval "
                "(inside the dashed lines ±1 and supported by the data: equivalent).",
    "timeseries_temperature": "Temperature: runs with the thermostat's target; below, the "
                              "difference to the reference with the noise band (centred on "
                              "zero) and the margin.",
    "timeseries_density": "Density: runs with experiment's density of water at the run's "
                          "temperature (for water) and, dotted, the model's teacher's own NPT "
                          "density where the model card records it; below, the difference to "
                          "the reference with the noise band and the margin.",
    "timeseries_potential_energy": "Potential energy per atom: runs; below, the difference to "
                                   "the reference with the noise band and the margin.",
    "timeseries_total_energy": "Total energy per atom (NVE conservation).",
    "msd": "Mean squared displacement: fit window for D shaded; log-log with slopes 1 "
           "(diffusive) and 2 (ballistic); D ± SEM and the regime in the legend.",
    "series_temperature": "Temperature over time with the thermostat's target, the "
                          "equilibration cut and the mean ± SEM after it.",
    "series_density": "Density over time with experiment's density of water (Kell 1975), the "
                      "model's teacher's own NPT density (dotted) where the model card records "
                      "it, the equilibration cut and the mean ± SEM after it.",
    "series_potential_energy": "Potential energy per atom over time, the equilibration cut "
                               "and the mean ± SEM after it.",
    "series_total_energy": "Total energy per atom over time (NVE: its drift is the "
                           "conservation test).",
}
HTML_STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f0f0f0; }
td.within { background: #e3f6e3; }
td.outside { background: #fbdada; font-weight: bold; }
td.inconclusive { background: #f3f0dc; }
img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; }
"""


def headline(comparison: Comparison) -> str:
    """What the data say, arm by arm; 'equivalent' only where shown and supported."""
    if not comparison.arms:
        return f"Only the reference policy {comparison.reference} was found: nothing to compare."
    parts = []
    for policy in comparison.arms:
        groups = comparison.by_verdict(policy)
        pieces = []
        for verdict in (DIFFERENT, EQUIVALENT, INCONCLUSIVE):
            if groups[verdict]:
                names = ", ".join(tables.observable_title(c) for c in groups[verdict])
                pieces.append(f"{verdict} for {names}")
        unsupported = sum(bool(comparison.verdict(policy, c).limitations)
                          for c in groups[INCONCLUSIVE])
        text = f"{policy} vs {comparison.reference}: " + "; ".join(pieces or ["no verdict"])
        if unsupported:
            text += f" ({unsupported} of them because the data cannot support a number)"
        parts.append(text)
    return ". ".join(parts) + (f". Margins and rule: see below (alpha = {comparison.alpha:g}, "
                               "Holm-corrected per arm).")


def build_document(comparison: Comparison, figures: dict[str, Path],
                   directory: Path) -> list[Block]:
    """Blocks of the report, in reading order: what the data cannot support, the verdicts,
    then the evidence."""
    def rel(path: Path) -> str:
        return str(Path(path).resolve().relative_to(directory.resolve()))

    criteria = criteria_text(comparison.alpha, comparison.reference)
    blocks: list[Block] = [
        Heading(f"Did the precision change the physics? ({comparison.reference} reference)", 1),
        Paragraph(headline(comparison)),
    ]
    limitations = tables.limitations_table(comparison)
    if limitations[1]:
        blocks += [Heading("What the data cannot support"),
                   Paragraph("None of these observables is called equivalent: more data, "
                             "more seeds or a better-equilibrated run are needed first."),
                   TableBlock(*limitations)]
    blocks += [
        Heading("Verdicts"),
        TableBlock(*tables.verdict_table(comparison)),
        Paragraph(f"✓ equivalent within the margin, ✗ different, ? inconclusive (with the "
                  f"extra production per seed that would decide it). {criteria}"),
        Figure(rel(figures["verdicts"]), FIGURE_CAPTIONS["verdicts"]),
        Heading("The numbers behind each verdict"),
        TableBlock(*tables.verdict_details_table(comparison)),
    ]
    if comparison.warnings:
        blocks += [Heading("Warnings"), Bullets(comparison.warnings)]
    blocks += [
        Heading("Final means per precision (Table 4.4)"),
        Paragraph("Mean ± SEM, seeds combined."),
        TableBlock(*tables.means_table(comparison)),
        Heading(f"Absolute differences to {comparison.reference}, MSteps/day and speed-up "
                "(Table 4.5)"),
        Paragraph("|Δ| ± SEM of the difference (relative to the reference mean)."),
        TableBlock(*tables.differences_table(comparison)),
    ]
    rdf_rows = tables.rdf_table(comparison)
    if rdf_rows[1]:
        blocks += [Heading("RDF differences"), TableBlock(*rdf_rows)]
    blocks += [
        Heading("Speed"),
        Paragraph("MSteps/day = (ns/day) / (timestep in fs); speed-up from MSteps/day; ± is "
                  "the SD over seeds. A speed-up is marked unreliable when the runs compared "
                  "shared a device at the same time."),
        TableBlock(*tables.speed_table(comparison)),
        Heading("Figures"),
    ]
    for name, path in figures.items():
        if name == "verdicts":
            continue
        caption = FIGURE_CAPTIONS.get(name) or (
            f"g({name[4:]}): overlay and difference to the reference (bands: ±1.96 SEM of "
            "the difference per bin, noise alone)." if name.startswith("rdf_") else name)
        blocks.append(Figure(rel(path), caption))
    blocks += [
        Heading("Methods"),
        Bullets(METHODS + [criteria, margins_text(comparison)]),
        Heading("Runs and equilibration"),
        TableBlock(*tables.equilibration_table(comparison)),
        Paragraph(f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by "
                  "openmm-mace-lp (mace-lp report)."),
    ]
    return blocks


METHODS = [
    "Equilibration: the first t0 of each run is discarded, t0 maximising the effective "
    "sample count N_eff = (N - t0)/g of the potential energy (and density in NPT), Chodera, "
    "JCTC 12, 1799 (2016), computed by pymbar. The same cut applies to the trajectory. Not "
    "detected when the cut falls in the second half of the run, when fewer than 20 "
    "independent samples remain, or when what is kept still has a linear trend (slope "
    "against its correlated-data SE, p < 0.001).",
    "Time-series means: SEM = max(sqrt(var·g/N), block-averaging SEM) with g the statistical "
    "inefficiency (integrated autocorrelation, Sokal window) and blocks chosen by the "
    "Lee-Needs-Drummond rule; fewer than 20 independent samples, or blocking without a "
    "plateau, mark the number as unsupported.",
    "Seeds: mean of seed means; SEM = max(propagated within-run SEM, seed-to-seed SD/√n); "
    "degrees of freedom by Welch-Satterthwaite. D and g(r) need at least 2 seeds.",
    "RDFs: per-frame normalisation by each frame's volume (NPT-correct), r up to half the "
    "smallest box width; O-H and H-H of water between different molecules only (the "
    "covalent peak is left out).",
    "Diffusion: MSD of unwrapped (von Bülow-Bullerjahn-Hummer scheme), centre-of-mass "
    "corrected positions, FFT over all time origins; D = slope/6 in the fit window, SEM from "
    "the spread over 16 atom groups; supported only when the MSD is linear there (slopes of "
    "the window's halves within a factor 1.25). No finite-size (Yeh-Hummer) correction.",
    "Temperature: a run whose mean temperature misses its target by more than 1 K (99 % "
    "interval) is not at the state point it claims; every observable of it is unsupported.",
]


def margins_text(comparison: Comparison) -> str:
    from .compare import margin_unit

    items = [f"{tables.observable_title(name)} {m.describe(margin_unit(name, m))} "
             f"({m.source})" for name, m in comparison.margins.items()]
    return "Margins: " + "; ".join(items) + " (override with --margin NAME=VALUE[%])."


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, TableBlock):
            out.append(tables.markdown_table(block.headers, block.rows))
        elif isinstance(block, Figure):
            out.append(f"![{block.caption}]({block.path})\n\n*{block.caption}*")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[Block], title: str) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Bullets):
            out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items)
                       + "</ul>")
        elif isinstance(block, TableBlock):
            out.append(tables.html_table(block.headers, block.rows))
        elif isinstance(block, Figure):
            out.append(f"<figure><img src='{html.escape(block.path)}' "
                       f"alt='{html.escape(block.caption)}'><figcaption>"
                       f"{html.escape(block.caption)}</figcaption></figure>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{HTML_STYLE}</style></head>\n<body>\n" + "\n".join(out)
            + "\n</body></html>\n")


def write_report(comparison: Comparison, directory: str | Path) -> dict[str, Path]:
    """Write figures, comparison.json, report.md and report.html into ``directory``.

    report.md is written last: its presence means the report is complete.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    figures = make_figures(comparison, directory / "figures")
    blocks = build_document(comparison, figures, directory)
    title = f"openmm-mace-lp precision report ({comparison.reference} reference)"
    paths = {f"figure:{name}": path for name, path in figures.items()}
    paths["json"] = write_json(directory / "comparison.json", comparison.to_dict())
    paths["html"] = write_text(directory / "report.html", render_html(blocks, title))
    paths["markdown"] = write_text(directory / "report.md", render_markdown(blocks))
    return paths


# --------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------


def run_headline(analysis: "RunAnalysis") -> str:
    """What one run measured, and what it is too short (or too unsettled) to say."""
    supported = [o.label for o in analysis.scalars.values() if o.supported]
    unsupported = [o.label for o in analysis.scalars.values() if not o.supported]
    unsupported += [tables.observable_title(name) for name in analysis.missing]
    unsupported += [f"g({pair})" for pair, items in analysis.rdf_limitations.items() if items]
    run = analysis.run
    text = (f"{run.name} ({run.policy}, {run.ensemble.upper()}, {run.n_atoms} atoms): "
            f"{analysis.production_ps:.4g} ps of production, {analysis.kept_ps:.4g} ps kept "
            "after the equilibration cut. ")
    text += (f"Supported by the data: {', '.join(supported)}. " if supported
             else "No observable is supported by the data. ")
    if unsupported:
        text += f"Too short or unsettled to say: {', '.join(unsupported)}."
    return text


def build_run_document(analysis: "RunAnalysis", figures: dict[str, Path],
                       directory: Path) -> list[Block]:
    """The single-run report: what the data cannot support first, then numbers and plots."""
    def rel(path: Path) -> str:
        return str(Path(path).resolve().relative_to(directory.resolve()))

    eq = analysis.equilibration
    blocks: list[Block] = [Heading(f"What one run can say: {analysis.run.name}", 1),
                           Paragraph(run_headline(analysis))]
    support = tables.support_table(analysis)
    if support[1]:
        blocks += [Heading("What the data cannot support"), TableBlock(*support)]
    blocks += [
        Heading("Measured"),
        Paragraph(f"Means after the equilibration cut at {eq['t0_ps']:.4g} ps "
                  f"({100 * eq['discarded_fraction']:.0f} % discarded; {eq['method']}); "
                  "± is the SEM; the SD column is the spread of the samples themselves."),
        TableBlock(*tables.run_table(analysis)),
    ]
    if analysis.warnings:
        blocks += [Heading("Warnings"), Bullets(analysis.warnings)]
    blocks.append(Heading("Figures"))
    for name, path in figures.items():
        caption = FIGURE_CAPTIONS.get(name) or (
            f"g({name[4:]}) with ±1.96 SEM per bin (blocks of frames)."
            if name.startswith("rdf_") else name)
        blocks.append(Figure(rel(path), caption))
    blocks += [Heading("Methods"), Bullets(METHODS[:2] + METHODS[3:]),
               Paragraph(f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by "
                         "openmm-mace-lp (mace-lp report).")]
    return blocks


def write_run_report(run_dir: str | Path, out_dir: str | Path | None = None,
                     options: "AnalysisOptions | None" = None) -> dict[str, Path]:
    """Analyse one run directory and write its report (default ``RUN_DIR/report``).

    Writes figures/*.png, analysis.json, report.html and, last, report.md; returns
    {"figure:NAME": path, "json", "html", "markdown"}. This is what ``mace-lp run`` can
    call after its run: short runs get a report that says what they cannot support.
    """
    from .analyze import analyze_run

    analysis = analyze_run(run_dir, options)
    return write_run_analysis_report(analysis, Path(out_dir) if out_dir is not None
                                     else Path(run_dir) / "report")


def write_run_analysis_report(analysis: "RunAnalysis", directory: Path) -> dict[str, Path]:
    """:func:`write_run_report` for an analysis already made."""
    directory.mkdir(parents=True, exist_ok=True)
    figures = make_run_figures(analysis, directory / "figures")
    blocks = build_run_document(analysis, figures, directory)
    paths = {f"figure:{name}": path for name, path in figures.items()}
    paths["json"] = write_json(directory / "analysis.json", analysis.to_dict())
    paths["html"] = write_text(directory / "report.html",
                               render_html(blocks, f"openmm-mace-lp run report "
                                                   f"({analysis.run.name})"))
    paths["markdown"] = write_text(directory / "report.md", render_markdown(blocks))
    return paths
