"""Greedy coreset subsampling of reference patches (PatchCore, Roth et al., CVPR 2022, Sec. 3.2).

A memory of every reference patch grows with the references' pixels: four 20-megapixel references cut into
tiles hold over half a million patches per layer, which neither fits an edge box nor searches in time. The
coreset keeps the patches that cover the rest best: starting from one patch, it repeatedly adds the patch
farthest from all kept ones (minimax facility location), so rare normal structure survives while the
thousands of near-copies of a repeating texture collapse to a few. As in PatchCore, distances are taken
after a random linear projection (Johnson-Lindenstrauss), which keeps each greedy step one matrix-vector
product; at 64 dimensions (PatchCore's code uses 128) a block of 8192 patches is 2 MB, which stays in cache,
and a step takes a quarter of the time.

Greedy selection costs (kept patches) x (candidates) steps, quadratic in the memory's size, so a memory
built from many tiles is reduced in blocks of :data:`BLOCK` patches as they arrive, each to its share of the
budget: the cost becomes linear in the number of patches, and the memory never holds more than one block
beyond the budget.
"""

from __future__ import annotations

import torch
from torch import Tensor

PROJECTION_DIM = 64
BLOCK = 8192  # patches reduced at once when a memory is built in pieces


def greedy_coreset(features: Tensor, count: int, projection_dim: int = PROJECTION_DIM, seed: int = 0) -> Tensor:
    """Indices of ``count`` rows of ``features`` ``[N, D]`` chosen by greedy k-center selection on a random
    projection; all rows when ``count >= N``. Deterministic for a given ``seed``."""
    total = features.shape[0]
    if count >= total:
        return torch.arange(total, device=features.device)
    generator = torch.Generator().manual_seed(seed)
    if features.shape[1] > projection_dim:
        projection = torch.randn(features.shape[1], projection_dim, generator=generator) / projection_dim**0.5
        points = features.float() @ projection.to(features.device)
    else:
        points = features.float()
    norms = points.square().sum(1)
    chosen = [int(torch.randint(total, (1,), generator=generator))]
    nearest = torch.full((total,), float("inf"), device=features.device)
    distance = torch.empty_like(nearest)
    while True:
        latest = chosen[-1]
        # squared distance to the newest centre: |p|^2 - 2 p.c + |c|^2, one matrix-vector product
        torch.addmv(norms, points, points[latest], alpha=-2, out=distance).add_(norms[latest])
        torch.minimum(nearest, distance, out=nearest)
        if len(chosen) == count:
            return torch.tensor(chosen, device=features.device)
        chosen.append(int(torch.argmax(nearest)))
