"""ROC, PR and PRO curves of one run, resampled on fixed grids so runs can be stored small and averaged.

The exact curves have a corner per distinct score (millions for pixel curves); a report needs their
shape, and averaging over categories and seeds needs a shared x axis. Values on the grid:

* ROC and PRO: the exact curve's linear interpolation between corners (the curve the metrics integrate);
* PR: interpolated precision, the best precision at recall >= r (the usual way to average PR curves).
"""

from __future__ import annotations

import numpy as np

from zsad.metrics.binary import ranked_pr_curve, ranked_roc_curve
from zsad.metrics.pro import rank_pixels, ranked_pro_curve
from zsad.metrics.ranking import rank

MAX_FPR = 0.3  # the PRO integration limit of the metrics
GRIDS = {
    "roc": np.linspace(0, 1, 101),
    "pr": np.linspace(0, 1, 101),
    "pro": np.linspace(0, MAX_FPR, 61),
}
CURVES = {  # curve name -> the grid it lives on
    "image_roc": "roc",
    "image_pr": "pr",
    "pixel_roc": "roc",
    "pixel_pr": "pr",
    "pixel_pro": "pro",
}


def on_grid(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``y(grid)`` for a curve through corners ``(x, y)`` with non-decreasing ``x``, vertical steps allowed.

    At an ``x`` shared by several corners the highest ``y`` counts; between corners the value is linear.
    """
    right = np.searchsorted(x, grid, side="right")
    left = np.clip(right - 1, 0, x.size - 1)
    right = np.clip(right, 0, x.size - 1)
    span = x[right] - x[left]
    fraction = np.divide(grid - x[left], span, out=np.zeros_like(grid), where=span > 0)
    return y[left] + fraction * (y[right] - y[left])


def interpolated_precision(precision: np.ndarray, recall: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The best precision at recall ``>= r`` for every ``r`` in ``grid``."""
    best_from_here = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.clip(np.searchsorted(recall, grid, side="left"), 0, recall.size - 1)
    return best_from_here[index]


def run_curves(scores: np.ndarray, labels: np.ndarray, maps: np.ndarray,
               masks: np.ndarray) -> dict[str, np.ndarray | None]:
    """Every curve of :data:`CURVES` for one run on its grid; None where undefined (e.g. no anomalous pixels)."""
    image = rank(np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool))
    pixel = rank_pixels(np.asarray(maps, dtype=np.float32), np.asarray(masks, dtype=bool))
    roc = {"image": ranked_roc_curve(image), "pixel": ranked_roc_curve(pixel)}
    pr = {"image": ranked_pr_curve(image), "pixel": ranked_pr_curve(pixel)}
    curves: dict[str, np.ndarray | None] = {}
    for level in ("image", "pixel"):
        fpr, tpr = roc[level]
        curves[f"{level}_roc"] = on_grid(fpr, tpr, GRIDS["roc"]) if fpr.size else None
        precision, recall = pr[level]
        curves[f"{level}_pr"] = interpolated_precision(precision, recall, GRIDS["pr"]) if recall.size else None
    fpr, pro = ranked_pro_curve(pixel, MAX_FPR)
    curves["pixel_pro"] = on_grid(fpr, pro, GRIDS["pro"]) if fpr.size else None
    return curves


def mean_curve(curves: list[np.ndarray | None]) -> np.ndarray | None:
    """The pointwise mean of the defined curves, None when there is none."""
    defined = [c for c in curves if c is not None]
    return np.mean(defined, axis=0) if defined else None
