"""The TorchScript cell list against matscipy's neighbour list (what mace itself uses)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from matscipy.neighbours import neighbour_list

from openmm_mace_lp.neighbors import neighbor_list

scripted = torch.jit.script(neighbor_list)


def _ours(positions, cell, cutoff):
    cell_t = None if cell is None else torch.tensor(cell)
    edges, shifts = scripted(torch.tensor(positions), cell_t, cutoff)
    vectors = positions[edges[1].numpy()] - positions[edges[0].numpy()] + shifts.numpy()
    return edges.numpy(), vectors


def _reference(positions, cell, cutoff):
    if cell is None:
        span = np.ptp(positions, axis=0) + 2 * cutoff + 1.0
        i, j, d_vec = neighbour_list("ijD", positions=positions, cell=np.diag(span), pbc=[False] * 3, cutoff=cutoff)
    else:
        i, j, d_vec = neighbour_list("ijD", positions=positions, cell=cell, pbc=[True] * 3, cutoff=cutoff)
    return np.stack([i, j]), d_vec


def _as_set(edges, vectors):
    return sorted((int(a), int(b), *np.round(v, 8)) for a, b, v in zip(edges[0], edges[1], vectors))


def _triclinic(rng, lengths):
    """A random cell in OpenMM's reduced form."""
    a, b, c = lengths
    return np.array([[a, 0, 0],
                     [rng.uniform(-a / 2, a / 2), b, 0],
                     [rng.uniform(-a / 2, a / 2), rng.uniform(-b / 2, b / 2), c]])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lengths", [(12.0, 13.0, 14.0), (9.0, 5.0, 11.0), (3.1, 3.7, 2.6)])
def test_periodic_cells_match_matscipy(seed, lengths):
    """Large, medium and smaller-than-cutoff cells (the last needs several images per axis)."""
    rng = np.random.default_rng(seed)
    cell = _triclinic(rng, lengths)
    n = 40
    positions = rng.uniform(-0.5, 1.5, (n, 3)) @ cell  # some atoms outside the box
    cutoff = 4.0
    ours = _as_set(*_ours(positions, cell, cutoff))
    reference = _as_set(*_reference(positions, cell, cutoff))
    assert len(ours) == len(reference) > 0
    assert ours == reference


@pytest.mark.parametrize("seed", range(3))
def test_non_periodic_matches_matscipy(seed):
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0, 15, (60, 3))
    positions[:5] += 40.0  # a far-away group: empty cells in between
    ours = _as_set(*_ours(positions, None, 4.5))
    reference = _as_set(*_reference(positions, None, 4.5))
    assert ours == reference and len(ours) > 0


def test_chunked_candidates_give_same_edges():
    rng = np.random.default_rng(7)
    cell = _triclinic(rng, (10.0, 11.0, 12.0))
    positions = rng.uniform(0, 1, (80, 3)) @ cell
    full = scripted(torch.tensor(positions), torch.tensor(cell), 4.0)
    chunked = scripted(torch.tensor(positions), torch.tensor(cell), 4.0, 500)
    assert sorted(map(tuple, full[0].T.tolist())) == sorted(map(tuple, chunked[0].T.tolist()))


def test_single_atom_sees_its_own_images_in_a_small_box():
    cell = np.diag([3.0, 3.0, 3.0])
    edges, vectors = _ours(np.zeros((1, 3)), cell, 3.5)
    lengths = np.sort(np.linalg.norm(vectors, axis=1))
    assert len(lengths) == 6 and np.allclose(lengths, 3.0)  # the six face neighbours only
