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

import numpy as np
import torch
from torch import Tensor

from zsad.errors import ConfigError
from zsad.methods.base import Method

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


@dataclass
class ReferenceScores:
    """Scores ``[k]`` and maps ``[k, H, W]`` of the normal references, as if each were a new image."""

    scores: np.ndarray
    maps: np.ndarray
    leave_one_out: bool


@torch.inference_mode()
def score_references(method: Method, class_name: str, references: Tensor, batch_size: int = 8) -> ReferenceScores:
    """Leave-one-out scores of ``references`` ``[k, 3, H, W]`` for a few-shot method, direct ones otherwise.

    Leaves ``method`` prepared on a subset (or without references): prepare it again before predicting.
    """
    k = len(references)
    if not method.few_shot:
        method.prepare(class_name, None)
        parts = [method.predict(references[i : i + batch_size]) for i in range(0, k, batch_size)]
        return ReferenceScores(torch.cat([p.score for p in parts]).float().cpu().numpy(),
                               torch.cat([p.anomaly_map for p in parts]).float().cpu().numpy(), False)
    if k < 2:
        raise ConfigError(f"automatic thresholds for few-shot method {method.name!r} score each reference "
                          f"against the others and need at least 2 references, got {k}; add references or "
                          f"give numeric thresholds")
    scores, maps = [], []
    for i in range(k):
        method.prepare(class_name, torch.cat([references[:i], references[i + 1 :]]))
        prediction = method.predict(references[i : i + 1])
        scores.append(prediction.score.float().cpu())
        maps.append(prediction.anomaly_map.float().cpu())
    return ReferenceScores(torch.cat(scores).numpy(), torch.cat(maps).numpy(), True)
