"""Decision thresholds from normal reference images alone, for deployments without labelled defects.

Each reference is scored the way a test image would be, but without seeing itself: a few-shot method
is prepared on the *other* references (leave-one-out, so k >= 2), a zero-shot-only method scores the
references directly. A :class:`ThresholdRule` then turns those normal scores into a threshold:

* image threshold, default ``max``: with k = 2..16 references no tail quantile can be estimated, and
  ``mean+3std`` would rest on a standard deviation of a handful of values. Leave-one-out scores are
  pessimistic (each reference meets a memory of k - 1 images, the test images one of k), so their
  maximum already carries a margin: every reference, judged as a new image, passes.
* pixel threshold, default ``q0.999``: all reference pixels give k·H·W normal values, enough for a high
  quantile; the maximum would be set by a single border pixel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from zsad.errors import ConfigError

_MEAN_STD = re.compile(r"mean\+(\d+(?:\.\d+)?)std")
_QUANTILE = re.compile(r"q(0(?:\.\d+)?|1(?:\.0*)?)")


@dataclass(frozen=True)
class ThresholdRule:
    """How a threshold is read off normal scores: ``max``, ``mean+Zstd`` (e.g. ``mean+3std``) or ``qP``
    (the P-quantile, ``0 <= P <= 1``, e.g. ``q0.999``)."""

    text: str

    def __post_init__(self) -> None:
        if not (self.text == "max" or _MEAN_STD.fullmatch(self.text) or _QUANTILE.fullmatch(self.text)):
            raise ConfigError(f"unknown threshold rule {self.text!r}; use max, mean+Zstd (e.g. mean+3std) "
                              f"or qP (e.g. q0.999)")

    def apply(self, values: np.ndarray) -> float:
        values = np.asarray(values, dtype=np.float64).ravel()
        if self.text == "max":
            return float(values.max())
        if match := _MEAN_STD.fullmatch(self.text):
            return float(values.mean() + float(match.group(1)) * values.std())
        return float(np.quantile(values, float(_QUANTILE.fullmatch(self.text).group(1))))

    def __str__(self) -> str:
        return self.text


IMAGE_RULE = ThresholdRule("max")
PIXEL_RULE = ThresholdRule("q0.999")


def parse_threshold(text: str | None, default_rule: ThresholdRule) -> float | ThresholdRule | None:
    """``None`` (no decision), a number, ``auto`` (``default_rule``) or ``auto:RULE``."""
    if text is None:
        return None
    if text == "auto":
        return default_rule
    if text.startswith("auto:"):
        return ThresholdRule(text.removeprefix("auto:"))
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"threshold must be a number, auto or auto:RULE, got {text!r}") from None


class Scorer(Protocol):
    """Anything that scores decoded images of any size: a prepared method (:class:`~zsad.engine.scorer.
    MethodScorer`), with or without tiling, or an exported model of the torch-free runtime."""

    few_shot: bool  # prepare() needs references
    zero_shot: bool  # prepare() works without references

    def prepare(self, class_name: str, references: list[np.ndarray] | None) -> None: ...

    def predict(self, images: list[np.ndarray]) -> list[tuple[float, np.ndarray]]: ...


def colour_range(normal_pixels: np.ndarray, pixel_threshold: float | None) -> tuple[float, float]:
    """A heatmap scale fixed for a product: the median normal pixel at the bottom, the pixel threshold
    (or the default pixel rule of the normal pixels) in the middle, so red means "above threshold"."""
    low = float(np.median(normal_pixels))
    middle = pixel_threshold if pixel_threshold is not None else PIXEL_RULE.apply(normal_pixels)
    return low, max(2 * middle - low, low + 1e-6)


MAX_PIXELS_PER_MAP = 1 << 18  # reference pixels kept per map for pixel quantiles (a fixed strided subset)


@dataclass
class ReferenceScores:
    """Scores ``[k]`` of the normal references, as if each were a new image, and a fixed strided subset
    of their maps' pixels (enough for the quantiles of pixel thresholds, bounded for large images)."""

    scores: np.ndarray
    pixels: np.ndarray
    leave_one_out: bool


def pixel_sample(anomaly_map: np.ndarray, limit: int = MAX_PIXELS_PER_MAP) -> np.ndarray:
    """Every pixel of a small map; an evenly strided subset of a large one."""
    stride = max(1, int(np.ceil(np.sqrt(anomaly_map.size / limit))))
    return anomaly_map[::stride, ::stride].ravel()


def score_references(scorer: Scorer, class_name: str, references: list[np.ndarray]) -> ReferenceScores:
    """Leave-one-out scores of the ``references`` for a few-shot scorer, direct ones otherwise.

    Leaves ``scorer`` prepared on a subset (or without references): prepare it again before predicting.
    """
    k = len(references)
    if not scorer.few_shot:
        scorer.prepare(class_name, None)
        results = scorer.predict(references)
        return ReferenceScores(np.array([score for score, _ in results]),
                               np.concatenate([pixel_sample(m) for _, m in results]), False)
    if k < 2:
        raise ConfigError(f"automatic thresholds for a few-shot method score each reference against the "
                          f"others and need at least 2 references, got {k}; add references or give numeric "
                          f"thresholds")
    scores, pixels = [], []
    for i in range(k):
        scorer.prepare(class_name, references[:i] + references[i + 1 :])
        (score, anomaly_map), = scorer.predict([references[i]])
        scores.append(score)
        pixels.append(pixel_sample(anomaly_map))
    return ReferenceScores(np.array(scores), np.concatenate(pixels), True)


@dataclass
class StoredThresholds:
    """Thresholds calibrated at training time on held-out auxiliary images, stored in the checkpoint, so
    a zero-shot method decides on a new product without any reference image."""

    image: float
    pixel: float
    target_fpr: float
    pixel_fpr: float
    colour_range: tuple[float, float]
    held_out: dict[str, int]  # images, normal, defective, categories
    achieved: dict[str, float]  # on the held-out images: image_fpr, image_tpr

    @property
    def source(self) -> str:
        return (f"checkpoint: at most {100 * self.target_fpr:g}% of {self.held_out['normal']} held-out normal "
                f"auxiliary images above it (target false-positive rate {100 * self.target_fpr:g}%)")

    @property
    def pixel_source(self) -> str:
        return (f"checkpoint: q{1 - self.pixel_fpr:g} of held-out normal auxiliary pixels (target "
                f"{100 * self.pixel_fpr:g}% of normal pixels outlined)")


def calibrate_on_held_out(scores: np.ndarray, labels: np.ndarray, normal_pixels: np.ndarray, categories: int,
                          target_fpr: float, pixel_fpr: float) -> StoredThresholds:
    """Image threshold: just above the held-out normal score that leaves ``floor(target_fpr · n)`` of the
    ``n`` normal images at or above it, so the held-out false-positive rate never exceeds the target
    (with few held-out images this is conservative: below 1 / target_fpr of them it is their maximum).
    Pixel threshold: the ``1 - pixel_fpr`` quantile of their normal pixels (mask 0 in every held-out
    image), which are plentiful."""
    if not 0 < target_fpr < 1 or not 0 < pixel_fpr < 1:
        raise ConfigError(f"target false-positive rates must be in (0, 1), got {target_fpr} and {pixel_fpr}")
    normal = scores[labels == 0]
    if len(normal) == 0:
        raise ConfigError("no normal image was held out for calibration; raise --calibration-fraction")
    allowed = int(np.floor(target_fpr * len(normal)))
    image = float(np.nextafter(np.sort(normal)[len(normal) - allowed - 1], np.inf))
    pixel = float(np.quantile(normal_pixels, 1 - pixel_fpr))
    defective = scores[labels == 1]
    return StoredThresholds(
        image, pixel, target_fpr, pixel_fpr, colour_range(normal_pixels, pixel),
        {"images": len(scores), "normal": len(normal), "defective": len(defective), "categories": categories},
        {"image_fpr": float((normal >= image).mean()),
         "image_tpr": float((defective >= image).mean()) if len(defective) else float("nan")})
