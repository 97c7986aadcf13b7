"""Per-region overlap (PRO) and its normalised area up to a false-positive rate (AUPRO), exactly.

Regions are the 8-connected components of each ground-truth mask (never spanning images). PRO(t) is
the mean over all regions of the category of the fraction of the region scoring ``>= t``; FPR(t) is
taken over every anomaly-free pixel. Giving each anomalous pixel the weight
``1 / (its region's size * number of regions)`` makes PRO(t) the summed weight of the pixels scoring
``>= t``, so PRO is a cumulative sum over the same sort as the other pixel metrics.

The area is the trapezoid integral from FPR 0 to ``max_fpr``, the point at ``max_fpr`` linearly
interpolated, divided by ``max_fpr`` (not a rescaled FPR axis, not a threshold grid).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from zsad.metrics.inputs import maps_and_masks
from zsad.metrics.ranking import Ranking, rank

_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def region_weights(masks: np.ndarray) -> np.ndarray:
    """For the pixels ``masks[masks]`` (boolean ``[N, H, W]``), in that order, their PRO weights."""
    region_ids = []
    n_regions = 0
    for mask in masks:
        if mask.any():
            labelled, n = ndimage.label(mask, structure=_EIGHT_NEIGHBOURS)
            region_ids.append(labelled[mask] + (n_regions - 1))
            n_regions += n
    if not region_ids:
        return np.empty(0)
    ids = np.concatenate(region_ids)
    sizes = np.bincount(ids)
    return 1.0 / (sizes[ids] * n_regions)


def rank_pixels(maps: np.ndarray, masks: np.ndarray) -> Ranking:
    """The ranking of checked ``[N, H, W]`` maps against masks, carrying the PRO weights."""
    return rank(maps.ravel(), masks.ravel(), weights=region_weights(masks))


def ranked_pro_curve(r: Ranking, max_fpr: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, pro)`` from ``(0, 0)`` to FPR ``max_fpr``; empty where undefined."""
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    if not r.defined or r.weight is None:
        return np.empty(0), np.empty(0)
    fpr, pro = r.fpr_curve(r.weight)
    return _up_to(fpr, pro, max_fpr)


def ranked_aupro(r: Ranking, max_fpr: float = 0.3) -> float:
    fpr, pro = ranked_pro_curve(r, max_fpr)
    if fpr.size == 0:
        return float("nan")
    return float(np.sum(np.diff(fpr) * (pro[1:] + pro[:-1])) / 2 / max_fpr)


def _up_to(x: np.ndarray, y: np.ndarray, max_x: float) -> tuple[np.ndarray, np.ndarray]:
    """The points of a curve with non-decreasing ``x`` from 0 to 1, cut at ``max_x`` by interpolation."""
    inside = int(np.searchsorted(x, max_x, side="right"))
    if x[inside - 1] == max_x:
        return x[:inside], y[:inside]
    x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
    at_max = y0 + (y1 - y0) * (max_x - x0) / (x1 - x0)
    return np.append(x[:inside], max_x), np.append(y[:inside], at_max)


def aupro(maps: Any, masks: Any, max_fpr: float = 0.3) -> float:
    """Area under the PRO curve up to ``max_fpr``, divided by ``max_fpr``.

    ``maps`` and ``masks`` are ``[N, H, W]`` (or ``[..., H, W]``) scores and ground truth of one
    category. NaN without anomalous or without anomaly-free pixels.
    """
    return ranked_aupro(rank_pixels(*maps_and_masks(maps, masks)), max_fpr)


def pro_curve(maps: Any, masks: Any, max_fpr: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, pro)`` up to ``max_fpr``, the curve :func:`aupro` integrates; empty where undefined."""
    return ranked_pro_curve(rank_pixels(*maps_and_masks(maps, masks)), max_fpr)
