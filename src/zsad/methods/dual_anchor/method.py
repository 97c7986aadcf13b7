"""Dual-Anchor with Hierarchical Group Merging (zero-shot; METHODS.md §6).

Most CLIP-based zero-shot detectors anchor "normal" and "anomalous" in text alone, which makes them
sensitive to prompt wording and weakly grounded in the image. Dual-Anchor adds *image anchors*: a
top-down grouping of the image's own patch tokens (:mod:`.grouping`) ends in a normal and an abnormal
group token, ``G_N`` and ``G_A``. They gate extra evidence into the global token (:mod:`.refiner`) and
are written into the text prompts (:mod:`.prompts`), so the text anchors become per-image.

Pipeline (backbone and text tower frozen):

* Vision tokens of four blocks (6/12/18/24 of a 24-block tower), CLS removed, in the joint space. CLIP:
  ``ln_post`` + projection (frozen). DINOv2/DINOv3 have no joint space: each block's tokens get their
  own learned LayerNorm + Linear into the CLIP text space, and the final-norm CLS a learned Linear.
  The text tower is CLIP's (the backbone's own for CLIP; ``text_backbone`` beside a DINO backbone).
* Hierarchical group merging over levels of 16 → 8 → 4 → 2 groups; level ``i`` of ``n`` reads block
  ``ceil((i + 1) L / n)`` of the ``L`` selected ones, so grouping runs from local (early blocks) to
  global (late blocks), the abstract's "local-to-global" aggregation, and the last level reads the last
  block. The final level's two slots are ``G_N`` and ``G_A``; its assignment is the patch→group map.
* Group-Gated Token Refiner on the global token; Dynamic State Prompts give per-image anchors ``T_N``,
  ``T_A``.
* Maps: for each block, ``A = softmax(cos(patch, (T_N, T_A)) / τ)`` on the patch grid, upsampled; plus
  the upsampled final assignment (whose rows sum to one, so its ``(A_a + 1 − A_n) / 2`` is ``A_a``). The
  anomaly map is the mean over these maps of ``(A_a + 1 − A_n) / 2``, Gaussian-smoothed (σ = 4 px at
  518 px, scaled with the input size). Image score: ``softmax(cos(g', (T_N, T_A)) / τ)[abnormal]`` of the
  refined global token ``g'``.
* Losses, unit weights: image BCE (the two-way softmax above against the label); per map (every block
  and the assignment map, summed as in AnomalyCLIP) focal + Dice(abnormal) + Dice(normal); anchor
  orthogonality ``cos(G_N, G_A)²``; group alignment ``1 − cos(G_N, pooled normal tokens)`` +
  ``1 − cos(G_A, pooled abnormal tokens)``, where the last level's tokens are averaged with weights
  given by the fraction of normal / abnormal mask pixels in each patch, over images that have the region.

Choices the public material leaves open, each a config field:

* ``gumbel_tau = 1`` and soft assignments (``hard_assignment=False``): soft rows give every patch a
  gradient through the segmentation and alignment losses; ``hard_assignment`` gives GroupViT's
  straight-through one-hot rows. Evaluation uses the noise-free softmax (argmax when hard).
* Assignment logits are scaled dot products of learned projections (GroupViT) rather than raw cosines:
  frozen tokens of different images are very similar, and a learned metric can say what separates them.
* Normal/abnormal identity of the final groups: fixed slots (0 normal, 1 abnormal); with halving
  schedules the surviving slots never change, and the segmentation loss on the assignment map and the
  group-alignment loss bind each slot to its state.
* Orthogonality on unit-normalised groups (``cos²``), so it constrains directions, not norms.
* ``state_words = ("flawless", "damaged")``, ``context_tokens = 12`` per state (AnomalyCLIP's count,
  initial std 0.02); the class name is kept, as the outline's prompt has it.
* ``temperature = 0.07``: CLIP's temperature, as in AnomalyCLIP, for the maps and the image score.
* ``level_layers="spread"`` as above; ``"last"`` lets every level read the last block.
* ``token_projection``: ``auto`` freezes CLIP's projection and learns DINO's; ``learned`` also learns
  per-block maps for CLIP (APRIL-GAN style), ``frozen`` is CLIP only.
* ``text_backbone=None`` pairs a DINO backbone with ``clip-vit-l14-336`` (the paper's text encoder), or
  with ``clip-tiny`` when the vision backbone is a built-in tiny test model, so nothing is downloaded
  for tests and benchmarks; a CLIP backbone always uses its own text tower (its joint space).
* ``image_size = 518`` (the paper's size; patch 14). DINOv3's patch is 16: run it at a multiple of 16,
  e.g. ``--backbone dinov3-vit-l16 --image-size 512``.
* Training defaults follow AnomalyCLIP's protocol (15 epochs, batch 8, Adam lr 1e-3, betas (0.5, 0.999),
  on the auxiliary test split with masks); the thesis' own values are not public.

Ablations of the thesis: ``hierarchy=False`` (one level of two groups on the last block, no merging),
``group_counts``, ``refiner=False``, ``dynamic_prompts=False`` (static learnable prompts),
``assignment_map=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsad.backbones import get_spec
from zsad.backbones.base import FeatureExtractor, TextEncoder
from zsad.data.types import Batch
from zsad.errors import ConfigError
from zsad.methods.base import Method, MethodConfig, Prediction, register
from zsad.methods.dual_anchor.grouping import Grouping, HierarchicalGroupMerging, member_means
from zsad.methods.dual_anchor.prompts import DynamicStatePrompts
from zsad.methods.dual_anchor.refiner import GroupGatedRefiner
from zsad.methods.components.losses import anchor_logits, segmentation_losses
from zsad.methods.components.maps import anchor_map, mask_fractions, tokens_to_grid

PAPER_TEXT_BACKBONE = "clip-vit-l14-336"
TINY_TEXT_BACKBONE = "clip-tiny"


@dataclass
class DualAnchorConfig(MethodConfig):
    backbone: str = "clip-vit-l14-336"
    image_size: int = 518
    layers: tuple[int, ...] | None = None  # None: the backbone's four evenly spaced blocks
    text_backbone: str | None = None  # CLIP text tower beside a DINO backbone; None: see the module docstring
    text_weights: str | None = None  # local folder or hub id of the text tower's weights
    token_projection: Literal["auto", "frozen", "learned"] = "auto"
    # Hierarchical group merging.
    hierarchy: bool = True  # False: one level of two groups, no merging
    group_counts: tuple[int, ...] = (16, 8, 4, 2)  # groups assigned at each level; merged to the next
    level_layers: Literal["spread", "last"] = "spread"
    gumbel_tau: float = 1.0
    hard_assignment: bool = False
    attention_heads: int = 8
    query_init_std: float = 0.02
    # Group-Gated Token Refiner.
    refiner: bool = True
    refiner_init_gate: float = 0.1
    # Dynamic State Prompts.
    dynamic_prompts: bool = True  # False: static learnable prompts (no group token)
    context_tokens: int = 12
    state_words: tuple[str, str] = ("flawless", "damaged")
    context_init_std: float = 0.02
    # Maps and score.
    temperature: float = 0.07
    assignment_map: bool = True  # add the final group assignment to the mean of the block maps
    sigma: float = 4.0  # Gaussian smoothing in pixels at 518 px, scaled with the input size
    # Loss weights.
    image_weight: float = 1.0
    focal_weight: float = 1.0
    dice_weight: float = 1.0
    normal_dice: bool = True
    orthogonality_weight: float = 1.0
    alignment_weight: float = 1.0


@dataclass
class Outputs:
    """One forward pass: per-map (normal, abnormal) probabilities ``[B, M, 2, H, W]``, image logits
    ``[B, 2]``, the grouping, and the tokens the last level grouped ``[B, N, D]``."""

    probabilities: Tensor
    image_logits: Tensor
    grouping: Grouping
    grouped_tokens: Tensor


@register
class DualAnchor(Method):
    name = "dual-anchor"
    sigma_reference_size = 518  # σ is given at the paper's input size
    zero_shot = True
    trainable = True
    Config = DualAnchorConfig
    summary = "hierarchical group merging image anchors + group-gated global token + dynamic state prompts"
    train_defaults = {"epochs": 15, "batch_size": 8, "lr": 1e-3, "betas": (0.5, 0.999), "split": "test"}

    def __init__(self, backbone: FeatureExtractor, config: DualAnchorConfig) -> None:
        super().__init__(backbone, config)
        self.text_encoder = self._text_tower(backbone, config)  # registered only when built here (DINO)
        dim = self.text.embed_dim
        is_clip = backbone.text is not None
        if config.token_projection == "frozen" and not is_clip:
            raise ConfigError(f"token_projection=frozen needs CLIP's joint space; {backbone.name} has none")
        self.learned_projection = config.token_projection == "learned" or not is_clip
        self.patch_projections = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(backbone.width), nn.Linear(backbone.width, dim)) for _ in self.layers
        ) if self.learned_projection else None
        self.global_projection = None if is_clip else nn.Linear(backbone.embed_dim, dim)
        counts = tuple(config.group_counts) if config.hierarchy else tuple(config.group_counts[-1:])
        self.grouping = HierarchicalGroupMerging(dim, counts, config.attention_heads, config.gumbel_tau,
                                                 config.hard_assignment, config.query_init_std)
        self.refiner = GroupGatedRefiner(dim, config.refiner_init_gate) if config.refiner else None
        self.prompts = DynamicStatePrompts(self.text, dim, config.context_tokens, tuple(config.state_words),
                                           config.dynamic_prompts, config.context_init_std)
        self.class_name: str | None = None
        self.static_anchors: Tensor | None = None

    @staticmethod
    def _text_tower(backbone: FeatureExtractor, config: DualAnchorConfig) -> TextEncoder | None:
        """The CLIP text tower to build for a DINO backbone; None for CLIP, which brings its own."""
        if backbone.text is not None:
            if config.text_backbone not in (None, backbone.name):
                raise ConfigError(f"a CLIP backbone uses its own text tower; text_backbone={config.text_backbone!r} "
                                  f"applies to DINO backbones only")
            return None
        from zsad.backbones import build_text_encoder  # loads transformers: only when a DINO backbone needs it

        name = config.text_backbone
        if name is None:
            name = TINY_TEXT_BACKBONE if get_spec(backbone.name).builtin else PAPER_TEXT_BACKBONE
        return build_text_encoder(name, weights=config.text_weights)

    @property
    def text(self) -> TextEncoder:
        return self.backbone.text if self.text_encoder is None else self.text_encoder

    @property
    def level_layers(self) -> list[int]:
        """Index into :attr:`layers` of the block each grouping level reads."""
        n, count = len(self.layers), len(self.grouping.levels)
        if self.config.level_layers == "last":
            return [n - 1] * count
        return [math.ceil((i + 1) * n / count) - 1 for i in range(count)]

    def method_state_dict(self) -> dict[str, Tensor]:
        """Learned tensors only: neither the vision backbone nor a separately built text tower."""
        return {k: v for k, v in super().method_state_dict().items() if not k.startswith("text_encoder.")}

    # --- features -------------------------------------------------------------------------------------
    def frozen_features(self, images: Tensor) -> dict[str, Tensor]:
        """Patch tokens of every block ``[B, L, N, C]`` (CLIP: already in the joint space unless its
        projection is learned) and the global embedding ``[B, C']``."""
        features = self.backbone(images, self.layers)
        tokens = torch.stack(features.patch_tokens, 1)
        if not self.learned_projection:
            tokens = self.backbone.project(tokens)
        return {"patch_tokens": tokens, "global": features.global_embedding}

    def frozen_features_key(self) -> str:
        return "raw" if self.learned_projection else "joint"

    def _joint(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Patch tokens ``[B, L, N, D]`` and global token ``[B, D]`` in the text encoder's joint space."""
        tokens, global_token = features["patch_tokens"], features["global"]
        if self.patch_projections is not None:
            tokens = torch.stack([project(tokens[:, i]) for i, project in enumerate(self.patch_projections)], 1)
        if self.global_projection is not None:
            global_token = self.global_projection(global_token)
        return tokens, global_token

    # --- the two anchors ------------------------------------------------------------------------------
    def forward_features(self, features: dict[str, Tensor], class_names: list[str],
                         size: tuple[int, int]) -> Outputs:
        """Everything training and prediction share, for images of ``size`` and their class names."""
        tokens, global_token = self._joint(features)
        grid = self.backbone.grid_for(*size)
        grouping = self.grouping([tokens[:, i] for i in self.level_layers])
        if self.refiner is not None:
            global_token = self.refiner(global_token, grouping.groups)
        anchors = self._anchors(class_names, grouping.groups)
        scale = 1 / self.config.temperature
        maps = [self.anchor_probabilities(tokens[:, i], anchors, grid, size, scale, softmax_first=True)
                for i in range(tokens.shape[1])]
        if self.config.assignment_map:
            maps.append(self.upsample(tokens_to_grid(grouping.assignment, grid), size))
        image_logits = anchor_logits(global_token, anchors, scale)
        return Outputs(torch.stack(maps, 1), image_logits, grouping, tokens[:, self.level_layers[-1]])

    def _anchors(self, class_names: list[str], groups: Tensor) -> Tensor:
        """Text anchors ``[B, 2, D]``; static prompts prepared for the current class are reused."""
        if self.static_anchors is not None and not self.training:
            return self.static_anchors.expand(groups.shape[0], -1, -1)
        return self.prompts(self.text, class_names, groups)

    # --- training -------------------------------------------------------------------------------------
    def training_loss(self, batch: Batch, features: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        features = features if features is not None else self.frozen_features(batch.images)
        masks = batch.masks
        size = tuple(masks.shape[-2:])
        out = self.forward_features(features, batch.categories, size)
        config = self.config
        per_map = [segmentation_losses(p, masks, config.normal_dice) for p in out.probabilities.unbind(1)]
        focal = sum(parts["focal"] for parts in per_map)
        dice = sum(parts["dice_anomaly"] + parts.get("dice_normal", 0) for parts in per_map)
        image = F.cross_entropy(out.image_logits, batch.labels.long())
        groups = F.normalize(out.grouping.groups, dim=-1)
        orthogonality = ((groups[:, 0] * groups[:, 1]).sum(-1) ** 2).mean()
        alignment = group_alignment_loss(out.grouping.groups, out.grouped_tokens, masks,
                                         self.backbone.grid_for(*size))
        parts = {"image": image, "focal": focal, "dice": dice, "orthogonality": orthogonality, "alignment": alignment}
        loss = (config.image_weight * image + config.focal_weight * focal + config.dice_weight * dice
                + config.orthogonality_weight * orthogonality + config.alignment_weight * alignment)
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}

    # --- inference ------------------------------------------------------------------------------------
    def prepare(self, class_name: str, references: Tensor | None) -> None:
        """Remember the class name; static prompts are encoded once here (dynamic ones need the image)."""
        self.class_name = class_name
        self.static_anchors = None
        if not self.config.dynamic_prompts:
            self.static_anchors = self.prompts(self.text, [class_name])

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Prediction:
        if self.class_name is None:
            raise RuntimeError("call prepare(class_name, references) before predict")
        size = tuple(images.shape[-2:])
        out = self.forward_features(self.frozen_features(images), [self.class_name] * images.shape[0], size)
        anomaly_map = anchor_map(out.probabilities.movedim(2, -1)).mean(1)
        anomaly_map = self.smooth(anomaly_map, self.config.sigma)
        return Prediction(anomaly_map, out.image_logits.softmax(-1)[:, 1])


def group_alignment_loss(groups: Tensor, tokens: Tensor, masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """``1 − cos`` between each final group ``[B, 2, D]`` and the mean of the tokens ``[B, N, D]`` in its
    region (normal, abnormal), weighted per patch by the region's pixel fraction; averaged over the
    images that have the region, summed over the two regions."""
    abnormal = mask_fractions(masks, grid)  # [B, N]
    weights = torch.stack([1 - abnormal, abnormal], -1).to(tokens.dtype)
    pooled, mass = member_means(tokens, weights)
    present = (mass > 0).to(tokens.dtype)
    distance = 1 - F.cosine_similarity(groups, pooled, dim=-1)  # [B, 2]
    return ((distance * present).sum(0) / present.sum(0).clamp_min(1)).sum()
