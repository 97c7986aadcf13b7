"""The PyTorch side of prediction: a method applied to decoded images of any size, resized or tiled.

:class:`MethodScorer` is the :class:`~zsad.inference.calibration.Scorer` of a method; :func:`predict_images` runs
it over a folder with :func:`zsad.inference.folder.predict_folder` (outputs and thresholds: see there).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zsad.inference.calibration import Scorer
from zsad.methods.base import Method
from zsad.methods.components.maps import upsample
from zsad.inference.overlay import resize_image
from zsad.inference.folder import PredictConfig, PredictSummary, predict_folder
from zsad.core.runtime import autocast
from zsad.inference.tiling import Tiling, predict_tiled, tiles


def to_batch(images: list[np.ndarray], size: int, device: torch.device) -> Tensor:
    """``[B, 3, size, size]`` in [0, 1], resized as the evaluation loader resizes."""
    stacked = np.stack([resize_image(image, (size, size)) for image in images])
    return torch.from_numpy(stacked).to(device).permute(0, 3, 1, 2).float().div_(255)


class MethodScorer:
    """A method applied to decoded images of any size (the :class:`~zsad.inference.calibration.Scorer` of
    the PyTorch path): each image resized to the method's input size, or tiled, and its map brought
    back to the image's own size."""

    def __init__(self, method: Method, tiling: Tiling | None = None, batch_size: int = 8,
                 precision: str = "fp32") -> None:
        self.method, self.tiling, self.batch_size, self.precision = method, tiling, batch_size, precision
        self.few_shot, self.zero_shot = method.few_shot, method.zero_shot

    @property
    def size(self) -> int:
        return self.method.config.image_size

    @torch.inference_mode()
    def prepare(self, class_name: str, references: list[np.ndarray] | None) -> None:
        """Per-product state; with tiling, the references' tiles form the memory."""
        refs = None
        if references:
            pieces = [t for image in references for _, t in tiles(image, self.tiling)] if self.tiling else references
            refs = to_batch(pieces, self.size, self.method.device)
        with autocast(self.method.device, self.precision):
            self.method.prepare(class_name, refs)

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
        """``(score, float32 map at the image's own size)`` per image."""
        if self.tiling is not None:
            return [predict_tiled(image, self.tiling, self._at_own_size, self.batch_size) for image in images]
        results = []
        for start in range(0, len(images), self.batch_size):
            maps, scores = self._at_own_size(images[start : start + self.batch_size])
            results += [(float(score), anomaly_map) for score, anomaly_map in zip(scores, maps)]
        return results

    def _at_own_size(self, pieces: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """One model call on images (or tiles) resized to the input size; maps resized back to each one's size."""
        with autocast(self.method.device, self.precision):
            prediction = self.method.predict(to_batch(pieces, self.size, self.method.device))
        maps = [upsample(anomaly_map[None].float(), piece.shape[:2])[0].cpu().numpy()
                for piece, anomaly_map in zip(pieces, prediction.anomaly_map)]
        return maps, prediction.score.float().cpu().numpy()


def predict_images(method: Method | Scorer, target: Path, out: Path, references: Path | None = None,
                   config: PredictConfig | None = None,
                   progress: Callable[[int], None] | None = None) -> PredictSummary:
    """Predict every readable file under ``target`` into ``out`` with a method (resized or tiled per
    ``config.tiling``) or any other scorer; see :func:`zsad.inference.folder.predict_folder`."""
    config = config or PredictConfig()
    scorer = MethodScorer(method, config.tiling, config.batch_size, config.precision) \
        if isinstance(method, Method) else method
    return predict_folder(scorer, target, out, references, config, progress, getattr(method, "name", ""))
