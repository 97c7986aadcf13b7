"""Dictionary lookup (DictAS §3.3) and the neighbourhood scales it runs at.

A query ``q`` is matched against every key by ``s = q·Kᵀ / √C`` (one head) and the retrieved result is
``w·V``. The weights ``w`` come from one of three strategies: ``max`` (one-hot at the best key: the
nearest-neighbour memory bank), ``dense`` (softmax over all entries) or ``sparse`` (sparsemax, the paper's
default: a convex mix of the few best entries, whose support stays small as the dictionary grows with k).
A normal query patch is well reconstructed from normal references; an anomalous one is not.

At inference the sparse weights have a handful of non-zeros per query (support 1–15 among thousands of
entries), so ``w·V`` is computed as a sparse (CSR) product: about a sixth of the dense product's time
on a CPU, the same sums up to float rounding. Training (which backpropagates through the weights) and
export keep the dense product.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from torch import Tensor

from zsad.methods.components.sparsemax import sparsemax

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
    if strategy == "dense":
        return scores.softmax(-1).to(values.dtype) @ values
    weights = sparsemax(scores, candidates=SPARSE_CANDIDATES)
    if _sparse_product_applies(weights, values):
        return sparse_weighted_sum(weights, values[0])
    return weights.to(values.dtype) @ values


def _sparse_product_applies(weights: Tensor, values: Tensor) -> bool:
    return (values.shape[0] == 1 and values.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.onnx.is_in_onnx_export())


def sparse_weighted_sum(weights: Tensor, values: Tensor) -> Tensor:
    """``weights @ values`` for mostly-zero weights ``[B, N, M]`` and one dictionary ``[M, C]``, through a
    CSR matrix of the non-zeros (inference only: no gradient flows through the conversion)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta": the product is stable
        sparse = weights.reshape(-1, weights.shape[-1]).to_sparse_csr()
    return (sparse @ values).view(*weights.shape[:-1], values.shape[-1])
