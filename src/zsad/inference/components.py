"""8-connected components of a boolean mask and statistics of a map over each, in numpy alone.

The runtime install has no SciPy (143 MB for one labelling call), so components are found on runs: each
row's maximal runs of set pixels are nodes, runs in adjacent rows that touch (diagonals included) are
edges, and the edges are merged by repeated minimum-label propagation with pointer jumping. Components
are numbered in raster order of their first pixel, as ``scipy.ndimage.label`` numbers them, and all work
is vectorised over runs and pixels, so a 20-megapixel map costs a few sorts, not a Python loop per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Components:
    """Per component (index ``k`` = component ``k + 1`` in raster order): bounding boxes, areas, and the
    peak, its first position and the mean of the map over the component's pixels."""

    top: np.ndarray
    left: np.ndarray
    bottom: np.ndarray  # exclusive
    right: np.ndarray  # exclusive
    area: np.ndarray
    peak: np.ndarray
    peak_row: np.ndarray
    peak_col: np.ndarray
    mean: np.ndarray

    def __len__(self) -> int:
        return len(self.area)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, first column and end column (exclusive) of every maximal run of set pixels, in raster order."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1).ravel()  # +1 where a run starts, -1 one past where it ends
    starts, ends = np.flatnonzero(steps == 1), np.flatnonzero(steps == -1)
    return starts // (width + 1), starts % (width + 1), ends % (width + 1)


def _touching_pairs(row: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) of runs where j lies in the row below i and touches it, diagonals included."""
    span = int(end.max()) + 2 if len(end) else 1
    start_keys, end_keys = row * span + start, row * span + end
    below = (row + 1) * span
    first = np.searchsorted(end_keys, below + start, side="left")  # first run below ending at or after start
    last = np.searchsorted(start_keys, below + end, side="right") - 1  # last run below starting by end
    count = np.maximum(last - first + 1, 0)
    upper = np.repeat(np.arange(len(row)), count)
    offsets = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    return upper, np.repeat(first, count) + offsets


def _roots(nodes: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each node, the smallest node index of its connected component under edges ``(a, b)``."""
    label = np.arange(nodes)
    while True:
        joined = np.minimum(label[a], label[b])
        updated = label.copy()
        np.minimum.at(updated, a, joined)
        np.minimum.at(updated, b, joined)
        updated = updated[updated]
        if np.array_equal(updated, label):
            return label
        label = updated


def label_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The runs of ``mask`` (row, start, end) and each run's component number (1-based, raster order)."""
    row, start, end = _runs(mask)
    upper, lower = _touching_pairs(row, start, end)
    roots = _roots(len(row), upper, lower)
    _, number = np.unique(roots, return_inverse=True)
    return row, start, end, number.reshape(-1) + 1


def components(values: np.ndarray, mask: np.ndarray) -> Components:
    """The 8-connected components of ``mask`` with the statistics of ``values`` over each."""
    row, start, end, number = label_runs(mask)
    count = int(number.max()) if len(number) else 0
    index = number - 1
    length = end - start
    top = np.full(count, np.iinfo(np.int64).max)
    left = top.copy()
    bottom = np.zeros(count, dtype=np.int64)
    right = bottom.copy()
    np.minimum.at(top, index, row)
    np.minimum.at(left, index, start)
    np.maximum.at(bottom, index, row + 1)
    np.maximum.at(right, index, end)
    area = np.bincount(index, weights=length, minlength=count).astype(np.int64)

    pixel_component = np.repeat(index, length)  # the set pixels in raster order, which is run order
    positions = np.flatnonzero(mask)
    pixel_values = values.ravel()[positions]
    peak = np.full(count, -np.inf, dtype=pixel_values.dtype)
    np.maximum.at(peak, pixel_component, pixel_values)
    first_peak = np.full(count, values.size, dtype=np.int64)
    at_peak = pixel_values == peak[pixel_component]
    np.minimum.at(first_peak, pixel_component[at_peak], positions[at_peak])
    total = np.bincount(pixel_component, weights=pixel_values.astype(np.float64), minlength=count)
    peak_row, peak_col = np.divmod(first_peak, mask.shape[1])
    return Components(top, left, bottom, right, area, peak, peak_row, peak_col, total / np.maximum(area, 1))
