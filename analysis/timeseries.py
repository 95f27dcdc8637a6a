"""Statistics of correlated time series: how many independent samples does a run hold?

- :func:`statistical_inefficiency` g = 1 + 2 sum_t (1 - t/N) C(t) (integrated
  autocorrelation, Sokal's automatic window), so that var(mean) = var(x) * g / N;
- :func:`block_average` Flyvbjerg-Petersen blocking, a cross-check that makes no
  assumption about the shape of C(t) (block size by the Lee-Needs-Drummond rule);
- :func:`detect_equilibration` Chodera's rule (J. Chem. Theory Comput. 12, 1799 (2016)):
  discard the first t0 samples where t0 maximises the effective sample count of the rest,
  with pymbar's statistical inefficiency (the field's implementation) over candidate
  origins in the first half;
- :func:`drift_p_value` whether what is kept still drifts (slope against its correlated SE);
- :func:`mean_estimate` the mean of a series with the larger of the two error estimates.

:func:`statistical_inefficiency` is ours rather than pymbar's because pymbar sums C(t) up
to its first zero crossing, which for slowly decaying, noisy C(t) accumulates noise; the
tests check both against the analytic g of AR(1) series and against each other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .uncertainty import Estimate

MIN_BLOCKS = 8  # fewer blocks give an error estimate too uncertain to be useful


def _as_series(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    if x.size < 2:
        raise ValueError(f"a time series needs at least 2 samples, got {x.size}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("time series contains NaN or infinite values.")
    return x


def autocorrelation(x: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation C(t) = <dx_i dx_{i+t}> / <dx^2> for t = 0..N-1.

    Each lag is averaged over its own N - t pairs (computed by FFT in O(N log N)).
    A constant series returns C = [1, 0, 0, ...].
    """
    x = _as_series(x)
    n = x.size
    dx = x - x.mean()
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(dx, size)
    sums = np.fft.irfft(spectrum * np.conj(spectrum), size)[:n]
    covariance = sums / (n - np.arange(n))
    if covariance[0] <= 0.0:
        result = np.zeros(n)
        result[0] = 1.0
        return result
    return covariance / covariance[0]


def statistical_inefficiency(x: np.ndarray, window_factor: float = 6.0) -> float:
    """g = 1 + 2 sum_{t=1}^{M} (1 - t/N) C(t), the window M chosen self-consistently.

    The noisy tail of C(t) must be cut off. Sokal's automatic windowing takes the
    smallest M with M >= c * tau(M), tau = g/2 (c = 6: for exponential decay the part
    cut off is ~e^-6). Stopping at the first C(t) <= 0 instead is biased upwards for
    slowly decaying C (noise accumulates until the first crossing). g >= 1 always
    (anti-correlation is treated as none: conservative).
    """
    c = autocorrelation(x)
    n = c.size
    t = np.arange(1, n)
    partial = 1.0 + 2.0 * np.cumsum((1.0 - t / n) * c[1:])  # g(M) for M = 1..n-1
    ok = t >= window_factor * partial / 2.0
    g = partial[np.argmax(ok)] if ok.any() else partial[-1]
    return max(1.0, float(g))


@dataclass
class BlockAverage:
    """Result of Flyvbjerg-Petersen blocking; ``sem`` is read at the plateau level."""

    sem: float
    block_size: int
    n_blocks: int
    converged: bool  # False: the SEM was still rising at the deepest usable level
    levels: list[dict[str, float]] = field(default_factory=list)


def block_average(x: np.ndarray, min_blocks: int = MIN_BLOCKS) -> BlockAverage:
    """Standard error of the mean by repeated pairwise blocking.

    At level k the series is cut into blocks of B = 2^k samples; the SEM of the block
    means rises with B until blocks are longer than the correlation time, then plateaus
    while its own noise grows as blocks get few. The level is chosen by the optimal-block
    rule of Lee, Needs & Drummond (Phys. Rev. B 83, 245117 (2011)): the smallest B with
    B^3 > 2 N (SEM_B / SEM_1)^4, which balances the O(tau/B) bias against the O(sqrt(B/N))
    noise. If no level with at least ``min_blocks`` blocks satisfies it, the deepest is
    used and ``converged`` is False.
    """
    x = _as_series(x)
    n = x.size
    levels = []
    block = 1
    while n // block >= min_blocks:
        n_blocks = n // block
        means = x[: n_blocks * block].reshape(n_blocks, block).mean(axis=1)
        sem = float(np.std(means, ddof=1) / math.sqrt(n_blocks))
        levels.append({"block_size": block, "n_blocks": n_blocks, "sem": sem,
                       "sem_error": sem / math.sqrt(2.0 * (n_blocks - 1))})
        block *= 2
    if not levels:
        raise ValueError(f"block averaging needs at least {min_blocks} samples, got {n}.")
    sem_1 = levels[0]["sem"]
    chosen, converged = len(levels) - 1, False
    if sem_1 == 0.0:
        chosen, converged = 0, True
    else:
        for k, level in enumerate(levels):
            if level["block_size"] ** 3 > 2.0 * n * (level["sem"] / sem_1) ** 4:
                chosen, converged = k, True
                break
    best = levels[chosen]
    return BlockAverage(sem=best["sem"], block_size=int(best["block_size"]),
                        n_blocks=int(best["n_blocks"]), converged=converged, levels=levels)


@dataclass
class Equilibration:
    """Where the transient ends: the first ``t0`` samples are discarded."""

    t0: int
    g: float  # statistical inefficiency of x[t0:] (pymbar's estimator)
    n_eff: float  # (N - t0) / g
    at_limit: bool = False  # t0 is the last origin searched: N_eff was still rising


def pymbar_timeseries():
    """pymbar's ``timeseries`` module, imported without its import-time log banners."""
    import logging

    logger = logging.getLogger("pymbar")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)  # a JAX notice and a generic caution, every import
    from pymbar import timeseries

    return timeseries


def detect_equilibration(x: np.ndarray, max_fraction: float = 0.5,
                         n_candidates: int = 100) -> Equilibration:
    """Choose t0 maximising N_eff(t0) = (N - t0) / g(x[t0:]) (Chodera 2016).

    A transient inflates both the variance and the apparent correlation time, so cutting
    it raises N_eff; cutting equilibrated data lowers N. g is pymbar's estimator (the one
    the method was published with, ``timeseries.statistical_inefficiency``, fast mode).
    Unlike ``pymbar.timeseries.detect_equilibration`` the candidates are limited to the
    first ``max_fraction`` of the series: on a stationary series N_eff(t0) is flat and its
    noisy maximum would otherwise land anywhere, discarding good data; a cut at that limit
    means the transient was not seen to end (see :mod:`.support`). With
    ``max_fraction=1`` and every origin a candidate this is pymbar's own search.
    """
    x = _as_series(x)
    n = x.size
    if np.ptp(x) == 0.0:
        return Equilibration(t0=0, g=1.0, n_eff=float(n))
    timeseries = pymbar_timeseries()
    last = max(0, min(n - 2, int(n * max_fraction)))
    candidates = np.unique(np.linspace(0, last, min(n_candidates, last + 1)).astype(int))
    best = None
    for t0 in candidates:
        tail = x[t0:]
        g = float(timeseries.statistical_inefficiency(tail, fast=True)) \
            if np.ptp(tail) > 0 else float(tail.size)
        n_eff = (n - t0) / g
        if best is None or n_eff > best.n_eff:
            best = Equilibration(t0=int(t0), g=g, n_eff=n_eff)
    best.at_limit = bool(len(candidates) > 1 and best.t0 == candidates[-1])
    return best


def drift_p_value(x: np.ndarray) -> float:
    """Two-sided p that ``x`` has no linear trend (least-squares slope against its SE).

    The slope's ordinary SE assumes independent residuals; it is scaled by sqrt(g) of the
    residuals about the line (their correlation), and dof = N/g - 2. A small p means the
    series still drifts: the equilibration cut did not reach a stationary stretch. A trend
    inflates a series' own SEM, so comparing the means of its halves would miss it; the
    residuals about the fitted line do not carry the trend. NaN: fewer than 8 samples.
    """
    from scipy import stats

    x = _as_series(x)
    n = x.size
    if n < 8:
        return math.nan
    t = np.arange(n, dtype=float)
    (slope, intercept), cov = np.polyfit(t, x, 1, cov="unscaled")
    residuals = x - (slope * t + intercept)
    if np.ptp(residuals) == 0.0:
        return 1.0 if slope == 0.0 else 0.0
    g = statistical_inefficiency(residuals)
    se = math.sqrt(float(residuals @ residuals) / (n - 2) * cov[0, 0] * g)
    dof = max(n / g - 2.0, 1.0)
    return float(2.0 * stats.t.sf(abs(slope) / se, dof))


@dataclass
class SeriesMean:
    """Mean of a series with both error estimates; ``estimate.sem`` is the larger."""

    estimate: Estimate
    n_samples: int
    g: float
    sem_inefficiency: float
    sem_block: float
    block_converged: bool

    def to_dict(self) -> dict:
        return {**self.estimate.to_dict(), "n_samples": self.n_samples, "g": self.g,
                "n_eff": self.n_samples / self.g, "sem_inefficiency": self.sem_inefficiency,
                "sem_block": self.sem_block, "block_converged": self.block_converged}


def mean_estimate(x: np.ndarray) -> SeriesMean:
    """Mean of a correlated series, SEM = max(sqrt(var g / N), blocking SEM).

    Taking the larger of two independent-in-method estimates avoids claiming more
    precision than either supports; dof follows the estimate that was chosen.
    """
    x = _as_series(x)
    n = x.size
    g = statistical_inefficiency(x)
    sem_g = math.sqrt(float(np.var(x, ddof=1)) * g / n)
    dof_g = max(n / g - 1.0, 1.0)
    if n >= MIN_BLOCKS:
        blocks = block_average(x)
        sem_b, dof_b, converged = blocks.sem, blocks.n_blocks - 1.0, blocks.converged
    else:
        sem_b, dof_b, converged = math.nan, math.nan, False
    if math.isfinite(sem_b) and sem_b > sem_g:
        estimate = Estimate(float(x.mean()), sem_b, dof_b, "block averaging")
    else:
        estimate = Estimate(float(x.mean()), sem_g, dof_g, "statistical inefficiency")
    return SeriesMean(estimate, n, g, sem_g, sem_b, converged)
