"""The report: one Markdown and one HTML file with PNG figures, verdicts first.

The document is built once as a list of blocks (heading, paragraph, table, figure) and
rendered to both formats, so that they never disagree.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Union

from . import tables
from .atomic import write_json, write_text
from .compare import Comparison, criteria_text
from .plots import make_figures


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
    "verdicts": "Every observable of every arm: |Δ| / threshold (right of the dashed line: "
                "outside noise).",
    "timeseries_temperature": "Temperature: runs and difference to the reference.",
    "timeseries_density": "Density: runs and difference to the reference.",
    "timeseries_potential_energy": "Potential energy per atom: runs and difference to the "
                                   "reference.",
    "timeseries_total_energy": "Total energy per atom (NVE conservation).",
    "msd": "Mean squared displacement and the fit windows for D.",
}
HTML_STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f0f0f0; }
td.within { background: #e3f6e3; }
td.outside { background: #fbdada; font-weight: bold; }
img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; }
"""


def headline(comparison: Comparison) -> str:
    """One sentence that answers the question."""
    outside = comparison.outside_noise()
    level = f"{100 * comparison.level:g}%"
    if not comparison.arms:
        return f"Only the reference policy {comparison.reference} was found: nothing to compare."
    if not outside:
        return (f"All {len(comparison.arms)} arm(s) ({', '.join(comparison.arms)}) reproduce "
                f"{comparison.reference} within noise for every observable (at the {level} "
                "level).")
    by_arm: dict[str, list[str]] = {}
    for policy, column in outside:
        by_arm.setdefault(policy, []).append(tables.column_title(column))
    parts = [f"{policy}: {', '.join(columns)}" for policy, columns in by_arm.items()]
    clean = [p for p in comparison.arms if p not in by_arm]
    text = f"Outside noise vs {comparison.reference} (at the {level} level) — " + "; ".join(parts)
    if clean:
        text += f". Within noise everywhere: {', '.join(clean)}"
    return text + "."


def build_document(comparison: Comparison, figures: dict[str, Path],
                   directory: Path) -> list[Block]:
    """Blocks of the report, in reading order: verdict first, then evidence."""
    def rel(path: Path) -> str:
        return str(Path(path).resolve().relative_to(directory.resolve()))

    criteria = criteria_text(comparison.level, comparison.rdf_factor, comparison.reference)
    blocks: list[Block] = [
        Heading(f"Did the precision change the physics? ({comparison.reference} reference)", 1),
        Paragraph(headline(comparison)),
        TableBlock(*tables.verdict_table(comparison)),
        Paragraph("✓ within noise, ✗ outside noise; σ = |Δ| / combined SEM; RDFs: integrated "
                  f"absolute difference / noise floor. {criteria}"),
        Figure(rel(figures["verdicts"]), FIGURE_CAPTIONS["verdicts"]),
    ]
    if comparison.warnings:
        blocks += [Heading("Warnings"), Bullets(comparison.warnings)]
    blocks += [
        Heading("Final means per precision"),
        TableBlock(*tables.means_table(comparison)),
        Heading(f"Differences to {comparison.reference}"),
        Paragraph("Δ ± combined standard error (relative difference)."),
        TableBlock(*tables.differences_table(comparison)),
    ]
    rdf_rows = tables.rdf_table(comparison)
    if rdf_rows[1]:
        blocks += [Heading("RDF differences"), TableBlock(*rdf_rows)]
    blocks += [
        Heading("Speed"),
        Paragraph("MSteps/day = (ns/day) / (timestep in fs); speed-up from MSteps/day."),
        TableBlock(*tables.speed_table(comparison)),
        Heading("Figures"),
    ]
    for name, path in figures.items():
        if name == "verdicts":
            continue
        caption = FIGURE_CAPTIONS.get(name) or (
            f"g({name[4:]}): overlay and difference to the reference (band: reference noise)."
            if name.startswith("rdf_") else name)
        blocks.append(Figure(rel(path), caption))
    blocks += [
        Heading("Methods"),
        Bullets([
            "Equilibration: the first t0 of each run is discarded, t0 maximising the effective "
            "sample count N_eff = (N - t0)/g of the potential energy (and density in NPT), "
            "Chodera, JCTC 12, 1799 (2016). The same cut applies to the trajectory.",
            "Time-series means: SEM = max(sqrt(var·g/N), block-averaging SEM) with g the "
            "statistical inefficiency (integrated autocorrelation) and blocks chosen by the "
            "Lee-Needs-Drummond rule.",
            "Seeds: mean of seed means; SEM = max(propagated within-run SEM, seed-to-seed "
            "SD/√n); degrees of freedom by Welch-Satterthwaite.",
            "RDFs: per-frame normalisation by each frame's volume (NPT-correct), r up to half "
            "the smallest box width; peak position/height errors from 8 blocks of frames.",
            "Diffusion: MSD of unwrapped (von Bülow-Bullerjahn-Hummer scheme), centre-of-mass "
            "corrected positions, FFT over all time origins; D = slope/6 in the fit window; "
            "SEM from the spread over 16 atom groups. No finite-size (Yeh-Hummer) correction.",
            criteria,
        ]),
        Heading("Runs and equilibration"),
        TableBlock(*tables.equilibration_table(comparison)),
        Paragraph(f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by "
                  "openmm-mace-lp (mace-lp report)."),
    ]
    return blocks


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
