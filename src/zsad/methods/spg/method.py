"""SPG — Sparse-Projected Guides (prompt-free zero-shot anomaly detection; METHODS.md §5).

Frozen backbone tokens of one block (the last by default; before the final norm, CLS and registers
taken apart) are compared with four *guide vectors* that live in the span of a sparse autoencoder's
dictionary. Training runs in two stages on the labelled auxiliary split, each a ``zsad train`` run:

1. ``stage="sae"``: a TopK sparse autoencoder (:mod:`.sae`) on every patch token (CLS excluded).
2. ``stage="guides"``: backbone and SAE frozen; only four non-negative codes (:mod:`.guides`) are
   learned. ``guide = code · D``. Global guides meet the CLS token (cross-entropy on the raw cosine, i.e.
   temperature 1); local guides meet every *raw* patch token (not its SAE code) through
   ``softmax(cos / 0.07)`` on the patch grid, bilinearly upsampled to the mask and trained with
   focal + Dice(anomalous) + Dice(normal); plus ``1e-3 · mean_g ‖c_g‖₁``.

Inference: map ``(p_a + 1 - p_n) / 2`` from the local guides, Gaussian σ = 4 at 448 px (scaled with the
map size), image score = the map's maximum by default.

Open choices (config fields), and why:

* ``token_space="auto"``: the CLIP variant compares in the joint space (``ln_post`` + ``proj`` on patches
  *and* CLS, as the public code's CLIP encoder returns them); DINO tokens stay raw.
  ``token_space="final_norm"`` reads DINO tokens after the backbone's final LayerNorm: what the published
  DINOv3 numbers were computed on (the code reads ``hidden_states`` through the transformers version it
  pins, 4.56.1, whose last entry is normalised), for ``--protocol code`` reproduction.
* ``latents=None`` means 4 × token width (4096 for ViT-L). For CLIP's 768-d projected tokens that is
  3072; the public script keeps 4096 there, which ``latents=4096`` reproduces.
* Dead-atom mask: atoms with no positive activation on any stage-2 training token, computed by the SAE
  (frozen from then on) in one pass before the first stage-2 epoch, and stored with the codes. The paper
  computes it at the end of stage 1 on the same auxiliary data; computing it where it is used keeps it
  right when stage 2 is given other data.
* The EMA of the codes starts at their initial values and follows the live codes after every step
  (decay 0.999); inference and ``zsad explain`` read it. ``ema_decay=0`` reads the live codes.
* With the straight-through top-k on (``guide_topk > 0``), the L1 term is dropped, as in the public code:
  the top-k is the sparsity constraint then.
* Image scores besides ``max``: ``cls`` (softmax of CLS-vs-global-guide cosines at 0.07), ``top_mean``
  (mean of the top ``top_percent`` % of map pixels), ``logsumexp`` (``τ · log mean exp(map / τ)``, τ = 1)
  and ``hybrid`` (``hybrid_weight · cls + (1 - hybrid_weight) · max``).
* ``prepare`` does nothing: SPG has no per-category state (no prompts, no references).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from zsad.backbones.base import FeatureExtractor
from zsad.data.types import Batch
from zsad.errors import ConfigError
from zsad.methods.base import Method, MethodConfig, Prediction, register
from zsad.methods.components.losses import anomalous_probability, image_cross_entropy, segmentation_losses
from zsad.methods.components.maps import anchor_map
from zsad.methods.spg.guides import GuideCodes
from zsad.methods.spg.sae import TopKSAE


STAGE_TRAIN_DEFAULTS: dict[str, dict[str, object]] = {
    "sae": {"epochs": 50, "batch_size": 16, "lr": 1e-3, "betas": (0.5, 0.999), "split": "test"},
    "guides": {"epochs": 15, "batch_size": 8, "lr": 1e-2, "betas": (0.5, 0.999), "split": "test"},
}


@dataclass
class SPGConfig(MethodConfig):
    backbone: str = "dinov3-vit-l16"
    image_size: int = 448
    layers: tuple[int, ...] | None = None  # one block; None: the last
    stage: Literal["sae", "guides"] = "sae"  # what `zsad train` optimises
    token_space: Literal["auto", "raw", "final_norm", "projected"] = "auto"  # auto: projected (CLIP), raw (DINO)
    # Stage 1: TopK sparse autoencoder.
    latents: int | None = None  # dictionary size; None: 4 x token width
    topk: int = 32
    auxk: int = 512  # 0 disables AuxK
    auxk_coef: float = 1 / 32
    dead_tokens: int = 10_000_000  # a latent inactive for this many training tokens is dead (AuxK)
    active_threshold: float = 1e-3  # activation above which a latent counts as active (AuxK)
    # Stage 2: guide codes.
    code_init: float = 0.1
    code_init_std: float = 0.01
    mask_dead_atoms: bool = True
    global_train_temperature: float = 1.0  # global cross-entropy on the raw cosine
    temperature: float = 0.07  # local maps and the inference CLS score
    normal_dice: bool = True
    l1_weight: float = 1e-3
    ema_decay: float = 0.999  # 0: inference reads the live codes
    guide_topk: int = 0  # straight-through top-k on the codes; 0 off (the paper's option: 32)
    # Inference.
    sigma: float = 4.0  # Gaussian smoothing in pixels at 448 px, scaled with the map size
    score: Literal["max", "cls", "top_mean", "logsumexp", "hybrid"] = "max"
    top_percent: float = 10.0
    lse_tau: float = 1.0
    hybrid_weight: float = 0.5


@register
class SPG(Method):
    name = "spg"
    stages = ("sae", "guides")
    sigma_reference_size = 448  # σ is given at the paper's DINOv3 input size
    zero_shot = True
    trainable = True
    Config = SPGConfig
    summary = "sparse-projected guides: SAE dictionary atoms mixed into normal/anomaly guides (prompt-free)"
    train_defaults = STAGE_TRAIN_DEFAULTS["sae"]

    @classmethod
    def train_defaults_for(cls, config: MethodConfig) -> dict[str, object]:
        return STAGE_TRAIN_DEFAULTS[config.stage]

    def __init__(self, backbone: FeatureExtractor, config: SPGConfig) -> None:
        super().__init__(backbone, config)
        if len(self.layers) != 1:
            raise ConfigError(f"spg reads one block; got layers {list(self.layers)}")
        if config.token_space == "projected" and backbone.text is None:
            raise ConfigError(f"token_space=projected needs a CLIP backbone; {backbone.name} has no joint space")
        self.projected = config.token_space == "projected" or (config.token_space == "auto"
                                                                and backbone.text is not None)
        self.normalized = config.token_space == "final_norm"
        dim = backbone.embed_dim if self.projected else backbone.width
        latents = config.latents or 4 * dim
        if not 0 < config.topk <= latents or not 0 <= config.guide_topk <= latents or config.auxk < 0:
            raise ConfigError(f"spg needs 0 < topk <= latents ({latents}), 0 <= guide_topk <= latents and auxk >= 0")
        self.sae = TopKSAE(dim, latents, config.topk, config.auxk, config.auxk_coef, config.dead_tokens,
                           config.active_threshold)
        self.codes = GuideCodes(latents, config.code_init, config.code_init_std, config.ema_decay, config.guide_topk)
        self.sae.requires_grad_(config.stage == "sae")
        self.codes.requires_grad_(config.stage == "guides")

    @property
    def default_layers(self) -> tuple[int, ...]:
        """The last block (the published setting)."""
        return (self.backbone.num_layers,)

    # --- features -------------------------------------------------------------------------------------
    def frozen_features(self, images: Tensor) -> dict[str, Tensor]:
        """Patch tokens ``[B, N, C]`` and CLS ``[B, C]`` of the block, in the comparison space."""
        features = self.backbone(images, self.layers)
        tokens, cls = features.patch_tokens[0], features.cls_tokens[0]
        if self.projected:
            tokens, cls = self.backbone.project(tokens), self.backbone.project(cls)
        elif self.normalized:
            tokens, cls = self.backbone.final_norm(tokens), self.backbone.final_norm(cls)
        return {"tokens": tokens, "cls": cls}

    def frozen_features_key(self) -> str:
        return "projected" if self.projected else "final_norm" if self.normalized else "raw"

    def _features(self, batch: Batch, features: dict[str, Tensor] | None) -> dict[str, Tensor]:
        return features if features is not None else self.frozen_features(batch.images.to(self.device))

    def guides(self, averaged: bool = False) -> Tensor:
        """Guide vectors ``[4, C]`` (global-normal, global-anomaly, local-normal, local-anomaly)."""
        return self.codes(averaged) @ self.sae.dictionary

    # --- training -------------------------------------------------------------------------------------
    def training_loss(self, batch: Batch, features: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        features = self._features(batch, features)
        if self.config.stage == "sae":
            parts = self.sae.losses(features["tokens"].flatten(0, 1).float())
            return {"loss": parts.loss, "reconstruction": parts.reconstruction, "auxk": parts.auxk,
                    "dead_fraction": parts.dead_fraction, "active_latents": parts.active_latents}
        return self._guide_losses(features["tokens"], features["cls"], batch.masks, batch.labels)

    def _guide_losses(self, tokens: Tensor, cls: Tensor, masks: Tensor, labels: Tensor) -> dict[str, Tensor]:
        config = self.config
        codes = self.codes()
        guides = codes @ self.sae.dictionary
        size = masks.shape[-2:]
        probs = self.anchor_probabilities(tokens, guides[2:], self.backbone.grid_for(*size), size,
                                          scale=1 / config.temperature, softmax_first=True)
        parts = {
            "ce": image_cross_entropy(cls, guides[:2], labels, scale=1 / config.global_train_temperature),
            **segmentation_losses(probs, masks, config.normal_dice),
        }
        if not config.guide_topk:
            parts["l1"] = config.l1_weight * codes.sum(-1).mean()  # codes are non-negative: sum = L1 norm
        return {"loss": sum(parts.values()), **parts}

    @torch.no_grad()
    def before_training(self, data: Iterable[tuple[Batch, dict[str, Tensor] | None]]) -> None:
        """Stage 2: mask the atoms that fire on no training token (the SAE is frozen from here on)."""
        if self.config.stage != "guides" or not self.config.mask_dead_atoms:
            return
        fired = torch.zeros(self.sae.latents, dtype=torch.bool, device=self.device)
        for batch, features in data:
            tokens = self._features(batch, features)["tokens"].to(self.device).flatten(0, 1).float()
            fired |= (self.sae.encode(tokens) > 0).any(0)
        self.codes.set_dead_atoms(~fired)

    def after_optimizer_step(self) -> None:
        if self.config.stage == "sae":
            self.sae.renormalise()
        else:
            self.codes.update_ema()

    # --- inference ------------------------------------------------------------------------------------
    def prepare(self, class_name: str, references: Tensor | None) -> None:
        """Nothing per category: the guides are category-agnostic."""

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Prediction:
        features = self.frozen_features(images)
        guides = self.guides(averaged=True)
        size = images.shape[-2:]
        probs = self.anchor_probabilities(features["tokens"], guides[2:], self.backbone.grid_for(*size), size,
                                          scale=1 / self.config.temperature, softmax_first=True)
        anomaly_map = self.smooth(anchor_map(probs.movedim(1, -1)), self.config.sigma)
        return Prediction(anomaly_map, self._image_score(anomaly_map, features["cls"], guides[:2]))

    def _image_score(self, anomaly_map: Tensor, cls: Tensor, global_guides: Tensor) -> Tensor:
        config = self.config
        flat = anomaly_map.flatten(1)
        if config.score == "max":
            return flat.amax(1)
        if config.score == "top_mean":
            count = max(1, int(flat.shape[1] * config.top_percent / 100))
            return flat.topk(count, dim=1).values.mean(1)
        if config.score == "logsumexp":
            tau = config.lse_tau
            return tau * (torch.logsumexp(flat / tau, dim=1) - math.log(flat.shape[1]))
        cls_score = anomalous_probability(cls, global_guides, 1 / config.temperature)
        if config.score == "cls":
            return cls_score
        return config.hybrid_weight * cls_score + (1 - config.hybrid_weight) * flat.amax(1)
