"""Anomaly maps for new images: a folder (recursively) or one file, with overlays, contours and scores.

This part needs no torch: any :class:`~zsad.inference.calibration.Scorer` (a method on the PyTorch path,
:mod:`zsad.engine.scorer`, or an exported model, :mod:`zsad.deploy`) goes through the same calibration
and writes the same outputs.

Every image is predicted at the method's input size and its map resized back to the image's own size,
so overlays and contours sit on the original pixels. Output under ``out``:

* ``overlays/<relative path>.png`` — the image beside its heatmap, predicted defects outlined in white;
* ``scores.csv`` — ``path, score, decision, overlay`` for every image that was read;
* ``skipped.csv`` — ``path, reason`` for every file that could not be read (always written);
* ``thresholds.json`` — the thresholds used, how they were obtained, and the reference scores;
* ``maps/<relative path>.npy`` — with ``save_maps``, every anomaly map as float32 at the image's own size.

With a :class:`~zsad.inference.tiling.Tiling`, each image (and each reference) is cut into tiles that go through
the method at its input size, and the tile maps are stitched back (see :mod:`zsad.inference.tiling`); few-shot
references then contribute all their tiles to the method's memory.

Heatmap colours use one scale for the whole run when normal references are given: the median reference
pixel is blue and the pixel threshold sits in the middle of the colour map, so red means "above
threshold". Without references, a checkpoint's stored thresholds (calibrated at training time on
held-out auxiliary images) decide and set the same fixed scale; with neither, each heatmap is scaled to
its own range (relative colours only).
"""

from __future__ import annotations

import csv
import io as stdio
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from zsad.core import io
from zsad.inference.calibration import (
    Scorer, StoredThresholds, ThresholdRule, colour_range, score_references,
)
from zsad.config import check_range
from zsad.data.images import load_image
from zsad.errors import ConfigError, DataError
from zsad.inference.overlay import heatmap_overlay, png_bytes, side_by_side
from zsad.inference.tiling import Tiling, check_image_size

Threshold = float | ThresholdRule | None


@dataclass
class PredictConfig:
    class_name: str = "object"
    threshold: Threshold = None  # image-level; None: scores only, no decision
    pixel_threshold: Threshold = None  # for contours; None: no contours
    batch_size: int = 8
    precision: str = "fp32"
    opacity: float = 0.5  # of the heatmap over the image
    tiling: Tiling | None = None  # None: each image resized to the method's input size
    save_maps: bool = False  # also write maps/<relative path>.npy
    max_pixels: int = 100_000_000  # larger images are skipped with a one-line reason
    stored: StoredThresholds | None = None  # a checkpoint's thresholds: decisions without references
    preset: Thresholds | None = None  # thresholds fixed elsewhere (an exported model's), used as they are

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1)
        check_range("max_pixels", self.max_pixels, 4)
        check_range("opacity", self.opacity, 0, 1)


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


def read_images(paths: list[Path], max_pixels: int = PredictConfig.max_pixels,
                ) -> tuple[list[tuple[Path, np.ndarray]], list[Skipped]]:
    """Decoded RGB images, and the files that could not be decoded (or are too small or too large to
    inspect) with the one-line reason."""
    images, skipped = [], []
    for path in paths:
        try:
            image = load_image(path)
            check_image_size(*image.shape[:2], max_pixels, str(path))
            images.append((path, image))
        except (DataError, ConfigError) as err:
            skipped.append(Skipped(str(path), str(err)))
    return images, skipped


def load_references(folder: Path, max_pixels: int = PredictConfig.max_pixels,
                    ) -> tuple[list[np.ndarray], list[Path], list[Skipped]]:
    _, paths = list_files(folder)
    decoded, skipped = read_images(paths, max_pixels)
    if not decoded:
        raise DataError(f"no readable reference images in {folder}")
    return [image for _, image in decoded], [p for p, _ in decoded], skipped


def calibrate(scorer: Scorer, config: PredictConfig, references: list[np.ndarray] | None) -> Thresholds:
    """Resolve ``auto`` thresholds from the references (see :mod:`zsad.inference.calibration`) and set the
    colour scale; leaves ``scorer`` prepared for prediction."""
    rules = [t for t in (config.threshold, config.pixel_threshold) if isinstance(t, ThresholdRule)]
    if rules and references is None:
        raise ConfigError("automatic thresholds calibrate on normal images: pass --refs DIR (a few normal "
                          "images of this product) or numeric --threshold / --pixel-threshold values")
    if config.preset is not None and references is None:
        preset = Thresholds(**asdict(config.preset))
        if config.threshold is not None:
            preset.image, preset.image_source = _resolve(config.threshold, None, "")
        if config.pixel_threshold is not None:
            preset.pixel, preset.pixel_source = _resolve(config.pixel_threshold, None, "")
        scorer.prepare(config.class_name, None)
        return preset
    usable = references is not None and (rules or not scorer.few_shot or len(references) >= 2)
    scored = score_references(scorer, config.class_name, references) if usable else None
    thresholds = Thresholds()
    normal_scores, normal_pixels = (None, None) if scored is None else (scored.scores, scored.pixels)
    thresholds.image, thresholds.image_source = _resolve(config.threshold, normal_scores, "reference scores")
    thresholds.pixel, thresholds.pixel_source = _resolve(config.pixel_threshold, normal_pixels, "reference pixels")
    if scored is not None:
        thresholds.reference_scores = scored.scores.tolist()
        thresholds.colour_range = colour_range(scored.pixels, thresholds.pixel)
    elif config.stored is not None:  # no references: the checkpoint's held-out calibration decides
        stored = config.stored
        if config.threshold is None:
            thresholds.image, thresholds.image_source = stored.image, stored.source
        if config.pixel_threshold is None:
            thresholds.pixel, thresholds.pixel_source = stored.pixel, stored.pixel_source
        thresholds.colour_range = tuple(stored.colour_range)
    scorer.prepare(config.class_name, references if scorer.few_shot else None)
    return thresholds


def _resolve(threshold: Threshold, normal_values: np.ndarray | None, what: str) -> tuple[float | None, str]:
    if isinstance(threshold, ThresholdRule):
        return threshold.apply(normal_values), f"auto: {threshold} of {what}"
    if threshold is None:
        return None, "none"
    return float(threshold), "given"


def decision(score: float, threshold: float | None) -> str:
    """``anomalous`` at or above the image threshold, ``normal`` below, ``""`` without a threshold."""
    if threshold is None:
        return ""
    return "anomalous" if score >= threshold else "normal"


def overlay_names(relatives: list[Path]) -> list[Path]:
    """Output names: the relative path with a ``.png`` suffix, or the full name + ``.png`` where two
    inputs differ only by their suffix (``a.jpg`` and ``a.png``)."""
    stems = [r.with_suffix(".png") for r in relatives]
    clashes = {s for s in stems if stems.count(s) > 1}
    return [r.with_name(r.name + ".png") if s in clashes else s for r, s in zip(relatives, stems)]


class Predictor:
    """Overlays and decisions for predicted maps and scores, under one run's thresholds."""

    def __init__(self, config: PredictConfig, thresholds: Thresholds) -> None:
        self.config = config
        self.thresholds = thresholds

    def draw(self, image: np.ndarray, anomaly_map: np.ndarray) -> bytes:
        low, high = self.thresholds.colour_range or (float(anomaly_map.min()), float(anomaly_map.max()))
        defects = anomaly_map >= self.thresholds.pixel if self.thresholds.pixel is not None else None
        return png_bytes(side_by_side(image, heatmap_overlay(image, anomaly_map, low, high, defects,
                                                             self.config.opacity)))

    def decision(self, score: float) -> str:
        return decision(score, self.thresholds.image)


def predict_folder(scorer: Scorer, target: Path, out: Path, references: Path | None = None,
                   config: PredictConfig | None = None, progress: Callable[[int], None] | None = None,
                   name: str = "") -> PredictSummary:
    """Predict every readable file under ``target`` into ``out`` (layout: see the module docstring) with any
    :class:`~zsad.inference.calibration.Scorer`: a method (:func:`zsad.engine.scorer.predict_images`) or an exported
    model (:mod:`zsad.deploy`); ``name`` names it in ``thresholds.json``."""
    config = config or PredictConfig()
    if scorer.few_shot and not scorer.zero_shot and references is None:
        raise ConfigError(f"method {name!r} is few-shot: pass --refs DIR with normal images of this product")
    root, files = list_files(target, exclude=out)
    if not files:
        raise DataError(f"no files to predict under {target}")
    refs, ref_paths, skipped = (None, [], [])
    if references is not None:
        refs, ref_paths, skipped = load_references(references, config.max_pixels)
    thresholds = calibrate(scorer, config, refs)
    predictor = Predictor(config, thresholds)
    names = dict(zip(files, overlay_names([f.relative_to(root) for f in files])))
    rows = []
    # This run's pictures go to a private folder first and replace the previous run's only at the end, so an
    # interrupted run leaves the earlier results intact and a finished one leaves none of them behind.
    staging = out / f".predict-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for start in range(0, len(files), config.batch_size):
            chunk = files[start : start + config.batch_size]
            images, unreadable = read_images(chunk, config.max_pixels)
            skipped += unreadable
            if images:
                for (path, image), (score, anomaly_map) in zip(images, scorer.predict([i for _, i in images])):
                    overlay = Path("overlays") / names[path]
                    io.write_bytes(staging / overlay, predictor.draw(image, anomaly_map))
                    if config.save_maps:
                        io.write_bytes(staging / "maps" / names[path].with_suffix(".npy"), npy_bytes(anomaly_map))
                    rows.append([str(path), f"{score:.6g}", predictor.decision(score), overlay.as_posix()])
            if progress:
                progress(len(chunk))
        if not rows:
            raise DataError(f"none of the {len(files)} file(s) under {target} could be read; the first: "
                            f"{skipped[0].reason}")
        _replace_outputs(out, staging, ("overlays", "maps"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_csv(out / "scores.csv", ["path", "score", "decision", "overlay"], rows)
    _write_csv(out / "skipped.csv", ["path", "reason"], [[s.path, s.reason] for s in skipped])
    io.write_text(out / "thresholds.json", json.dumps(
        {"method": name, "class_name": config.class_name, **asdict(thresholds),
         "references": [str(p) for p in ref_paths]}, indent=2))
    anomalous = sum(row[2] == "anomalous" for row in rows)
    return PredictSummary(out, len(rows), anomalous, skipped, thresholds)


def _replace_outputs(out: Path, staging: Path, kinds: tuple[str, ...]) -> None:
    """Swap each ``staging/<kind>`` folder in for ``out/<kind>`` (the previous run's goes)."""
    for kind in kinds:
        if (out / kind).exists():
            (out / kind).rename(staging / f"{kind}.previous")
        if (staging / kind).exists():
            (staging / kind).rename(out / kind)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = stdio.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    return buffer.getvalue()


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buffer = stdio.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    io.write_text(path, buffer.getvalue())
