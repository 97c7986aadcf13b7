"""DINOv2 and DINOv3 through Hugging Face ``transformers``.

DINOv2 interpolates its learned position embeddings to the input grid; DINOv3 applies RoPE to patch
tokens only, computed for the input grid, and carries register tokens that are dropped from the patch
tokens (they sit between the class token and the patches).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import Dinov2Model, DINOv3ViTModel

from zsad.backbones.vit import ViTExtractor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoExtractor(ViTExtractor):
    """A DINOv2 or DINOv3 vision transformer; ``global_embedding`` is the final-norm class token."""

    def __init__(self, name: str, model: Dinov2Model | DINOv3ViTModel, image_size: int) -> None:
        config = model.config
        super().__init__(name, image_size=image_size, patch_size=config.patch_size, width=config.hidden_size,
                         num_layers=config.num_hidden_layers, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.model = model
        self.embed_dim = config.hidden_size
        self.num_prefix_tokens = 1 + getattr(config, "num_register_tokens", 0)
        self._rotary = isinstance(model, DINOv3ViTModel)
        self.requires_grad_(False)
        self.eval()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.model.layer if self._rotary else self.model.encoder.layer

    def _embed(self, pixels: Tensor) -> Tensor:
        return self.model.embeddings(pixels)

    def _block_kwargs(self, grid: tuple[int, int], hidden: Tensor) -> dict[str, Any]:
        if not self._rotary:
            return {}
        # The RoPE module reads only the shape, device and dtype of its input (HF passes the pixels, in
        # the weights' dtype): a zero-stride stand-in of the input's size does.
        h, w = grid
        weight = self.model.embeddings.patch_embeddings.weight
        stand_in = weight.new_empty(()).expand(1, 1, h * self.patch_size, w * self.patch_size)
        return {"position_embeddings": self.model.rope_embeddings(stand_in)}

    def final_norm(self, tokens: Tensor) -> Tensor:
        norm = self.model.norm if self._rotary else self.model.layernorm
        return norm(tokens)

    def _global_embedding(self, cls_token: Tensor) -> Tensor:
        return self.final_norm(cls_token)
