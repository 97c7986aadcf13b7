"""MoECLIP (zero-shot): patch-level mixture of LoRA experts inside CLIP's vision tower.

Frozen CLIP treats every patch alike; MoECLIP routes each token to the few LoRA experts suited to it.
After each feature level (blocks 6/12/18/24 of ViT-L/14 by default) a :class:`~.experts.LoRAMixture`
adapts the whole residual stream: a zero-initialised router keeps the top 2 of 4 experts per token,
each expert reads its own frozen orthonormal slice of the channels (FOFS), and the norm-matched mixture
is blended in as ``0.1 · moe(x) + 0.9 · x``; the adapted stream feeds the next block and is the level's
feature. The simplex-ETF loss keeps the experts' outputs maximally apart and the balance loss keeps all
of them in use (see :mod:`~.experts`, which also states exactly what the adapters change at
initialisation: every adapted block's output is scaled by 0.9).

Read-outs (:mod:`~.heads`). Each level's patch tokens are averaged over 1×1, 3×3 and 5×5 neighbourhoods
(zero padding) *before* ``ln_post``; a per-level bias-free Linear(C → D), shared by the scales, maps them
into the joint space: 12 unit-norm token maps. The global embedding comes from a depthwise-convolutional
head on the last level's ``ln_post``'d tokens. Text anchors use MoECLIP's own prompts, encoded by the
frozen text tower up to its final LayerNorm and mapped by a trained text head instead of CLIP's
projection; each state's sentences are normalised, averaged and normalised again.

Training (``training_loss``), on an auxiliary set with masks, with rigid augmentation (:mod:`~.augment`):
cross-entropy of the global embedding's dot products with (normal, anomalous) anchors at temperature
``image_logit_scale`` (1, as in the public code); for each of the 12 maps, ``100 · cos`` logits upsampled to
the image, softmax, focal + Dice(anomalous) + Dice(normal); plus 0.01 · ETF + 0.01 · balance, both summed
over the adapted blocks. The public code trains in ``eval()`` mode and so never computes ETF, balance or
LoRA dropout; ``reference_code_mode`` reproduces that.

Inference (``predict``): each map is ``(s_a + 1 − s_n) / 2`` with ``s = 100 · cos``, blurred on the patch
grid (σ 1, kernel 7), upsampled and summed over the 12 maps. The image score fuses a pixel term and the
global term ``(g · t_a + 1) / 2`` with weight 0.5 each. The paper's pixel term, ``max(map)``, lives on an
unbounded logit scale (the code min-max normalises the maps per category over the test set, which is
transductive). Deployment-safe default (``score_normalization="probability"``): the pixel term is the
maximum over pixels of the mean over maps of ``σ(s_a − s_n)``, the per-pixel anomaly probability the
segmentation loss trains, so both terms lie in [0, 1] and need no statistics at all (it saturates at 1
on strongly anomalous images, which then tie; ``"max"`` scores by ``max(map)`` alone and never ties).
``"code"`` reproduces the code's benchmark fusion and ``"test_minmax"`` a per-term variant of it, both
through :meth:`category_scores`. ``class_descriptions="code"`` prompts with the code's hand-written class
descriptions instead of the class names.

Other choices the paper leaves open, taken from the public code unless said otherwise: Xavier-initialised,
bias-free heads; a LayerNorm at the start of the global head and a LeakyReLU after the text head
(``text_head_activation``); the global embedding is a mean of unit vectors, not renormalised; FOFS bases
drawn from ``fofs_seed`` (a private generator, and saved with the weights); bilinear upsampling with
``align_corners=False`` (the project's helper; the code uses ``True``); nearest-neighbour augmentation
(see :mod:`~.augment`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsad.backbones.base import FeatureExtractor, Features
from zsad.data.types import Batch
from zsad.errors import ConfigError
from zsad.methods.base import Method, MethodConfig, Prediction, register
from zsad.methods.components.losses import anchor_logits, segmentation_loss
from zsad.methods.components.maps import anchor_map, minmax, neighbourhood_mean, tokens_to_grid
from zsad.methods.moeclip.augment import RigidAugmentation
from zsad.methods.moeclip.experts import LoRAMixture
from zsad.methods.moeclip.heads import GlobalHead, PatchHeads, TextHead
from zsad.methods.components.prompts import MOECLIP, MOECLIP_CODE_DESCRIPTIONS, clean_class_name, describe, sentences


@dataclass
class MoECLIPConfig(MethodConfig):
    backbone: str = "clip-vit-l14-336"
    image_size: int = 518
    # Mixture of LoRA experts (ablations: num_experts, top_k, fofs, etf_weight, balance_weight).
    moe_blocks: tuple[int, ...] | None = None  # blocks followed by a mixture; None: the feature levels
    num_experts: int = 4
    top_k: int = 2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    fofs: bool = True  # frozen orthonormal down-projections on disjoint channel slices; False: plain LoRA
    fofs_seed: int = 0  # draws the frozen bases (they are also saved with the weights)
    blend_weight: float = 0.1  # x <- w * moe(x) + (1 - w) * x; 0 leaves the backbone untouched
    etf_weight: float = 0.01  # 0 switches the simplex-ETF loss off (it is then not computed)
    balance_weight: float = 0.01  # 0 switches the router balance loss off
    reference_code_mode: bool = False  # train the mixtures in eval mode, as the public code does
    # Read-outs
    scales: tuple[int, ...] = (1, 3, 5)  # odd neighbourhood sides of the patch maps
    patch_head_activation: bool = False  # LeakyReLU after the patch heads (the code's --relu, off)
    text_head_activation: bool = True  # LeakyReLU after the text head, as in the public code
    # Losses
    image_logit_scale: float = 1.0  # image cross-entropy on raw dot products (temperature 1, as in the code)
    map_logit_scale: float = 100.0
    augment: bool = True
    # Inference
    blur_sigma: float = 1.0  # on the patch grid (medical recipe: 1.5)
    blur_kernel: int = 7  # (medical recipe: 9)
    global_score_weight: float = 0.5  # image score = (1 - w) * pixel term + w * global term; 0: pixel term only
    score_normalization: Literal["probability", "max", "test_minmax", "code"] = "probability"
    class_descriptions: Literal["none", "code"] = "none"  # "code": the public code's class descriptions


@register
class MoECLIP(Method):
    name = "moeclip"
    zero_shot = True
    trainable = True
    Config = MoECLIPConfig
    needs_text = True
    summary = "mixture of LoRA experts in CLIP's vision tower (FOFS, simplex-ETF) + multi-scale patch heads"
    train_defaults = {"epochs": 20, "batch_size": 2, "lr": 5e-5, "betas": (0.5, 0.999), "scheduler": "multistep",
                      "milestones": (16000, 32000), "gamma": 0.5, "split": "test"}

    def __init__(self, backbone: FeatureExtractor, config: MoECLIPConfig) -> None:
        super().__init__(backbone, config)
        text = backbone.text
        self._check(config, backbone)
        generator = torch.Generator().manual_seed(config.fofs_seed)
        self.mixtures = nn.ModuleList(
            LoRAMixture(backbone.width, config.num_experts, config.top_k, config.lora_rank, config.lora_alpha,
                        config.lora_dropout, config.blend_weight, config.fofs, generator,
                        etf=config.etf_weight > 0, balance=config.balance_weight > 0)
            for _ in self.moe_blocks
        )
        self.patch_heads = PatchHeads(backbone.width, backbone.embed_dim, len(self.layers),
                                      config.patch_head_activation)
        self.global_head = GlobalHead(backbone.width, backbone.embed_dim)
        self.text_head = TextHead(text.width, backbone.embed_dim, config.text_head_activation)
        self.augmentation = RigidAugmentation()
        self._sentence_features: dict[tuple[str, torch.device], tuple[Tensor, Tensor]] = {}  # frozen, per class
        self.anchors: Tensor | None = None

    @staticmethod
    def _check(config: MoECLIPConfig, backbone: FeatureExtractor) -> None:
        if not 1 <= config.top_k <= config.num_experts:
            raise ConfigError(f"top_k must be in 1..num_experts={config.num_experts}, got {config.top_k}")
        if config.fofs and backbone.width // config.num_experts < config.lora_rank:
            raise ConfigError(f"FOFS needs at least lora_rank={config.lora_rank} channels per expert; "
                              f"{backbone.width} channels over {config.num_experts} experts give fewer")
        if not config.scales or any(r < 1 or r % 2 == 0 for r in config.scales):
            raise ConfigError(f"scales must be odd neighbourhood sides >= 1, got {list(config.scales)}")
        if config.blur_kernel < 1 or config.blur_kernel % 2 == 0:
            raise ConfigError(f"blur_kernel must be odd and positive, got {config.blur_kernel}")
        blocks = config.moe_blocks or ()
        if any(not 1 <= b <= backbone.num_layers for b in blocks) or len(set(blocks)) != len(blocks):
            raise ConfigError(f"moe_blocks must be distinct blocks in 1..{backbone.num_layers}, got {list(blocks)}")

    @property
    def moe_blocks(self) -> tuple[int, ...]:
        return tuple(self.config.moe_blocks) if self.config.moe_blocks else self.layers

    def train(self, mode: bool = True) -> MoECLIP:
        """``reference_code_mode`` keeps the mixtures in eval mode: no LoRA dropout, no ETF, no balance loss."""
        super().train(mode)
        if self.config.reference_code_mode:
            self.mixtures.eval()
        return self

    # --- vision --------------------------------------------------------------------------------------
    @contextmanager
    def _mixtures_attached(self) -> Iterator[None]:
        """The mixtures sit in the backbone only while this method runs it, so ``self.backbone`` alone stays
        the frozen model (what the speed benchmark compares against)."""
        for block, mixture in zip(self.moe_blocks, self.mixtures):
            self.backbone.set_block_adapter(block, mixture)
        try:
            yield
        finally:
            for block in self.moe_blocks:
                self.backbone.set_block_adapter(block, None)

    def adapted_features(self, images: Tensor) -> Features:
        """Features of the feature levels with every mixture in place."""
        with self._mixtures_attached():
            return self.backbone(images, self.layers)

    def embeddings(self, features: Features) -> tuple[list[Tensor], Tensor]:
        """Unit-norm patch embeddings ``[B, N, D]`` (level-major, then scale) and the global embedding ``[B, D]``."""
        post_norm = self.backbone.final_norm
        patches = [self.patch_heads(post_norm(scaled), level)
                   for level, tokens in enumerate(features.patch_tokens)
                   for scaled in (neighbourhood_mean(tokens, features.grid, r) for r in self.config.scales)]
        return patches, self.global_head(post_norm(features.patch_tokens[-1]))

    # --- text ----------------------------------------------------------------------------------------
    def sentence_features(self, name: str) -> tuple[Tensor, Tensor]:
        """Frozen end-of-text features ``[n, width]`` of the normal and anomalous sentences, cached per class.

        Built outside inference mode, so that anchors prepared for evaluation never leave tensors that a
        later training step could not backpropagate through.
        """
        text = self.backbone.text
        key = (clean_class_name(name), self.device)
        if key not in self._sentence_features:
            subject = describe(name, MOECLIP_CODE_DESCRIPTIONS) if self.config.class_descriptions == "code" else key[0]
            with torch.inference_mode(False), torch.no_grad():
                self._sentence_features[key] = tuple(
                    text.eot_features(text.tokenize(sentences(MOECLIP, subject, state))).float()
                    for state in ("normal", "anomalous")
                )
        return self._sentence_features[key]

    def class_anchors(self, name: str) -> Tensor:
        """Unit (normal, anomalous) anchors ``[2, D]`` through the trained text head."""
        return torch.stack([F.normalize(F.normalize(self.text_head(f), dim=-1).mean(0), dim=-1)
                            for f in self.sentence_features(name)])

    # --- training ------------------------------------------------------------------------------------
    def training_loss(self, batch: Batch, features: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        images, masks = batch.images, batch.masks
        if self.config.augment:
            images, masks = self.augmentation(images, masks, fill=self.backbone.mean)
        names = [clean_class_name(c) for c in batch.categories]
        unique = sorted(set(names))
        table = torch.stack([self.class_anchors(n) for n in unique])
        anchors = table[torch.tensor([unique.index(n) for n in names], device=table.device)]  # [B, 2, D]

        adapted = self.adapted_features(images)
        auxiliary = [mixture.pop_losses() for mixture in self.mixtures]
        patches, global_embedding = self.embeddings(adapted)

        image_logits = self.config.image_logit_scale * torch.einsum("bd,bkd->bk", global_embedding, anchors)
        image = F.cross_entropy(image_logits.float(), batch.labels.long())
        size = tuple(masks.shape[-2:])
        segmentation = sum(
            segmentation_loss(self.anchor_probabilities(p, anchors, adapted.grid, size, self.config.map_logit_scale),
                              masks)
            for p in patches
        )
        zero = image.new_zeros(())
        etf = sum((losses["etf"] for losses in auxiliary if "etf" in losses), zero)
        balance = sum((losses["balance"] for losses in auxiliary if "balance" in losses), zero)
        total = image + segmentation + self.config.etf_weight * etf + self.config.balance_weight * balance
        return {"loss": total, "image": image.detach(), "segmentation": segmentation.detach(),
                "etf": etf.detach(), "balance": balance.detach()}

    # --- inference -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def prepare(self, class_name: str, references: Tensor | None) -> None:
        """Text anchors of ``class_name``; MoECLIP is zero-shot and ignores references."""
        self.anchors = self.class_anchors(class_name)

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Prediction:
        if self.anchors is None:
            raise RuntimeError("call prepare(class_name, references) before predict")
        config = self.config
        adapted = self.adapted_features(images)
        patches, global_embedding = self.embeddings(adapted)
        logits = torch.stack([anchor_logits(p, self.anchors, config.map_logit_scale) for p in patches], 1)
        maps = tokens_to_grid(anchor_map(logits).transpose(1, 2), adapted.grid)  # [B, 12, h, w]
        maps = self.blur(maps.flatten(0, 1), config.blur_sigma,
                             truncate=(config.blur_kernel // 2) / config.blur_sigma).view_as(maps)
        # Bilinear upsampling is linear: summing on the grid first gives the same map for 1/12 of the work.
        anomaly_map = self.upsample(maps.sum(1), tuple(images.shape[-2:]))
        global_term = (global_embedding.float() @ self.anchors[1].float() + 1) / 2
        if config.score_normalization == "max":
            return Prediction(anomaly_map, anomaly_map.flatten(1).amax(1))
        if config.score_normalization in ("test_minmax", "code"):
            pixel_term = anomaly_map.flatten(1).amax(1)
            score = (1 - config.global_score_weight) * pixel_term + config.global_score_weight * global_term
            parts = {"pixel": pixel_term, "pixel_min": anomaly_map.flatten(1).amin(1), "global": global_term}
            return Prediction(anomaly_map, score, parts)
        # (s_a + 1 - s_n) / 2 = m  <=>  s_a - s_n = 2m - 1: the trained softmax probability is sigmoid(2m - 1).
        pixel_term = torch.sigmoid(2 * maps - 1).mean(1).flatten(1).amax(1)
        score = (1 - config.global_score_weight) * pixel_term + config.global_score_weight * global_term
        return Prediction(anomaly_map, score)

    def category_scores(self, scores: Tensor, parts: dict[str, Tensor]) -> Tensor:
        """Benchmark modes (transductive: they read the category's whole test set), otherwise the per-image
        scores as predicted.

        * ``test_minmax``: each term min-max normalised over the category's images, then fused.
        * ``code``: the public code's fusion: the maps are min-max normalised over *all pixels* of the
          category (only when they leave [0, 1], which summed logit maps do), the image's pixel term is
          the maximum of its normalised map, and the global term stays as it is.
        """
        weight = self.config.global_score_weight
        if self.config.score_normalization == "test_minmax":
            pixel, global_term = (minmax(parts[k]) for k in ("pixel", "global"))
            return (1 - weight) * pixel + weight * global_term
        if self.config.score_normalization == "code":
            low, high = parts["pixel_min"].min(), parts["pixel"].max()
            pixel = parts["pixel"]
            if high > 1 or low < 0:
                pixel = (pixel - low) / (high - low)
            return (1 - weight) * pixel + weight * parts["global"]
        return scores
