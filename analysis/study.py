"""The precision-study record: one JSON per card, ``precision_study_<date>_<card>.json``.

What a later reader needs to trust or re-judge a precision study: the card and system
size, per arm its seeds, production time, speed and one verdict per observable with the
numbers behind it, the margins and the rule, and the source thesis' two tables
regenerated (Table 4.4: final means per precision; Table 4.5: absolute differences to
fp64, MSteps/day and speed-up).
"""
from __future__ import annotations

import re
from datetime import date as Date
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import tables
from .atomic import write_json, write_text
from .compare import Comparison, criteria_text, margins_record

SCHEMA = "openmm-mace-lp/precision-study/1"


def card_slug(card: str) -> str:
    """A file-name-safe, lower-case form of a card name ('NVIDIA H200' -> 'nvidia-h200')."""
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    if not slug:
        raise ValueError(f"--card {card!r}: give the card's name, e.g. --card H200.")
    return slug


def study_path(target: str | Path, card: str, day: str) -> Path:
    """``target`` itself when it names a .json file, else ``target/precision_study_<day>_<card>.json``."""
    target = Path(target)
    if target.suffix == ".json":
        return target
    return target / f"precision_study_{day}_{card_slug(card)}.json"


def _atoms(comparison: Comparison) -> int | list[int]:
    counts = sorted({run.run.n_atoms for s in comparison.policies.values() for run in s.runs})
    return counts[0] if len(counts) == 1 else counts


def _table(table: tables.Table) -> dict[str, Any]:
    headers, rows = table
    return {"headers": headers, "rows": rows}


def study_record(comparison: Comparison, card: str, day: str | None = None) -> dict[str, Any]:
    """The study as plain data (see the module docstring)."""
    day = day or Date.today().isoformat()
    arms = []
    for policy, summary in comparison.policies.items():
        verdicts = comparison.verdicts.get(policy, {})
        arms.append({
            "policy": policy,
            "reference": policy == comparison.reference,
            "seeds": summary.seeds,
            "production_ps_per_seed": summary.production_ps_per_seed,
            "kept_ps_per_seed": summary.kept_ps_per_seed,
            "ns_per_day": summary.speed["ns_per_day"],
            "msteps_per_day": summary.speed["msteps_per_day"],
            "speedup": summary.speed["speedup"],
            "speedup_reliable": policy not in comparison.speed_notes,
            "speedup_note": comparison.speed_notes.get(policy),
            "backends": summary.speed["backends"],
            "verdicts": {column: v.verdict for column, v in verdicts.items()},
            "verdict_numbers": {column: v.to_dict() for column, v in verdicts.items()},
            "means": {name: {**e.to_dict(), "error": "SEM"}
                      for name, e in summary.estimates.items()},
        })
    return {
        "schema": SCHEMA,
        "date": day,
        "card": card,
        "atoms": _atoms(comparison),
        "reference": comparison.reference,
        "alpha": comparison.alpha,
        "criteria": criteria_text(comparison.alpha, comparison.reference),
        "margins": margins_record(comparison.margins),
        "arms": arms,
        "table_4_4_final_means": _table(tables.means_table(comparison)),
        "table_4_5_differences_and_speed": _table(tables.differences_table(comparison)),
        "limitations": [{"policy": p, "observable": c, "message": m}
                        for p, c, m in comparison.limitations()],
        "warnings": comparison.warnings,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def study_markdown(record: dict[str, Any]) -> str:
    """The two thesis tables and the verdicts as Markdown, for the results folder."""
    def table(data: dict[str, Any]) -> str:
        return tables.markdown_table(data["headers"], data["rows"])

    lines = [f"# Precision study, {record['card']}, {record['atoms']} atoms ({record['date']})",
             "", record["criteria"], "", "## Verdicts", ""]
    for arm in record["arms"]:
        if arm["reference"]:
            continue
        verdicts = ", ".join(f"{tables.observable_title(k)}: {v}"
                             for k, v in arm["verdicts"].items())
        lines.append(f"- {arm['policy']} ({len(arm['seeds'])} seed(s) x "
                     f"{arm['production_ps_per_seed']:.4g} ps): {verdicts}")
    lines += ["", "## Table 4.4: final means per precision (mean ± SEM)", "",
              table(record["table_4_4_final_means"]), "",
              "## Table 4.5: absolute differences to the reference, MSteps/day and speed-up",
              "", table(record["table_4_5_differences_and_speed"]), ""]
    if record["limitations"]:
        lines += ["## What the data cannot support", ""]
        lines += [f"- {item['policy']}, {tables.observable_title(item['observable'])}: "
                  f"{item['message']}" for item in record["limitations"]]
        lines.append("")
    return "\n".join(lines)


def write_study(comparison: Comparison, target: str | Path, card: str,
                day: str | None = None) -> tuple[Path, Path]:
    """Write the study JSON and its Markdown (same name, .md); returns both paths."""
    day = day or Date.today().isoformat()
    path = study_path(target, card, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = study_record(comparison, card, day)
    write_json(path, record)
    markdown = write_text(path.with_suffix(".md"), study_markdown(record))
    return path, markdown
