"""The text alignment head of DictAS's Text Alignment Constraint (§3.4).

It maps one image's multi-layer tokens to a single embedding in CLIP's text space: the scale-1 tokens of
each layer are L2-normalised and concatenated, fused by ``Linear(L·C → hidden)``, pooled over tokens and
projected by ``Linear(hidden → D)``. The paper says global average pooling; the public code pools with
learned attention (``Linear(hidden → 1)``, softmax over tokens). Both are offered; attention is the default
because it is what the published numbers were produced with.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Pooling = Literal["attention", "mean"]


class TextAlignmentHead(nn.Module):
    """Per-layer tokens ``L × [B, N, C]`` to a global embedding ``[B, D]`` in the text space."""

    def __init__(self, width: int, layers: int, hidden: int, text_dim: int, pooling: Pooling) -> None:
        super().__init__()
        self.fuse = nn.Linear(width * layers, hidden)
        self.attention = nn.Linear(hidden, 1) if pooling == "attention" else None
        self.project = nn.Linear(hidden, text_dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, tokens: list[Tensor]) -> Tensor:
        x = self.fuse(torch.cat([F.normalize(t, dim=-1) for t in tokens], dim=-1))
        if self.attention is None:
            pooled = x.mean(1)
        else:
            pooled = (self.attention(x).softmax(1) * x).sum(1)
        return self.project(pooled)
