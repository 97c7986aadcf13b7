"""A memory of reference patch tokens, searched by nearest cosine neighbour: the few-shot half of knn,
APRIL-GAN and the DictAS dictionary's input."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zsad.backbones.base import FeatureExtractor
from zsad.methods.components.maps import min_cosine_distance


class PatchMemory(nn.Module):
    """Per-layer banks of reference patch tokens, queried by minimum cosine distance."""

    def __init__(self, chunk_size: int = 4096) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.banks: list[Tensor] = []

    def build(self, banks: list[Tensor]) -> None:
        """``banks[l]`` holds every reference patch of layer l, ``[k * N, C]``."""
        self.banks = banks

    def distances(self, tokens: list[Tensor], grid: tuple[int, int]) -> Tensor:
        """Min cosine distance of each query patch, ``[B, L, h, w]`` for per-layer tokens ``[B, N, C]``."""
        if not self.banks:
            raise RuntimeError("PatchMemory.build must be called with reference features first")
        b = tokens[0].shape[0]
        maps = [min_cosine_distance(t.reshape(-1, t.shape[-1]), bank, self.chunk_size).view(b, *grid)
                for t, bank in zip(tokens, self.banks)]
        return torch.stack(maps, 1)


def reference_tokens(backbone: FeatureExtractor, references: Tensor, layers: tuple[int, ...],
                     batch_size: int) -> list[Tensor]:
    """Patch tokens of all references per layer, flattened to ``[k * N, C]``."""
    per_layer: list[list[Tensor]] = [[] for _ in layers]
    for start in range(0, references.shape[0], batch_size):
        features = backbone(references[start : start + batch_size], layers)
        for bank, tokens in zip(per_layer, features.patch_tokens):
            bank.append(tokens.reshape(-1, tokens.shape[-1]))
    return [torch.cat(bank) for bank in per_layer]
