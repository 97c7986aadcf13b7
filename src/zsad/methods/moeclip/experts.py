"""A mixture of LoRA experts over the residual stream, with Frozen Orthogonal Feature Separation.

One :class:`LoRAMixture` follows a vision block and adapts every token (class token included):

* a zero-initialised router scores the E experts per token; the softmax's top-k are kept and
  renormalised, so each token is adapted by exactly k experts (at first all probabilities are 1/E and
  ``topk`` breaks the tie the same way for every token; training the router separates them);
* expert ``e`` is a LoRA update ``up_e · down_e · x · α / r``. Under **FOFS** the C input channels are
  split into E disjoint slices and ``down_e`` is a *frozen* orthonormal rank-r basis of slice ``e`` alone
  (QR of a seeded Gaussian matrix): experts read different information by construction and only the
  zero-initialised ``up_e`` learn. Without FOFS, ``down_e`` spans all channels and is trained (plain LoRA);
* the weighted sum of the chosen experts is rescaled to the token's norm (the experts choose a direction,
  the stream keeps its magnitude) and blended in: ``x ← w · moe(x) + (1 − w) · x``.

**At initialisation** every ``up_e`` is zero, so ``moe(x) = 0`` and the rescale (``moe · ‖x‖ / (‖moe‖ +
ε)``, as the public code writes it) leaves it 0: each adapted block's output is exactly ``(1 − w) · x``,
0.9 · x by default. LayerNorm ignores scale, so the next block *reads* the same normalised tokens, but it
adds its update to a stream shrunk by 10 %; tokens after the first adapted block therefore differ from
the frozen backbone's, while the first adapted level differs by the factor alone (identical after
``ln_post``). ``w = 0`` recovers the frozen backbone exactly. After the first optimiser step ``moe(x)``
is non-zero and the rescale lifts it to ``‖x‖`` at once; its gradient at zero is ``‖x‖ / ε``, which Adam's
normalised step absorbs (the rescale runs in float32 so mixed precision cannot overflow).

Two training-only losses, summed over the adapted blocks by the caller:

* **simplex ETF** — per token, the Gram matrix of the L2-normalised outputs of *all* E experts (chosen or
  not) against the simplex equiangular tight frame (1 on the diagonal, −1/(E−1) off it), mean squared
  error: experts are pushed to answer in maximally different directions;
* **balance** — squared coefficient of variation of each expert's importance (its router probability
  summed over the batch's tokens, unbiased variance as in the public code), so no expert starves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORM_EPS = 1e-6  # of the norm rescale and of the ETF normalisation, as in the public code


def channel_slices(width: int, num_experts: int) -> list[slice]:
    """E contiguous, disjoint slices covering ``width`` channels; the first ``width % E`` are one wider."""
    base, extra = divmod(width, num_experts)
    slices, start = [], 0
    for e in range(num_experts):
        stop = start + base + (e < extra)
        slices.append(slice(start, stop))
        start = stop
    return slices


def fofs_down_projections(width: int, num_experts: int, rank: int, generator: torch.Generator) -> Tensor:
    """Frozen down-projections ``[E, r, C]``: rows of expert ``e`` are orthonormal and zero outside slice ``e``."""
    down = torch.zeros(num_experts, rank, width)
    for e, part in enumerate(channel_slices(width, num_experts)):
        q, _ = torch.linalg.qr(torch.randn(part.stop - part.start, rank, generator=generator))
        down[e, :, part] = q.t()
    return down


def simplex_etf_gram(num_experts: int) -> Tensor:
    """The Gram matrix of E unit vectors with equal, minimal pairwise cosine: 1 on the diagonal, −1/(E−1) off."""
    gram = torch.full((num_experts, num_experts), -1.0 / (num_experts - 1))
    return gram.fill_diagonal_(1.0)


def simplex_etf_loss(outputs: Tensor) -> Tensor:
    """Mean squared distance between each token's expert Gram matrix and the simplex ETF.

    ``outputs`` ``[..., E, C]`` holds every expert's output per token. Computed in float32: at
    initialisation the outputs are zero and the normalisation's gradient is ``1 / ε``.
    """
    num_experts = outputs.shape[-2]
    if num_experts < 2:
        return outputs.new_zeros((), dtype=torch.float32)
    unit = F.normalize(outputs.float(), dim=-1, eps=NORM_EPS)
    gram = unit @ unit.transpose(-1, -2)
    return F.mse_loss(gram, simplex_etf_gram(num_experts).to(gram.device).expand_as(gram))


def balance_loss(probs: Tensor) -> Tensor:
    """Squared coefficient of variation of per-expert importance (router probabilities ``[..., E]`` summed)."""
    importance = probs.reshape(-1, probs.shape[-1]).float().sum(0)
    if importance.numel() < 2:
        return importance.new_zeros(())
    return importance.var() / importance.mean().square()


@dataclass
class Routing:
    """Router decision for every token: probabilities ``[..., E]``, renormalised top-k weights ``[..., E]``
    (zero for unchosen experts) and the chosen experts ``[..., k]``."""

    probs: Tensor
    weights: Tensor
    experts: Tensor


class TopKRouter(nn.Module):
    """Linear(C → E) without bias, zero-initialised (every expert equally likely at first), softmax, top-k."""

    def __init__(self, width: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(width, num_experts, bias=False)
        nn.init.zeros_(self.gate.weight)

    def forward(self, hidden: Tensor) -> Routing:
        probs = self.gate(hidden).float().softmax(-1)
        top, experts = probs.topk(self.top_k, dim=-1)
        weights = torch.zeros_like(probs).scatter(-1, experts, top / top.sum(-1, keepdim=True))
        return Routing(probs, weights, experts)


class LoRAMixture(nn.Module):
    """Block adapter ``[B, T, C] -> [B, T, C]``: routed LoRA experts, norm-matched and blended into the stream.

    In training mode it also computes the ETF and balance losses (when enabled); the caller collects them
    with :meth:`pop_losses` after the forward pass.
    """

    def __init__(self, width: int, num_experts: int, top_k: int, rank: int, alpha: float, dropout: float,
                 blend: float, fofs: bool, generator: torch.Generator, etf: bool = True,
                 balance: bool = True) -> None:
        super().__init__()
        self.blend = blend
        self.scaling = alpha / rank
        self.etf = etf
        self.balance = balance
        self.router = TopKRouter(width, num_experts, top_k)
        self.dropout = nn.Dropout(dropout)
        if fofs:
            self.register_buffer("down", fofs_down_projections(width, num_experts, rank, generator))
        else:
            self.down = nn.Parameter(torch.empty(num_experts, rank, width))
            for weight in self.down:  # LoRA's own initialisation, one expert (fan-in C) at a time
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        # Row j of up[e] is where expert e writes its j-th latent: up_e^T, zero so the mixture starts at 0.
        self.up = nn.Parameter(torch.zeros(num_experts, rank, width))
        self._losses: dict[str, Tensor] = {}

    def expert_codes(self, hidden: Tensor) -> Tensor:
        """Each expert's rank-r code of each token, ``[..., E, r]``; dropout draws one mask per expert."""
        if self.training and self.dropout.p > 0:
            num_experts = self.down.shape[0]
            per_expert = hidden.unsqueeze(-2).expand(*hidden.shape[:-1], num_experts, hidden.shape[-1])
            return torch.einsum("...ec,erc->...er", self.dropout(per_expert), self.down.to(hidden.dtype))
        return torch.einsum("...c,erc->...er", hidden, self.down.to(hidden.dtype))

    def forward(self, hidden: Tensor) -> Tensor:
        routing = self.router(hidden)
        codes = self.expert_codes(hidden)
        up = self.up.to(codes.dtype)
        weights = routing.weights.to(codes.dtype).unsqueeze(-1)
        self._losses = {}
        if self.training and self.etf:
            outputs = torch.einsum("...er,erc->...ec", codes, up) * self.scaling
            mixed = (weights * outputs).sum(-2)
            self._losses["etf"] = simplex_etf_loss(outputs)
        else:  # only the k chosen experts count: weight the codes, then one [E·r → C] product
            mixed = torch.einsum("...er,erc->...c", codes * weights, up) * self.scaling
        if self.training and self.balance:
            self._losses["balance"] = balance_loss(routing.probs)
        return self.blend_into(hidden, mixed)

    def blend_into(self, hidden: Tensor, mixed: Tensor) -> Tensor:
        """``w · mixed · ‖x‖ / (‖mixed‖ + ε) + (1 − w) · x`` per token, in float32."""
        x, m = hidden.float(), mixed.float()
        m = m * x.norm(dim=-1, keepdim=True) / (m.norm(dim=-1, keepdim=True) + NORM_EPS)
        return (self.blend * m + (1 - self.blend) * x).to(hidden.dtype)

    def pop_losses(self) -> dict[str, Tensor]:
        """The auxiliary losses of the last training forward pass (``etf``, ``balance``), then forgets them."""
        losses, self._losses = self._losses, {}
        return losses
