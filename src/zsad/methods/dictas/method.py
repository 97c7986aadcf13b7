"""DictAS: few-shot anomaly segmentation by dictionary lookup, learned self-supervised (Qu et al., 2025).

**Dictionary.** Frozen residual-stream tokens of the k normal references (layers 6/12/18/24 of CLIP
ViT-L/14@336 at 336 px by default) are taken at two neighbourhood scales, as they are and 3 × 3 mean
pooled (stride 1, zero padding counted). For each layer and scale the references' tokens are concatenated
into one sequence of k·N entries and passed through a Key generator and a Value generator
(:mod:`~zsad.methods.dictas.generators`), so each entry's self-attention spans all references. One
Query/Key/Value triple serves every layer and scale, as in the public code (``per_layer_generators``
gives each layer its own). The dictionary is built once per category in :meth:`DictAS.prepare`.

**Lookup.** A query image's tokens at the same layer and scale go through the Query generator; each
query is matched against every key and the retrieved result is a sparsemax-weighted sum of values
(``dense``: softmax, ``max``: the best entry; :mod:`~zsad.methods.dictas.lookup`). The anomaly map is
``(1 − cos(F_q, retrieved)) / 2`` per layer and scale, upsampled to the input, averaged, and smoothed
with a Gaussian of σ = 6 px at 336 px (scaled with the input size).

**Training** (:meth:`DictAS.training_loss`) is self-supervised on normal auxiliary images: each image
yields an augmented reference and a query that is a DRAEM pseudo-anomaly 30 % of the time
(:mod:`~zsad.methods.dictas.pairs`); one reference per query. Summed over layers and scales, with
``d = 1 − cos(F_q, retrieved)``: the query loss is the mean over normal patches of ``d`` (the query
feature is its own pseudo-label: normal content must be retrievable); the contrastive query constraint
(CQC) is ``max(0, d_normal − d_anomalous)`` per image, averaged over the images that contain anomalous
patches and have a positive hinge. The text alignment constraint (TAC) maps the scale-1 query features
and retrieved results of all layers to a global embedding each (:mod:`~zsad.methods.dictas.alignment`)
and asks, by cross-entropy on ``100·cos`` against the class's WinCLIP normal/anomalous text anchors, that
the query's embedding show its pseudo-label and the retrieved one always read as normal. Total:
``L_q + 0.1·L_cqc + 0.1·L_tac``; Adam (lr 1e-4, betas 0.5/0.999), ReduceLROnPlateau (0.8, patience 2),
batch 24, 30 epochs.

**Image score**: ``α·s_text + (1 − α)·max(map)`` with α = 0.2, where ``s_text`` is the anomalous
probability of the frozen CLIP image embedding against the class's text anchors.

Choices the paper leaves open, and why:

* *Patch pseudo-labels*: a patch is anomalous when more than half of its pixels are in the synthetic
  mask (``patch_labels="area"``: area pooling then 0.5), the code's bilinear-then-threshold in a
  resolution-independent form; ``"bilinear"`` is the code's exact rule (the mask bilinearly resized to the
  patch grid with ``align_corners=True``, then ``> 0.5``), which reads only the pixels near patch centres.
* *Query feature of the map and the loss*: the paper's raw ``F_q`` (``query_feature="feature"``). The public
  code's second phase uses ``Value(F_q)`` with the Value generator frozen (it restores the best weights and
  resets Adam after the first epoch without validation gain). Here that is ``query_feature="value"``, which
  freezes the Value generator; the two phases are two ``zsad train`` runs, the second started from the
  first with ``--checkpoint`` (a fresh optimizer). Choose the first run's length on held-out *auxiliary*
  data, never on target test data. A Value generator that was never trained (no checkpoint, or one
  without it) would turn every query into random features, so that combination is refused.
* *Image-score fusion*: the code min-max normalises ``s_text`` and ``max(map)`` per category over the test
  set before fusing. That needs every test image's score, i.e. it is transductive, so it is only the named
  option ``score_normalization="test_minmax"`` (applied by the evaluator through
  :meth:`DictAS.category_scores` once a category's test set is predicted); the default fuses raw values.
* *Backbones without text* (DINO): no ``s_text`` (α is treated as 0) and no TAC; the map is unchanged.
* *TAC's pooling and width*: attention pooling (the code) by default, global average pooling (the paper)
  as an option; hidden width 512 as in the spec for ViT-L. TAC reads the first configured scale.
* Per-dataset tuning of the code (layers [6, 12] on MVTec/BTAD, single scale on MPDD/BTAD/MVTec3D, α per
  class, references rotated in 45° steps for ``screw`` at k ≤ 4) is reachable through ``layers``,
  ``scales``, ``score_alpha_per_class`` and ``reference_rotations`` / ``rotate_references_for`` (``zsad
  reproduce dictas --protocol code`` sets them), never a default. The TAC head is training-only, so a
  checkpoint evaluates with other ``layers`` (its head is then left fresh and unused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsad.backbones.base import FeatureExtractor, TextEncoder
from zsad.data.types import Batch
from zsad.errors import ConfigError
from zsad.methods.base import Method, MethodConfig, Prediction, register
from zsad.methods.dictas.alignment import Pooling, TextAlignmentHead
from zsad.methods.dictas.generators import Generators
from zsad.methods.dictas.lookup import Strategy, lookup
from zsad.methods.dictas.pairs import AnomalySources, reference_views
from zsad.methods.components.losses import anchor_logits, anomalous_probability
from zsad.methods.components.maps import mask_fractions, minmax, neighbourhood_mean
from zsad.methods.components.memory import reference_tokens
from zsad.methods.components.prompts import clean_class_name, text_anchors
from zsad.methods.components.synthesis import batch_generator, synthesize_batch



@dataclass
class DictASConfig(MethodConfig):
    backbone: str = "clip-vit-l14-336"
    image_size: int = 336
    # Dictionary and lookup
    scales: tuple[int, ...] = (1, 3)  # neighbourhood sizes (odd), 1 = the tokens as they are
    lookup: Strategy = "sparse"  # "sparse" (sparsemax), "dense" (softmax) or "max" (one-hot)
    heads: int = 4  # attention heads of each generator
    per_layer_generators: bool = False  # one Query/Key/Value triple per layer instead of one shared
    query_generator: bool = True  # ablations: a generator switched off is the identity
    key_generator: bool = True
    value_generator: bool = True
    query_feature: Literal["feature", "value"] = "feature"  # F_q (paper) or Value(F_q) (code's 2nd phase)
    patch_labels: Literal["area", "bilinear"] = "area"  # pseudo-labels: >50% of a patch's area, or the code's
    # Regularisers (a weight of 0 switches one off)
    cqc_weight: float = 0.1
    tac_weight: float = 0.1
    tac_hidden: int = 512
    tac_pooling: Pooling = "attention"  # "attention" (code) or "mean" (paper)
    # Training pairs
    reference_augment_prob: float = 0.9
    synthesis_prob: float = 0.3
    perlin_scale_exponents: tuple[int, int] = (1, 3)  # Perlin scale 2^u per axis, u in [1, 3)
    beta_max: float = 0.8
    anomaly_source: str | None = None  # folder of texture images; None: each image's own augmented copy
    # Inference
    sigma: float = 6.0  # Gaussian smoothing at 336 px, scaled with the input size
    score_alpha: float = 0.2  # weight of the text score in the image score
    score_alpha_per_class: dict[str, float] = field(default_factory=dict)  # class name -> α (the code's table)
    reference_rotations: tuple[float, ...] = ()  # extra copies of each reference rotated by these degrees
    rotate_references_for: tuple[str, ...] = ()  # classes that get them; empty: every class
    score_normalization: Literal["none", "test_minmax"] = "none"
    reference_batch_size: int = 8


@register
class DictAS(Method):
    name = "dictas"
    sigma_reference_size = 336  # σ is given at 336 px
    few_shot = True
    trainable = True
    Config = DictASConfig
    summary = "dictionary lookup of query patches in the k references, trained self-supervised (DictAS)"
    training_only = ("alignment.",)  # the TAC head: its width follows the layer count, inference never reads it
    train_defaults: ClassVar[dict[str, object]] = {
        "epochs": 30, "batch_size": 24, "lr": 1e-4, "betas": (0.5, 0.999), "scheduler": "plateau",
        "plateau_factor": 0.8, "plateau_patience": 2, "plateau_metric": "query", "split": "train",
        "normal_only": True,
    }

    def __init__(self, backbone: FeatureExtractor, config: DictASConfig) -> None:
        super().__init__(backbone, config)
        for size in config.scales:
            if size < 1 or size % 2 == 0:
                raise ConfigError(f"dictas: scales must be odd positive neighbourhood sizes, got {list(config.scales)}")
        if not config.scales:
            raise ConfigError("dictas: give at least one scale (e.g. scales=1,3)")
        for name, alpha in {"": config.score_alpha, **config.score_alpha_per_class}.items():
            if not 0 <= alpha <= 1:
                where = f"score_alpha_per_class[{name}]" if name else "score_alpha"
                raise ConfigError(f"dictas: {where} must be in [0, 1], got {alpha}")
        count = len(self.layers) if config.per_layer_generators else 1
        self.generators = nn.ModuleList(
            Generators(backbone.width, config.heads, config.query_generator, config.key_generator,
                       config.value_generator) for _ in range(count)
        )
        if config.query_feature == "value":  # a trainable Value generator could collapse onto its own target
            for generators in self.generators:
                if generators.value_block is not None:
                    generators.value_block.requires_grad_(False)
        self.alignment = None
        if backbone.text is not None and config.tac_weight > 0:
            self.alignment = TextAlignmentHead(backbone.width, len(self.layers), config.tac_hidden,
                                               backbone.text.embed_dim, config.tac_pooling)
        self._dictionary: list[list[tuple[Tensor, Tensor]]] = []
        self._anchors: Tensor | None = None
        self._alpha = config.score_alpha
        self._sources: AnomalySources | None = None

    # --- the model ------------------------------------------------------------------------------------
    @property
    def text(self) -> TextEncoder | None:
        """The backbone's CLIP text tower (frozen, not part of the method's checkpoint), or None."""
        return self.backbone.text

    def _generators(self, layer: int) -> Generators:
        return self.generators[layer if self.config.per_layer_generators else 0]

    def build_dictionary(self, tokens: list[Tensor], grid: tuple[int, int],
                         concatenate: bool) -> list[list[tuple[Tensor, Tensor]]]:
        """Keys and values per layer and scale from reference tokens ``L × [R, N, C]``: one dictionary of
        ``R·N`` entries (``concatenate``, inference) or one of ``N`` entries per reference (training)."""
        dictionary = []
        for layer, layer_tokens in enumerate(tokens):
            generators = self._generators(layer)
            entries = []
            for size in self.config.scales:
                pooled = neighbourhood_mean(layer_tokens, grid, size)
                if concatenate:
                    pooled = pooled.reshape(1, -1, pooled.shape[-1])
                entries.append((generators.key(pooled), generators.value(pooled)))
            dictionary.append(entries)
        return dictionary

    def retrieve(self, tokens: list[Tensor], grid: tuple[int, int],
                 dictionary: list[list[tuple[Tensor, Tensor]]]) -> list[list[tuple[Tensor, Tensor]]]:
        """``(query feature, retrieved result)`` per layer and scale, each ``[B, N, C]``."""
        results = []
        for layer, layer_tokens in enumerate(tokens):
            generators = self._generators(layer)
            if self.config.query_feature == "value":
                layer_tokens = generators.value(layer_tokens)
            pairs = []
            for size, (keys, values) in zip(self.config.scales, dictionary[layer], strict=True):
                features = neighbourhood_mean(layer_tokens, grid, size)
                pairs.append((features, lookup(generators.query(features), keys, values, self.config.lookup)))
            results.append(pairs)
        return results

    # --- training -------------------------------------------------------------------------------------
    def training_loss(self, batch: Batch, features: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        config = self.config
        images = batch.images
        b = images.shape[0]
        generator = batch_generator()
        references = reference_views(images, config.reference_augment_prob, generator)
        sources = self._anomaly_sources(b, images, generator)
        queries, masks, labels = synthesize_batch(images, generator, config.synthesis_prob, sources, None,
                                                  config.beta_max, *config.perlin_scale_exponents)
        with torch.no_grad():
            frozen = self.backbone(torch.cat([queries, references]), self.layers)
        grid = frozen.grid
        query_tokens = [t[:b] for t in frozen.patch_tokens]
        dictionary = self.build_dictionary([t[b:] for t in frozen.patch_tokens], grid, concatenate=False)
        results = self.retrieve(query_tokens, grid, dictionary)

        anomalous = self._patch_labels(masks, grid)  # [B, N]
        normal = (~anomalous).float()
        anomalous = anomalous.float()
        query_loss = images.new_zeros(())
        cqc_loss = images.new_zeros(())
        for pairs in results:
            for features, retrieved in pairs:
                distance = 1 - F.cosine_similarity(features, retrieved, dim=-1)  # [B, N]
                d_normal = (distance * normal).sum(1) / normal.sum(1).clamp_min(1)
                query_loss = query_loss + d_normal.mean()
                if config.cqc_weight > 0:
                    d_anomalous = (distance * anomalous).sum(1) / anomalous.sum(1).clamp_min(1)
                    hinge = (d_normal - d_anomalous).clamp_min(0) * (anomalous.sum(1) > 0)
                    cqc_loss = cqc_loss + hinge.sum() / (hinge > 0).sum().clamp_min(1)
        losses = {"query": query_loss}
        total = query_loss
        if config.cqc_weight > 0:
            losses["cqc"] = cqc_loss
            total = total + config.cqc_weight * cqc_loss
        if self.alignment is not None:
            losses["tac"] = self._text_alignment_loss(results, batch.categories, labels)
            total = total + config.tac_weight * losses["tac"]
        return {"loss": total, **losses}

    def _patch_labels(self, masks: Tensor, grid: tuple[int, int]) -> Tensor:
        """Boolean patch pseudo-labels ``[B, N]`` of pixel masks ``[B, H, W]`` (see ``patch_labels``)."""
        if self.config.patch_labels == "bilinear":
            resized = F.interpolate(masks.float().unsqueeze(1), size=grid, mode="bilinear", align_corners=True)
            return resized.flatten(1) > 0.5
        return mask_fractions(masks, grid) > 0.5

    def before_training(self, data) -> None:
        self._check_value_generator()

    def _check_value_generator(self) -> None:
        """``query_feature="value"`` reads queries through the (then frozen) Value generator: refuse it when
        that generator was never trained, instead of comparing random features."""
        if self.config.query_feature != "value" or not self.config.value_generator:
            return
        report = self.load_report
        if report is None or any(".value_block." in key for key in report.missing):
            raise ConfigError("dictas: query_feature=value freezes the Value generator and reads queries through it, "
                              "but this model's Value generator was never trained; train with query_feature=feature "
                              "first and start from that checkpoint (--checkpoint)")

    def _text_alignment_loss(self, results: list[list[tuple[Tensor, Tensor]]], categories: list[str],
                             labels: Tensor) -> Tensor:
        """CE(query embedding, pseudo-label) + CE(retrieved embedding, normal) against each image's anchors."""
        anchors = torch.stack([text_anchors(self.text, c) for c in categories])  # [B, 2, D]
        query_global = self.alignment([pairs[0][0] for pairs in results])
        retrieved_global = self.alignment([pairs[0][1] for pairs in results])
        return (F.cross_entropy(anchor_logits(query_global, anchors), labels)
                + F.cross_entropy(anchor_logits(retrieved_global, anchors), torch.zeros_like(labels)))

    def _anomaly_sources(self, count: int, images: Tensor, generator: torch.Generator) -> Tensor | None:
        """Textures from ``anomaly_source`` (loaded on first use, so evaluation never needs the folder)."""
        if self.config.anomaly_source is None:
            return None
        if self._sources is None:
            self._sources = AnomalySources(self.config.anomaly_source, images.shape[-1])
        return self._sources.sample(count, generator, images.device)

    # --- inference ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prepare(self, class_name: str, references: Tensor | None) -> None:
        if references is None or len(references) == 0:
            raise ConfigError("dictas is few-shot: it needs k >= 1 normal reference images")
        self._check_value_generator()
        references = self._with_rotations(class_name, references)
        tokens = reference_tokens(self.backbone, references, self.layers, self.config.reference_batch_size)
        grid = self.backbone.grid_for(*references.shape[-2:])
        k = references.shape[0]
        self._dictionary = self.build_dictionary([t.view(k, -1, t.shape[-1]) for t in tokens], grid,
                                                 concatenate=True)
        self._anchors = text_anchors(self.text, class_name) if self.text is not None else None
        per_class = {clean_class_name(k): v for k, v in self.config.score_alpha_per_class.items()}
        self._alpha = per_class.get(clean_class_name(class_name), self.config.score_alpha)

    def _with_rotations(self, class_name: str, references: Tensor) -> Tensor:
        """Each reference followed by its copies rotated by ``reference_rotations`` degrees, for the classes in
        ``rotate_references_for`` (all when empty): the code's remedy for parts lying at any angle (``screw``)."""
        config = self.config
        chosen = {clean_class_name(c) for c in config.rotate_references_for}
        if not config.reference_rotations or (chosen and clean_class_name(class_name) not in chosen):
            return references
        copies = [rotate(references, angle) for angle in config.reference_rotations]
        return torch.stack([references, *copies], 1).flatten(0, 1)

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Prediction:
        if not self._dictionary:
            raise RuntimeError("DictAS.prepare must be called with the category's references first")
        features = self.backbone(images, self.layers)
        results = self.retrieve(features.patch_tokens, features.grid, self._dictionary)
        b, (h, w) = images.shape[0], features.grid
        distances = torch.stack([(1 - F.cosine_similarity(f, r, dim=-1)) / 2 for pairs in results for f, r in pairs], 1)
        size = images.shape[-2:]
        # Bilinear upsampling is linear: averaging on the patch grid first gives the same map for 1/L·S of the work.
        anomaly_map = self.smooth(self.upsample(distances.view(b, -1, h, w).mean(1), size), self.config.sigma)
        map_score = anomaly_map.flatten(1).amax(1)
        text_score = self._text_score(features.global_embedding)
        parts = {"map": map_score} if text_score is None else {"map": map_score, "text": text_score}
        return Prediction(anomaly_map, self._fuse(parts), score_parts=parts)

    def _text_score(self, embedding: Tensor) -> Tensor | None:
        """Anomalous probability of the frozen CLIP image embedding against the class's text anchors."""
        if self._anchors is None:
            return None
        return anomalous_probability(embedding.float(), self._anchors)

    def _fuse(self, parts: dict[str, Tensor]) -> Tensor:
        if "text" not in parts:
            return parts["map"]
        return self._alpha * parts["text"] + (1 - self._alpha) * parts["map"]

    def category_scores(self, scores: Tensor, parts: dict[str, Tensor]) -> Tensor:
        """With ``score_normalization="test_minmax"`` (benchmark mode, transductive): each part min-max
        normalised over the category's whole test set before fusing, as the public code reports."""
        if self.config.score_normalization == "none":
            return scores
        return self._fuse({k: minmax(v) for k, v in parts.items()})


def rotate(images: Tensor, degrees: float) -> Tensor:
    """Images ``[B, 3, H, W]`` rotated counter-clockwise about their centre, bilinear, borders filled by
    reflection (the code rotates with albumentations' defaults: bilinear, reflect-101 borders)."""
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    h, w = images.shape[-2:]
    # grid_sample reads output pixel (x, y) from the input at R(-θ)·(x, y), in normalised coordinates;
    # the aspect factors keep the rotation rigid on non-square images.
    matrix = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=images.dtype,
                          device=images.device)
    grid = F.affine_grid(matrix.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
