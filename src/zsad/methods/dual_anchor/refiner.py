"""Group-Gated Token Refiner: the image anchors decide how much of themselves enters the global token.

The global token alone summarises the whole image, where a small defect is easily drowned out. The
refiner measures how close the global token is to each group token (cosine similarities, so the gate
reads directions, not norms) and turns those two numbers into one sigmoid gate per channel and group
(a single Linear); the gated group tokens are added to the global token::

    s = (cos(g, G_N), cos(g, G_A))
    g' = g + σ(W_N s + b_N) ⊙ G_N + σ(W_A s + b_A) ⊙ G_A

The Linear starts with zero weights and biases at ``logit(init_gate)``, so the untrained refiner adds a
small, image-independent share of both groups and training opens the gates where they help.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from zsad.errors import ConfigError


class GroupGatedRefiner(nn.Module):
    def __init__(self, dim: int, init_gate: float) -> None:
        super().__init__()
        if not 0 < init_gate < 1:
            raise ConfigError(f"the refiner's initial gate must lie in (0, 1); got {init_gate}")
        self.gate = nn.Linear(2, 2 * dim)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, math.log(init_gate / (1 - init_gate)))

    def forward(self, global_token: Tensor, groups: Tensor) -> Tensor:
        """Refined global token ``[B, D]`` from the global token ``[B, D]`` and groups ``[B, 2, D]``."""
        similarity = (F.normalize(groups, dim=-1) @ F.normalize(global_token, dim=-1).unsqueeze(-1)).squeeze(-1)
        gates = self.gate(similarity).sigmoid().view_as(groups)
        return global_token + (gates * groups).sum(1)
