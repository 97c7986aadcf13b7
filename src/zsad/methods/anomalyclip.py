"""AnomalyCLIP (Zhou et al., ICLR 2024): object-agnostic prompts learned against a value-value CLIP path.

Hand-written prompts describe *objects*; anomalies look alike across objects. AnomalyCLIP therefore
learns two object-agnostic prompts, ``[X]×12 object.`` and ``[X]×12 damaged object.``, whose 12 context
token embeddings are free parameters, and inserts 4 further learnable tokens into the text stream at the
input of text blocks 2 to 9 (deep prompts). The class name is never used.

On the vision side (all frozen), the last blocks (6 to 24 of a 24-block model) run a second,
value-value (DPAM) path beside the original one: each block's attention is recomputed with values as
queries and keys, ``softmax(v vᵀ · scale) v``, from the *original* path's normalised input, and added to
the v-v residual stream without the feed-forward layer. Local semantics survive in that stream, so
patch tokens come from it (``ln_post`` + projection); the global embedding stays the original path's
class token, projected without ``ln_post`` as in the reference code.

Per layer, ``softmax(cos / 0.07)`` of each patch against the two prompts is upsampled to the image;
training minimises ``4 · Σ_layers (focal + Dice(anomalous) + Dice(normal))`` plus the cross-entropy of
the global embedding against the prompts at temperature 0.07. At test time the map is
``(p_a + 1 − p_n) / 2`` summed over layers and Gaussian-smoothed (σ = 4 px at 518 px, scaled with the
input size); the image score is the global anomalous probability alone.

Depth rules for towers of other sizes (``None`` in the config): the v-v path starts at block
``ceil(L / 4)`` of an L-block vision tower (6 of 24, 3 of 12, 1 of 4), and deep prompts enter text
blocks ``2 .. round(3 L / 4)`` of an L-block text tower (2..9 of 12, 2..3 of 4). Patch tokens come from
the last block; earlier ``layers`` may be added (before the v-v start they are the original path's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsad.backbones.base import FeatureExtractor, TextEncoder
from zsad.data.types import Batch
from zsad.errors import ConfigError
from zsad.methods.base import Method, MethodConfig, Prediction, register
from zsad.methods.components.losses import anchor_logits, anomalous_probability, segmentation_loss
from zsad.methods.components.maps import anchor_map



@dataclass
class AnomalyClipConfig(MethodConfig):
    backbone: str = "clip-vit-l14-336"
    image_size: int = 518
    layers: tuple[int, ...] | None = None  # None: the last block only (the published setting)
    context_tokens: int = 12  # learnable [X] tokens in front of each state phrase
    normal_phrase: str = "object"
    anomalous_phrase: str = "damaged object"
    deep_prompt_tokens: int = 4
    deep_prompt_depth: int | None = None  # deep prompts enter text blocks 2..depth; None: round(3/4 · text blocks)
    vv_start: int | None = None  # first vision block with the v-v path; None: ceil(blocks / 4)
    temperature: float = 0.07
    segmentation_weight: float = 4.0
    normal_dice: bool = True
    global_post_layernorm: bool = False  # the reference code projects the class token without ln_post
    sigma: float = 4.0  # Gaussian smoothing in pixels at 518 px input, scaled with the input size
    init_std: float = 0.02


class ObjectAgnosticPrompts(nn.Module):
    """The two learnable prompts and the deep text prompts; ``forward`` encodes them to ``[2, D]``."""

    def __init__(self, text: TextEncoder, phrases: tuple[str, str], context_tokens: int, deep_tokens: int,
                 deep_depth: int, init_std: float) -> None:
        super().__init__()
        ids = text.tokenize([f"{phrase}." for phrase in phrases])
        # Room for the context right after the start token; the ids there only need to be non-terminal.
        ids = torch.cat([ids[:, :1], ids[:, :1].expand(-1, context_tokens), ids[:, 1:]], 1)[:, : text.context_length]
        with torch.no_grad():
            embeddings = text.token_embedding(ids)
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("token_embeddings", embeddings, persistent=False)
        self.context = nn.Parameter(init_std * torch.randn(len(phrases), context_tokens, text.width))
        self.deep = nn.Parameter(init_std * torch.randn(deep_depth - 1, deep_tokens, text.width))

    def forward(self, text: TextEncoder) -> Tensor:
        n = self.context.shape[1]
        embeddings = torch.cat([self.token_embeddings[:, :1], self.context, self.token_embeddings[:, 1 + n:]], 1)
        return text.encode_tokens(self.token_ids, embeddings, list(self.deep.unbind(0)))


@register
class AnomalyClip(Method):
    name = "anomalyclip"
    sigma_reference_size = 518  # the paper's sigma is given at 518 px
    zero_shot = True
    trainable = True
    Config = AnomalyClipConfig
    needs_text = True
    summary = "object-agnostic learnable prompts + deep text prompts against a value-value CLIP path"
    train_defaults = {"epochs": 15, "batch_size": 8, "lr": 1e-3, "betas": (0.5, 0.999), "split": "test"}

    def __init__(self, backbone: FeatureExtractor, config: AnomalyClipConfig) -> None:
        super().__init__(backbone, config)
        text_blocks = backbone.text.num_layers
        depth = config.deep_prompt_depth or round(3 * text_blocks / 4)
        if not 2 <= depth <= text_blocks:
            raise ConfigError(f"deep_prompt_depth must be in 2..{text_blocks}, got {depth}")
        self.vv_start = config.vv_start or math.ceil(backbone.num_layers / 4)
        if not 1 <= self.vv_start <= backbone.num_layers:
            raise ConfigError(f"vv_start must be in 1..{backbone.num_layers}, got {self.vv_start}")
        if not all(1 <= i <= backbone.num_layers for i in self.layers):
            raise ConfigError(f"{backbone.name} has blocks 1..{backbone.num_layers}; cannot take layers {self.layers}")
        self.prompts = ObjectAgnosticPrompts(backbone.text, (config.normal_phrase, config.anomalous_phrase),
                                             config.context_tokens, config.deep_prompt_tokens, depth, config.init_std)
        self.text_features: Tensor | None = None

    @property
    def default_layers(self) -> tuple[int, ...]:
        """The last block (the published setting)."""
        return (self.backbone.num_layers,)

    # --- the two vision paths ---------------------------------------------------------------------------
    def dual_path(self, images: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Projected v-v patch tokens of ``layers`` ``[B, L, N, D]``, the global embedding ``[B, D]``, grid."""
        backbone = self.backbone
        grid = backbone.grid_for(*images.shape[-2:])
        hidden = backbone.embed(images)
        vv: Tensor | None = None
        taken: dict[int, Tensor] = {}
        for i in range(1, backbone.num_layers + 1):
            if i >= self.vv_start:
                residual = backbone.value_value_attention(i, hidden)
                vv = hidden + residual if vv is None else vv + residual
            hidden = backbone.run_block(i, hidden, grid)
            if i in self.layers:
                taken[i] = hidden if vv is None else vv
        patches = torch.stack([backbone.project(taken[i][:, backbone.num_prefix_tokens:]) for i in self.layers], 1)
        cls = hidden[:, 0]
        global_embedding = backbone.project(cls, normalize=self.config.global_post_layernorm)
        return patches, global_embedding, grid

    # --- training ---------------------------------------------------------------------------------------
    def frozen_features(self, images: Tensor) -> dict[str, Tensor]:
        """The whole vision side is frozen: projected v-v patch tokens and the global embedding."""
        patches, global_embedding, _ = self.dual_path(images)
        return {"patch_tokens": patches, "global_embedding": global_embedding}

    def frozen_features_key(self) -> str:
        return f"vv{self.vv_start}-postln{int(self.config.global_post_layernorm)}"

    def training_loss(self, batch: Batch, features: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        features = features if features is not None else self.frozen_features(batch.images)
        text = self.prompts(self.backbone.text)
        scale = 1 / self.config.temperature
        image = F.cross_entropy(anchor_logits(features["global_embedding"], text, scale), batch.labels.long())
        size = tuple(batch.masks.shape[-2:])
        grid = self.backbone.grid_for(*size)
        patches = features["patch_tokens"]
        segmentation = sum(
            segmentation_loss(self.anchor_probabilities(patches[:, i], text, grid, size, scale, softmax_first=True),
                              batch.masks, self.config.normal_dice)
            for i in range(patches.shape[1])
        )
        loss = self.config.segmentation_weight * segmentation + image
        return {"loss": loss, "segmentation": segmentation.detach(), "image": image.detach()}

    # --- inference --------------------------------------------------------------------------------------
    def prepare(self, class_name: str, references: Tensor | None) -> None:
        """Encode the two prompts; they are object-agnostic, so the class name is not used."""
        self.text_features = self.prompts(self.backbone.text)

    def predict(self, images: Tensor) -> Prediction:
        if self.text_features is None:
            raise RuntimeError("call prepare(class_name, references) before predict")
        patches, global_embedding, grid = self.dual_path(images)
        size = tuple(images.shape[-2:])
        scale = 1 / self.config.temperature
        anomaly_map = sum(
            anchor_map(self.anchor_probabilities(patches[:, i], self.text_features, grid, size, scale,
                                                 softmax_first=True).movedim(1, -1))
            for i in range(patches.shape[1])
        )
        anomaly_map = self.smooth(anomaly_map, self.config.sigma)
        score = anomalous_probability(global_embedding, self.text_features, scale)
        return Prediction(anomaly_map, score)

