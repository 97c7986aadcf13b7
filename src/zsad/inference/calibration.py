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

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from zsad.errors import ConfigError
from zsad.inference.inspection import Thresholds
from zsad.inference.scoring import Scorer

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


def colour_range(normal_pixels: np.ndarray, pixel_threshold: float | None) -> tuple[float, float]:
    """A heatmap scale fixed for a product: the median normal pixel at the bottom, the pixel threshold
    (or the default pixel rule of the normal pixels) in the middle, so red means "above threshold"."""
    low = float(np.median(normal_pixels))
    middle = pixel_threshold if pixel_threshold is not None else PIXEL_RULE.apply(normal_pixels)
    return low, max(2 * middle - low, low + 1e-6)


MAX_PIXELS_PER_MAP = 1 << 18  # reference pixels kept per map for pixel quantiles (a fixed strided subset)


@dataclass
class ReferenceScores:
    """Scores ``[k]`` of the normal references, as if each were a new image, and per reference a fixed
    strided subset of its map's pixels (enough for the quantiles of pixel thresholds, bounded for large
    images)."""

    scores: np.ndarray
    samples: list[np.ndarray]
    leave_one_out: bool
    parts: list | None = None  # each reference's part of a composing model's state (Scorer.prepare_parts)

    @property
    def pixels(self) -> np.ndarray:
        return np.concatenate(self.samples)

    def subset(self, keep: list[bool]) -> ReferenceScores:
        return ReferenceScores(self.scores[np.asarray(keep)], [s for s, k in zip(self.samples, keep) if k],
                               self.leave_one_out)


def pixel_sample(anomaly_map: np.ndarray, limit: int = MAX_PIXELS_PER_MAP) -> np.ndarray:
    """Every pixel of a small map; an evenly strided subset of a large one."""
    stride = max(1, int(np.ceil(np.sqrt(anomaly_map.size / limit))))
    return anomaly_map[::stride, ::stride].ravel()


def score_references(scorer: Scorer, class_name: str, references: list[np.ndarray],
                     leave_one_out: bool | None = None) -> ReferenceScores:
    """Leave-one-out scores of the ``references`` for a few-shot scorer (or when ``leave_one_out``), direct
    ones (the scorer prepared without references) otherwise.

    Leaves ``scorer`` prepared on a subset (or without references): prepare it again before predicting.
    """
    k = len(references)
    if not (scorer.few_shot if leave_one_out is None else leave_one_out):
        scorer.prepare(class_name, None)
        results = scorer.score(references)
        return ReferenceScores(np.array([r.score for r in results]), [pixel_sample(r.anomaly_map) for r in results],
                               False)
    if k < 2:
        raise ConfigError(f"automatic thresholds for a few-shot method score each reference against the "
                          f"others and need at least 2 references, got {k}; add references or give numeric "
                          f"thresholds")
    scores, pixels = [], []
    parts = scorer.prepare_parts(references) if scorer.composes else None
    for i in range(k):
        if parts is not None:
            scorer.prepare_from_parts(class_name, parts[:i] + parts[i + 1 :])
        else:
            scorer.prepare(class_name, references[:i] + references[i + 1 :])
        (result,) = scorer.score([references[i]])
        scores.append(result.score)
        pixels.append(pixel_sample(result.anomaly_map))
    return ReferenceScores(np.array(scores), pixels, True, parts)


def calibrate_on_held_out(scores: np.ndarray, labels: np.ndarray, normal_pixels: np.ndarray, categories: int,
                          target_fpr: float, pixel_fpr: float) -> Thresholds:
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
    image = threshold_at_fpr(normal, target_fpr)
    pixel = float(np.quantile(normal_pixels, 1 - pixel_fpr))
    defective = scores[labels == 1]
    return held_out_thresholds(image, pixel, colour_range(normal_pixels, pixel), {
        "kind": "held-out", "target_fpr": target_fpr, "pixel_fpr": pixel_fpr, "images": len(scores),
        "normal": len(normal), "defects": len(defective), "categories": categories,
        **achieved_rates(normal, defective, image)})


def threshold_at_fpr(normal: np.ndarray, target_fpr: float, defective: np.ndarray | None = None) -> float:
    """The image threshold for a target false-alarm rate: just above the normal score that leaves
    ``floor(target_fpr · n)`` of the ``n`` normal scores at or above it, so the rate on them never exceeds the
    target (below ``1 / target_fpr`` images that is just above their maximum).

    With labelled ``defective`` scores, the threshold moves up into the middle of the gap between that
    normal score and the weakest defect it catches: every caught defect stays caught, the normal images
    get the widest margin the labels allow, and the false-alarm rate can only fall."""
    normal = np.sort(np.asarray(normal).ravel())
    allowed = int(np.floor(target_fpr * len(normal)))
    boundary = normal[len(normal) - allowed - 1]
    threshold = np.nextafter(boundary, np.inf)
    if defective is not None and len(defective):
        caught = np.asarray(defective)[np.asarray(defective) >= threshold]
        if len(caught):
            threshold = max(threshold, (boundary + caught.min()) / 2)
    return float(threshold)


def images_needed(target_fpr: float) -> int:
    """Normal images needed before a false-alarm rate can be read off them: ``1 / target_fpr`` (fewer, and
    not one may lie above the threshold, which is then their maximum)."""
    return int(np.ceil(1 / target_fpr - 1e-9))


def calibration_quality(normal: int, target_fpr: float, defective: int = 0) -> dict:
    """Whether a false-alarm rate can be read off ``normal`` images at all (see :func:`images_needed`)."""
    needed = images_needed(target_fpr)
    if normal >= needed:
        return {"quality": "good", "message": f"thresholds rest on {normal} normal and {defective} defective "
                                               f"image(s)"}
    return {"quality": "few images",
            "message": f"thresholds rest on {normal} normal image(s): a false-alarm rate of {100 * target_fpr:g}% "
                       f"is measurable from {needed}, so until then the threshold is just above the highest "
                       f"normal score; add normal images or review decisions to refine it"}


def thresholds_at_fpr(normal: ReferenceScores, defects: np.ndarray, target_fpr: float, floor: float | None = None,
                      reference_scores: np.ndarray | None = None, note: str = "") -> Thresholds:
    """Thresholds with their provenance from scored normal images (and labelled defects): the image
    threshold at ``target_fpr`` (:func:`threshold_at_fpr`) — or, given a ``floor`` (a checkpoint's own
    threshold) and too few images to read a rate off, that floor raised just above them — the pixel
    threshold :data:`PIXEL_RULE` of their pixels, and the colour scale. ``reference_scores`` are those to
    report (default: the normal scores); ``note`` ends the image source."""
    scores = normal.scores
    quality = calibration_quality(len(scores), target_fpr, len(defects))
    if floor is not None and quality["quality"] != "good":
        image = max(floor, float(np.nextafter(scores.max(), np.inf)))
        source = "checkpoint threshold, raised above the product's normal images"
    else:
        image = threshold_at_fpr(scores, target_fpr, defects)
        kind = "leave-one-out scores" if normal.leave_one_out else "scores"
        source = f"{kind} of {len(scores)} normal image(s) at a {100 * target_fpr:g}% false-alarm rate" + \
            (f", {len(defects)} labelled defect(s)" if len(defects) else "")
    pixels = normal.pixels
    pixel = PIXEL_RULE.apply(pixels)
    calibration = {"kind": "leave-one-out" if normal.leave_one_out else "direct", "normal": len(scores),
                   "defects": len(defects), "target_fpr": target_fpr, **achieved_rates(scores, defects, image),
                   **quality}
    return Thresholds(image, pixel, source + note, f"auto: {PIXEL_RULE} of normal pixels", colour_range(pixels, pixel),
                      (scores if reference_scores is None else reference_scores).tolist(), calibration)


def calibration_warnings(thresholds: Thresholds) -> list[str]:
    """What a user must hear about the evidence behind an image threshold before trusting its decisions."""
    facts, warnings = thresholds.calibration, []
    target, normal = facts.get("target_fpr"), facts.get("normal")
    if thresholds.image is not None and target and normal is not None:
        needed = images_needed(target)
        if normal < needed:
            warnings.append(f"the image threshold rests on {normal} normal image(s): a {100 * target:g}% false-alarm "
                            f"target needs at least {needed} to mean anything")
    if facts.get("defects_found") == 0:
        warnings.append("no defective calibration image reached the image threshold (true-positive rate 0%): its "
                        "decisions may miss every defect")
    return warnings


def image_digest(image: np.ndarray) -> str:
    """SHA-256 of a decoded image's pixels and shape: the same picture, whatever file it came in."""
    return hashlib.sha256(f"{image.shape}".encode() + np.ascontiguousarray(image).tobytes()).hexdigest()


def calibrate_on_images(scorer: Scorer, class_name: str, normals: list[np.ndarray], defects: list[np.ndarray],
                        target_fpr: float, note: str = "") -> Thresholds:
    """Thresholds at ``target_fpr`` for a model as it decides without references (an exported model, a
    zero-shot method): normal images and defects scored directly, as new parts will be."""
    scored = score_references(scorer, class_name, normals, leave_one_out=False)
    defect_scores = np.array([s.score for s in scorer.score(defects)]) if defects else np.array([])
    return thresholds_at_fpr(scored, defect_scores, target_fpr, note=note)


def achieved_rates(normal: np.ndarray, defects: np.ndarray, threshold: float) -> dict[str, float | None]:
    """What a threshold achieves on the images it was calibrated on: the fraction of normal images it
    flags and of defective ones it finds (None without such images)."""
    return {"normal_flagged": float((normal >= threshold).mean()) if len(normal) else None,
            "defects_found": float((defects >= threshold).mean()) if len(defects) else None}


def held_out_thresholds(image: float, pixel: float, colours: tuple[float, float],
                        calibration: dict) -> Thresholds:
    """Thresholds calibrated on held-out auxiliary images, their sources said in words from ``calibration``."""
    target, pixel_fpr = calibration["target_fpr"], calibration["pixel_fpr"]
    return Thresholds(
        image, pixel,
        image_source=f"checkpoint: at most {100 * target:g}% of {calibration['normal']} held-out normal auxiliary "
                     f"images above it (target false-positive rate {100 * target:g}%)",
        pixel_source=f"checkpoint: q{1 - pixel_fpr:g} of held-out normal auxiliary pixels (target "
                     f"{100 * pixel_fpr:g}% of normal pixels outlined)",
        colour_range=colours, calibration=calibration)


Threshold = float | ThresholdRule | None  # a number, a rule read off normal images, or no decision


def calibrate(scorer: Scorer, class_name: str, references: list[np.ndarray] | None, image: Threshold,
              pixel: Threshold, fixed: Thresholds | None = None) -> Thresholds:
    """A run's thresholds, and ``scorer`` left prepared for ``class_name`` (on all ``references``).

    Rules (``auto``) are applied to the references' leave-one-out scores (see :func:`score_references`);
    numbers are taken as given. Without references, ``fixed`` thresholds decide — a checkpoint's held-out
    calibration or an exported model's — with any number given here in their place.
    """
    rules = [t for t in (image, pixel) if isinstance(t, ThresholdRule)]
    if rules and references is None:
        raise ConfigError("automatic thresholds calibrate on normal images: pass --refs DIR (a few normal "
                          "images of this product) or numeric --threshold / --pixel-threshold values")
    usable = references is not None and (rules or not scorer.few_shot or len(references) >= 2)
    scored = score_references(scorer, class_name, references) if usable else None
    if scored is not None:
        thresholds = Thresholds(calibration={"kind": "references", "images": len(references),
                                             "leave_one_out": scored.leave_one_out})
        thresholds.image, thresholds.image_source = _resolve(image, scored.scores, "reference scores")
        normal_pixels = scored.pixels
        thresholds.pixel, thresholds.pixel_source = _resolve(pixel, normal_pixels, "reference pixels")
        thresholds.reference_scores = scored.scores.tolist()
        thresholds.colour_range = colour_range(normal_pixels, thresholds.pixel)
    elif fixed is not None:
        thresholds = Thresholds.from_dict(fixed.to_dict())
        if image is not None:
            thresholds.image, thresholds.image_source = _resolve(image, None, "")
        if pixel is not None:
            thresholds.pixel, thresholds.pixel_source = _resolve(pixel, None, "")
    else:
        thresholds = Thresholds()
        thresholds.image, thresholds.image_source = _resolve(image, None, "")
        thresholds.pixel, thresholds.pixel_source = _resolve(pixel, None, "")
    if scored is not None and scored.parts is not None:
        scorer.prepare_from_parts(class_name, scored.parts)
    else:
        scorer.prepare(class_name, references if scorer.few_shot else None)
    return thresholds


def _resolve(threshold: Threshold, normal_values: np.ndarray | None, what: str) -> tuple[float | None, str]:
    if isinstance(threshold, ThresholdRule):
        return threshold.apply(normal_values), f"auto: {threshold} of {what}"
    if threshold is None:
        return None, "none"
    return float(threshold), "given"
