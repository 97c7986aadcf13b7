"""A method as the :class:`~zsad.inference.scoring.Model` of the inspection loop (the PyTorch path).

:class:`MethodModel` resizes each piece (an image or a tile) to the method's input size exactly as the
evaluation loader does, runs the method under the run's precision, and brings each map back to its
piece's own size; batching, tiling, decisions and regions are the loop's (:mod:`zsad.inference.scoring`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zsad.core.runtime import autocast
from zsad.inference.folder import PredictConfig, PredictSummary, predict_folder
from zsad.inference.overlay import resize_image
from zsad.inference.scoring import REFERENCE_CHUNK, ModelOutput, Scorer
from zsad.inference.tiling import Tiling
from zsad.methods.base import Method
from zsad.methods.components.coreset import BLOCK
from zsad.methods.components.maps import upsample
from zsad.methods.components.memory import PatchMemory


def to_batch(images: list[np.ndarray], size: int, device: torch.device) -> Tensor:
    """``[B, 3, size, size]`` in [0, 1], resized as the evaluation loader resizes."""
    stacked = np.stack([resize_image(image, (size, size)) for image in images])
    return torch.from_numpy(stacked).to(device).permute(0, 3, 1, 2).float().div_(255)


class MethodModel:
    """A method applied to pieces of any size; see the module docstring."""

    def __init__(self, method: Method, precision: str = "fp32") -> None:
        self.method, self.precision = method, precision
        self.few_shot, self.zero_shot = method.few_shot, method.zero_shot

    @property
    def size(self) -> int:
        return self.method.config.image_size

    @torch.inference_mode()
    def prepare(self, class_name: str, references: list[np.ndarray] | None,
                progress: Callable[[int], None] | None = None) -> None:
        """References reach the method :data:`REFERENCE_CHUNK` at a time as float tensors: thousands of tiles
        are never one tensor (a patch memory keeps only their tokens)."""
        with autocast(self.method.device, self.precision):
            if not references:
                self.method.prepare(class_name, None)
                return
            self.method.prepare_in_batches(class_name, self._batches(references, progress), len(references))

    @property
    def composes(self) -> bool:
        return self.method.composes_references

    @torch.inference_mode()
    def prepare_parts(self, groups: list[list[np.ndarray]], progress: Callable[[int], None] | None = None) -> list:
        """Each reference's part of the prepared state (``groups``: each reference's pieces), computed once."""
        total = sum(len(group) for group in groups)
        with autocast(self.method.device, self.precision):
            return [self.method.reference_part(self._batches(group, progress), len(group), len(group) / total)
                    for group in groups]

    @torch.inference_mode()
    def prepare_from_parts(self, class_name: str, parts: list) -> None:
        with autocast(self.method.device, self.precision):
            self.method.prepare_from_parts(class_name, parts)

    def state_bytes(self, references: int) -> int:
        """Bytes a patch memory holds at most while preparing on ``references`` pieces: the kept patches and,
        under a budget, one block awaiting reduction (0 for a method without a memory)."""
        memory = getattr(self.method, "memory", None)
        if not isinstance(memory, PatchMemory):
            return 0
        rows, cols = self.method.backbone.grid_for(self.size)
        patches = references * rows * cols
        held = min(patches, memory.budget + BLOCK) if memory.budget else patches
        layers = len(getattr(self.method, "few_shot_layers", self.method.layers))
        return 4 * held * layers * self.method.backbone.width

    def _batches(self, references: list[np.ndarray], progress: Callable[[int], None] | None) -> Iterator[Tensor]:
        for start in range(0, len(references), REFERENCE_CHUNK):
            if start and progress:  # the previous chunk is done once the method asks for the next
                progress(REFERENCE_CHUNK)
            yield to_batch(references[start : start + REFERENCE_CHUNK], self.size, self.method.device)
        if progress:
            progress(len(references) - REFERENCE_CHUNK * ((len(references) - 1) // REFERENCE_CHUNK))

    @torch.inference_mode()
    def run(self, pieces: list[np.ndarray]) -> ModelOutput:
        with autocast(self.method.device, self.precision):
            prediction = self.method.predict(to_batch(pieces, self.size, self.method.device))
        anomaly_maps = prediction.anomaly_map.float()
        if all(piece.shape[:2] == anomaly_maps.shape[-2:] for piece in pieces):  # one copy off the device
            maps = list(anomaly_maps.cpu().numpy())
        else:
            maps = [_at_size(anomaly_map, piece.shape[:2]) for piece, anomaly_map in zip(pieces, anomaly_maps)]
        return ModelOutput(maps, prediction.score.float().cpu().numpy(),
                           {name: part.float().cpu().numpy() for name, part in prediction.score_parts.items()})


def _at_size(anomaly_map: Tensor, size: tuple[int, int]) -> np.ndarray:
    """A map brought to a piece's own size (bilinear; one already at that size is left as it is)."""
    if tuple(anomaly_map.shape) != tuple(size):
        anomaly_map = upsample(anomaly_map[None], size)[0]
    return anomaly_map.cpu().numpy()


def method_scorer(method: Method, tiling: Tiling | None = None, batch_size: int = 8,
                  precision: str = "fp32") -> Scorer:
    """The inspection loop's scorer for ``method``: each image resized to its input size, or tiled."""
    return Scorer(MethodModel(method, precision), tiling, batch_size)


def predict_images(method: Method, target: Path, out: Path, references: Path | None = None,
                   config: PredictConfig | None = None, progress: Callable[[int], None] | None = None,
                   tiling: Tiling | None = None, precision: str = "fp32") -> PredictSummary:
    """Inspect every readable file under ``target`` into ``out`` with ``method`` (resized, or tiled per
    ``tiling``); see :func:`zsad.inference.folder.predict_folder`."""
    config = config or PredictConfig()
    scorer = method_scorer(method, tiling, config.batch_size, precision)
    return predict_folder(scorer, target, out, references, config, progress, method.name)
