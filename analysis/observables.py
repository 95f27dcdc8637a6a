"""Physical observables of one run: RDFs, MSD and diffusion, NVE energy drift.

Conventions: lengths in nm, times in ps, energies in kJ/mol; diffusion coefficients in
1e-9 m^2/s (= nm^2/ns), the unit water's D is usually quoted in (~2.3 at 298 K).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .timeseries import statistical_inefficiency
from .uncertainty import Estimate

DIFFUSION_UNIT = "1e-9 m^2/s"
DRIFT_UNIT = "kJ/mol/atom/ns"

# --------------------------------------------------------------------------------------
# Radial distribution functions
# --------------------------------------------------------------------------------------


def select_pairs(topology, selection_a: str, selection_b: str,
                 exclude_same_residue: bool = False) -> np.ndarray:
    """Unique unordered atom pairs (i != j) between two MDTraj selections.

    Overlapping selections (e.g. O-O) count every pair once, as the RDF normalisation
    by the number of pairs expects.
    """
    a = topology.select(selection_a)
    b = topology.select(selection_b)
    if a.size == 0 or b.size == 0:
        empty = selection_a if a.size == 0 else selection_b
        raise ValueError(f"RDF selection {empty!r} matches no atom; check the atom names in "
                         "topology.pdb (MDTraj selection syntax, e.g. 'name O').")
    grid = np.stack(np.meshgrid(a, b, indexing="ij"), axis=-1).reshape(-1, 2)
    grid = grid[grid[:, 0] != grid[:, 1]]
    pairs = np.unique(np.sort(grid, axis=1), axis=0)
    if exclude_same_residue:
        residue = np.array([atom.residue.index for atom in topology.atoms])
        pairs = pairs[residue[pairs[:, 0]] != residue[pairs[:, 1]]]
    if pairs.size == 0:
        raise ValueError(f"no atom pairs between {selection_a!r} and {selection_b!r}.")
    return pairs.astype(np.int32)


def max_rdf_range(unitcell_vectors: np.ndarray) -> float:
    """Largest r (nm) valid under the minimum-image convention in every frame.

    That is half the smallest perpendicular width of the cell, min_i V / |a_j x a_k| / 2.
    """
    from openmm_mace_lp.neighbors import face_distances

    return float(np.min(face_distances(unitcell_vectors)) / 2.0)


@dataclass
class RDF:
    """g(r) averaged over frames, with the per-frame curves kept for error estimates."""

    name: str
    r: np.ndarray  # bin centres (nm)
    g_frames: np.ndarray  # (n_frames, n_bins), each normalised by its own frame volume
    bin_width: float
    n_pairs: int
    ideal_counts: np.ndarray | None = None  # pairs per bin per frame an ideal gas would give
    intermolecular: bool = False  # pairs within one residue left out

    @property
    def g(self) -> np.ndarray:
        return self.g_frames.mean(axis=0)

    def blocks(self, n_blocks: int) -> np.ndarray:
        """g(r) of ``n_blocks`` contiguous blocks of frames, shape (n_blocks, n_bins)."""
        n_blocks = max(1, min(n_blocks, len(self.g_frames)))
        return np.stack([part.mean(axis=0)
                         for part in np.array_split(self.g_frames, n_blocks)])

    def to_dict(self) -> dict:
        return {"name": self.name, "r_nm": self.r, "g": self.g, "bin_width_nm": self.bin_width,
                "n_pairs": self.n_pairs, "n_frames": len(self.g_frames),
                "intermolecular": self.intermolecular}


def compute_rdf(traj, pairs: np.ndarray, name: str = "rdf", r_max: float = 1.0,
                bin_width: float = 0.005, max_distances_per_chunk: int = 5_000_000) -> RDF:
    """Partial RDF normalised frame by frame: g_f(r) = n_f(r) V_f / (N_pairs 4/3 pi dr^3).

    Why not ``md.compute_rdf``: it divides the counts of all frames by
    N_pairs * sum_f(1/V_f) * V_shell, i.e. returns a 1/V_f-weighted mean of the per-frame
    g_f(r). That is exact for constant volume and unbiased for an ideal gas, but in NPT it
    weights compressed frames more than the ensemble average <g_f> does. We normalise every
    frame by its own volume and weight frames equally (identical to MDTraj at constant
    volume), and keep g_f so that block errors and split halves come for free.
    ``r_max`` is capped at half the smallest box width (minimum image).
    """
    import mdtraj as md

    if traj.unitcell_vectors is None:
        raise ValueError(f"RDF {name}: the trajectory has no unit cell; RDF normalisation needs "
                         "the box volume of every frame (periodic runs only).")
    r_max = min(float(r_max), max_rdf_range(traj.unitcell_vectors))
    n_bins = int(math.floor(r_max / bin_width + 1e-9))
    if n_bins < 1:
        raise ValueError(f"RDF {name}: bin width {bin_width} nm exceeds the usable range "
                         f"{r_max:.3f} nm.")
    edges = np.arange(n_bins + 1) * bin_width
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    volumes = np.abs(np.linalg.det(traj.unitcell_vectors.astype(float)))
    chunk = max(1, max_distances_per_chunk // len(pairs))
    g_frames = np.empty((traj.n_frames, n_bins))
    for start in range(0, traj.n_frames, chunk):
        stop = min(start + chunk, traj.n_frames)
        distances = md.compute_distances(traj[start:stop], pairs, periodic=True)
        bins = np.floor(distances / bin_width).astype(np.int64)
        rows = np.broadcast_to(np.arange(stop - start)[:, None], bins.shape)
        keep = bins < n_bins
        counts = np.bincount(rows[keep] * n_bins + bins[keep],
                             minlength=(stop - start) * n_bins).reshape(stop - start, n_bins)
        g_frames[start:stop] = counts * volumes[start:stop, None] / (len(pairs) * shell)
    ideal = len(pairs) * shell * np.mean(1.0 / volumes)
    return RDF(name=name, r=0.5 * (edges[1:] + edges[:-1]), g_frames=g_frames,
               bin_width=bin_width, n_pairs=len(pairs), ideal_counts=ideal)


def rdf_peak(r: np.ndarray, g: np.ndarray,
             ideal_counts: np.ndarray | None = None) -> tuple[float, float]:
    """Position and height of the highest maximum, refined by a parabola through 3 bins.

    With ``ideal_counts`` the search skips bins where an ideal gas would put fewer than
    one pair per frame: there a single close contact makes a spike far above any peak.
    """
    g = np.asarray(g, dtype=float)
    if ideal_counts is not None and np.any(ideal_counts >= 1.0):
        g = np.where(ideal_counts >= 1.0, g, -np.inf)
    i = int(np.argmax(g))
    if 0 < i < len(g) - 1:
        y0, y1, y2 = g[i - 1], g[i], g[i + 1]
        curvature = y0 - 2.0 * y1 + y2
        if np.isfinite(curvature) and curvature < 0:
            shift = 0.5 * (y0 - y2) / curvature
            dr = r[1] - r[0]
            return float(r[i] + shift * dr), float(y1 - 0.25 * (y0 - y2) * shift)
    return float(r[i]), float(g[i])


def integrated_absolute_difference(r: np.ndarray, g_a: np.ndarray, g_b: np.ndarray) -> float:
    """IAD = integral |g_a(r) - g_b(r)| dr (nm) over the common range of both curves."""
    n = min(len(g_a), len(g_b), len(r))
    if n == 0:
        return math.nan
    dr = float(r[1] - r[0]) if n > 1 else 1.0
    return float(np.sum(np.abs(np.asarray(g_a[:n]) - np.asarray(g_b[:n]))) * dr)


# --------------------------------------------------------------------------------------
# Mean squared displacement and diffusion
# --------------------------------------------------------------------------------------


def unwrap(xyz: np.ndarray, unitcell_vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """Unwrap positions by summing minimum-image displacements between consecutive frames.

    Each step's displacement is wrapped with the box of the *later* frame (the
    "toroidal-view-preserving" scheme of von Buelow, Bullerjahn & Hummer, J. Chem. Phys.
    153, 021101 (2020)): unlike shifting by whole boxes it adds no spurious drift when
    the box fluctuates in NPT. Valid while atoms move less than half a box per frame;
    the largest per-frame displacement (in box fractions) is returned so callers can warn.
    """
    xyz = np.asarray(xyz, dtype=float)
    boxes = np.asarray(unitcell_vectors, dtype=float)
    if len(xyz) < 2:
        return xyz.copy(), 0.0
    steps = xyz[1:] - xyz[:-1]
    inverse = np.linalg.inv(boxes[1:])
    fractional = np.einsum("fnj,fjk->fnk", steps, inverse)
    fractional -= np.round(fractional)
    largest = float(np.max(np.abs(fractional))) if fractional.size else 0.0
    steps = np.einsum("fnj,fjk->fnk", fractional, boxes[1:])
    unwrapped = np.empty_like(xyz)
    unwrapped[0] = xyz[0]
    unwrapped[1:] = xyz[0] + np.cumsum(steps, axis=0)
    return unwrapped, largest


def msd_per_atom(positions: np.ndarray, atoms_per_chunk: int = 64) -> np.ndarray:
    """Time-origin-averaged MSD of every atom, shape (n_frames, n_atoms), lag 0..N-1.

    MSD(m) = 1/(N-m) sum_k |r(k+m) - r(k)|^2 = S1(m) - 2 S2(m) with
    S2(m) = 1/(N-m) sum_k r(k).r(k+m) from an FFT autocorrelation and
    S1(m) = 1/(N-m) sum_k (|r(k)|^2 + |r(k+m)|^2) from cumulative sums: O(N log N)
    instead of O(N^2).
    """
    positions = np.asarray(positions, dtype=float)
    n_frames, n_atoms, _ = positions.shape
    lags = np.arange(n_frames)
    counts = (n_frames - lags)[:, None]
    size = 1 << (2 * n_frames - 1).bit_length()
    out = np.empty((n_frames, n_atoms))
    for start in range(0, n_atoms, atoms_per_chunk):
        r = positions[:, start:start + atoms_per_chunk]
        r = r - r.mean(axis=0)  # MSD is shift-invariant; centring avoids cancellation
        spectrum = np.fft.rfft(r, size, axis=0)
        s2 = np.fft.irfft(spectrum * np.conj(spectrum), size, axis=0)[:n_frames].sum(axis=2)
        squared = np.sum(r * r, axis=2)
        cumulative = np.concatenate([np.zeros((1, r.shape[1])), np.cumsum(squared, axis=0)])
        head = cumulative[n_frames - lags]  # sum_{k < N-m} |r(k)|^2
        tail = cumulative[n_frames] - cumulative[lags]  # sum_{k >= m} |r(k)|^2
        out[:, start:start + atoms_per_chunk] = (head + tail - 2.0 * s2) / counts
    out[0] = 0.0
    return np.maximum(out, 0.0)


@dataclass
class Diffusion:
    """Self-diffusion coefficient from the slope of the MSD, with its standard error."""

    estimate: Estimate  # in DIFFUSION_UNIT
    fit_start_ps: float
    fit_end_ps: float
    n_groups: int
    time_ps: np.ndarray = field(repr=False)
    msd_nm2: np.ndarray = field(repr=False)  # mean over all atoms
    intercept_nm2: float = 0.0
    exponent: float = math.nan  # log-log slope of the MSD over the fit window (1: diffusive)
    slope_ratio: float = math.nan  # MSD slope over the window's second half / first half

    def to_dict(self) -> dict:
        return {**self.estimate.to_dict(), "unit": DIFFUSION_UNIT,
                "fit_start_ps": self.fit_start_ps, "fit_end_ps": self.fit_end_ps,
                "n_groups": self.n_groups, "intercept_nm2": self.intercept_nm2,
                "msd_exponent": self.exponent, "msd_slope_ratio": self.slope_ratio}


def _slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Ordinary least-squares slope and intercept."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def msd_exponent(time_ps: np.ndarray, msd_nm2: np.ndarray) -> float:
    """Slope of log MSD against log t (2 ballistic, < 1 caged, 1 diffusive); NaN if < 2 points."""
    keep = (np.asarray(time_ps) > 0) & (np.asarray(msd_nm2) > 0)
    if keep.sum() < 2:
        return math.nan
    return _slope(np.log(time_ps[keep]), np.log(msd_nm2[keep]))[0]


def slope_ratio(time_ps: np.ndarray, msd_nm2: np.ndarray) -> float:
    """Least-squares slope of the window's second half over its first (1: linear).

    Unlike the log-log slope it ignores the constant offset that the ballistic and caged
    motion before the window leave in a diffusive MSD; t^2 over 10-50 % of a run gives ~2.
    """
    n = len(time_ps)
    if n < 4:
        return math.nan
    half = n // 2
    early = _slope(time_ps[:half + 1], msd_nm2[:half + 1])[0]
    late = _slope(time_ps[half:], msd_nm2[half:])[0]
    return late / early if early > 0 else math.nan


def fit_diffusion(time_ps: np.ndarray, msd_atoms: np.ndarray,
                  fit_window_ps: tuple[float, float] | None = None,
                  fit_fraction: tuple[float, float] = (0.1, 0.5), n_groups: int = 16,
                  dimensions: int = 3) -> Diffusion:
    """D = slope / (2 d) of the MSD in its linear regime, error from groups of atoms.

    Points of one MSD curve are strongly correlated, so the least-squares error of the
    slope means nothing. Instead the atoms are dealt into ``n_groups`` groups (atom i to
    group i mod n_groups), D is fitted per group over the same window, and the SEM is
    SD/sqrt(n_groups) with n_groups - 1 dof: independent particles make independent
    groups. The default window is 10-50 % of the longest lag: past the ballistic/caging
    regime, before the few-origin noise at long lags.
    """
    time_ps = np.asarray(time_ps, dtype=float)
    if fit_window_ps is None:
        span = time_ps[-1]
        fit_window_ps = (fit_fraction[0] * span, fit_fraction[1] * span)
    mask = (time_ps >= fit_window_ps[0]) & (time_ps <= fit_window_ps[1]) & (time_ps > 0)
    if mask.sum() < 3:
        raise ValueError(
            f"MSD fit window {fit_window_ps[0]:.3g}-{fit_window_ps[1]:.3g} ps holds "
            f"{int(mask.sum())} lags (need >= 3); write trajectory frames more often or "
            "run longer.")
    n_atoms = msd_atoms.shape[1]
    n_groups = max(1, min(n_groups, n_atoms))
    to_d = 1000.0 / (2.0 * dimensions)  # nm^2/ps slope -> nm^2/ns = 1e-9 m^2/s
    slopes = np.array([_slope(time_ps[mask], msd_atoms[mask][:, g::n_groups].mean(axis=1))[0]
                       for g in range(n_groups)])
    mean_msd = msd_atoms.mean(axis=1)
    slope, intercept = _slope(time_ps[mask], mean_msd[mask])
    if n_groups > 1:
        sem, dof = float(np.std(slopes, ddof=1) / math.sqrt(n_groups)), n_groups - 1.0
        method = f"spread over {n_groups} atom groups"
    else:
        sem, dof, method = math.nan, math.nan, "single atom: no error estimate"
    return Diffusion(Estimate(slope * to_d, sem * to_d, dof, method),
                     float(time_ps[mask][0]), float(time_ps[mask][-1]), n_groups,
                     time_ps=time_ps, msd_nm2=mean_msd, intercept_nm2=intercept,
                     exponent=msd_exponent(time_ps[mask], mean_msd[mask]),
                     slope_ratio=slope_ratio(time_ps[mask], mean_msd[mask]))


# --------------------------------------------------------------------------------------
# Energy conservation (NVE)
# --------------------------------------------------------------------------------------


def energy_drift(time_ps: np.ndarray, total_energy: np.ndarray, n_atoms: int) -> Estimate:
    """Linear drift of the total energy in kJ/mol per atom per ns, with its fit error.

    The least-squares slope error assumes independent residuals; the residuals of an MD
    energy are correlated, so that error is scaled by sqrt(g) of the residuals.
    """
    t = np.asarray(time_ps, dtype=float)
    e = np.asarray(total_energy, dtype=float)
    if len(t) < 4:
        raise ValueError(f"energy drift needs at least 4 state rows, got {len(t)}.")
    (slope, intercept), cov = np.polyfit(t, e, 1, cov="unscaled")
    residuals = e - (slope * t + intercept)
    dof = len(t) - 2
    s2 = float(residuals @ residuals) / dof
    g = statistical_inefficiency(residuals) if np.ptp(residuals) > 0 else 1.0
    sem = math.sqrt(s2 * cov[0, 0] * g)
    scale = 1000.0 / n_atoms  # per ps -> per ns, per atom
    return Estimate(float(slope) * scale, sem * scale, max(dof / g - 1.0, 1.0),
                    "least squares, error scaled by sqrt(g) of residuals")
