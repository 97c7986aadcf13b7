"""Greedy coreset subsampling of reference patches (PatchCore, Roth et al., CVPR 2022, Sec. 3.2).

A memory of every reference patch grows with the references' pixels: four 20-megapixel references cut into
tiles hold over half a million patches per layer, which neither fits an edge box nor searches in time. The
coreset keeps the patches that cover the rest best: starting from one patch, it repeatedly adds the patch
farthest from all kept ones (minimax facility location), so rare normal structure survives while the
thousands of near-copies of a repeating texture collapse to a few. As in PatchCore, distances are taken
after a random linear projection to a few dozen dimensions (Johnson-Lindenstrauss), which keeps each greedy
step one matrix-vector product.

Greedy selection costs (kept patches) x (candidates) steps, quadratic in the memory's size, so a memory
built from many tiles is reduced in blocks of :data:`BLOCK` patches as they arrive, each to its share of the
budget: the cost becomes linear in the number of patches, and the memory never holds more than one block
beyond the budget.
"""

from __future__ import annotations

import torch
from torch import Tensor

PROJECTION_DIM = 128
BLOCK = 16384  # patches reduced at once when a memory is built in pieces


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
    chosen = torch.empty(count, dtype=torch.long, device=features.device)
    chosen[0] = int(torch.randint(total, (1,), generator=generator))
    nearest = torch.full((total,), float("inf"), device=features.device)
    for step in range(count):
        if step:
            chosen[step] = torch.argmax(nearest)
        centre = points[chosen[step]]
        distance = norms - 2 * (points @ centre) + centre.square().sum()  # squared distance to the new centre
        nearest = torch.minimum(nearest, distance)
    return chosen
