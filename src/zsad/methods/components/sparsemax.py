"""Sparsemax (Martins & Astudillo, 2016): the Euclidean projection of scores onto the probability simplex.

``sparsemax(z) = argmin_{p in simplex} ||p - z||²`` equals ``max(z - tau, 0)`` where the threshold ``tau``
makes the result sum to one. Unlike softmax it gives exact zeros, so a lookup weighted by it mixes only
the few most similar dictionary entries however large the dictionary grows.

``tau`` comes from the sorted scores: with ``z_(1) >= z_(2) >= ...`` the support size is the largest ``k``
with ``1 + k z_(k) > sum_{j<=k} z_(j)`` and ``tau = (sum_{j<=k} z_(j) - 1) / k``. That condition holds for a
prefix of ranks only, so when the support is known to be small the ``candidates`` largest scores suffice:
if the condition already fails at the last candidate, ``tau`` is exact; otherwise more candidates are
fetched (up to a full sort). A top-k selection is several times cheaper than sorting thousands of
dictionary scores per query.

The Jacobian is ``diag(s) - s sᵀ / |S|`` on the support ``S`` (indicator ``s``), so the backward pass
needs only the output: ``grad_z = s * (g - sum(g * s) / |S|)``. Writing it as an autograd function saves
that one tensor instead of the sort and cumulative sums autograd would otherwise keep.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx


def _threshold_of_sorted(top: Tensor) -> tuple[Tensor, Tensor]:
    """``tau`` from descending scores ``[..., K]`` (the K largest), and whether it is exact per row."""
    shifted = top - top[..., :1]  # shift-invariant; keeps the cumulative sums small
    cumulative = shifted.cumsum(-1)
    ranks = torch.arange(1, top.shape[-1] + 1, device=top.device, dtype=top.dtype)
    in_support = 1 + ranks * shifted > cumulative  # true for a prefix of the ranks
    support = in_support.sum(-1, keepdim=True)  # at least 1: the top entry
    tau = (cumulative.gather(-1, support - 1) - 1) / support.to(top.dtype) + top[..., :1]
    return tau, ~in_support[..., -1]


def sparsemax_threshold(scores: Tensor, dim: int = -1, candidates: int | None = None) -> Tensor:
    """The threshold ``tau`` (``keepdim`` along ``dim``) with ``sum(max(scores - tau, 0)) == 1``.

    ``candidates`` bounds the scores examined first (see the module docstring); None sorts them all.
    """
    z = scores.movedim(dim, -1)
    n = z.shape[-1]
    # An exported graph cannot fetch more candidates on demand: it sorts all scores, which is exact.
    k = n if candidates is None or torch.onnx.is_in_onnx_export() else max(1, min(candidates, n))
    while True:
        top = z.topk(k, -1).values if k < n else z.sort(-1, descending=True).values
        tau, exact = _threshold_of_sorted(top)
        if k == n or bool(exact.all()):
            return tau.movedim(-1, dim)
        k = min(n, 4 * k)


class _Sparsemax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, scores: Tensor, dim: int, candidates: int | None) -> Tensor:
        probs = (scores - sparsemax_threshold(scores, dim, candidates)).clamp_min(0)
        ctx.save_for_backward(probs)
        ctx.dim = dim
        return probs

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        (probs,) = ctx.saved_tensors
        support = (probs > 0).to(grad.dtype)
        mean = (grad * support).sum(ctx.dim, keepdim=True) / support.sum(ctx.dim, keepdim=True)
        return support * (grad - mean), None, None


def sparsemax(scores: Tensor, dim: int = -1, candidates: int | None = None) -> Tensor:
    """Sparse probabilities along ``dim``: non-negative, summing to one, exactly zero below the threshold.

    ``candidates`` (optional) is a guess of the support size that speeds up large inputs without
    changing the result.
    """
    return _Sparsemax.apply(scores, dim, candidates)
