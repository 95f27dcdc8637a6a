"""Static precision errors: energies and forces of a policy against fp64 on fixed structures.

Pure functions on arrays (energies in kJ/mol, forces in kJ/mol/nm), per structure:

- AE_E   = |E - E_ref| / n_atoms                        (kJ/mol/atom)
- RAE_E  = |E - E_ref| / |E_ref|
- AE_F   = mean_i |F_i - F_ref,i|                       (kJ/mol/nm, per-atom vector norm)
- RAE_F  = ||F - F_ref||_F / ||F_ref||_F               (Frobenius norms over atoms x xyz)
- cos_F  = <F, F_ref> / (||F|| ||F_ref||)               (over the flattened 3N vector)

each aggregated over structures as the mean and the 95th percentile (for cos_F, where
small is bad, the 5th percentile as well).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

METRICS: dict[str, tuple[str, str]] = {
    "AE_E": ("Energy error per atom", "kJ/mol/atom"),
    "RAE_E": ("Relative energy error", ""),
    "AE_F": ("Mean per-atom force error", "kJ/mol/nm"),
    "RAE_F": ("Relative force error (Frobenius)", ""),
    "cos_F": ("Force cosine similarity", ""),
}

# evaluate(policy, structure_set) -> (energies[n_frames], forces[n_frames, n_atoms, 3])
Evaluator = Callable[[str, Any], tuple[np.ndarray, np.ndarray]]


def _check_shapes(e_ref: np.ndarray, f_ref: np.ndarray, e: np.ndarray, f: np.ndarray) -> None:
    if f_ref.ndim != 3 or f_ref.shape[2] != 3:
        raise ValueError(f"forces must have shape (n_structures, n_atoms, 3), got {f_ref.shape}.")
    if f.shape != f_ref.shape or e.shape != e_ref.shape or e_ref.shape != (f_ref.shape[0],):
        raise ValueError(f"shape mismatch: reference E{e_ref.shape} F{f_ref.shape}, policy "
                         f"E{e.shape} F{f.shape}.")


def per_structure_errors(e_ref: np.ndarray, f_ref: np.ndarray, e: np.ndarray,
                         f: np.ndarray) -> dict[str, np.ndarray]:
    """The five metrics for every structure (arrays of length n_structures)."""
    e_ref, e = np.asarray(e_ref, dtype=float), np.asarray(e, dtype=float)
    f_ref, f = np.asarray(f_ref, dtype=float), np.asarray(f, dtype=float)
    _check_shapes(e_ref, f_ref, e, f)
    n_atoms = f_ref.shape[1]
    abs_e = np.abs(e - e_ref)
    error = f - f_ref
    ref_norm = np.sqrt(np.sum(f_ref ** 2, axis=(1, 2)))
    pol_norm = np.sqrt(np.sum(f ** 2, axis=(1, 2)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "AE_E": abs_e / n_atoms,
            "RAE_E": abs_e / np.abs(e_ref),
            "AE_F": np.linalg.norm(error, axis=2).mean(axis=1),
            "RAE_F": np.sqrt(np.sum(error ** 2, axis=(1, 2))) / ref_norm,
            "cos_F": np.sum(f * f_ref, axis=(1, 2)) / (pol_norm * ref_norm),
        }


def aggregate(values: np.ndarray, low_tail: bool = False) -> dict[str, float]:
    """Mean and 95th percentile over the finite values, and how many were not finite.

    Non-finite values (an fp16 overflow, a zero reference norm) are counted, not hidden.
    """
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    result = {"mean": float(finite.mean()) if finite.size else float("nan"),
              "p95": float(np.percentile(finite, 95)) if finite.size else float("nan"),
              "n": int(values.size), "n_nonfinite": int(values.size - finite.size)}
    if low_tail:
        result["p05"] = float(np.percentile(finite, 5)) if finite.size else float("nan")
    return result


def aggregate_errors(errors: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {name: aggregate(values, low_tail=(name == "cos_F")) for name, values in errors.items()}


def concatenate_errors(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join per-structure metrics of several groups (structures of different sizes)."""
    return {name: np.concatenate([part[name] for part in parts]) for name in METRICS}


@dataclass
class StaticResult:
    """Per-structure metrics and aggregates of every policy against the reference."""

    reference: str
    per_structure: dict[str, dict[str, np.ndarray]]  # policy -> metric -> values

    def aggregates(self) -> dict[str, dict[str, dict[str, float]]]:
        return {policy: aggregate_errors(errors) for policy, errors in self.per_structure.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "openmm-mace-lp/static-errors/1", "reference": self.reference,
                "metrics": {name: {"label": label, "unit": unit}
                            for name, (label, unit) in METRICS.items()},
                "aggregates": self.aggregates(),
                "per_structure": self.per_structure}


def evaluate_static_errors(structure_sets: Sequence[Any], policies: Sequence[str],
                           evaluate: Evaluator, reference: str = "fp64") -> StaticResult:
    """Evaluate every set with every policy and the reference; metrics per policy.

    ``evaluate(policy, structure_set)`` returns (energies, forces) for the set's frames.
    The reference is evaluated once per set.
    """
    policies = [p for p in policies if p != reference]
    if not policies:
        raise ValueError(f"no policy to compare with the reference {reference!r}; pass "
                         "--policies with at least one other policy, e.g. fp32,bf16.")
    parts: dict[str, list[dict[str, np.ndarray]]] = {p: [] for p in policies}
    for structure_set in structure_sets:
        e_ref, f_ref = evaluate(reference, structure_set)
        for policy in policies:
            e, f = evaluate(policy, structure_set)
            parts[policy].append(per_structure_errors(e_ref, f_ref, e, f))
    return StaticResult(reference, {p: concatenate_errors(v) for p, v in parts.items()})


def static_table(result: StaticResult) -> tuple[list[str], list[list[str]]]:
    """Policy x metric table: mean and 95th percentile (5th for cosine similarity)."""
    from .tables import format_number

    headers = ["Policy"]
    for name, (label, unit) in METRICS.items():
        tail = "p05" if name == "cos_F" else "p95"
        headers += [f"{name} mean ({unit})" if unit else f"{name} mean",
                    f"{name} {tail}"]
    rows = []
    for policy, metrics in result.aggregates().items():
        row = [policy]
        for name in METRICS:
            m = metrics[name]
            if name == "cos_F":
                row += [f"{m['mean']:.8f}", f"{m['p05']:.8f}"]
            else:
                row += [format_number(m["mean"], 3), format_number(m["p95"], 3)]
        rows.append(row)
    return headers, rows
