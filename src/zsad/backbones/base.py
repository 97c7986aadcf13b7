"""The one interface through which methods see images (and, for CLIP, text).

A :class:`FeatureExtractor` wraps a frozen vision transformer. It owns preprocessing (inputs are images
in [0, 1]; it resizes nothing but normalises with its model's constants) and returns residual-stream
patch tokens of the requested blocks with class and register tokens removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class Features:
    """Frozen features of one batch.

    ``patch_tokens[i]`` / ``cls_tokens[i]`` belong to ``layers[i]`` (1-indexed transformer blocks):
    residual-stream tokens after that block, before any final norm, ``[B, N, C]`` with ``N = h * w``
    in row-major order, and ``[B, C]``. ``global_embedding`` is the model's image embedding: CLIP's
    projected image embedding ``[B, D]`` (post_layernorm + visual_projection of the CLS token); DINO's
    final-norm CLS token ``[B, C]``.
    """

    layers: tuple[int, ...]
    patch_tokens: list[Tensor]
    cls_tokens: list[Tensor]
    global_embedding: Tensor
    grid: tuple[int, int]
    extra: dict[str, Tensor] = field(default_factory=dict)


class TextEncoder(nn.Module):
    """CLIP text tower: sentences to joint-space embeddings, plus hooks for learnable prompts."""

    embed_dim: int  # D, the joint space
    width: int  # token embedding width of the text transformer
    context_length: int

    def tokenize(self, texts: list[str]) -> Tensor:
        """Token ids ``[T, context_length]`` (padded, with start/end tokens)."""
        raise NotImplementedError

    def encode(self, texts: list[str]) -> Tensor:
        """Projected, *unnormalised* sentence embeddings ``[T, D]``."""
        raise NotImplementedError

    def encode_tokens(self, token_ids: Tensor, token_embeddings: Tensor | None = None,
                      deep_prompts: list[Tensor] | None = None) -> Tensor:
        """Embeddings ``[T, D]`` from ids ``[T, L]``, optionally replacing the input embeddings with
        ``token_embeddings`` ``[T, L, width]`` (learnable context) and inserting ``deep_prompts``
        (per layer ``[n, width]``) as in AnomalyCLIP. The end-of-text position is taken from the ids."""
        raise NotImplementedError

    def eot_features(self, token_ids: Tensor, token_embeddings: Tensor | None = None,
                     deep_prompts: list[Tensor | None] | None = None) -> Tensor:
        """End-of-text tokens after the final LayerNorm, ``[T, width]``, before the projection (for
        methods that learn their own projection)."""
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        """Number of blocks of the text transformer (deep prompts enter blocks ``2 .. depth``)."""
        raise NotImplementedError

    @property
    def token_embedding(self) -> nn.Embedding:
        raise NotImplementedError


class FeatureExtractor(nn.Module):
    """A frozen vision transformer returning per-block patch tokens."""

    name: str
    image_size: int  # default input size in pixels
    patch_size: int
    width: int  # C, residual stream width
    num_layers: int
    embed_dim: int  # size of ``global_embedding`` (CLIP: D; DINO: C)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def forward(self, images: Tensor, layers: tuple[int, ...] | list[int]) -> Features:
        raise NotImplementedError

    @property
    def default_layers(self) -> tuple[int, ...]:
        """Four evenly spaced blocks (6/12/18/24 for a 24-block model)."""
        n = self.num_layers
        return tuple(sorted({max(1, -(-n * i // 4)) for i in range(1, 5)}))

    @property
    def text(self) -> TextEncoder | None:
        """The paired text tower (CLIP), or None for vision-only models (DINO)."""
        return None

    # Hooks for methods that change the vision tower (see zsad.backbones.vit for how to use them).
    num_prefix_tokens: int  # class token plus register tokens in front of the patch tokens

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer layer modules; block ``i`` (1-indexed) is ``blocks[i - 1]``."""
        raise NotImplementedError

    def embed(self, images: Tensor) -> Tensor:
        """Images in [0, 1] to the input of block 1, ``[B, T, C]`` with the prefix tokens first."""
        raise NotImplementedError

    def run_block(self, block: int, hidden: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Block ``block`` (1-indexed) and its adapter on the residual stream ``[B, T, C]``."""
        raise NotImplementedError

    def set_block_adapter(self, block: int, adapter: nn.Module | None) -> None:
        """Apply ``adapter`` to the residual stream after ``block``; None removes it."""
        raise NotImplementedError

    def final_norm(self, tokens: Tensor) -> Tensor:
        """The tower's last normalisation (CLIP's ``post_layernorm``, DINO's final norm) on ``[..., C]``."""
        raise NotImplementedError

    def project(self, tokens: Tensor, normalize: bool = True) -> Tensor:
        """CLIP only: tokens ``[..., C]`` into the joint space, ``visual_projection(final_norm(x))``, or
        the projection alone with ``normalize=False`` (AnomalyCLIP's global embedding)."""
        raise NotImplementedError(f"{self.name} has no joint image-text space")

    def value_value_attention(self, block: int, hidden: Tensor) -> Tensor:
        """Block ``block``'s self-attention with values as queries and keys (DPAM, AnomalyCLIP's v-v
        path), on the block's normalised input ``hidden`` ``[B, T, C]``; no residual, no feed-forward."""
        raise NotImplementedError(f"{self.name} has no value-value attention path")

    def grid_for(self, height: int, width: int | None = None) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of an image of ``height × width`` pixels (``width`` defaults to ``height``)."""
        return height // self.patch_size, (height if width is None else width) // self.patch_size

    def normalize(self, images: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std
