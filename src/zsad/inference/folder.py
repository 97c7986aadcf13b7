"""Inspecting a folder (recursively) or one file: overlays, contours, regions and scores.

This part needs no torch: any :class:`~zsad.inference.scoring.Scorer` (a method on the PyTorch path,
:mod:`zsad.engine.scorer`, or an exported model, :mod:`zsad.deploy`) goes through the same calibration
and the same :class:`~zsad.inference.scoring.Inspector`, and writes the same outputs.

Every image is predicted at the method's input size and its map resized back to the image's own size,
so overlays and contours sit on the original pixels. Output under ``out``:

* ``overlays/<relative path>.png`` — the image beside its heatmap, predicted defects outlined in white;
  an image longer than ``overlay_side`` pixels is drawn downscaled to it (regions are found at full size);
* ``scores.csv`` — ``path, score, decision, regions, overlay`` for every image that was read (``regions``:
  how many defect regions were outlined);
* ``inspections.json`` — every inspection in full: score, decision, size and each region's box, peak,
  peak position, area and mean;
* ``skipped.csv`` — ``path, reason`` for every file that could not be read (always written);
* ``thresholds.json`` — the thresholds used, how they were obtained, and the reference scores;
* ``maps/<relative path>.npy`` — with ``save_maps``, every anomaly map at the image's own size: ``float32``,
  ``float16`` (half the bytes; about 3 significant digits, plenty for a map) or ``compressed`` (``.npz``,
  float16 deflated: smooth maps shrink several times more).

Tiling (:mod:`zsad.inference.tiling`) is the scorer's: a tiled scorer cuts every image and every
reference into tiles at the method's input size and stitches the maps back.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from zsad.config import check_range
from zsad.core import io
from zsad.data.images import load_image
from zsad.errors import ConfigError, DataError
from zsad.inference.calibration import Threshold, calibrate
from zsad.inference.inspection import Thresholds
from zsad.inference.overlay import inspection_picture, png_bytes
from zsad.inference.scoring import Inspector, Scorer
from zsad.inference.tiling import Tiling, check_image_size


MAP_FORMATS = ("", "float32", "float16", "compressed")


@dataclass
class PredictConfig:
    class_name: str = "object"
    threshold: Threshold = None  # image-level; None: scores only, no decision
    pixel_threshold: Threshold = None  # for contours; None: no contours
    batch_size: int = 8  # images decoded at a time (the scorer batches its own model calls)
    opacity: float = 0.5  # of the heatmap over the image
    save_maps: str = ""  # also write each map: "float32", "float16" (.npy) or "compressed" (.npz)
    overlay_side: int = 2048  # overlays of larger images are drawn downscaled to this long side; 0: full size
    max_pixels: int = 100_000_000  # larger images are skipped with a one-line reason
    fixed: Thresholds | None = None  # thresholds set elsewhere (a checkpoint's, an exported model's): used
    # without references, any number given in threshold / pixel_threshold in their place

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1)
        check_range("max_pixels", self.max_pixels, 4)
        check_range("opacity", self.opacity, 0, 1)
        check_range("overlay_side", self.overlay_side, 0)
        if self.save_maps not in MAP_FORMATS:
            raise ConfigError(f"save_maps must be one of {', '.join(repr(f) for f in MAP_FORMATS)}, "
                              f"got {self.save_maps!r}")


@dataclass
class Skipped:
    path: str
    reason: str


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


def load_masks(masks: Path, images: list[np.ndarray], paths: list[Path], root: Path) -> list[np.ndarray]:
    """Defect masks for ``images`` (read from ``paths`` under ``root``): the file under ``masks`` with the
    image's relative path and stem (or stem + ``_mask``, as MVTec AD names them), any image format, set where
    bright; an image without one is all normal."""
    _, files = list_files(masks)
    root = root if root.is_dir() else root.parent
    by_stem = {f.relative_to(masks).with_suffix(""): f for f in files}
    found = []
    for image, path in zip(images, paths):
        stem = path.relative_to(root).with_suffix("")
        file = by_stem.get(stem) or by_stem.get(stem.with_name(stem.name + "_mask"))
        if file is None:
            found.append(np.zeros(image.shape[:2], dtype=bool))
            continue
        mask = load_image(file).max(axis=-1) > 127
        if mask.shape != image.shape[:2]:
            raise DataError(f"{file}: the mask is {mask.shape[1]}x{mask.shape[0]} but its image {path} is "
                            f"{image.shape[1]}x{image.shape[0]}")
        found.append(mask)
    return found


@dataclass
class TilePlan:
    """What a tiled run will do, known from the files' headers before any pixel is decoded."""

    references: int
    reference_tiles: int
    reference_pixels: int
    images: int
    image_tiles: int
    largest_pixels: int  # of one image to inspect

    # Bytes held per pixel of the image being inspected: decoded RGB (3), the two float32 stitching planes (8),
    # the map (4), its threshold mask and labels (~5) and the overlay's shrunken copies (~4).
    PER_IMAGE_PIXEL = 24

    def peak_bytes(self, tile: int, chunk: int, state_bytes: int) -> int:
        """A rough peak beyond the process's own: the references decoded (3 B/px, all at once), a chunk of
        reference tiles as float32, the largest image's working set and the model's prepared ``state_bytes``."""
        return (3 * self.reference_pixels + chunk * tile * tile * 3 * 5 + self.PER_IMAGE_PIXEL * self.largest_pixels
                + state_bytes)


def plan_tiles(tiling: Tiling, references: list[Path], images: list[Path]) -> TilePlan:
    """Tile counts and pixel totals of ``references`` and ``images`` under ``tiling``, from their headers
    (a file Pillow cannot open counts as nothing: it will be skipped with its reason)."""
    def sizes(paths: list[Path]) -> list[tuple[int, int]]:
        found = []
        for path in paths:
            try:
                with Image.open(path) as image:
                    found.append((image.height, image.width))
            except Exception:  # noqa: BLE001 - unreadable files are skipped later, with their reason
                continue
        return found

    refs, targets = sizes(references), sizes(images)
    return TilePlan(len(refs), sum(len(tiling.boxes(h, w)) for h, w in refs), sum(h * w for h, w in refs),
                    len(targets), sum(len(tiling.boxes(h, w)) for h, w in targets),
                    max((h * w for h, w in targets), default=0))


def overlay_names(relatives: list[Path]) -> list[Path]:
    """Output names: the relative path with a ``.png`` suffix, or the full name + ``.png`` where two
    inputs differ only by their suffix (``a.jpg`` and ``a.png``)."""
    stems = [r.with_suffix(".png") for r in relatives]
    clashes = {s for s in stems if stems.count(s) > 1}
    return [r.with_name(r.name + ".png") if s in clashes else s for r, s in zip(relatives, stems)]


def predict_folder(scorer: Scorer, target: Path, out: Path, references: Path | None = None,
                   config: PredictConfig | None = None, progress: Callable[[int], None] | None = None,
                   name: str = "") -> PredictSummary:
    """Inspect every readable file under ``target`` into ``out`` (layout: see the module docstring) with any
    :class:`~zsad.inference.scoring.Scorer`: a method's (:func:`zsad.engine.scorer.method_scorer`) or an
    exported model's (:mod:`zsad.deploy`); ``name`` names it in ``thresholds.json``."""
    config = config or PredictConfig()
    if scorer.few_shot and not scorer.zero_shot and references is None:
        raise ConfigError(f"method {name!r} is few-shot: pass --refs DIR with normal images of this product")
    root, files = list_files(target, exclude=out)
    if not files:
        raise DataError(f"no files to predict under {target}")
    refs, ref_paths, skipped = (None, [], [])
    if references is not None:
        refs, ref_paths, skipped = load_references(references, config.max_pixels)
    thresholds = calibrate(scorer, config.class_name, refs, config.threshold, config.pixel_threshold, config.fixed)
    inspector = Inspector(scorer, thresholds)
    names = dict(zip(files, overlay_names([f.relative_to(root) for f in files])))
    rows, inspections = [], []
    # This run's pictures go to a private folder first and replace the previous run's only at the end, so an
    # interrupted run leaves the earlier results intact and a finished one leaves none of them behind.
    staging = out / f".predict-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for start in range(0, len(files), config.batch_size):
            chunk = files[start : start + config.batch_size]
            images, unreadable = read_images(chunk, config.max_pixels)
            skipped += unreadable
            if images:
                found = inspector.inspect([image for _, image in images], [str(path) for path, _ in images])
                for (path, image), inspection in zip(images, found):
                    overlay = Path("overlays") / names[path]
                    picture = inspection_picture(image, inspection, config.opacity, config.overlay_side)
                    io.write_bytes(staging / overlay, png_bytes(picture))
                    if config.save_maps:
                        suffix = ".npz" if config.save_maps == "compressed" else ".npy"
                        io.write_bytes(staging / "maps" / names[path].with_suffix(suffix),
                                       map_bytes(inspection.anomaly_map, config.save_maps))
                    rows.append([str(path), f"{inspection.score:.6g}", inspection.decision,
                                 str(len(inspection.regions)), overlay.as_posix()])
                    inspections.append({**inspection.to_dict(), "overlay": overlay.as_posix()})
            if progress:
                progress(len(chunk))
        if not rows:
            raise DataError(f"none of the {len(files)} file(s) under {target} could be read; the first: "
                            f"{skipped[0].reason}")
        _replace_outputs(out, staging, ("overlays", "maps"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_csv(out / "scores.csv", ["path", "score", "decision", "regions", "overlay"], rows)
    io.write_text(out / "inspections.json", json.dumps(inspections, indent=1))
    _write_csv(out / "skipped.csv", ["path", "reason"], [[s.path, s.reason] for s in skipped])
    io.write_text(out / "thresholds.json", json.dumps(
        {"method": name, "class_name": config.class_name, **thresholds.to_dict(),
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


def map_bytes(anomaly_map: np.ndarray, form: str = "float32") -> bytes:
    """An anomaly map as a ``.npy`` file (``float32`` or ``float16``) or a ``.npz`` (``compressed``: float16
    under deflate, the array named ``anomaly_map``)."""
    if form != "float32" and np.abs(anomaly_map).max() > np.finfo(np.float16).max:
        raise ConfigError(f"anomaly map values up to {np.abs(anomaly_map).max():.3g} do not fit float16; save "
                          f"maps as float32")
    buffer = stdio.BytesIO()
    if form == "compressed":
        np.savez_compressed(buffer, anomaly_map=anomaly_map.astype(np.float16))
    else:
        np.save(buffer, np.ascontiguousarray(anomaly_map, dtype=np.float16 if form == "float16" else np.float32))
    return buffer.getvalue()


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buffer = stdio.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    io.write_text(path, buffer.getvalue())
