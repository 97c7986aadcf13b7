"""Patch nearest neighbour (PatchCore / AnomalyDINO style): the training-free few-shot floor.

Every patch of a query image is scored by its smallest cosine distance to all patches of the k
reference images of its category, per layer; the per-layer maps are upsampled to the input size,
averaged and Gaussian-smoothed, and the image score is the map's maximum. The reference bank holds
``k × N`` patches per layer and is searched in chunks, so 16 shots of ViT-L at 518 px fit in a few GB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zsad.backbones.base import FeatureExtractor
from zsad.methods.base import Method, MethodConfig, Prediction, register
from zsad.methods.maps import gaussian_blur, min_cosine_distance, upsample


@dataclass
class KnnConfig(MethodConfig):
    backbone: str = "clip-vit-l14-336"
    image_size: int = 336
    sigma: float = 4.0  # Gaussian smoothing in pixels of the input resolution
    chunk_size: int = 4096  # reference patches compared at once (bounds memory)
    reference_batch_size: int = 8


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


@register
class PatchKnn(Method):
    name = "knn"
    few_shot = True
    Config = KnnConfig
    summary = "patch nearest neighbour to the k references (training-free floor)"

    def __init__(self, backbone: FeatureExtractor, config: KnnConfig) -> None:
        super().__init__(backbone, config)
        self.memory = PatchMemory(config.chunk_size)

    def prepare(self, class_name: str, references: Tensor | None) -> None:
        if references is None or len(references) == 0:
            raise ValueError("knn needs k >= 1 normal reference images")
        self.memory.build(reference_tokens(self.backbone, references, self.layers, self.config.reference_batch_size))

    def predict(self, images: Tensor) -> Prediction:
        features = self.backbone(images, self.layers)
        distances = self.memory.distances(features.patch_tokens, features.grid)
        anomaly_map = gaussian_blur(upsample(distances, images.shape[-2:]).mean(1), self.config.sigma)
        return Prediction(anomaly_map, anomaly_map.flatten(1).amax(1))
