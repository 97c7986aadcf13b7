"""Deliberately simple, slow metrics that follow the definitions literally, threshold by threshold.

They exist only to check the fast implementations (in the tests) and to measure them against
(``benchmarks/metrics.py``). They share no code with them: regions, PRO and FPR are recomputed directly
at every distinct score, so an error in the cumulative-count bookkeeping cannot hide in both. Time and
memory grow with (distinct scores x pixels): use them on small inputs only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def f1_max_reference(scores: np.ndarray, labels: np.ndarray) -> float:
    """The best ``F1 = 2PR/(P+R)`` over predictions ``score >= t``, for every distinct score ``t``."""
    scores, labels = np.ravel(scores), np.ravel(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    best = 0.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        if tp == 0:
            continue
        precision = tp / predicted.sum()
        recall = tp / labels.sum()
        best = max(best, 2 * precision * recall / (precision + recall))
    return float(best)


def pro_curve_reference(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The full ``(fpr, pro)`` curve of ``[N, H, W]`` maps: ``(0, 0)``, then one point per distinct score."""
    masks = np.asarray(masks).astype(bool)
    regions = []
    for index, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(index, labelled == region) for region in range(1, n + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fprs.append(np.mean(above[normal]))
        pros.append(np.mean([np.mean(above[index][region]) for index, region in regions]))
    return np.array(fprs), np.array(pros)


def aupro_reference(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """Trapezoid area under the PRO curve up to ``max_fpr`` (interpolated there), divided by ``max_fpr``."""
    masks = np.asarray(masks).astype(bool)
    if masks.all() or not masks.any():
        return float("nan")
    fprs, pros = pro_curve_reference(maps, masks)
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr
