"""The numpy labelling the runtime uses instead of SciPy gives SciPy's components, numbering and statistics."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from zsad.inference.components import components
from zsad.inference.inspection import find_regions


def scipy_regions(values: np.ndarray, mask: np.ndarray) -> list[tuple]:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    index = np.arange(1, count + 1)
    boxes = ndimage.find_objects(labels)
    return [((rows.start, cols.start, rows.stop, cols.stop), int(area), float(peak), tuple(map(int, at)), float(mean))
            for (rows, cols), area, peak, at, mean in zip(
                boxes, ndimage.sum_labels(np.ones_like(labels), labels, index), ndimage.maximum(values, labels, index),
                ndimage.maximum_position(values, labels, index), ndimage.mean(values, labels, index))]


def numpy_regions(values: np.ndarray, mask: np.ndarray) -> list[tuple]:
    found = components(values, mask)
    return [((int(found.top[k]), int(found.left[k]), int(found.bottom[k]), int(found.right[k])), int(found.area[k]),
             float(found.peak[k]), (int(found.peak_row[k]), int(found.peak_col[k])), float(found.mean[k]))
            for k in range(len(found))]


def assert_same(values: np.ndarray, mask: np.ndarray) -> None:
    ours, theirs = numpy_regions(values, mask), scipy_regions(values, mask)
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs):
        assert mine[:3] == reference[:3]
        assert np.isclose(mine[4], reference[4], rtol=1e-9, atol=1e-12)
        # On ties SciPy's position is an implementation detail; ours is the first in raster order.
        (top, left, bottom, right), peak_at = mine[0], mine[3]
        box = values[top:bottom, left:right] * mask[top:bottom, left:right]
        first = np.flatnonzero((box == mine[2]) & mask[top:bottom, left:right])
        assert values[peak_at] == mine[2] and mask[peak_at]
        if len(first) == 1:
            assert peak_at == reference[3]


@settings(max_examples=150, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 24), st.integers(1, 24)),
              elements=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])),
       st.sampled_from([0.1, 0.5, 0.9]))
def test_matches_scipy_on_any_mask(values, level):
    """Quantised values make ties (the first peak position must win) and every shape of mask likely."""
    assert_same(values, values >= level)


def test_matches_scipy_on_large_noisy_and_snaking_masks():
    rng = np.random.default_rng(0)
    values = rng.random((300, 400)).astype(np.float32)
    assert_same(values, values > 0.55)  # thousands of small, touching components
    snake = np.zeros((61, 61), dtype=bool)
    snake[::2, 1:-1] = True  # rows joined alternately at the right and left ends: one long component
    snake[1::4, -2] = True
    snake[3::4, 1] = True
    assert_same(values[:61, :61], snake)
    assert len(components(values[:61, :61], snake)) == 1


def test_find_regions_limit_keeps_the_highest_peaks_first():
    values = np.zeros((20, 20), dtype=np.float32)
    values[2, 2], values[10, 10], values[15, 3] = 0.6, 0.9, 0.7
    regions = find_regions(values, 0.5, limit=2)
    assert [r.peak_at for r in regions] == [(10, 10), (3, 15)]
    assert find_regions(values, None) == [] and find_regions(values, 2.0) == []


@settings(max_examples=80, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 30), st.integers(1, 30))), st.integers(1, 4))
def test_outline_matches_scipy_erosion(mask, width):
    from zsad.inference.overlay import outline

    assert np.array_equal(outline(mask, width), mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0))


def test_turbo_table_is_matplotlibs():
    from matplotlib import colormaps

    from zsad.inference.overlay import TURBO

    expected = (colormaps["turbo"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    assert np.array_equal(TURBO, expected)
