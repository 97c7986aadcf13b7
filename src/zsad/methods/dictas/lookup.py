"""Dictionary lookup (DictAS §3.3) and the neighbourhood scales it runs at.

A query ``q`` is matched against every key by ``s = q·Kᵀ / √C`` (one head) and the retrieved result is
``w·V``. The weights ``w`` come from one of three strategies: ``max`` (one-hot at the best key: the
nearest-neighbour memory bank), ``dense`` (softmax over all entries) or ``sparse`` (sparsemax, the paper's
default: a convex mix of the few best entries, whose support stays small as the dictionary grows with k).
A normal query patch is well reconstructed from normal references; an anomalous one is not.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor

from zsad.methods.sparsemax import sparsemax

Strategy = Literal["sparse", "dense", "max"]
SPARSE_CANDIDATES = 32  # scores examined first by sparsemax; exact either way, more are fetched if needed


def lookup(queries: Tensor, keys: Tensor, values: Tensor, strategy: Strategy) -> Tensor:
    """Retrieved results ``[B, N, C]`` for queries ``[B, N, C]`` from a dictionary of keys and values
    ``[B, M, C]`` (one per query image, as in training) or ``[1, M, C]`` (shared, as at inference)."""
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
    if strategy == "max":
        best = scores.argmax(-1, keepdim=True).expand(-1, -1, values.shape[-1])
        return values.expand(queries.shape[0], -1, -1).gather(1, best)
    # The weights are computed in float32 whatever the autocast dtype: sorting and normalising thousands
    # of nearly equal scores in half precision would blur the sparse support.
    scores = scores.float()
    weights = sparsemax(scores, candidates=SPARSE_CANDIDATES) if strategy == "sparse" else scores.softmax(-1)
    return weights.to(values.dtype) @ values
