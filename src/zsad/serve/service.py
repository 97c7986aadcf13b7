"""The inspection service without HTTP: products and their revisions, inspections, and the review loop.

A product is a name, a class name for text prompts, a target false-alarm rate and a current
**revision**: thresholds and the images they rest on (see :mod:`zsad.serve.store`). Its thresholds are
calibrated on the model's thread from its normal images — leave-one-out scores for a few-shot model (each
reference scored against the others, as ``zsad predict`` does), direct scores for a zero-shot one — at
the target rate (:func:`~zsad.inference.calibration.threshold_at_fpr`), with labelled defects widening
the margin. A zero-shot model's product may start with no image at all: the thresholds its checkpoint
stores (calibrated on held-out auxiliary images) decide until its own images refine them.

The review loop: an operator marks an inspection ``normal`` or ``anomalous``; with ``learn`` the inspected
image joins the product — a normal one its references (for a few-shot model, its memory: the next
inspection of such a part matches it), an anomalous one its labelled defects — and the thresholds are
recalibrated into a new revision, written with the review in one transaction. Nothing is retrained.
Every inspection records the revision it was scored under; restoring an old revision writes a copy of it.

Model work (preparing, calibrating, inspecting) runs on one thread (:class:`ModelWorker`), which also
serialises revisions: two reviews of one product never race. Each (product, revision) keeps its prepared
inspector, so a new revision never changes how an inspection already queued is scored or recorded.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from zsad.data import decode_image_bytes, load_image
from zsad.errors import ConfigError, DataError, TooLargeError
from zsad.inference.calibration import achieved_rates, score_references, thresholds_at_fpr
from zsad.inference.inspection import ANOMALOUS, NORMAL, Inspection, Thresholds
from zsad.inference.overlay import inspection_picture, png_bytes
from zsad.inference.scoring import Inspector, Scorer
from zsad.serve.models import Models
from zsad.serve.store import (
    DEFECT, MAX_TARGET_FPR, Conflict, NewImage, NotFound, Product, Store, StoredImage, check_name, clean_filename,
)
from zsad.serve.worker import ModelWorker, SharedModel, TurnLock

__all__ = ["Conflict", "InspectionService", "Limits", "NotFound", "Upload"]

OVERLAY_SIDE = 1024  # overlays of larger images are stored shrunk to this long side (regions stay full-size)
DUPLICATE_DIFFERENCE = 1.0  # mean absolute pixel difference (of 255) below which two images are one photograph
DUPLICATE_PIXELS = 1 << 16  # pixels compared per pair at most (a strided grid of the full image)


@dataclass(frozen=True)
class Normal:
    """A normal image of a product: its name, pixels, and whether a review taught it (an exception the
    memory holds) rather than an uploaded reference."""

    filename: str
    image: np.ndarray
    learnt: bool = False


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
    """Products, inspections and reviews over one store, with one :class:`ModelWorker` owning the model.

    ``models`` (:mod:`zsad.serve.models`) gives each product a fresh, unprepared scorer (each product revision
    keeps its own prepared one) and the thresholds that decide for it before its own images calibrate it.
    """

    def __init__(self, store: Store, models: Models, describe: dict[str, Any], limits: Limits | None = None,
                 batch_size: int = 8, max_wait: float = 0.005) -> None:
        self.store, self.models, self.describe = store, models, describe
        self.limits = limits or Limits()
        self.few_shot, self.zero_shot = models.few_shot, models.zero_shot
        self.model_lock = TurnLock()
        self._creating: set[str] = set()  # names of products being created (lower case)
        self._creating_lock = threading.Lock()
        self.worker = ModelWorker(self._prepared_inspector, batch_size, max_wait)

    def _scorer(self, name: str) -> Scorer:
        """A fresh scorer for product ``name`` whose model calls take turns with every other's."""
        scorer = self.models.scorer(name)
        return Scorer(SharedModel(scorer.model, self.model_lock), scorer.tiling, scorer.batch_size)

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

    def _stored(self, image: StoredImage) -> np.ndarray:
        return load_image(self.store.path(image.path))

    # --- products -------------------------------------------------------------------------------------
    def product(self, name: str) -> Product:
        product = self.store.product(name)
        if product is None:
            raise NotFound(f"no product named {name!r}")
        return product

    def create_product(self, name: str, class_name: str, references: list[Upload], display_name: str | None = None,
                       target_fpr: float | None = None) -> Future:
        """Validate and decode here (a taken name is refused before any model work), then calibrate on the
        model's thread; the future gives the Product."""
        if self.models.fixed_products:
            raise ConfigError("this service serves exported models, each of which is its product: export a model "
                              "for the new product and add --model DIR")
        check_name(name)
        class_name = class_name.strip()
        if not class_name:
            raise ConfigError("class_name must name the product's kind for the text prompts, e.g. 'screw'")
        target_fpr = _check_target(0.05 if target_fpr is None else target_fpr)
        if self.store.has_product(name):
            raise Conflict(f"a product named {self.store.product(name).name!r} exists already (names ignore case)")
        self._check_reference_count(name, len(references))
        images = [Normal(clean_filename(u.filename), self.decode(u)) for u in references]
        with self._creating_lock:  # a second create of one name is refused now, not after a calibration
            if name.lower() in self._creating:
                raise Conflict(f"a product named {name!r} is being created by another request")
            self._creating.add(name.lower())
        future = self.worker.call(lambda: self._create(name, class_name, references, images, display_name, target_fpr))
        future.add_done_callback(lambda _: self._creating.discard(name.lower()))
        return future

    def _check_reference_count(self, name: str, count: int) -> None:
        if count > self.limits.max_references:
            raise ConfigError(f"at most {self.limits.max_references} reference images, got {count}")
        if count == 0 and not (self.zero_shot and self.models.fixed(name) is not None):
            why = ("this checkpoint stores no thresholds (train it with held-out calibration)" if self.zero_shot
                   else "the model compares new images with them")
            raise ConfigError(f"product {name!r} needs normal reference images: {why}")
        if 0 < count < 2 and self.few_shot:
            raise ConfigError(f"product {name!r} needs at least 2 normal reference images to calibrate its thresholds "
                              f"(each is scored against the others), got {count}")

    def _create(self, name: str, class_name: str, uploads: list[Upload], images: list[Normal],
                display_name: str | None, target_fpr: float) -> Product:
        scorer = self._scorer(name)
        thresholds = self._calibrate(name, scorer, class_name, images, [], target_fpr)
        product = self.store.add_product(name, class_name, [NewImage(u.filename, u.data) for u in uploads],
                                         thresholds, display_name, target_fpr)
        self.worker.remember((product.id, product.revision), Inspector(scorer, product.thresholds))
        return product

    def update_product(self, name: str, display_name: str | None = None, target_fpr: float | None = None) -> Future:
        """A new display name at once; a new target false-alarm rate recalibrates into a new revision."""
        product = self.product(name)
        if display_name is not None:
            display_name = display_name.strip()
            if not display_name or len(display_name) > 120:
                raise ConfigError("display_name must be 1-120 characters")
            product = self.store.update_product(product, display_name)
        if target_fpr is None or target_fpr == product.target_fpr:
            return _done(product)
        target_fpr = _check_target(target_fpr)
        return self.worker.call(lambda: self._revise(name, f"target false-alarm rate {100 * target_fpr:g}%",
                                                     target_fpr=target_fpr))

    def delete_product(self, name: str) -> None:
        product = self.product(name)
        if self.models.fixed_products:
            raise ConfigError(f"product {name!r} is an exported model this service was started with: restart "
                              f"without its --model to retire it")
        self.store.delete_product(product)

    def add_references(self, name: str, uploads: list[Upload]) -> Future:
        product = self.product(name)
        if not uploads:
            raise ConfigError("no images: post one or more files in the field 'references'")
        self._check_reference_count(name, len(product.references) + len(uploads))
        for upload in uploads:
            self.decode(upload)
        added = [NewImage(u.filename, u.data) for u in uploads]
        return self.worker.call(lambda: self._revise(name, f"{len(added)} reference(s) added", add=added))

    def remove_reference(self, name: str, image_id: int) -> Future:
        product = self.product(name)
        if image_id not in {i.id for i in product.images}:
            raise NotFound(f"product {name!r} has no image {image_id} in its current revision")
        keep = [i.id for i in product.images if i.id != image_id]
        self._check_reference_count(name, sum(i.kind != DEFECT for i in product.images if i.id != image_id))
        return self.worker.call(lambda: self._revise(name, f"image {image_id} removed", keep=keep))

    def recalibrate(self, name: str, reason: str) -> Future:
        """A new revision calibrated again on the product's current images (when its model changed)."""
        self.product(name)
        return self.worker.call(lambda: self._revise(name, reason))

    def restore(self, name: str, number: int) -> Future:
        product = self.product(name)
        self.store.revision(product, number)  # 404 before queueing
        return self.worker.call(lambda: self._restore(name, number))

    def _restore(self, name: str, number: int) -> Product:
        product = self.store.restore(self.product(name), number)
        self.worker.remember((product.id, product.revision), self._inspector_for(product))
        return product

    def _revise(self, name: str, reason: str, add: list[NewImage] = (), keep: list[int] | None = None,
                target_fpr: float | None = None, review: tuple[int, dict[str, Any]] | None = None) -> Product:
        """On the model thread: recalibrate on the product's images (``keep``, default the current ones, plus
        ``add``) and commit the new revision (with ``review``, in the same transaction)."""
        product = self.product(name)
        kept = [i for i in product.images if keep is None or i.id in keep]
        normals = [Normal(i.filename, self._stored(i), i.inspection_id is not None) for i in kept if i.kind != DEFECT]
        defects = [self._stored(i) for i in kept if i.kind == DEFECT]
        for image in add:
            decoded = decode_image_bytes(image.data, image.filename, self.limits.max_pixels)
            if image.kind == DEFECT:
                defects.append(decoded)
            else:
                normals.append(Normal(image.filename, decoded, image.inspection_id is not None))
        scorer = self._scorer(product.name)
        target = product.target_fpr if target_fpr is None else target_fpr
        thresholds = self._calibrate(product.name, scorer, product.class_name, normals, defects, target)
        product = self.store.commit_revision(product, thresholds, reason, add=list(add),
                                             keep=None if keep is None else list(keep), target_fpr=target_fpr,
                                             review=review)
        self.worker.remember((product.id, product.revision), Inspector(scorer, product.thresholds))
        return product

    def _calibrate(self, name: str, scorer: Scorer, class_name: str, normals: list[Normal],
                   defects: list[np.ndarray], target_fpr: float) -> Thresholds:
        """Thresholds at ``target_fpr`` from the normal images (and labelled defects); leaves ``scorer``
        prepared on them. Refuses images that cannot calibrate anything, with the reason.

        For a few-shot model every normal image is memory, but the thresholds are read off the leave-one-out
        scores of the references alone: a normal image taught by a review is an exception the memory now
        holds (the next such part matches it), and its own leave-one-out score — that of a part unlike every
        other — would otherwise lift the threshold above the defects the product exists to find. A zero-shot
        model has no memory: every normal image calibrates, and the threshold rises above the taught ones."""
        _refuse_duplicates(normals)
        images = [n.image for n in normals]
        memory = _uses_memory(scorer, len(images))
        scored = score_references(scorer, class_name, images, leave_one_out=memory) if images else None
        scorer.prepare(class_name, images if memory else None)
        defect_scores = np.array([s.score for s in scorer.score(defects)]) if defects else np.array([])
        fixed = self.models.fixed(name)
        if scored is None:
            if fixed is None:
                raise ConfigError("no normal images and no thresholds stored with the model: add references")
            return self.stamped(name, _from_stored(fixed, defect_scores, target_fpr))
        if len(scored.scores) >= 2 and np.ptp(scored.scores) <= 1e-6 * max(float(np.abs(scored.scores).max()), 1e-12):
            raise ConfigError(f"the {len(scored.scores)} normal images score the same ({scored.scores[0]:.3g}): they "
                              f"are (nearly) one image, so no threshold can be read off them; use different normal "
                              f"parts")
        references = [not n.learnt for n in normals]
        calibrating = scored.subset(references) if memory and sum(references) >= 2 else scored
        in_memory = len(scored.scores) - len(calibrating.scores)
        thresholds = thresholds_at_fpr(
            calibrating, defect_scores, target_fpr, floor=None if memory or fixed is None else fixed.image,
            reference_scores=scored.scores,
            note=f"; {in_memory} reviewed normal image(s) in the memory" if in_memory else "")
        thresholds.calibration["learnt_in_memory"] = in_memory
        return self.stamped(name, thresholds)

    def stamped(self, name: str, thresholds: Thresholds) -> Thresholds:
        """``thresholds`` with the identity of the product's model recorded (exported models)."""
        if identity := self.models.identity(name):
            thresholds.calibration["model"] = identity
        return thresholds

    def _inspector_for(self, product: Product) -> Inspector:
        scorer = self._scorer(product.name)
        references = [self._stored(i) for i in product.references]
        scorer.prepare(product.class_name, references if _uses_memory(scorer, len(references)) else None)
        return Inspector(scorer, product.thresholds)

    def _prepared_inspector(self, key: tuple[int, int]) -> Inspector:
        """After a restart or eviction: a revision's state rebuilt from its stored images (model thread)."""
        product_id, number = key
        product = self.store.product_at(product_id, number)
        return self._inspector_for(product)

    # --- inspections ----------------------------------------------------------------------------------
    def inspect(self, name: str, uploads: list[Upload]) -> tuple[Product, list[np.ndarray], Future]:
        """Decode and queue under the product's current revision; the future gives an :class:`Inspection`
        per image. Nothing is recorded yet."""
        product = self.product(name)
        if not uploads:
            raise ConfigError("no images: post one or more files in the field 'images'")
        images = [self.decode(upload) for upload in uploads]
        return product, images, self.worker.submit((product.id, product.revision), images,
                                                   [clean_filename(u.filename) for u in uploads])

    def record(self, product: Product, uploads: list[Upload], images: list[np.ndarray],
               inspections: list[Inspection], request: str | None = None) -> list[dict[str, Any]]:
        """The inspections with their overlays and uploaded images, written to the store together (all or
        none; with ``request``, an Idempotency-Key's response in the same transaction), off the model's
        thread."""
        return self.store.add_inspections(product, [
            (inspection.source, inspection, png_bytes(inspection_picture(image, inspection, max_side=OVERLAY_SIDE)),
             upload.data) for upload, image, inspection in zip(uploads, images, inspections)], request)

    def review(self, number: int, verdict: str, note: str = "", learn: bool = False) -> Future:
        """Record an operator's verdict on an inspection; with ``learn``, teach it to the product (a new
        revision). The future gives the inspection as recorded. Reviewing again replaces the verdict; an
        image is taught to a product once."""
        record = self.store.inspection(number)
        if record is None:
            raise NotFound(f"no inspection {number}")
        if verdict not in (NORMAL, ANOMALOUS):
            raise ConfigError(f"verdict must be 'normal' or 'anomalous', got {verdict!r}")
        if len(note) > 2000:
            raise ConfigError("a review note is at most 2000 characters")
        if record["product_deleted"]:
            raise ConfigError(f"inspection {number} belongs to the deleted product {record['product']!r}")
        review = {"verdict": verdict, "note": note, "learn": learn, "at": time.time(), "revision": None}
        if not learn:
            self.store.set_review(number, review)
            return _done(self.store.inspection(number))
        if not record["image_url"]:
            raise ConfigError(f"inspection {number} was recorded without its image (before reviews could teach): "
                              f"inspect the image again and review that inspection")
        return self.worker.call(lambda: self._learn(number, record, verdict, review))

    def _learn(self, number: int, record: dict[str, Any], verdict: str, review: dict[str, Any]) -> dict[str, Any]:
        product = self.product(record["product"])
        if any(i.inspection_id == number for i in product.images):  # taught already: record the verdict only
            self.store.set_review(number, {**review, "revision": product.revision})
            return self.store.inspection(number)
        data = self.store.path(self.store.inspection_image(number)).read_bytes()
        kind = DEFECT if verdict == ANOMALOUS else "normal"
        self._revise(product.name, f"review of inspection {number}: {verdict}",
                     add=[NewImage(record["filename"], data, kind, number)], review=(number, review))
        return self.store.inspection(number)


def _uses_memory(scorer: Scorer, references: int) -> bool:
    """Whether a product's normal images are the model's memory (few-shot) or only calibrate it (zero-shot):
    a model that can do both works zero-shot until the product has the two images leave-one-out needs."""
    return scorer.few_shot and (references >= 2 or not scorer.zero_shot)


def _check_target(target_fpr: float) -> float:
    if not 0 < target_fpr <= MAX_TARGET_FPR:
        raise ConfigError(f"target_fpr must be in (0, {MAX_TARGET_FPR}], got {target_fpr}")
    return float(target_fpr)


def _done(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _from_stored(fixed: Thresholds, defects: np.ndarray, target_fpr: float) -> Thresholds:
    """A product without normal images of its own: the thresholds stored with the model, said so; an exported
    model's were calibrated on this product's references at export, and keep their own provenance."""
    thresholds = Thresholds.from_dict(fixed.to_dict())
    if fixed.calibration.get("kind") != "held-out":
        return thresholds
    held_out = fixed.calibration.get("normal", 0)
    thresholds.calibration = {
        "kind": "checkpoint", "normal": 0, "defects": len(defects), "target_fpr": target_fpr,
        "held_out": fixed.calibration, **achieved_rates(np.array([]), defects, fixed.image), "quality": "checkpoint",
        "message": f"decisions use the thresholds calibrated at training time on {held_out} held-out normal "
                   f"auxiliary images, not on this product: add normal images or review decisions to calibrate "
                   f"on it"}
    return thresholds


def _refuse_duplicates(normals: list[Normal]) -> None:
    """Two normal images that are (nearly) the same photograph calibrate nothing: each would be the other's
    best match. Pixels are compared at the images' own resolution on a strided grid — never averaged, since
    averaging removes the sensor noise that tells two photographs of a uniform product apart (two parts of
    the service tests' texture differ by 4.5 grey levels pixel by pixel, by 0.6 once shrunk to 32 x 32)."""
    for i in range(len(normals)):
        for j in range(i + 1, len(normals)):
            a, b = normals[i].image, normals[j].image
            if a.shape != b.shape:
                continue
            stride = max(1, int(np.ceil(np.sqrt(a.shape[0] * a.shape[1] / DUPLICATE_PIXELS))))
            difference = float(np.abs(a[::stride, ::stride].astype(np.int16) - b[::stride, ::stride]).mean())
            if difference < DUPLICATE_DIFFERENCE:
                raise ConfigError(f"references {normals[i].filename} and {normals[j].filename} are (nearly) the "
                                  f"same image (mean difference {difference:.2f} of 255): each reference must show "
                                  f"another normal part")
