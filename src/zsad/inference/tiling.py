"""Tiling: high-resolution images cut into overlapping tiles at the method's input size, and the tiles'
anomaly maps stitched back with smooth blending.

A line camera's 4000 × 3000 image shrunk to 336 px erases a 20 px scratch; cut into 336 px tiles, every
tile is seen at its native resolution. Tiles of side ``tile`` (source pixels) start every
``stride = round(tile · (1 − overlap))`` pixels along each axis, and the last tile of a row or column
is moved back so that it ends on the image border (every pixel is covered, no tile leaves the image).
Images smaller than a tile are one tile of their own size.

**Blending.** Each tile's map is weighted by a window that is 1 in the tile's interior and falls
linearly (never to zero) over the overlap margin at each side shared with a neighbour; the stitched map
is ``Σ w · map / Σ w``. Where one tile ends its neighbour has taken over, so the stitched map has no
steps at tile borders. Sides on the image border keep full weight.

**Image score.** The maximum of the tile scores (``aggregate="max"``, default: a defect in any tile
makes the image anomalous), or their mean (``"mean"``).

This module is numpy only, so the torch-free runtime (:mod:`zsad.deploy`) tiles the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from zsad.errors import ConfigError

Aggregate = Literal["max", "mean"]
MIN_WEIGHT = 1e-3  # the window's value at a tile's very edge: small, never zero


@dataclass(frozen=True)
class Tiling:
    """``tile``: tile side in source pixels; ``overlap``: fraction of a tile shared with its neighbour."""

    tile: int
    overlap: float = 0.25
    aggregate: Aggregate = "max"

    def __post_init__(self) -> None:
        if self.tile < 1:
            raise ConfigError(f"tile size must be a positive number of pixels, got {self.tile}")
        if not 0 <= self.overlap < 0.9:
            raise ConfigError(f"tile overlap must be in [0, 0.9), got {self.overlap}")
        if self.aggregate not in ("max", "mean"):
            raise ConfigError(f"tile score aggregate must be max or mean, got {self.aggregate!r}")

    def origins(self, length: int) -> list[int]:
        """Start offsets of the tiles along an axis of ``length`` pixels."""
        tile = min(self.tile, length)
        stride = max(1, round(tile * (1 - self.overlap)))
        starts = list(range(0, length - tile + 1, stride))
        if starts[-1] != length - tile:
            starts.append(length - tile)
        return starts

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """``(top, left, tile height, tile width)`` of every tile of an image, row-major."""
        th, tw = min(self.tile, height), min(self.tile, width)
        return [(y, x, th, tw) for y in self.origins(height) for x in self.origins(width)]

    def aggregate_scores(self, scores: np.ndarray) -> float:
        return float(scores.max() if self.aggregate == "max" else scores.mean())


def parse_tile(text: str | int | None, input_size: int, patch_size: int) -> int | None:
    """``--tile``: None (no tiling), ``auto`` (the method's input size: tiles seen at native resolution)
    or a side in source pixels, which must hold at least one backbone patch."""
    if text is None:
        return None
    if text == "auto":
        return input_size
    try:
        tile = int(text)
    except ValueError:
        raise ConfigError(f"--tile must be a number of pixels or auto, got {text!r}") from None
    if tile < patch_size:
        raise ConfigError(f"--tile {tile} is smaller than the backbone's patch size {patch_size}")
    return tile


def check_image_size(height: int, width: int, max_pixels: int, source: str) -> None:
    """One-line errors for images too small to mean anything or larger than the configured limit."""
    if height < 2 or width < 2:
        raise ConfigError(f"image {source} is {width}x{height} pixels: too small to inspect")
    if height * width > max_pixels:
        raise ConfigError(f"image {source} is {width}x{height} ({height * width / 1e6:.3g} MP), over the limit "
                          f"of {max_pixels / 1e6:.3g} MP (raise it with --max-pixels)")


def _ramp(length: int, fade_start: bool, fade_end: bool, margin: int) -> np.ndarray:
    weights = np.ones(length, dtype=np.float32)
    if margin <= 0:
        return weights
    ramp = np.linspace(MIN_WEIGHT, 1.0, margin, dtype=np.float32)
    if fade_start:
        weights[:margin] = np.minimum(weights[:margin], ramp)
    if fade_end:
        weights[-margin:] = np.minimum(weights[-margin:], ramp[::-1])
    return weights


class Stitcher:
    """Accumulates tile maps into one ``[H, W]`` float32 map with the blending window described above.

    Memory: two float32 planes of the image's size, whatever the number of tiles.
    """

    def __init__(self, height: int, width: int, tiling: Tiling) -> None:
        self.height, self.width, self.tiling = height, width, tiling
        self.total = np.zeros((height, width), dtype=np.float32)
        self.weight = np.zeros((height, width), dtype=np.float32)

    def window(self, top: int, left: int, th: int, tw: int) -> np.ndarray:
        margin_y = int(round(th * self.tiling.overlap))
        margin_x = int(round(tw * self.tiling.overlap))
        rows = _ramp(th, top > 0, top + th < self.height, margin_y)
        cols = _ramp(tw, left > 0, left + tw < self.width, margin_x)
        return rows[:, None] * cols[None, :]

    def add(self, box: tuple[int, int, int, int], tile_map: np.ndarray) -> None:
        top, left, th, tw = box
        window = self.window(top, left, th, tw)
        self.total[top : top + th, left : left + tw] += window * tile_map
        self.weight[top : top + th, left : left + tw] += window

    def result(self) -> np.ndarray:
        np.divide(self.total, self.weight, out=self.total)
        return self.total


def predict_tiled(image: np.ndarray, tiling: Tiling, run: Callable[[list[np.ndarray]], tuple[list, np.ndarray]],
                  batch_size: int) -> tuple[float, np.ndarray]:
    """``(image score, stitched map)`` of an ``[H, W, 3]`` image: its tiles go through ``run`` in batches of
    ``batch_size`` (``run(pieces)`` returns each piece's map at the piece's own size, and their scores), so
    memory stays bounded by the stitching planes and one batch, however large the image."""
    stitcher = Stitcher(*image.shape[:2], tiling)
    pending = list(tiles(image, tiling))
    scores = []
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        maps, chunk_scores = run([pixels for _, pixels in chunk])
        scores.append(np.asarray(chunk_scores))
        for (box, _), anomaly_map in zip(chunk, maps):
            stitcher.add(box, anomaly_map)
    return tiling.aggregate_scores(np.concatenate(scores)), stitcher.result()


def tiles(image: np.ndarray, tiling: Tiling) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
    """``(box, pixels)`` of every tile of an ``[H, W, 3]`` image (views, no copies)."""
    for box in tiling.boxes(*image.shape[:2]):
        top, left, th, tw = box
        yield box, image[top : top + th, left : left + tw]
