"""The seven numbers reported per category: image AUROC/AP/F1-max and pixel AUROC/AP/F1-max/AUPRO."""

from __future__ import annotations

from typing import Any

from zsad.metrics.binary import ranked_auroc, ranked_average_precision, ranked_f1_max
from zsad.metrics.inputs import maps_and_masks, scores_and_labels
from zsad.metrics.pro import rank_pixels, ranked_aupro
from zsad.metrics.ranking import rank

METRIC_KEYS = (
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "pixel_aupro",
)


def image_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """Image-level AUROC, AP and F1-max of ``[N]`` scores against ``[N]`` labels (1 = anomalous)."""
    r = rank(*scores_and_labels(scores, labels))
    return {
        "image_auroc": ranked_auroc(r),
        "image_ap": ranked_average_precision(r),
        "image_f1_max": ranked_f1_max(r),
    }


def pixel_metrics(maps: Any, masks: Any, max_fpr: float = 0.3) -> dict[str, float]:
    """Pixel-level AUROC, AP, F1-max and AUPRO of ``[N, H, W]`` maps against masks, from one ranking."""
    r = rank_pixels(*maps_and_masks(maps, masks))
    return {
        "pixel_auroc": ranked_auroc(r),
        "pixel_ap": ranked_average_precision(r),
        "pixel_f1_max": ranked_f1_max(r),
        "pixel_aupro": ranked_aupro(r, max_fpr),
    }


def compute_metrics(scores: Any, labels: Any, maps: Any = None, masks: Any = None) -> dict[str, float]:
    """All of :data:`METRIC_KEYS`; the pixel ones are NaN when the category has no masks (both ``None``)."""
    if (maps is None) != (masks is None):
        raise ValueError("maps and masks must be given together (or both None)")
    pixel = pixel_metrics(maps, masks) if maps is not None else dict.fromkeys(METRIC_KEYS[3:], float("nan"))
    return image_metrics(scores, labels) | pixel
