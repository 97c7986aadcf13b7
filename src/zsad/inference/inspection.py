"""What inspecting one image produces, and what decided it: :class:`Inspection`, :class:`Region` and
:class:`Thresholds`.

These are the words every path shares — ``zsad predict`` (PyTorch or exported model), the deploy
runtime, the service and its store, checkpoints and exported artefacts — so a threshold written by one
is read by another without conversion by hand. Everything here is plain numpy and JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from zsad.errors import ConfigError
from zsad.inference.components import components

MAX_REGIONS = 50  # regions reported per image, highest peak first
ANOMALOUS, NORMAL = "anomalous", "normal"


@dataclass
class Thresholds:
    """What decides "anomalous" for one product, the colour scale of its heatmaps, and where they came from.

    ``image`` decides the image (``anomalous`` at or above it); ``pixel`` outlines defect regions; either
    may be None (no decision, no regions). ``*_source`` says in words how each was set; ``calibration``
    records the evidence it rests on (how many images, the rates it achieved) as JSON-able facts.
    """

    image: float | None = None
    pixel: float | None = None
    image_source: str = "none"
    pixel_source: str = "none"
    colour_range: tuple[float, float] | None = None  # None: each heatmap on its own range
    reference_scores: list[float] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)

    def decide(self, score: float) -> str:
        """``anomalous`` at or above the image threshold, ``normal`` below, ``""`` without a threshold."""
        if self.image is None:
            return ""
        return ANOMALOUS if score >= self.image else NORMAL

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["colour_range"] = None if self.colour_range is None else list(self.colour_range)
        data["reference_scores"] = list(self.reference_scores)
        data["calibration"] = dict(self.calibration)
        return data

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`to_dict`. Stored beside the thresholds, it makes an edit
        by hand visible: a changed number would still carry the provenance of the one it replaced."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_sealed(cls, data: Any, digest: Any, where: str, remedy: str) -> Thresholds:
        """:meth:`from_dict`, then refuse thresholds that no longer match their ``digest``, saying how to set
        new ones properly (``remedy``)."""
        thresholds = cls.from_dict(data, where)
        if digest != thresholds.digest():
            raise ConfigError(f"{where}: changed since they were calibrated (they no longer match their SHA-256), "
                              f"so their recorded provenance would be false; to set new thresholds, {remedy}")
        return thresholds

    @classmethod
    def from_dict(cls, data: Any, where: str = "thresholds") -> Thresholds:
        """Read what :meth:`to_dict` wrote; anything malformed is one :class:`ConfigError` naming ``where``
        and the field. Unknown keys are refused rather than ignored: a misspelt threshold must not vanish."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected an object of thresholds, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown threshold field(s) {', '.join(unknown)}")
        values = dict(data)
        for key in ("image", "pixel"):
            values[key] = _number_or_none(values.get(key), f"{where}: {key}")
        for key in ("image_source", "pixel_source"):
            if not isinstance(values.get(key, ""), str):
                raise ConfigError(f"{where}: {key} must be text")
        colours = values.get("colour_range")
        if colours is not None:
            if not isinstance(colours, (list, tuple)) or len(colours) != 2:
                raise ConfigError(f"{where}: colour_range must be [low, high]")
            low, high = (_number_or_none(c, f"{where}: colour_range") for c in colours)
            if low is None or high is None or not high > low:
                raise ConfigError(f"{where}: colour_range must be two numbers, low < high")
            values["colour_range"] = (low, high)
        scores = values.get("reference_scores", [])
        if not isinstance(scores, list):
            raise ConfigError(f"{where}: reference_scores must be a list of numbers")
        values["reference_scores"] = [_number_or_none(s, f"{where}: reference_scores") for s in scores]
        if not isinstance(values.get("calibration", {}), dict):
            raise ConfigError(f"{where}: calibration must be an object")
        return cls(**values)


def _number_or_none(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number or null, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Region:
    """One connected area of the map at or above the pixel threshold, in the image's own pixels."""

    box: tuple[int, int, int, int]  # x, y, width, height
    peak: float  # the highest map value inside
    peak_at: tuple[int, int]  # (x, y) of that value
    area: int  # pixels at or above the threshold
    mean: float  # mean map value over those pixels

    def to_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "peak": self.peak, "peak_at": list(self.peak_at), "area": self.area,
                "mean": self.mean}


def find_regions(anomaly_map: np.ndarray, threshold: float | None, limit: int = MAX_REGIONS) -> list[Region]:
    """The 8-connected areas of ``anomaly_map`` at or above ``threshold``, highest peak first (at most
    ``limit``); none without a threshold."""
    if threshold is None:
        return []
    found = components(anomaly_map, anomaly_map >= threshold)
    highest = np.argsort(-found.peak, kind="stable")[:limit]  # ties stay in raster order
    return [Region((int(found.left[k]), int(found.top[k]), int(found.right[k] - found.left[k]),
                    int(found.bottom[k] - found.top[k])), float(found.peak[k]),
                   (int(found.peak_col[k]), int(found.peak_row[k])), int(found.area[k]), float(found.mean[k]))
            for k in highest]


@dataclass
class Inspection:
    """One image inspected: its anomaly map (float32, the image's own size), score, decision under
    ``thresholds`` and defect regions. ``source`` names the image (a file's path, an upload's name)."""

    source: str
    score: float
    decision: str  # "anomalous", "normal", or "" without an image threshold
    anomaly_map: np.ndarray
    regions: list[Region]
    thresholds: Thresholds

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the inspected image."""
        return int(self.anomaly_map.shape[1]), int(self.anomaly_map.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON of everything but the map: what a log, a CSV's companion or an API returns."""
        width, height = self.size
        return {"source": self.source, "score": self.score, "decision": self.decision, "width": width,
                "height": height, "regions": [r.to_dict() for r in self.regions],
                "thresholds": {"image": self.thresholds.image, "pixel": self.thresholds.pixel}}
