"""WinCLIP (Jeong et al., CVPR 2023): CLIP scores on sliding windows, zero-shot and with k normal shots.

Training-free and without official code; where the paper leaves a detail open we follow anomalib's
re-implementation (``models/image/winclip``) and say so below.

**Windows.** A window is a ``s × s`` block of patches at stride 1 (``s`` in ``window_sizes``, 2 and 3).
Its embedding is what CLIP's image encoder returns when it sees only the class token and that window's
patch tokens, each keeping its own position embedding: a *masked forward*, read out as the projected
class token. The tokens are gathered right after the embedding layer, so all windows of all images run
through the transformer as short sequences in one batched pass, chunked by ``windows_per_pass``.

**Zero-shot (WinCLIP).** The whole image and every window get an anomalous probability
``softmax(logit_scale · cos(e, [t_normal, t_anomalous]))[1]`` against the WinCLIP text ensemble for the
class name (its states in CLIP's 35 templates by default, as APRIL-GAN's code; ``prompts="paper"`` uses
the 22 inspection templates of the WinCLIP paper's supplement). For each window size, a patch's score is
the harmonic mean over the windows covering it; the patch map is then the harmonic mean of those per-size
maps and the whole-image probability (anomalib's two-stage order, which weighs every scale equally
however many windows cover a patch). The harmonic mean is dominated by the smallest value, so a patch is
anomalous only if every view of it agrees. The image score is the whole-image probability.

**Few-shot (WinCLIP+).** The memory holds the k references' patch tokens from the last block, projected
into the joint space (anomalib compares them after ``post_layernorm`` but before the projection; we
project so that all memories live in one space), and their window embeddings per window size. A query
patch or window scores ``(1 − max cos)/2`` against the memory of its scale; window scores are spread to
patches by the same harmonic mean; the patch map and the per-size maps are averaged. The anomaly map is
``(zero-shot + few-shot)/2`` and the image score ``(zero-shot score + max of the few-shot map)/2``, both
on the patch grid before bilinear upsampling to the input size; nothing is smoothed, as in anomalib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from zsad.backbones.base import FeatureExtractor
from zsad.errors import ConfigError
from zsad.methods.base import Method, MethodConfig, Prediction, register
from zsad.methods.components.losses import anomalous_probability
from zsad.methods.components.maps import harmonic_mean, min_cosine_distance
from zsad.methods.components.prompts import WINCLIP, WINCLIP_PAPER, text_anchors


@dataclass
class WinClipConfig(MethodConfig):
    """WinCLIP runs a ViT-B/16 at 240 px (15 × 15 patches); only the last block's output is used."""

    backbone: str = "clip-vit-b16"
    image_size: int = 240
    window_sizes: tuple[int, ...] = (2, 3)  # window sides in patches, stride 1
    logit_scale: float = 100.0  # CLIP's learned scale (METHODS.md §2); anomalib uses 1 / 0.07
    prompts: Literal["clip", "paper"] = "clip"  # CLIP's 35 templates (as APRIL-GAN) or WinCLIP's own 22
    windows_per_pass: int = 2048  # windows run through the transformer at once: bounds activation memory
    chunk_size: int = 4096  # memory rows compared at once in the nearest-neighbour search
    reference_batch_size: int = 8


@dataclass
class Embeddings:
    """Joint-space embeddings of a batch: whole image ``[B, D]``, patches ``[B, N, D]``, windows per size
    ``[B, W_s, D]``."""

    image: Tensor
    patches: Tensor
    windows: list[Tensor]


def sliding_windows(grid: tuple[int, int], size: int, device: torch.device | None = None) -> Tensor:
    """Row-major patch indices of every ``size × size`` window at stride 1, ``[W, size²]`` with
    ``W = (h − size + 1)(w − size + 1)``; windows in row-major order of their top-left corner."""
    h, w = grid
    if not 1 <= size <= min(h, w):
        raise ConfigError(f"a {size}x{size} window does not fit a {h}x{w} patch grid")
    corners = (torch.arange(h - size + 1, device=device)[:, None] * w + torch.arange(w - size + 1, device=device))
    offsets = torch.arange(size, device=device)[:, None] * w + torch.arange(size, device=device)
    return corners.reshape(-1, 1) + offsets.reshape(1, -1)


def harmonic_aggregation(window_scores: Tensor, windows: Tensor, num_patches: int, eps: float = 1e-8) -> Tensor:
    """Per patch, the harmonic mean of the scores ``[B, W]`` of the windows covering it: ``[B, N]``."""
    inverse = window_scores.float().clamp_min(eps).reciprocal().repeat_interleave(windows.shape[1], dim=1)
    index = windows.reshape(1, -1).expand(window_scores.shape[0], -1)
    totals = inverse.new_zeros(window_scores.shape[0], num_patches).scatter_add_(1, index, inverse)
    counts = torch.zeros(num_patches, device=windows.device).scatter_add_(
        0, windows.reshape(-1), torch.ones(windows.numel(), device=windows.device))  # bincount, exportable
    return counts / totals


@register
class WinClip(Method):
    name = "winclip"
    zero_shot = True
    few_shot = True
    Config = WinClipConfig
    needs_text = True
    summary = "CLIP text scores on 2x2/3x3 patch windows, harmonic aggregation; + reference memory (WinCLIP+)"

    def __init__(self, backbone: FeatureExtractor, config: WinClipConfig) -> None:
        super().__init__(backbone, config)
        self.anchors: Tensor | None = None
        self.patch_memory: Tensor | None = None  # [k * N, D]
        self.window_memory: list[Tensor] = []  # per window size, [k * W_s, D]

    def prepare(self, class_name: str, references: Tensor | None) -> None:
        """Text anchors for the class; for k > 0, the memory of reference patches and windows."""
        prompt_set = WINCLIP_PAPER if self.config.prompts == "paper" else WINCLIP
        self.anchors = text_anchors(self.backbone.text, class_name, prompt_set)
        self.patch_memory, self.window_memory = None, []
        if references is None or len(references) == 0:
            return
        batches = [self.encode(part) for part in references.split(self.config.reference_batch_size)]
        self.patch_memory = torch.cat([e.patches.flatten(0, 1) for e in batches])
        self.window_memory = [torch.cat([e.windows[i].flatten(0, 1) for e in batches])
                              for i in range(len(self.config.window_sizes))]

    def predict(self, images: Tensor) -> Prediction:
        if self.anchors is None:
            raise RuntimeError("call prepare(class_name, references) before predict")
        grid = self.patch_grid(images)
        embeddings = self.encode(images)
        image_score = self.anomalous_probability(embeddings.image)
        anomaly = self.zero_shot_map(embeddings, image_score, grid)
        if self.patch_memory is not None:
            few_shot = self.few_shot_map(embeddings, grid)
            anomaly = (anomaly + few_shot) / 2
            image_score = (image_score + few_shot.amax(1)) / 2
        anomaly_map = self.upsample(anomaly.view(-1, *grid), images.shape[-2:])
        return Prediction(anomaly_map, image_score)

    # --- embeddings ---------------------------------------------------------------------------------
    def patch_grid(self, images: Tensor) -> tuple[int, int]:
        return self.backbone.grid_for(*images.shape[-2:])

    def encode(self, images: Tensor) -> Embeddings:
        """One embedding pass: the full sequence for image and patch embeddings, then every window."""
        grid = self.patch_grid(images)
        hidden = self.backbone.embed(images)
        full = self.run_tower(hidden, grid)
        prefix = self.backbone.num_prefix_tokens
        windows = [self.window_embeddings(hidden, sliding_windows(grid, size, hidden.device))
                   for size in self.config.window_sizes]
        return Embeddings(self.backbone.project(full[:, 0]), self.backbone.project(full[:, prefix:]), windows)

    def window_embeddings(self, hidden: Tensor, windows: Tensor) -> Tensor:
        """The masked forward: class token plus one window's patch tokens, for every window of every image.

        ``hidden`` is the input of block 1 ``[B, T, C]``; ``windows`` holds patch indices ``[W, s²]``.
        Returns projected class tokens ``[B, W, D]``.
        """
        prefix = self.backbone.num_prefix_tokens
        kept = torch.cat([torch.arange(prefix, device=hidden.device).expand(len(windows), -1), windows + prefix], 1)
        side = math.isqrt(windows.shape[1])
        sequences = hidden[:, kept].flatten(0, 1)  # [B * W, prefix + s², C]
        # An exported graph has a free batch axis, so it cannot cut B·W sequences into fixed chunks: one pass.
        chunks = [sequences] if torch.onnx.is_in_onnx_export() else sequences.split(self.config.windows_per_pass)
        outputs = [self.backbone.project(self.run_tower(chunk, (side, side))[:, 0]) for chunk in chunks]
        return torch.cat(outputs).view(hidden.shape[0], len(windows), -1)

    def run_tower(self, hidden: Tensor, grid: tuple[int, int]) -> Tensor:
        for block in range(1, self.backbone.num_layers + 1):
            hidden = self.backbone.run_block(block, hidden, grid)
        return hidden

    # --- scores -------------------------------------------------------------------------------------
    def anomalous_probability(self, embeddings: Tensor) -> Tensor:
        """Probability of the anomalous text anchor against the normal one, ``[...]`` for ``[..., D]``."""
        return anomalous_probability(embeddings.float(), self.anchors, self.config.logit_scale)

    def zero_shot_map(self, embeddings: Embeddings, image_score: Tensor, grid: tuple[int, int]) -> Tensor:
        """Harmonic mean over window sizes (and the whole image) of per-size harmonic window maps, ``[B, N]``."""
        num_patches = grid[0] * grid[1]
        per_scale = [image_score[:, None].expand(-1, num_patches)]
        for size, windows in zip(self.config.window_sizes, embeddings.windows):
            scores = self.anomalous_probability(windows)
            per_scale.append(harmonic_aggregation(scores, sliding_windows(grid, size, scores.device), num_patches))
        return harmonic_mean(torch.stack(per_scale), dim=0)

    def few_shot_map(self, embeddings: Embeddings, grid: tuple[int, int]) -> Tensor:
        """Mean over the patch scale and each window size of ``(1 − max cos)/2`` to the memory, ``[B, N]``."""
        num_patches = grid[0] * grid[1]
        per_scale = [self.association(embeddings.patches, self.patch_memory)]
        for size, windows, memory in zip(self.config.window_sizes, embeddings.windows, self.window_memory):
            per_scale.append(harmonic_aggregation(self.association(windows, memory),
                                                  sliding_windows(grid, size, windows.device), num_patches))
        return torch.stack(per_scale).mean(0)

    def association(self, queries: Tensor, memory: Tensor) -> Tensor:
        """``(1 − max cos)/2`` of each query ``[B, M, D]`` to the memory rows, ``[B, M]``."""
        return min_cosine_distance(queries.flatten(0, 1), memory, self.config.chunk_size).view(queries.shape[:2]) / 2
