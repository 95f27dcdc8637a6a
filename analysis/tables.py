"""Tables as (headers, rows) of strings, rendered to Markdown or HTML.

The same table builders feed ``compare`` (Markdown), ``analyze`` (terminal) and
``report`` (Markdown and HTML), so the numbers are formatted in one place.
"""
from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .analyze import RunAnalysis
    from .compare import Comparison

Table = tuple[list[str], list[list[str]]]
WITHIN = "✓"
OUTSIDE = "✗"


def format_number(value: float, digits: int = 4) -> str:
    """Compact number: fixed point in a sensible range, else scientific."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.{digits}g}"
    return f"{value:.{max(1, digits - 1)}e}"


def format_estimate(mean: float, sem: float) -> str:
    """``mean ± sem`` with the error to 2 significant digits and the mean to match."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if sem is None or not math.isfinite(sem):
        return f"{format_number(mean, 6)} ± n/a"
    if sem <= 0:
        return format_number(mean, 6)
    exponent = math.floor(math.log10(sem))
    decimals = 1 - exponent  # two significant digits of the error
    scale = max(abs(mean), sem)
    if 1e-3 <= scale < 1e5 and decimals <= 8:
        decimals = max(decimals, 0)
        return f"{mean:.{decimals}f} ± {sem:.{decimals}f}"
    power = math.floor(math.log10(scale))
    m, s = mean / 10 ** power, sem / 10 ** power
    d = max(0, 1 - math.floor(math.log10(s))) if s > 0 else 2
    return f"({m:.{d}f} ± {s:.{d}f})e{power:+03d}"


def with_unit(label: str, unit: str) -> str:
    return f"{label} ({unit})" if unit else label


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """GitHub-flavoured Markdown table (pipes in cells escaped)."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """HTML table; verdict cells get the classes ``within`` / ``outside`` for colour."""
    def td(text: str) -> str:
        text = str(text)
        css = " class='within'" if text.startswith(WITHIN) else \
            " class='outside'" if text.startswith(OUTSIDE) else ""
        return f"<td{css}>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(td(c) for c in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


# --------------------------------------------------------------------------------------
# Tables of one run
# --------------------------------------------------------------------------------------


def run_table(analysis: "RunAnalysis") -> Table:
    """Observables of one run: mean ± SEM, N_eff and how the error was obtained."""
    headers = ["Observable", "Mean ± SEM", "dof", "Error from"]
    rows = []
    for observable in analysis.scalars.values():
        e = observable.estimate
        rows.append([with_unit(observable.label, observable.unit),
                     format_estimate(e.mean, e.sem), format_number(e.dof, 3), e.method])
    return headers, rows


# --------------------------------------------------------------------------------------
# Tables of a comparison
# --------------------------------------------------------------------------------------


def column_title(column: str) -> str:
    from .analyze import observable_label

    if column.startswith("rdf:"):
        return f"g({column[4:]}) IAD"
    return observable_label(column)[0]


def verdict_cell(comparison: "Comparison", policy: str, column: str) -> str:
    if column.startswith("rdf:"):
        result = comparison.rdf_verdicts.get(policy, {}).get(column[4:])
        if result is None or not math.isfinite(result.ratio):
            return "n/a"
        mark = WITHIN if result.within_noise else OUTSIDE
        return f"{mark} {format_number(result.ratio, 2)}× floor"
    difference = comparison.differences.get(policy, {}).get(column)
    if difference is None:
        return "–"
    if difference.within_noise is None:
        return "n/a (no error estimate)"
    mark = WITHIN if difference.within_noise else OUTSIDE
    return f"{mark} {format_number(abs(difference.z), 2)}σ"


def verdict_table(comparison: "Comparison") -> Table:
    """Arm x observable: ✓ within noise / ✗ outside, with |z| (σ) or IAD/floor."""
    columns = comparison.verdict_columns()
    headers = ["Arm", "Runs"] + [column_title(c) for c in columns]
    rows = []
    for policy in comparison.arms:
        rows.append([policy, comparison.policies[policy].status]
                    + [verdict_cell(comparison, policy, c) for c in columns])
    for policy, reasons in comparison.unanalysable.items():
        rows.append([policy, f"not analysable ({len(reasons)} run(s))"] + ["–"] * len(columns))
    return headers, rows


def means_table(comparison: "Comparison") -> Table:
    """Final means per precision (seed-combined), mean ± SEM."""
    from .analyze import observable_label

    names = comparison.observables()
    headers = ["Policy", "Seeds"] + [with_unit(*observable_label(n)) for n in names]
    rows = []
    for policy, summary in comparison.policies.items():
        row = [policy, str(summary.n_seeds)]
        for name in names:
            e = summary.estimates.get(name)
            row.append(format_estimate(e.mean, e.sem) if e else "–")
        rows.append(row)
    return headers, rows


def differences_table(comparison: "Comparison") -> Table:
    """Absolute differences to the reference: Δ ± σ_combined (relative %)."""
    from .analyze import observable_label

    names = comparison.observables()
    headers = ["Policy"] + [f"Δ {with_unit(*observable_label(n))}" for n in names]
    rows = []
    for policy in comparison.arms:
        row = [policy]
        for name in names:
            d = comparison.differences[policy].get(name)
            if d is None:
                row.append("–")
                continue
            relative = f" ({100 * d.relative:+.2g} %)" if math.isfinite(d.relative) else ""
            row.append(format_estimate(d.delta, d.sigma) + relative)
        rows.append(row)
    return headers, rows


def rdf_table(comparison: "Comparison") -> Table:
    """RDF integrated absolute differences and noise floors."""
    headers = ["Policy", "Pair", "IAD (nm)", "Noise floor (nm)", "IAD / floor", "Verdict",
               "r from (nm)", "Floor from"]
    rows = []
    for policy in comparison.arms:
        for pair, v in comparison.rdf_verdicts.get(policy, {}).items():
            verdict = ("n/a" if v.within_noise is None else
                       f"{WITHIN} within" if v.within_noise else f"{OUTSIDE} outside")
            rows.append([policy, pair, format_number(v.iad, 3),
                         format_number(v.noise_floor, 3), format_number(v.ratio, 3), verdict,
                         format_number(v.r_min_nm, 3), v.floor_method])
    return headers, rows


def speed_table(comparison: "Comparison") -> Table:
    """ns/day, MSteps/day (= (ns/day) / (timestep in fs)) and speed-up vs the reference."""
    headers = ["Policy", "Backend", "Device", "Timestep (fs)", "ns/day", "MSteps/day",
               f"Speed-up vs {comparison.reference}"]
    rows = []
    for policy, summary in comparison.policies.items():
        s = summary.speed
        ns = format_number(s["ns_per_day"], 4)
        if math.isfinite(s.get("ns_per_day_sd", math.nan)):
            ns += f" ± {format_number(s['ns_per_day_sd'], 2)} (SD)"
        rows.append([policy, ", ".join(s["backends"]), ", ".join(s["devices"]),
                     ", ".join(format_number(t, 3) for t in s["timestep_fs"]), ns,
                     format_number(s["msteps_per_day"], 4),
                     format_number(s["speedup"], 3) + "×" if math.isfinite(s["speedup"])
                     else "n/a"])
    return headers, rows


def equilibration_table(comparison: "Comparison") -> Table:
    """Per run: discarded transient and run status."""
    headers = ["Run", "Policy", "Status", "Kept from (ps)", "Discarded (%)", "Rule"]
    rows = []
    for policy, summary in comparison.policies.items():
        for run in summary.runs:
            eq = run.equilibration
            rows.append([run.run.name, policy, str(run.run.manifest.get("status")),
                         format_number(eq["t0_ps"], 4),
                         f"{100 * eq['discarded_fraction']:.0f}", eq["method"]])
    return headers, rows
