"""Sparsemax (Martins & Astudillo, 2016): the Euclidean projection of scores onto the probability simplex.

``sparsemax(z) = argmin_{p in simplex} ||p - z||²`` equals ``max(z - tau, 0)`` where the threshold ``tau``
makes the result sum to one. Unlike softmax it gives exact zeros, so a lookup weighted by it mixes only
the few most similar dictionary entries however large the dictionary grows.

``tau`` comes from the sorted scores: with ``z_(1) >= z_(2) >= ...`` the support size is the largest ``k``
with ``1 + k z_(k) > sum_{j<=k} z_(j)`` and ``tau = (sum_{j<=k} z_(j) - 1) / k``. The Jacobian is
``diag(s) - s sᵀ / |S|`` on the support ``S`` (indicator ``s``), so the backward pass needs only the
output: ``grad_z = s * (g - sum(g * s) / |S|)``. Writing it as an autograd function saves that one tensor
instead of the sort and cumulative sums autograd would otherwise keep.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx


def sparsemax_threshold(scores: Tensor, dim: int = -1) -> Tensor:
    """The threshold ``tau`` (``keepdim`` along ``dim``) with ``sum(max(scores - tau, 0)) == 1``."""
    z = scores - scores.amax(dim, keepdim=True)  # shift-invariant; keeps the cumulative sums small
    sorted_z = z.sort(dim, descending=True).values
    cumulative = sorted_z.cumsum(dim)
    shape = [1] * z.dim()
    shape[dim] = z.shape[dim]
    ranks = torch.arange(1, z.shape[dim] + 1, device=z.device, dtype=z.dtype).view(shape)
    support = (1 + ranks * sorted_z > cumulative).sum(dim, keepdim=True)  # at least 1: the top entry
    tau = (cumulative.gather(dim, support - 1) - 1) / support.to(z.dtype)
    return tau + scores.amax(dim, keepdim=True)


class _Sparsemax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, scores: Tensor, dim: int) -> Tensor:
        probs = (scores - sparsemax_threshold(scores, dim)).clamp_min(0)
        ctx.save_for_backward(probs)
        ctx.dim = dim
        return probs

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        (probs,) = ctx.saved_tensors
        support = (probs > 0).to(grad.dtype)
        mean = (grad * support).sum(ctx.dim, keepdim=True) / support.sum(ctx.dim, keepdim=True)
        return support * (grad - mean), None


def sparsemax(scores: Tensor, dim: int = -1) -> Tensor:
    """Sparse probabilities along ``dim``: non-negative, summing to one, exactly zero below the threshold."""
    return _Sparsemax.apply(scores, dim)
