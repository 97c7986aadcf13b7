"""Test doubles shared by the test suite: a backbone that is no network and a method whose maps can be
computed by hand, so engine, prediction and report tests check exact numbers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zsad.methods.base import Method, MethodConfig, Prediction


class NoBackbone(nn.Module):
    """Stands in for a frozen backbone where a method never calls one: it only carries a device."""

    default_layers = (1,)

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))


class ColourDistance(Method):
    """Pixel score: L1 distance of the pixel's colour from the references' mean colour (mid-grey without
    references); image score: the map's maximum. Known behaviour, easy to compute by hand."""

    name = "colour-distance"
    zero_shot = True
    few_shot = True

    def prepare(self, class_name: str, references: Tensor | None) -> None:
        self.mean = references.mean((0, 2, 3)) if references is not None else torch.full((3,), 0.5)
        self.seen_references = None if references is None else references.clone()

    def predict(self, images: Tensor) -> Prediction:
        anomaly_map = (images - self.mean.view(1, 3, 1, 1)).abs().sum(1)
        return Prediction(anomaly_map, anomaly_map.flatten(1).amax(1))


def colour_distance(image_size: int = 64) -> ColourDistance:
    return ColourDistance(NoBackbone(), MethodConfig(image_size=image_size))
