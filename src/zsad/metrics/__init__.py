"""Exact image- and pixel-level anomaly detection metrics, including AUPRO, from one sort of the scores."""

from zsad.metrics.binary import auroc, average_precision, f1_max, pr_curve, roc_curve
from zsad.metrics.pro import aupro, pro_curve
from zsad.metrics.summary import METRIC_KEYS, compute_metrics, image_metrics, pixel_metrics

__all__ = [
    "METRIC_KEYS",
    "aupro",
    "auroc",
    "average_precision",
    "compute_metrics",
    "f1_max",
    "image_metrics",
    "pixel_metrics",
    "pr_curve",
    "pro_curve",
    "roc_curve",
]
