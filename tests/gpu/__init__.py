"""GPU-node tests (skipped without CUDA) and what they share."""
from __future__ import annotations


def captured(module, positions, box):
    """(graph, outputs): ``module(positions, box)`` warmed up and captured in a CUDA graph; a
    replay reads ``positions`` and ``box`` as they are then and writes into ``outputs``."""
    import torch

    from openmm_mace_lp.bench import warm_up_for_capture

    warm_up_for_capture(lambda: module(positions, box))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = module(positions, box)
    return graph, outputs
