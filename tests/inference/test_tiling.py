"""Tile geometry and blending (numpy only): coverage, bounds, exact stitching, argument errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsad.errors import ConfigError
from zsad.inference.tiling import Stitcher, Tiling, check_image_size, parse_tile, tiles


@settings(max_examples=100, deadline=None)
@given(height=st.integers(2, 500), width=st.integers(2, 500), tile=st.integers(1, 300),
       overlap=st.floats(0, 0.89))
def test_tiles_cover_every_pixel_and_stay_inside(height, width, tile, overlap):
    tiling = Tiling(tile, overlap)
    covered = np.zeros((height, width), dtype=int)
    for top, left, th, tw in tiling.boxes(height, width):
        assert 0 <= top and top + th <= height and 0 <= left and left + tw <= width
        assert (th, tw) == (min(tile, height), min(tile, width))
        covered[top : top + th, left : left + tw] += 1
    assert covered.min() >= 1


@settings(max_examples=100, deadline=None)
@given(height=st.integers(2, 300), width=st.integers(2, 300), tile=st.integers(8, 128),
       overlap=st.sampled_from([0.0, 0.25, 0.5]), value=st.floats(-5, 5))
def test_stitching_tiles_of_one_map_gives_that_map_back(height, width, tile, overlap, value):
    """Each tile carries its crop of one smooth map: blending must reproduce the map exactly."""
    tiling = Tiling(tile, overlap)
    yy, xx = np.mgrid[0:height, 0:width]
    truth = (value + np.sin(yy / 7) + np.cos(xx / 5)).astype(np.float32)
    stitcher = Stitcher(height, width, tiling)
    for box, _ in tiles(np.zeros((height, width, 3), np.uint8), tiling):
        top, left, th, tw = box
        stitcher.add(box, truth[top : top + th, left : left + tw])
    np.testing.assert_allclose(stitcher.result(), truth, atol=1e-4)


def test_blending_window_fades_only_towards_neighbours():
    stitcher = Stitcher(100, 100, Tiling(60, 0.5))
    corner = stitcher.window(0, 0, 60, 60)
    assert corner[0, 0] == 1 and corner[-1, -1] < 0.01 and corner.min() > 0
    inner = stitcher.window(40, 40, 60, 60)
    assert inner[30, 30] == 1 and inner[0, 30] < 0.01 and inner[-1, 30] == 1  # the last row meets the border


def test_bad_tiling_arguments_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"overlap must be in \[0, 0.9\)"):
        Tiling(64, 0.9)
    with pytest.raises(ConfigError, match="overlap"):
        Tiling(64, -0.1)
    with pytest.raises(ConfigError, match="smaller than the backbone's patch size 14"):
        parse_tile("10", 336, 14)
    with pytest.raises(ConfigError, match="number of pixels or auto"):
        parse_tile("big", 336, 14)
    assert parse_tile("auto", 336, 14) == 336 and parse_tile(None, 336, 14) is None
    with pytest.raises(ConfigError, match="1x1 pixels: too small"):
        check_image_size(1, 1, 10**8, "dot.png")
    with pytest.raises(ConfigError, match="0x5 pixels"):
        check_image_size(5, 0, 10**8, "empty.png")
    with pytest.raises(ConfigError, match=r"huge.png is 4000x3000 \(12 MP\), over the limit of 10 MP"):
        check_image_size(3000, 4000, 10**7, "huge.png")
