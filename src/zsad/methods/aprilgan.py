"""APRIL-GAN (Chen et al., VAND 2023): linear maps from CLIP patch tokens into the text space.

CLIP aligns text with its *global* embedding only; its patch tokens are not in the joint space. APRIL-GAN
learns, for each of four vision blocks, one linear map (with bias) from the residual-stream tokens
(width C, before ``ln_post``) into the joint space (D). Each mapped token is compared with the
normal/anomalous WinCLIP text anchors of the image's class at logit scale 100; the logits are upsampled
to the image and turned into per-pixel probabilities by a softmax. Training on an auxiliary dataset
with pixel masks minimises focal + Dice(anomalous) on every layer's map, summed over layers; the
backbone and text tower stay frozen, so the auxiliary features can be cached once. For training on
MVTec AD the reference code also pastes 2 × 2 mosaics of same-class images at rate 0.2 (3 epochs):
``mosaic_prob=0.2`` (:mod:`~zsad.methods.components.mosaic`; the features are then computed live, not cached).

At test time the zero-shot map is the sum over layers of the anomalous probability and the image score
is CLIP's own zero-shot classification: ``softmax(100 · cos(global embedding, anchors))[anomalous]``.
With k normal references, the map adds, per layer, each patch's smallest cosine distance to the raw
reference tokens, and the image score becomes ``0.5 · (text probability + max(map))``. The reference
code first min-max normalises ``max(map)`` over each category's whole test set; that is transductive, so
it is only the named benchmark option ``score_normalization="test_minmax"``. The reference code applies no
smoothing: ``sigma`` defaults to 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn

from zsad.backbones.base import FeatureExtractor
from zsad.data.types import Batch
from zsad.methods.base import Method, MethodConfig, Prediction, register
from zsad.methods.components.losses import anomalous_probability, segmentation_losses
from zsad.methods.components.maps import minmax
from zsad.methods.components.memory import PatchMemory, reduce_pieces, token_pieces
from zsad.methods.components.mosaic import mosaic_batch
from zsad.methods.components.synthesis import batch_generator
from zsad.methods.components.prompts import WINCLIP, text_anchors


@dataclass
class AprilGanConfig(MethodConfig):
    backbone: str = "clip-vit-l14-336"
    image_size: int = 518
    logit_scale: float = 100.0  # patch and image logits are logit_scale * cos
    few_shot_layers: tuple[int, ...] | None = None  # blocks of the reference memory; None: the same as layers
    sigma: float = 0.0  # Gaussian smoothing of the map in pixels (the reference code does not smooth)
    score_normalization: Literal["none", "test_minmax"] = "none"  # test_minmax: benchmark mode (transductive)
    chunk_size: int = 4096  # reference patches compared at once (bounds memory)
    mosaic_prob: float = 0.0  # rate of 2x2 same-class mosaics in training (the code's MVTec setting: 0.2)
    reference_batch_size: int = 8
    memory_budget: int = 0  # reference patches kept per layer by greedy coreset selection; 0: every one


@register
class AprilGan(Method):
    name = "aprilgan"
    zero_shot = True
    few_shot = True
    trainable = True
    Config = AprilGanConfig
    needs_text = True
    summary = "per-layer linear maps of CLIP patch tokens into the text space (focal + Dice), + kNN with references"
    train_defaults = {"epochs": 15, "batch_size": 8, "lr": 1e-3, "betas": (0.5, 0.999), "split": "test"}

    def __init__(self, backbone: FeatureExtractor, config: AprilGanConfig) -> None:
        super().__init__(backbone, config)
        self.heads = nn.ModuleList(nn.Linear(backbone.width, backbone.embed_dim) for _ in self.layers)
        self.memory = PatchMemory(config.chunk_size, config.memory_budget)
        self.anchors: Tensor | None = None

    @property
    def few_shot_layers(self) -> tuple[int, ...]:
        return tuple(self.config.few_shot_layers) if self.config.few_shot_layers else self.layers

    # --- the map ----------------------------------------------------------------------------------------
    def anomaly_probabilities(self, tokens: Tensor, anchors: Tensor, grid: tuple[int, int],
                              size: tuple[int, int]) -> Tensor:
        """Per-layer (normal, anomalous) probabilities ``[B, L, 2, H, W]`` of raw tokens ``[B, L, N, C]``."""
        return torch.stack([self.anchor_probabilities(head(tokens[:, i]), anchors, grid, size, self.config.logit_scale)
                            for i, head in enumerate(self.heads)], 1)

    # --- training ---------------------------------------------------------------------------------------
    @property
    def trains_on_frozen_features(self) -> bool:
        return self.config.mosaic_prob <= 0  # mosaics change the images, so their features cannot be cached

    def frozen_features(self, images: Tensor) -> dict[str, Tensor] | None:
        """Raw patch tokens of every layer, ``[B, L, N, C]``: the heads are all that training changes (None
        with mosaics on: training then needs the live images)."""
        return None if self.config.mosaic_prob > 0 else self._patch_tokens(images)

    def _patch_tokens(self, images: Tensor) -> dict[str, Tensor]:
        return {"patch_tokens": torch.stack(self.backbone(images, self.layers).patch_tokens, 1)}

    def training_loss(self, batch: Batch, features: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        if features is None:
            images, masks = mosaic_batch(batch.images, batch.masks, batch.categories, self.config.mosaic_prob,
                                         batch_generator())
            batch = replace(batch, images=images, masks=masks)
            features = self._patch_tokens(batch.images)
        anchors = torch.stack([text_anchors(self.backbone.text, c, WINCLIP) for c in batch.categories])
        size = tuple(batch.masks.shape[-2:])
        grid = self.backbone.grid_for(*size)
        probs = self.anomaly_probabilities(features["patch_tokens"], anchors, grid, size)
        layers = [segmentation_losses(probs[:, i], batch.masks, normal_dice=False) for i in range(probs.shape[1])]
        focal = sum(parts["focal"] for parts in layers)
        dice = sum(parts["dice_anomaly"] for parts in layers)
        return {"loss": focal + dice, "focal": focal.detach(), "dice": dice.detach()}

    # --- inference --------------------------------------------------------------------------------------
    def prepare(self, class_name: str, references: Tensor | None) -> None:
        self.prepare_in_batches(class_name, [] if references is None else [references],
                                0 if references is None else len(references))

    def prepare_in_batches(self, class_name: str, batches: Iterable[Tensor], count: int) -> None:
        self.prepare_from_parts(class_name, [self.reference_part(batches, count, 1.0)] if count else [])

    composes_references = True

    def reference_part(self, batches: Iterable[Tensor], count: int, share: float) -> list[Tensor]:
        pieces = token_pieces(self.backbone, batches, self.few_shot_layers, self.config.reference_batch_size)
        rows, cols = self.backbone.grid_for(self.config.image_size)
        return reduce_pieces(pieces, count * rows * cols, round(self.memory.budget * share))

    def prepare_from_parts(self, class_name: str, parts: list[list[Tensor]]) -> None:
        self.anchors = text_anchors(self.backbone.text, class_name, WINCLIP)
        self.memory.combine(parts)

    def predict(self, images: Tensor) -> Prediction:
        if self.anchors is None:
            raise RuntimeError("call prepare(class_name, references) before predict")
        few_shot = bool(self.memory.banks)
        layers = sorted(set(self.layers) | (set(self.few_shot_layers) if few_shot else set()))
        features = self.backbone(images, layers)
        tokens = dict(zip(layers, features.patch_tokens))
        size = tuple(images.shape[-2:])
        probs = self.anomaly_probabilities(torch.stack([tokens[i] for i in self.layers], 1), self.anchors,
                                           features.grid, size)
        anomaly_map = probs[:, :, 1].sum(1)
        text_probability = anomalous_probability(features.global_embedding, self.anchors, self.config.logit_scale)
        if few_shot:
            distances = self.memory.distances([tokens[i] for i in self.few_shot_layers], features.grid)
            anomaly_map = anomaly_map + self.upsample(distances, size).sum(1)
        anomaly_map = self.smooth(anomaly_map, self.config.sigma)
        if not few_shot:
            return Prediction(anomaly_map, text_probability)
        map_maximum = anomaly_map.flatten(1).amax(1)
        return Prediction(anomaly_map, 0.5 * (text_probability + map_maximum),
                          {"text": text_probability, "map": map_maximum})

    def category_scores(self, scores: Tensor, parts: dict[str, Tensor]) -> Tensor:
        """``test_minmax`` (benchmark mode, transductive): with references, ``max(map)`` is min-max
        normalised over the category's test set before the fusion, as the reference code reports."""
        if self.config.score_normalization != "test_minmax" or "map" not in parts:
            return scores
        return 0.5 * (parts["text"] + minmax(parts["map"]))
