"""SPG decision attribution over a dataset: the loop that feeds test images to
:class:`~zsad.methods.spg.explain.DecisionAttribution` (the math lives with the method)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from zsad.data import AnomalyDataset, make_loader
from zsad.errors import ConfigError, DataError
from zsad.methods.base import Method
from zsad.methods.components.maps import mask_fractions
from zsad.methods.spg.explain import DecisionAttribution, Driver


@torch.inference_mode()
def category_drivers(method: Method, dataset: AnomalyDataset, categories: list[str], batch_size: int, top: int,
                     shared_fraction: float, progress: Callable[[int], None] | None = None) -> list[Driver]:
    """Per-category driving atoms of a trained SPG ``method`` over the test split of ``dataset`` (needs
    anomalous images with masks); ``progress`` is called with the number of images done."""
    unknown = sorted(set(categories) - set(dataset.categories()))
    if unknown:
        raise ConfigError(f"{dataset.root}: no categories {', '.join(unknown)}")
    attribution = DecisionAttribution(method.codes(averaged=True), method.sae.dictionary, method.config.temperature)
    for category in categories:
        for batch in make_loader(dataset.records(category, "test"), method.config.image_size, batch_size):
            images = batch.images.to(method.device)
            tokens = method.frozen_features(images)["tokens"]
            grid = method.backbone.grid_for(*images.shape[-2:])
            attribution.add(category, tokens, mask_fractions(batch.masks.to(method.device), grid))
            if progress:
                progress(len(batch))
    if not attribution.categories:
        raise DataError(f"{dataset.root}: no category has both anomalous (masked) and normal test pixels")
    return attribution.drivers(top, shared_fraction)
