"""What the data can support: every case where a number would be over-read, named.

Each check returns :class:`Limitation` objects (a code and a sentence a person can act on).
An observable with a limitation is never called equivalent to the reference, and the
report lists limitations before any verdict. The thresholds are here, with their reasons.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .timeseries import SeriesMean
from .uncertainty import Estimate, t_critical

# Below 20 independent samples the SEM itself is uncertain by more than ~16 %
# (1/sqrt(2 N_eff)) and the Student-t dof are too few for a useful interval.
MIN_INDEPENDENT_SAMPLES = 20
# The kept data's linear trend is significant at this level: still drifting.
DRIFT_ALPHA = 1e-3
# |ln(late/early MSD slope)| above this (a ratio outside 0.8-1.25): ballistic (~2 for t^2
# over 10-50 % of the run), caged (< 1), or too noisy to call diffusive.
MSD_LINEARITY_TOLERANCE = math.log(1.25)
# The mean temperature is off target when its 99 % interval misses target +- this (K);
# 1 K moves water's D by ~2.4 % and its density by ~0.03 %.
TEMPERATURE_TOLERANCE_K = 1.0
# Observables whose within-run error misses run-to-run variation: they need >= 2 seeds.
NEEDS_SEED_SPREAD = ("diffusion", "rdf")

FEW_SAMPLES = "few_samples"
BLOCKING = "blocking_not_converged"
EQUILIBRATION = "equilibration_not_detected"
DRIFTING = "not_stationary"
TEMPERATURE = "temperature_off_target"
MSD_REGIME = "msd_not_diffusive"
SINGLE_SEED = "single_seed"
NOT_MEASURED = "not_measured"
RUN_STATUS = "run_not_completed"


@dataclass(frozen=True)
class Limitation:
    """Why a number cannot be trusted: a code (for programs) and a sentence (for people)."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def series_limitations(label: str, result: SeriesMean | None, n_samples: int
                       ) -> list[Limitation]:
    """Too few independent samples, and blocking that did not reach its plateau."""
    if result is None:
        return [Limitation(FEW_SAMPLES, f"{label}: {n_samples} sample(s): no error estimate "
                                        "is possible; run longer.")]
    out = []
    n_eff = result.n_samples / result.g
    if n_eff < MIN_INDEPENDENT_SAMPLES:
        out.append(Limitation(FEW_SAMPLES, (
            f"{label}: {result.n_samples} samples hold about {n_eff:.1f} independent ones "
            f"(g = {result.g:.3g}); at least {MIN_INDEPENDENT_SAMPLES} are needed for a "
            f"trustworthy SEM: run about {MIN_INDEPENDENT_SAMPLES / max(n_eff, 0.1):.2g}x "
            "longer.")))
    if not result.block_converged:
        reason = ("too few samples for block averaging" if not math.isfinite(result.sem_block)
                  else "block averaging did not reach its plateau (the SEM still grows with "
                       "the block size)")
        out.append(Limitation(BLOCKING, f"{label}: {reason}; the correlation time is not "
                                        "resolved by this run."))
    return out


def constant_limitation(label: str, values: np.ndarray, why: str) -> list[Limitation]:
    """A series that never changed was not measured (e.g. a box no barostat move changed)."""
    if len(values) and np.ptp(values) == 0.0:
        return [Limitation(NOT_MEASURED, f"{label}: every sample is {values[0]:.6g}: {why}")]
    return []


def equilibration_limitations(name: str, at_search_limit: bool, drift_p: float,
                              n_eff: float) -> list[Limitation]:
    """The transient was not seen to end, or what is kept still drifts.

    The cut is searched in the first half of the run; a cut at the last origin searched
    means N_eff was still rising there, i.e. the transient may go on.
    """
    out = []
    if at_search_limit:
        out.append(Limitation(EQUILIBRATION, (
            f"equilibration not detected on the {name}: the best cut is the latest one "
            "searched (half the run), so the transient may not have ended; run longer.")))
    elif n_eff < MIN_INDEPENDENT_SAMPLES:
        out.append(Limitation(EQUILIBRATION, (
            f"equilibration not detected on the {name}: {n_eff:.1f} independent samples "
            "cannot tell a transient from a fluctuation; run longer.")))
    if math.isfinite(drift_p) and drift_p < DRIFT_ALPHA:
        out.append(Limitation(DRIFTING, (
            f"the {name} still drifts after the cut (linear trend, p = {drift_p:.1g}); "
            "the run has not reached a steady state.")))
    return out


def temperature_limitation(estimate: Estimate, target_k: float,
                           ensemble: str) -> list[Limitation]:
    """The thermostat did not hold the target (NVT/NPT); every observable is then off state."""
    if ensemble == "nve" or not math.isfinite(estimate.sem) or not math.isfinite(target_k):
        return []
    half = t_critical(0.99, estimate.dof) * estimate.sem
    offset = estimate.mean - target_k
    if abs(offset) - half > TEMPERATURE_TOLERANCE_K:
        return [Limitation(TEMPERATURE, (
            f"mean temperature {estimate.mean:.2f} +- {estimate.sem:.2g} K (SEM) is off the "
            f"target {target_k:g} K by more than {TEMPERATURE_TOLERANCE_K:g} K: the run is "
            "not at the state point it claims."))]
    return []


def msd_limitation(slope_ratio: float, exponent: float, fit_start_ps: float,
                   fit_end_ps: float) -> list[Limitation]:
    """D = slope/6 holds only where the MSD grows linearly in time.

    Tested by the ratio of the MSD's slopes over the two halves of the fit window (1 when
    linear, ~2 for ballistic t^2, < 1 when caged); the log-log slope is quoted with it.
    """
    if math.isfinite(slope_ratio) and abs(math.log(slope_ratio)) <= MSD_LINEARITY_TOLERANCE:
        return []
    if not math.isfinite(slope_ratio):
        regime = "too few lags to tell"
    elif slope_ratio > 1.0:
        regime = "still accelerating: ballistic" if exponent > 1.5 else "super-diffusive"
    else:
        regime = "slowing down: caged (sub-diffusive)"
    return [Limitation(MSD_REGIME, (
        f"self-diffusion D: the MSD is not linear over the fit window {fit_start_ps:.3g}-"
        f"{fit_end_ps:.3g} ps (late/early slope {slope_ratio:.2f}, log-log slope "
        f"{exponent:.2f}; {regime}): run longer or write frames over a longer span."))]


def seed_limitation(name: str, label: str, n_seeds: int, policy: str) -> list[Limitation]:
    """D and g(r) need the seed-to-seed spread: their within-run errors miss it."""
    kind = "rdf" if name.startswith("rdf:") else name
    if kind in NEEDS_SEED_SPREAD and n_seeds < 2:
        return [Limitation(SINGLE_SEED, (
            f"{label}: {policy} has a single seed, and this observable's within-run error "
            "misses run-to-run variation; run at least 2 seeds per policy."))]
    return []
