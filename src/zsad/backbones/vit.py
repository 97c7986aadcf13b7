"""The transformer loop shared by every backbone, written over Hugging Face's own block modules.

Running the blocks ourselves (instead of calling the HF model's ``forward``) is what lets methods change
the vision tower without copying model code:

* **Adapters** — ``extractor.set_block_adapter(6, module)`` applies ``module(hidden) -> hidden`` to the
  whole residual stream ``[B, T, C]`` (class and register tokens included) after block 6 (1-indexed).
  Its output feeds block 7 and is what :class:`Features` reports for layer 6. The adapter is *not*
  registered as a submodule: the method owns, moves and checkpoints it. Nothing here runs under
  ``no_grad``, so gradients reach adapters; callers pick ``torch.inference_mode()`` when they predict.
* **Custom paths** — for changes inside a block (AnomalyCLIP's value-value attention), run the pieces::

      hidden = extractor.embed(images)                  # normalised, embedded, [B, T, C]
      for i in range(1, extractor.num_layers + 1):
          if i < first_custom_block:
              hidden = extractor.run_block(i, hidden, grid)   # block i plus its adapter, if any
          else:
              block = extractor.blocks[i - 1]                 # the HF layer module
              ...                                             # your own computation with its weights
      patches = hidden[:, extractor.num_prefix_tokens:]       # row-major on ``grid``

  ``grid`` is ``extractor.grid_for(height, width)`` (or ``Features.grid``); only DINOv3's RoPE needs it.
  Methods reach block internals only through the extractor's own methods (``value_value_attention``,
  ``final_norm``, ``project``), never through Hugging Face attribute names, which differ per family.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from zsad.backbones.base import FeatureExtractor, Features
from zsad.errors import ConfigError, DataError


class ViTExtractor(FeatureExtractor):
    """A frozen HF vision transformer run block by block. Subclasses provide the family's pieces."""

    def __init__(self, name: str, image_size: int, patch_size: int, width: int, num_layers: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.name = name
        self.image_size = image_size
        self.patch_size = patch_size
        self.width = width
        self.num_layers = num_layers
        self.mean = mean
        self.std = std
        # Buffers, so normalising never copies constants from the host on every call.
        self.register_buffer("_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._adapters: dict[int, nn.Module] = {}  # a plain dict: adapters belong to the method

    # --- what each family provides, besides ``blocks`` and ``num_prefix_tokens`` ------------------------
    def _embed(self, pixels: Tensor) -> Tensor:
        """Normalised pixels ``[B, 3, H, W]`` to the input of block 1, ``[B, T, C]``."""
        raise NotImplementedError

    def _block_kwargs(self, grid: tuple[int, int], hidden: Tensor) -> dict[str, Any]:
        """Extra keyword arguments every block call needs (attention mask, rotary embeddings)."""
        raise NotImplementedError

    def _global_embedding(self, cls_token: Tensor) -> Tensor:
        """The model's image embedding from the class token after the last block."""
        raise NotImplementedError

    # --- the loop -------------------------------------------------------------------------------------
    def forward(self, images: Tensor, layers: tuple[int, ...] | list[int] | None = None) -> Features:
        """Residual-stream tokens after each block in ``layers`` (default: :attr:`default_layers`)."""
        layers = self._check_layers(self.default_layers if layers is None else layers)
        grid = self._check_images(images)
        hidden = self._embed(self.normalize(images))
        kwargs = self._block_kwargs(grid, hidden)
        taken: dict[int, Tensor] = {}
        for i in range(1, self.num_layers + 1):
            hidden = self._run(i, hidden, kwargs)
            if i in layers:
                taken[i] = hidden
        p = self.num_prefix_tokens
        return Features(
            layers=layers,
            patch_tokens=[taken[i][:, p:] for i in layers],
            cls_tokens=[taken[i][:, 0] for i in layers],
            global_embedding=self._global_embedding(hidden[:, 0]),
            grid=grid,
        )

    def embed(self, images: Tensor) -> Tensor:
        """Images in [0, 1] to the input of block 1 ``[B, T, C]`` (prefix tokens first)."""
        self._check_images(images)
        return self._embed(self.normalize(images))

    def run_block(self, block: int, hidden: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Block ``block`` (1-indexed) and its adapter. ``grid`` defaults to the square the tokens fill."""
        self._check_layers((block,))
        return self._run(block, hidden, self._block_kwargs(grid or self._square_grid(hidden), hidden))

    def set_block_adapter(self, block: int, adapter: nn.Module | None) -> None:
        """Apply ``adapter`` to the residual stream after ``block`` (1-indexed); None removes it."""
        self._check_layers((block,))
        if adapter is None:
            self._adapters.pop(block, None)
        else:
            self._adapters[block] = adapter

    def _run(self, block: int, hidden: Tensor, kwargs: dict[str, Any]) -> Tensor:
        hidden = self.blocks[block - 1](hidden, **kwargs)
        adapter = self._adapters.get(block)
        return hidden if adapter is None else adapter(hidden)

    # --- frozen and normalised ------------------------------------------------------------------------
    def train(self, mode: bool = True) -> ViTExtractor:
        """Always eval: a parent method's ``.train()`` must not switch on dropout or RoPE jitter here."""
        return super().train(False)

    def normalize(self, images: Tensor) -> Tensor:
        return (images - self._mean.to(images.dtype)) / self._std.to(images.dtype)

    # --- checks ---------------------------------------------------------------------------------------
    def _check_layers(self, layers: tuple[int, ...] | list[int]) -> tuple[int, ...]:
        layers = tuple(int(i) for i in layers)
        bad = [i for i in layers if not 1 <= i <= self.num_layers]
        if bad or not layers:
            raise ConfigError(f"{self.name} has blocks 1..{self.num_layers}; cannot take layers {list(layers)}")
        return layers

    def _check_images(self, images: Tensor) -> tuple[int, int]:
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise DataError(f"{self.name} expects float images [B, 3, H, W]; got {images.dtype} "
                            f"{list(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise DataError(f"{self.name} needs image sides that are multiples of its patch size "
                            f"{self.patch_size}; got {height}x{width}")
        return height // self.patch_size, width // self.patch_size

    def _square_grid(self, hidden: Tensor) -> tuple[int, int]:
        patches = hidden.shape[1] - self.num_prefix_tokens
        side = math.isqrt(patches)
        if side * side != patches:
            raise DataError(f"{patches} patch tokens do not fill a square grid; pass grid=(h, w) to run_block")
        return side, side
