"""The inspection service without HTTP: products, inspections and their records.

A product is a name, a class name for text prompts and k normal reference images. Creating one prepares
the method for it once (reference memory, text anchors) and calibrates its thresholds from the
references exactly as ``zsad predict`` does (:func:`zsad.engine.scorer.calibrate`: leave-one-out
reference scores, ``max`` for images, ``q0.999`` of reference pixels for defect outlines). Thresholds
are stored with the product, so a restart rebuilds the prepared state from the stored reference files
without recalibrating or re-uploading anything.

Each inspection records score, decision, the thresholds used, the defect regions (bounding boxes of the
connected above-threshold areas of the map with their peak value) and an overlay PNG.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from zsad.data import decode_image_bytes, load_image
from zsad.inference.calibration import IMAGE_RULE, PIXEL_RULE, Scorer
from zsad.inference.folder import PredictConfig, Predictor, Thresholds, calibrate
from zsad.errors import ConfigError, DataError, TooLargeError
from zsad.serve.store import Product, Store, check_name
from zsad.serve.worker import ModelWorker

MAX_REGIONS = 50


class NotFound(ConfigError):
    """An unknown product or inspection (HTTP 404)."""


class Conflict(ConfigError):
    """A product of that name exists already (HTTP 409)."""


@dataclass
class Limits:
    max_upload_bytes: int = 50 * 2**20
    max_pixels: int = 100_000_000
    max_references: int = 64


@dataclass
class Upload:
    filename: str
    data: bytes


class InspectionService:
    """Products and inspections over one store, with one :class:`ModelWorker` owning the model.

    ``new_scorer()`` returns a fresh, unprepared scorer that shares the loaded model's weights (each
    product keeps its own prepared one).
    """

    def __init__(self, store: Store, new_scorer: Callable[[], Scorer], describe: dict[str, Any],
                 limits: Limits | None = None, batch_size: int = 8, max_wait: float = 0.005) -> None:
        self.store, self.new_scorer, self.describe = store, new_scorer, describe
        self.limits = limits or Limits()
        probe = new_scorer()
        self.few_shot, self.zero_shot = probe.few_shot, probe.zero_shot
        self.worker = ModelWorker(self._prepared_scorer, batch_size, max_wait)

    def close(self) -> None:
        self.worker.close()
        self.store.close()

    # --- images ---------------------------------------------------------------------------------------
    def decode(self, upload: Upload) -> np.ndarray:
        if len(upload.data) > self.limits.max_upload_bytes:
            raise TooLargeError(f"image {upload.filename} is {len(upload.data) / 2**20:.1f} MB, over the limit of "
                            f"{self.limits.max_upload_bytes / 2**20:.0f} MB")
        image = decode_image_bytes(upload.data, upload.filename, self.limits.max_pixels)
        if min(image.shape[:2]) < 2:
            raise DataError(f"image {upload.filename} is {image.shape[1]}x{image.shape[0]} pixels: too small")
        return image

    # --- products -------------------------------------------------------------------------------------
    def product(self, name: str) -> Product:
        product = self.store.product(name)
        if product is None:
            raise NotFound(f"no product named {name!r}")
        return product

    def create_product(self, name: str, class_name: str, references: list[Upload]) -> Future:
        """Validate, decode, then prepare and calibrate on the model's thread; the future gives the Product."""
        check_name(name)
        class_name = class_name.strip()
        if not class_name:
            raise ConfigError("class_name must name the product's kind for the text prompts, e.g. 'screw'")
        if self.store.has_product(name):
            raise Conflict(f"a product named {name!r} exists already")
        needed = 2 if self.few_shot else 1
        if len(references) < needed:
            raise ConfigError(f"product {name!r} needs at least {needed} normal reference image(s) to calibrate its "
                              f"thresholds{' (each is scored against the others)' if self.few_shot else ''}, "
                              f"got {len(references)}")
        if len(references) > self.limits.max_references:
            raise ConfigError(f"at most {self.limits.max_references} reference images, got {len(references)}")
        images = [self.decode(upload) for upload in references]
        return self.worker.call(lambda: self._create(name, class_name, references, images))

    def _create(self, name: str, class_name: str, uploads: list[Upload], images: list[np.ndarray]) -> Product:
        scorer = self.new_scorer()
        config = PredictConfig(class_name=class_name, threshold=IMAGE_RULE, pixel_threshold=PIXEL_RULE)
        thresholds = calibrate(scorer, config, images)
        if self.store.has_product(name):  # created by a concurrent request meanwhile
            raise Conflict(f"a product named {name!r} exists already")
        low, high = thresholds.colour_range or (None, None)
        product = self.store.add_product(name, class_name, [(u.filename, u.data) for u in uploads], {
            "image": thresholds.image, "pixel": thresholds.pixel, "image_source": thresholds.image_source,
            "pixel_source": thresholds.pixel_source, "colour_low": low, "colour_high": high,
            "reference_scores": thresholds.reference_scores})
        self.worker.remember(name, scorer)
        return product

    def _prepared_scorer(self, name: str) -> Scorer:
        """After a restart: the product's state rebuilt from its stored references (on the model thread)."""
        product = self.product(name)
        scorer = self.new_scorer()
        references = [load_image(self.store.path(p)) for p in product.references]
        scorer.prepare(product.class_name, references if scorer.few_shot else None)
        return scorer

    # --- inspections ----------------------------------------------------------------------------------
    def inspect(self, name: str, uploads: list[Upload]) -> tuple[Product, list[np.ndarray], Future]:
        """Decode and queue; the future gives ``(score, map)`` per image. Nothing is recorded yet."""
        product = self.product(name)
        if not uploads:
            raise ConfigError("no images: post one or more files in the field 'images'")
        images = [self.decode(upload) for upload in uploads]
        return product, images, self.worker.submit(name, images)

    def record(self, product: Product, uploads: list[Upload], images: list[np.ndarray],
               results: list[tuple[float, np.ndarray]]) -> list[dict[str, Any]]:
        """Overlay, decision and regions of each result, written to the store (off the model's thread)."""
        thresholds = Thresholds(product.image_threshold, product.pixel_threshold, product.image_source,
                                product.pixel_source,
                                None if product.colour_low is None else (product.colour_low, product.colour_high))
        predictor = Predictor(PredictConfig(class_name=product.class_name), thresholds)
        records = []
        for upload, image, (score, anomaly_map) in zip(uploads, images, results):
            regions = defect_regions(anomaly_map, product.pixel_threshold)
            records.append(self.store.add_inspection(
                product, Path(upload.filename).name or "image", image.shape[1], image.shape[0], score,
                predictor.decision(score), regions, predictor.draw(image, anomaly_map)))
        return records


def defect_regions(anomaly_map: np.ndarray, threshold: float | None) -> list[dict[str, Any]]:
    """Bounding boxes (pixels of the image) of the 8-connected areas at or above ``threshold``, with their
    peak value, highest peak first (at most :data:`MAX_REGIONS`)."""
    if threshold is None:
        return []
    labels, count = ndimage.label(anomaly_map >= threshold, structure=np.ones((3, 3)))
    if count == 0:
        return []
    peaks = ndimage.maximum(anomaly_map, labels, index=np.arange(1, count + 1))
    regions = []
    for number, box in enumerate(ndimage.find_objects(labels)):
        rows, cols = box
        regions.append({"x": int(cols.start), "y": int(rows.start), "width": int(cols.stop - cols.start),
                        "height": int(rows.stop - rows.start), "peak": float(peaks[number])})
    return sorted(regions, key=lambda r: -r["peak"])[:MAX_REGIONS]
