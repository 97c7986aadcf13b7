"""DictAS's Query, Key and Value generators: self-attention blocks that turn frozen tokens into a dictionary.

The paper's ``AttnBlock`` (its eq. 4, details from the public code): LayerNorm, one multi-head
self-attention without biases and without an output projection, then an MLP whose first layer's output
(after dropout) is added to the LayerNorm'd input before ``Linear → LayerNorm → Linear``. Every token
attends to all others, so a query carries its whole image's context and a dictionary entry the context
of every reference (the references are concatenated into one sequence before the Key/Value generators).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from zsad.errors import ConfigError


class AttnBlock(nn.Module):
    """Token-wise feature adaptation with global self-attention, ``[B, N, C] -> [B, N, C]``."""

    def __init__(self, width: int, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"generator width {width} is not divisible by {heads} attention heads")
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.fc1 = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width, width)
        self.norm_out = nn.LayerNorm(width)
        self.fc3 = nn.Linear(width, width, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.norm(tokens)
        b, n, c = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        hidden = self.dropout(self.fc1(attended)) + x
        return self.fc3(self.norm_out(self.fc2(hidden)))


class Generators(nn.Module):
    """One Query/Key/Value triple. A generator switched off is the identity (the paper's module ablation)."""

    def __init__(self, width: int, heads: int, query: bool = True, key: bool = True, value: bool = True) -> None:
        super().__init__()
        self.query_block = AttnBlock(width, heads) if query else None
        self.key_block = AttnBlock(width, heads) if key else None
        self.value_block = AttnBlock(width, heads) if value else None

    def query(self, tokens: Tensor) -> Tensor:
        return tokens if self.query_block is None else self.query_block(tokens)

    def key(self, tokens: Tensor) -> Tensor:
        return tokens if self.key_block is None else self.key_block(tokens)

    def value(self, tokens: Tensor) -> Tensor:
        """``F + AttnBlock(F)``: the extra residual keeps the dictionary's content close to the features."""
        return tokens if self.value_block is None else tokens + self.value_block(tokens)
