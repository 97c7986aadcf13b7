"""AUPRO as the public reference codes compute it, for telling a metric gap from a model gap.

The codes behind most published zero-/few-shot tables (the CFlow-AD ``cal_pro_score`` copied into
AnomalyCLIP, APRIL-GAN, DictAS and others) evaluate PRO and FPR at 200 thresholds evenly spaced between
the smallest and the largest map value, keep the thresholds whose FPR is below 0.3, **min-max rescale
that FPR axis to [0, 1]** and take the trapezoid area. The rescaling stretches the curve's first point
to FPR 0 and its last one to 1, and the coarse grid skips the high-score end, so the number differs
from the exact AUPRO (:func:`zsad.metrics.aupro`) — sometimes by several points. It is offered only
under this name, as a compatibility metric; the exact one stays the default everywhere.

Regions are 8-connected components of each mask, as there; a pixel is positive when its score is
``> threshold``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

COMPAT_AUPRO = "pixel_aupro_compat"  # its name in results, next to the exact "pixel_aupro"
_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def aupro_compat(maps: np.ndarray, masks: np.ndarray, steps: int = 200, max_fpr: float = 0.3) -> float:
    """The reference codes' AUPRO of anomaly maps ``[N, H, W]`` against boolean masks ``[N, H, W]``."""
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    labels = np.zeros(masks.shape, dtype=np.int64)
    count = 0
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=_EIGHT_NEIGHBOURS)
        labels[i] = np.where(labelled > 0, labelled + count, 0)
        count += n
    if count == 0 or masks.all():
        return float("nan")
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    normal = ~masks
    low, high = maps.min(), maps.max()
    pros, fprs = [], []
    for threshold in np.arange(low, high, (high - low) / steps):
        above = maps > threshold
        covered = np.bincount(labels[above], minlength=count + 1)[1:]
        pros.append((covered / areas).mean())
        fprs.append(np.logical_and(above, normal).sum() / normal.sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < max_fpr
    if keep.sum() < 2:
        return float("nan")
    fprs, pros = fprs[keep], pros[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    # The trapezoid in threshold order (FPR falling), sign flipped, as sklearn's ``auc`` does: with ties in
    # FPR the order of their PRO values decides which neighbours a segment joins.
    return float(-np.sum((fprs[1:] - fprs[:-1]) * (pros[1:] + pros[:-1]) / 2))
