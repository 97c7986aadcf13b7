"""The inspection service without HTTP: products, inspections and their records.

A product is a name, a class name for text prompts and k normal reference images. Creating one prepares
the method for it once (reference memory, text anchors) and calibrates its thresholds from the
references exactly as ``zsad predict`` does (:func:`zsad.engine.scorer.calibrate`: leave-one-out
reference scores, ``max`` for images, ``q0.999`` of reference pixels for defect outlines). Thresholds
are stored with the product, so a restart rebuilds the prepared state from the stored reference files
without recalibrating or re-uploading anything.

Each inspection (:class:`~zsad.inference.inspection.Inspection`, from the same loop as ``zsad predict``)
records score, decision, the thresholds used, the defect regions (box, peak, peak position, area, mean)
and an overlay PNG.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zsad.data import decode_image_bytes, load_image
from zsad.errors import ConfigError, DataError, TooLargeError
from zsad.inference.calibration import IMAGE_RULE, PIXEL_RULE, calibrate
from zsad.inference.inspection import Inspection
from zsad.inference.overlay import inspection_picture, png_bytes
from zsad.inference.scoring import Inspector, Scorer
from zsad.serve.store import Product, Store, check_name
from zsad.serve.worker import ModelWorker


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
        self.worker = ModelWorker(self._prepared_inspector, batch_size, max_wait)

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
        thresholds = calibrate(scorer, class_name, images, IMAGE_RULE, PIXEL_RULE)
        if self.store.has_product(name):  # created by a concurrent request meanwhile
            raise Conflict(f"a product named {name!r} exists already")
        product = self.store.add_product(name, class_name, [(u.filename, u.data) for u in uploads], thresholds)
        self.worker.remember(name, Inspector(scorer, product.thresholds))
        return product

    def _prepared_inspector(self, name: str) -> Inspector:
        """After a restart: the product's state rebuilt from its stored references (on the model thread)."""
        product = self.product(name)
        scorer = self.new_scorer()
        references = [load_image(self.store.path(p)) for p in product.references]
        scorer.prepare(product.class_name, references if scorer.few_shot else None)
        return Inspector(scorer, product.thresholds)

    # --- inspections ----------------------------------------------------------------------------------
    def inspect(self, name: str, uploads: list[Upload]) -> tuple[Product, list[np.ndarray], Future]:
        """Decode and queue; the future gives an :class:`Inspection` per image. Nothing is recorded yet."""
        product = self.product(name)
        if not uploads:
            raise ConfigError("no images: post one or more files in the field 'images'")
        images = [self.decode(upload) for upload in uploads]
        return product, images, self.worker.submit(name, images, [_filename(u) for u in uploads])

    def record(self, product: Product, images: list[np.ndarray], inspections: list[Inspection],
               ) -> list[dict[str, Any]]:
        """Each inspection with its overlay, written to the store (off the model's thread)."""
        return [self.store.add_inspection(product, inspection.source, inspection,
                                          png_bytes(inspection_picture(image, inspection)))
                for image, inspection in zip(images, inspections)]


def _filename(upload: Upload) -> str:
    return Path(upload.filename).name or "image"
