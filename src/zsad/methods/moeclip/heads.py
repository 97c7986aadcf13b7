"""MoECLIP's read-outs into CLIP's joint space: multi-scale patch heads, a convolutional global head, and a
text head that replaces CLIP's text projection.

Initialisations follow the public code (Xavier-uniform weights, no biases), which the paper leaves open.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn



def _xavier(module: nn.Module) -> nn.Module:
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv1d)):
            nn.init.xavier_uniform_(layer.weight)
    return module


class PatchHeads(nn.Module):
    """One bias-free Linear(C → D) per feature level, shared by that level's scales; unit-norm outputs.

    ``activation`` appends a LeakyReLU (the public code's ``--relu``, off in its recipe).
    """

    def __init__(self, width: int, embed_dim: int, levels: int, activation: bool = False) -> None:
        super().__init__()
        self.projections = nn.ModuleList(
            _xavier(nn.Sequential(nn.Linear(width, embed_dim, bias=False), *([nn.LeakyReLU()] if activation else [])))
            for _ in range(levels)
        )

    def forward(self, tokens: Tensor, level: int) -> Tensor:
        """``ln_post``'d tokens ``[B, N, C]`` of feature level ``level`` (0-based) to unit vectors ``[B, N, D]``."""
        return F.normalize(self.projections[level](tokens), dim=-1)


class GlobalHead(nn.Module):
    """Image embedding from the last level's ``ln_post``'d patch tokens ``[B, N, C]`` -> ``[B, D]``.

    LayerNorm, a depthwise Conv1d (kernel 3, same padding) along the row-major token sequence, GELU and a
    pointwise Conv1d(C → D), all bias-free as in the public code (whose extra LayerNorm the paper's text
    omits); each token is L2-normalised and the tokens are averaged. The mean of unit vectors is *not*
    renormalised (as in the code): its dot product with a unit text anchor is a cosine damped by how much
    the tokens agree, and is what both the image loss and the image score use.
    """

    def __init__(self, width: int, embed_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.depthwise = nn.Conv1d(width, width, kernel_size, padding="same", groups=width, bias=False)
        self.pointwise = nn.Conv1d(width, embed_dim, 1, bias=False)
        _xavier(self)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.norm(tokens).transpose(1, 2)
        x = self.pointwise(F.gelu(self.depthwise(x))).transpose(1, 2)
        return F.normalize(x, dim=-1).mean(1)


class TextHead(nn.Module):
    """Bias-free Linear(text width → D) on the end-of-text token after the final text LayerNorm, in place of
    CLIP's frozen text projection. ``activation`` appends the LeakyReLU the public code applies
    (``SimpleProj(768, 768, relu=True)``); the paper's description stops at the linear layer."""

    def __init__(self, width: int, embed_dim: int, activation: bool = True) -> None:
        super().__init__()
        self.projection = _xavier(
            nn.Sequential(nn.Linear(width, embed_dim, bias=False), *([nn.LeakyReLU()] if activation else []))
        )

    def forward(self, eot_features: Tensor) -> Tensor:
        return self.projection(eot_features)
