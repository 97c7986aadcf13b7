"""Turning what callers pass (NumPy arrays, torch tensors, 0/1 or bool labels) into checked NumPy arrays.

Invalid input is a programming error upstream, so it raises ``ValueError`` with the offending shape or
value; it is never silently reinterpreted.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy view of ``x``; torch tensors are detached and moved to the CPU once.

    torch is looked up in ``sys.modules`` rather than imported: if it was never imported, ``x`` cannot be
    a tensor, and metrics stay importable without paying for torch.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds every value exactly
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def as_scores(x: Any, name: str) -> np.ndarray:
    """Floating scores, with the narrowest float dtype that represents every input value exactly.

    float32 stays float32 (half the memory and sort time of float64); float64 and wide integers become
    float64. Rounding to a narrower type would merge distinct scores into ties and change the metrics.
    """
    x = to_numpy(x)
    x = x.astype(np.result_type(x.dtype, np.float32), copy=False)
    if np.isnan(x).any():
        raise ValueError(f"{name} contain NaN")
    return x


def as_labels(x: Any, name: str) -> np.ndarray:
    """Boolean labels from bool or 0/1 values (positive = anomalous)."""
    x = to_numpy(x)
    if x.dtype == np.bool_:
        return x
    invalid = (x != 0) & (x != 1)
    if invalid.any():
        raise ValueError(f"{name} must be binary (bool or 0/1), found the value {x[invalid].flat[0]!r}")
    return x == 1


def scores_and_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flat scores and labels of equal length (any shapes with the same number of elements)."""
    scores = as_scores(scores, "scores").ravel()
    labels = as_labels(labels, "labels").ravel()
    if scores.size != labels.size:
        raise ValueError(f"scores has {scores.size} values but labels has {labels.size}")
    return scores, labels


def maps_and_masks(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Maps and masks of one identical shape ``[..., H, W]``, reshaped to ``[N, H, W]`` images."""
    maps = as_scores(maps, "maps")
    masks = as_labels(masks, "masks")
    if maps.shape != masks.shape:
        raise ValueError(f"maps shape {maps.shape} does not match masks shape {masks.shape}")
    if maps.ndim < 2:
        raise ValueError(f"maps and masks must have shape [..., H, W], got {maps.shape}")
    shape = (math.prod(maps.shape[:-2]), *maps.shape[-2:])
    return maps.reshape(shape), masks.reshape(shape)
