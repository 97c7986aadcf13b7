"""The one loop from images to inspections, whoever computes the maps.

A :class:`Model` is what differs between paths: a method on the PyTorch path
(:class:`zsad.engine.scorer.MethodModel`) or an exported graph on ONNX Runtime / OpenVINO
(:class:`zsad.deploy.DeployedModel`). It maps a batch of *pieces* (whole images or tiles, any size) to
their anomaly maps at each piece's own size and their scores. Everything else is written once here:

* :class:`Scorer` — a model, resized or tiled (:mod:`zsad.inference.tiling`), in batches: images of any
  size → ``(score, map at the image's size)``; references tiled the same way when preparing;
* :class:`Inspector` — a scorer under a product's :class:`~zsad.inference.inspection.Thresholds`:
  images → :class:`~zsad.inference.inspection.Inspection` (decision and regions).

``zsad predict``, ``zsad eval``'s scoring, the deploy runtime and the service all run through these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from zsad.inference.inspection import Inspection, Thresholds, find_regions
from zsad.inference.tiling import Tiling, predict_tiled, tiles


@dataclass
class ModelOutput:
    """One model call: maps (float32, each at its piece's own size), scores ``[N]`` and optional per-piece
    score parts ``{name: [N]}`` (what a method's test-set normalisation reads)."""

    maps: list[np.ndarray]
    scores: np.ndarray
    parts: dict[str, np.ndarray] = field(default_factory=dict)


class Model(Protocol):
    """Computes maps and scores for pieces; prepared once per product."""

    few_shot: bool  # prepare() needs references
    zero_shot: bool  # prepare() works without references

    def prepare(self, class_name: str, references: list[np.ndarray] | None,
                progress: Callable[[int], None] | None = None) -> None: ...

    def run(self, pieces: list[np.ndarray]) -> ModelOutput: ...


# References a model is handed at a time as one array batch when it prepares (a multiple of every method's
# reference batch, so the batches a backbone sees do not change with it).
REFERENCE_CHUNK = 64


@dataclass
class Scored:
    """One image scored: its score, its map at its own size and, without tiling, its score parts."""

    score: float
    anomaly_map: np.ndarray
    parts: dict[str, float] = field(default_factory=dict)


class Scorer:
    """A :class:`Model` applied to decoded RGB ``uint8`` images ``[H, W, 3]`` of any size: each image in
    one piece, or cut into tiles whose maps are stitched back; at most ``batch_size`` pieces per call."""

    def __init__(self, model: Model, tiling: Tiling | None = None, batch_size: int = 8,
                 progress: Callable[[int], None] | None = None) -> None:
        self.model, self.tiling, self.batch_size = model, tiling, batch_size
        self.progress = progress  # told how many pieces (references, images or tiles) each step finished

    @property
    def few_shot(self) -> bool:
        return self.model.few_shot

    @property
    def zero_shot(self) -> bool:
        return self.model.zero_shot

    def prepare(self, class_name: str, references: list[np.ndarray] | None) -> None:
        """Per-product state; with tiling, every tile of every reference joins the memory."""
        if references and self.tiling is not None:
            references = [pixels for image in references for _, pixels in tiles(image, self.tiling)]
        self.model.prepare(class_name, references or None, self.progress)

    @property
    def composes(self) -> bool:
        """Whether leave-one-out calibration joins per-reference parts of the model's state (``prepare_parts``,
        ``prepare_from_parts``) instead of preparing it k times: for tiled references, each of which is many
        pieces. A few whole references cost little to prepare again, and are then batched exactly as before."""
        return self.tiling is not None and getattr(self.model, "composes", False)

    def prepare_parts(self, references: list[np.ndarray]) -> list:
        """Each reference's part of a composing model's state, every reference (or its tiles) run once."""
        groups = [[pixels for _, pixels in tiles(image, self.tiling)] if self.tiling is not None else [image]
                  for image in references]
        return self.model.prepare_parts(groups, self.progress)

    def prepare_from_parts(self, class_name: str, parts: list) -> None:
        self.model.prepare_from_parts(class_name, parts)

    def score(self, images: Sequence[np.ndarray]) -> list[Scored]:
        if self.tiling is not None:
            return [Scored(*predict_tiled(image, self.tiling, self._maps_and_scores, self.batch_size))
                    for image in images]
        scored = []
        for start in range(0, len(images), self.batch_size):
            output = self.model.run(list(images[start : start + self.batch_size]))
            if self.progress:
                self.progress(len(output.scores))
            scored += [Scored(float(score), anomaly_map, {k: float(v[i]) for k, v in output.parts.items()})
                       for i, (score, anomaly_map) in enumerate(zip(output.scores, output.maps))]
        return scored

    def _maps_and_scores(self, pieces: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        output = self.model.run(pieces)
        if self.progress:
            self.progress(len(pieces))
        return output.maps, output.scores


class Inspector:
    """A prepared :class:`Scorer` under one product's thresholds: images in, inspections out."""

    def __init__(self, scorer: Scorer, thresholds: Thresholds) -> None:
        self.scorer, self.thresholds = scorer, thresholds

    def inspect(self, images: Sequence[np.ndarray], sources: Sequence[str] | None = None) -> list[Inspection]:
        sources = list(sources) if sources is not None else [f"image {i}" for i in range(len(images))]
        return [self.judge(scored, source) for scored, source in zip(self.scorer.score(images), sources)]

    def judge(self, scored: Scored, source: str) -> Inspection:
        """Decision and regions of one scored image."""
        return Inspection(source, scored.score, self.thresholds.decide(scored.score), scored.anomaly_map,
                          find_regions(scored.anomaly_map, self.thresholds.pixel), self.thresholds)
