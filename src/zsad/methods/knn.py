"""Patch nearest neighbour (PatchCore / AnomalyDINO style): the training-free few-shot floor.

Every patch of a query image is scored by its smallest cosine distance to all patches of the k
reference images of its category, per layer; the per-layer maps are upsampled to the input size,
averaged and Gaussian-smoothed, and the image score is the map's maximum. The reference bank holds
``k × N`` patches per layer and is searched in chunks, so 16 shots of ViT-L at 518 px fit in a few GB;
``memory_budget`` caps it by PatchCore's greedy coreset (for the tiles of large references).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor

from zsad.backbones.base import FeatureExtractor
from zsad.methods.base import Method, MethodConfig, Prediction, register
from zsad.methods.components.memory import PatchMemory, reduce_pieces, token_pieces


@dataclass
class KnnConfig(MethodConfig):
    backbone: str = "clip-vit-l14-336"
    image_size: int = 336
    sigma: float = 4.0  # Gaussian smoothing in pixels of the input resolution
    chunk_size: int = 4096  # reference patches compared at once (bounds memory)
    reference_batch_size: int = 8
    memory_budget: int = 0  # reference patches kept per layer by greedy coreset selection; 0: every one


@register
class PatchKnn(Method):
    name = "knn"
    few_shot = True
    Config = KnnConfig
    summary = "patch nearest neighbour to the k references (training-free floor)"

    def __init__(self, backbone: FeatureExtractor, config: KnnConfig) -> None:
        super().__init__(backbone, config)
        self.memory = PatchMemory(config.chunk_size, config.memory_budget)

    def prepare(self, class_name: str, references: Tensor | None) -> None:
        if references is None or len(references) == 0:
            raise ValueError("knn needs k >= 1 normal reference images")
        self.prepare_in_batches(class_name, [references], len(references))

    def prepare_in_batches(self, class_name: str, batches: Iterable[Tensor], count: int) -> None:
        self.prepare_from_parts(class_name, [self.reference_part(batches, count, 1.0)])

    composes_references = True

    def reference_part(self, batches: Iterable[Tensor], count: int, share: float) -> list[Tensor]:
        pieces = token_pieces(self.backbone, batches, self.layers, self.config.reference_batch_size)
        rows, cols = self.backbone.grid_for(self.config.image_size)
        return reduce_pieces(pieces, count * rows * cols, round(self.memory.budget * share))

    def prepare_from_parts(self, class_name: str, parts: list[list[Tensor]]) -> None:
        if not parts:
            raise ValueError("knn needs k >= 1 normal reference images")
        self.memory.combine(parts)

    def predict(self, images: Tensor) -> Prediction:
        features = self.backbone(images, self.layers)
        distances = self.memory.distances(features.patch_tokens, features.grid)
        anomaly_map = self.smooth(self.upsample(distances, images.shape[-2:]).mean(1), self.config.sigma)
        return Prediction(anomaly_map, anomaly_map.flatten(1).amax(1))
