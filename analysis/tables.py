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
MARKS = {"equivalent": "✓", "different": "✗", "inconclusive": "?"}
CSS = {"✓": "within", "✗": "outside", "?": "inconclusive", "⚠": "inconclusive"}
UNSUPPORTED = "⚠"


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
    """HTML table; cells starting with a verdict mark get a class for their colour."""
    def td(text: str) -> str:
        text = str(text)
        css = CSS.get(text[:1])
        attribute = f" class='{css}'" if css else ""
        return f"<td{attribute}>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(td(c) for c in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


# --------------------------------------------------------------------------------------
# Tables of one run
# --------------------------------------------------------------------------------------


def run_table(analysis: "RunAnalysis") -> Table:
    """Observables of one run: mean ± SEM, the samples' SD, N_eff and the error's source."""
    headers = ["Observable", "Mean ± SEM", "SD of samples", "Independent samples", "dof",
               "Error from", "Supported by the data"]
    rows = []
    for observable in analysis.scalars.values():
        e = observable.estimate
        n = observable.details.get("n_samples")
        g = observable.details.get("g")
        n_eff = format_number(n / g, 3) if n and g else "–"
        sd = observable.details.get("sd")
        rows.append([with_unit(observable.label, observable.unit),
                     format_estimate(e.mean, e.sem), format_number(sd, 3) if sd else "–",
                     n_eff, format_number(e.dof, 3), e.method,
                     "yes" if observable.supported else f"{UNSUPPORTED} no"])
    return headers, rows


def support_table(analysis: "RunAnalysis") -> Table:
    """What the run cannot support, observable by observable (run-wide reasons once)."""
    headers = ["Observable", "What the data cannot support"]
    run_wide = {item.message for item in analysis.run_limitations}
    rows = [["whole run", f"{UNSUPPORTED} {item.message}"] for item in analysis.run_limitations]
    for observable in analysis.scalars.values():
        for item in observable.limitations:
            if item.message not in run_wide:
                rows.append([observable.label, f"{UNSUPPORTED} {item.message}"])
    for pair, items in analysis.rdf_limitations.items():
        for item in items:
            if item.message not in run_wide:
                rows.append([f"g({pair})", f"{UNSUPPORTED} {item.message}"])
    for name, item in analysis.missing.items():
        rows.append([observable_title(name), f"{UNSUPPORTED} not measured: {item.message}"])
    return headers, rows


# --------------------------------------------------------------------------------------
# Tables of a comparison
# --------------------------------------------------------------------------------------


def observable_title(name: str) -> str:
    from .analyze import observable_label

    if name.startswith("rdf:"):
        return f"g({name[4:]}) IAD"
    if name == "rdf":
        return "g(r)"
    return observable_label(name)[0]


column_title = observable_title


def verdict_cell(comparison: "Comparison", policy: str, column: str) -> str:
    verdict = comparison.verdict(policy, column)
    if verdict is None:
        return "–"
    text = f"{MARKS[verdict.verdict]} {verdict.verdict}"
    if verdict.verdict == "inconclusive":
        if verdict.limitations:
            text += " (data cannot support it)"
        elif math.isfinite(verdict.extra_ps_per_seed):
            text += f" (+{format_number(verdict.extra_ps_per_seed, 2)} ps/seed)"
    return text


def verdict_table(comparison: "Comparison") -> Table:
    """Arm x observable: equivalent / different / inconclusive."""
    columns = comparison.verdict_columns()
    headers = ["Arm", "Runs"] + [observable_title(c) for c in columns]
    rows = []
    for policy in comparison.arms:
        rows.append([policy, comparison.policies[policy].status]
                    + [verdict_cell(comparison, policy, c) for c in columns])
    for policy, reasons in comparison.unanalysable.items():
        rows.append([policy, f"not analysable ({len(reasons)} run(s))"] + ["–"] * len(columns))
    return headers, rows


def limitations_table(comparison: "Comparison") -> Table:
    """Every observable the data cannot support (arm or reference), before any verdict."""
    headers = ["Arm", "Observable", "What the data cannot support"]
    rows = [[policy, observable_title(column), f"{UNSUPPORTED} {message}"]
            for policy, column, message in comparison.limitations()]
    return headers, rows


def _p(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.2g}"


def verdict_details_table(comparison: "Comparison") -> Table:
    """The numbers behind each verdict."""
    level = f"{100 * (1 - 2 * comparison.alpha):g}%"
    headers = ["Arm", "Observable", "Δ ± SEM (RDF: IAD ± SEM)", f"{level} interval",
               "Margin", "p TOST (Holm)", "p difference (Holm)", "Verdict",
               "To decide at the observed noise"]
    rows = []
    for policy in comparison.arms:
        for column in comparison.verdict_columns():
            v = comparison.verdict(policy, column)
            if v is None:
                continue
            unit = "nm" if v.kind == "rdf" else _unit(column)
            if v.kind == "rdf":
                interval = f"IAD ≤ {format_number(v.ci_high, 3)}"
            else:
                interval = f"[{format_number(v.ci_low, 3)}, {format_number(v.ci_high, 3)}]"
            decide = "–"
            if v.verdict == "inconclusive":
                if v.limitations:
                    decide = "fix what the data cannot support first (see above)"
                elif math.isfinite(v.extra_ps_per_seed):
                    decide = (f"≈ {format_number(v.extra_factor, 2)}× the data: "
                              f"+{format_number(v.extra_ps_per_seed, 2)} ps per seed in both "
                              f"arms (→ {v.extra_outcome}; more seeds instead if the seed "
                              "spread dominates)")
                else:
                    decide = "no amount at the observed difference"
            rows.append([policy, with_unit(observable_title(column), unit),
                         format_estimate(v.delta, v.sigma), interval,
                         f"{format_number(v.margin, 3)} {unit}".strip() + f" ({v.margin_text})",
                         f"{_p(v.p_equivalence)} ({_p(v.p_equivalence_holm)})",
                         f"{_p(v.p_difference)} ({_p(v.p_difference_holm)})",
                         f"{MARKS[v.verdict]} {v.verdict}", decide])
    return headers, rows


def _unit(name: str) -> str:
    from .analyze import observable_label

    return observable_label(name)[1]


def means_table(comparison: "Comparison") -> Table:
    """Final means per precision (seed-combined), mean ± SEM (the thesis' Table 4.4)."""
    from .analyze import observable_label

    names = comparison.observables()
    headers = ["Policy", "Seeds", "Production per seed (ps)"] + [
        with_unit(*observable_label(n)) + " mean ± SEM" for n in names]
    rows = []
    for policy, summary in comparison.policies.items():
        row = [policy, str(summary.n_seeds), format_number(summary.production_ps_per_seed, 4)]
        for name in names:
            e = summary.estimates.get(name)
            row.append(format_estimate(e.mean, e.sem) if e else "–")
        rows.append(row)
    return headers, rows


def differences_table(comparison: "Comparison") -> Table:
    """|arm - reference| ± SEM per observable, MSteps/day and speed-up (the thesis' Table 4.5)."""
    from .analyze import observable_label

    names = comparison.observables()
    reference = comparison.reference
    headers = ["Policy"] + [f"|Δ| {with_unit(*observable_label(n))} ± SEM" for n in names] + [
        "MSteps/day", f"Speed-up vs {reference}"]
    rows = []
    for policy in comparison.arms:
        summary = comparison.policies[policy]
        row = [policy]
        for name in names:
            arm = summary.estimates.get(name)
            ref = comparison.policies[reference].estimates.get(name)
            if arm is None or ref is None:
                row.append("–")
                continue
            delta = abs(arm.mean - ref.mean)
            relative = (f" ({100 * delta / abs(ref.mean):.2g} %)"
                        if ref.mean != 0 and math.isfinite(ref.mean) else "")
            row.append(format_estimate(delta, math.hypot(arm.sem, ref.sem)) + relative)
        row += [format_number(summary.speed["msteps_per_day"], 4),
                speedup_text(comparison, policy)]
        rows.append(row)
    return headers, rows


def speedup_text(comparison: "Comparison", policy: str) -> str:
    speedup = comparison.policies[policy].speed["speedup"]
    text = format_number(speedup, 3) + "×" if math.isfinite(speedup) else "n/a"
    note = comparison.speed_notes.get(policy)
    return f"{text} ({note})" if note else text


def rdf_table(comparison: "Comparison") -> Table:
    """RDF integrated absolute differences, their noise and the margin."""
    headers = ["Policy", "Pair", "IAD (nm)", "Noise floor (nm)",
               "Reference seed-to-seed floor (nm)", "SEM of IAD (nm)", "Margin (nm)",
               "Verdict", "r from (nm)"]
    rows = []
    for policy in comparison.arms:
        for pair, result in comparison.rdf.get(policy, {}).items():
            v = comparison.verdict(policy, "rdf:" + pair)
            rows.append([policy, pair, format_number(result.iad, 3),
                         format_number(result.noise_floor, 3),
                         format_number(result.reference_seed_floor, 3),
                         format_number(result.sigma, 2),
                         format_number(v.margin, 3) if v else "–",
                         f"{MARKS[v.verdict]} {v.verdict}" if v else "–",
                         format_number(result.r_min_nm, 3)])
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
            ns += f" ± {format_number(s['ns_per_day_sd'], 2)} (SD over seeds)"
        rows.append([policy, ", ".join(s["backends"]), ", ".join(s["devices"]),
                     ", ".join(format_number(t, 3) for t in s["timestep_fs"]), ns,
                     format_number(s["msteps_per_day"], 4), speedup_text(comparison, policy)])
    return headers, rows


def equilibration_table(comparison: "Comparison") -> Table:
    """Per run: discarded transient and run status."""
    headers = ["Run", "Policy", "Status", "Production (ps)", "Kept from (ps)",
               "Discarded (%)", "Rule"]
    rows = []
    for policy, summary in comparison.policies.items():
        for run in summary.runs:
            eq = run.equilibration
            rows.append([run.run.name, policy, str(run.run.manifest.get("status")),
                         format_number(run.production_ps, 4), format_number(eq["t0_ps"], 4),
                         f"{100 * eq['discarded_fraction']:.0f}", eq["method"]])
    return headers, rows
