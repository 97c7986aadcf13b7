"""Anomaly maps for new images: a folder (recursively) or one file, with overlays, contours and scores.

Every image is predicted at the method's input size and its map resized back to the image's own size,
so overlays and contours sit on the original pixels. Output under ``out``:

* ``overlays/<relative path>.png`` — the image beside its heatmap, predicted defects outlined in white;
* ``scores.csv`` — ``path, score, decision, overlay`` for every image that was read;
* ``skipped.csv`` — ``path, reason`` for every file that could not be read (always written);
* ``thresholds.json`` — the thresholds used, how they were obtained, and the reference scores.

Heatmap colours use one scale for the whole run when normal references are given: the median reference
pixel is blue and the pixel threshold sits in the middle of the colour map, so red means "above
threshold". Without references, each heatmap is scaled to its own range (relative colours only).
"""

from __future__ import annotations

import csv
import io as stdio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zsad import io
from zsad.data import load_image
from zsad.engine.calibration import PIXEL_RULE, ReferenceScores, ThresholdRule, score_references
from zsad.errors import ConfigError, DataError
from zsad.methods.base import Method
from zsad.methods.maps import upsample
from zsad.overlay import heatmap_overlay, png_bytes, resize_image, side_by_side
from zsad.runtime import autocast

Threshold = float | ThresholdRule | None


@dataclass
class PredictConfig:
    class_name: str = "object"
    threshold: Threshold = None  # image-level; None: scores only, no decision
    pixel_threshold: Threshold = None  # for contours; None: no contours
    batch_size: int = 8
    precision: str = "fp32"
    opacity: float = 0.5  # of the heatmap over the image


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class Thresholds:
    """What decides "anomalous", and the colour scale of the heatmaps, for one run."""

    image: float | None = None
    pixel: float | None = None
    image_source: str = "none"
    pixel_source: str = "none"
    colour_range: tuple[float, float] | None = None  # None: each heatmap on its own range
    reference_scores: list[float] = field(default_factory=list)


@dataclass
class PredictSummary:
    out: Path
    predicted: int
    anomalous: int
    skipped: list[Skipped]
    thresholds: Thresholds


def list_files(target: Path, exclude: Path | None = None) -> tuple[Path, list[Path]]:
    """``(root, files)``: ``target`` itself, or every non-hidden file below it except those in ``exclude``."""
    if target.is_file():
        return target.parent, [target]
    if not target.is_dir():
        raise DataError(f"{target} is neither an image file nor a folder")
    skip = exclude.resolve() if exclude else None
    files = []
    for path in sorted(target.rglob("*")):
        relative = path.relative_to(target)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        files.append(path)
    return target, files


def read_images(paths: list[Path]) -> tuple[list[tuple[Path, np.ndarray]], list[Skipped]]:
    """Decoded RGB images, and the files that could not be decoded with the one-line reason."""
    images, skipped = [], []
    for path in paths:
        try:
            images.append((path, load_image(path)))
        except DataError as err:
            skipped.append(Skipped(str(path), str(err)))
    return images, skipped


def to_batch(images: list[np.ndarray], size: int, device: torch.device) -> Tensor:
    """``[B, 3, size, size]`` in [0, 1], resized as the evaluation loader resizes."""
    stacked = np.stack([resize_image(image, (size, size)) for image in images])
    return torch.from_numpy(stacked).to(device).permute(0, 3, 1, 2).float().div_(255)


def load_references(folder: Path, size: int, device: torch.device) -> tuple[Tensor, list[Path], list[Skipped]]:
    _, paths = list_files(folder)
    decoded, skipped = read_images(paths)
    if not decoded:
        raise DataError(f"no readable reference images in {folder}")
    return to_batch([image for _, image in decoded], size, device), [p for p, _ in decoded], skipped


def calibrate(method: Method, config: PredictConfig, references: Tensor | None) -> Thresholds:
    """Resolve ``auto`` thresholds from the references (see :mod:`zsad.engine.calibration`) and set the
    colour scale; leaves ``method`` prepared for prediction."""
    rules = [t for t in (config.threshold, config.pixel_threshold) if isinstance(t, ThresholdRule)]
    if rules and references is None:
        raise ConfigError("automatic thresholds calibrate on normal images: pass --refs DIR (a few normal "
                          "images of this product) or numeric --threshold / --pixel-threshold values")
    usable = references is not None and (rules or not method.few_shot or len(references) >= 2)
    scored = score_references(method, config.class_name, references, config.batch_size) if usable else None
    thresholds = Thresholds()
    normal_scores, normal_maps = (None, None) if scored is None else (scored.scores, scored.maps)
    thresholds.image, thresholds.image_source = _resolve(config.threshold, normal_scores, "reference scores")
    thresholds.pixel, thresholds.pixel_source = _resolve(config.pixel_threshold, normal_maps, "reference pixels")
    if scored is not None:
        thresholds.reference_scores = scored.scores.tolist()
        thresholds.colour_range = _colour_range(scored, thresholds.pixel)
    method.prepare(config.class_name, references if method.few_shot else None)
    return thresholds


def _resolve(threshold: Threshold, normal_values: np.ndarray | None, what: str) -> tuple[float | None, str]:
    if isinstance(threshold, ThresholdRule):
        return threshold.apply(normal_values), f"auto: {threshold} of {what}"
    if threshold is None:
        return None, "none"
    return float(threshold), "given"


def _colour_range(scored: ReferenceScores, pixel_threshold: float | None) -> tuple[float, float]:
    """The median normal pixel at the bottom, the pixel threshold (or its default rule) in the middle."""
    low = float(np.median(scored.maps))
    middle = pixel_threshold if pixel_threshold is not None else PIXEL_RULE.apply(scored.maps)
    return low, max(2 * middle - low, low + 1e-6)


def overlay_names(relatives: list[Path]) -> list[Path]:
    """Output names: the relative path with a ``.png`` suffix, or the full name + ``.png`` where two
    inputs differ only by their suffix (``a.jpg`` and ``a.png``)."""
    stems = [r.with_suffix(".png") for r in relatives]
    clashes = {s for s in stems if stems.count(s) > 1}
    return [r.with_name(r.name + ".png") if s in clashes else s for r, s in zip(relatives, stems)]


class Predictor:
    """Scores, maps, overlays and decisions for images, with a method already prepared."""

    def __init__(self, method: Method, config: PredictConfig, thresholds: Thresholds) -> None:
        self.method = method
        self.config = config
        self.thresholds = thresholds

    @torch.inference_mode()
    def predict(self, images: list[tuple[Path, np.ndarray]]) -> list[tuple[float, np.ndarray]]:
        """``(score, map at the image's own size)`` per image."""
        batch = to_batch([image for _, image in images], self.method.config.image_size, self.method.device)
        with autocast(self.method.device, self.config.precision):
            prediction = self.method.predict(batch)
        results = []
        for (_, image), score, anomaly_map in zip(images, prediction.score, prediction.anomaly_map):
            full = upsample(anomaly_map[None].float(), image.shape[:2])[0].cpu().numpy()
            results.append((float(score), full))
        return results

    def draw(self, image: np.ndarray, anomaly_map: np.ndarray) -> bytes:
        low, high = self.thresholds.colour_range or (float(anomaly_map.min()), float(anomaly_map.max()))
        defects = anomaly_map >= self.thresholds.pixel if self.thresholds.pixel is not None else None
        return png_bytes(side_by_side(image, heatmap_overlay(image, anomaly_map, low, high, defects,
                                                             self.config.opacity)))

    def decision(self, score: float) -> str:
        if self.thresholds.image is None:
            return ""
        return "anomalous" if score >= self.thresholds.image else "normal"


def predict_images(method: Method, target: Path, out: Path, references: Path | None = None,
                   config: PredictConfig | None = None,
                   progress: Callable[[int], None] | None = None) -> PredictSummary:
    """Predict every readable file under ``target`` into ``out`` (layout: see the module docstring)."""
    config = config or PredictConfig()
    if method.few_shot and not method.zero_shot and references is None:
        raise ConfigError(f"method {method.name!r} is few-shot: pass --refs DIR with normal images of this product")
    root, files = list_files(target, exclude=out)
    if not files:
        raise DataError(f"no files to predict under {target}")
    refs, ref_paths, skipped = (None, [], [])
    if references is not None:
        refs, ref_paths, skipped = load_references(references, method.config.image_size, method.device)
    with torch.inference_mode(), autocast(method.device, config.precision):
        thresholds = calibrate(method, config, refs)
    predictor = Predictor(method, config, thresholds)
    names = dict(zip(files, overlay_names([f.relative_to(root) for f in files])))
    rows = []
    for start in range(0, len(files), config.batch_size):
        chunk = files[start : start + config.batch_size]
        images, unreadable = read_images(chunk)
        skipped += unreadable
        if images:
            for (path, image), (score, anomaly_map) in zip(images, predictor.predict(images)):
                name = Path("overlays") / names[path]
                io.write_bytes(out / name, predictor.draw(image, anomaly_map))
                rows.append([str(path), f"{score:.6g}", predictor.decision(score), name.as_posix()])
        if progress:
            progress(len(chunk))
    _write_csv(out / "scores.csv", ["path", "score", "decision", "overlay"], rows)
    _write_csv(out / "skipped.csv", ["path", "reason"], [[s.path, s.reason] for s in skipped])
    io.write_text(out / "thresholds.json", json.dumps(
        {"method": method.name, "class_name": config.class_name, **asdict(thresholds),
         "references": [str(p) for p in ref_paths]}, indent=2))
    anomalous = sum(row[2] == "anomalous" for row in rows)
    return PredictSummary(out, len(rows), anomalous, skipped, thresholds)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buffer = stdio.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    io.write_text(path, buffer.getvalue())
