"""Large images: maps saved compactly, overlays shrunk without losing a small defect, the tiled run's work
counted before it starts (and then counted exactly by its progress bar)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsad.errors import ConfigError
from zsad.inference.folder import PredictConfig, map_bytes, plan_tiles
from zsad.inference.inspection import Inspection, Thresholds, find_regions
from zsad.inference.overlay import GAP, PREDICTED_COLOUR, block_max, inspection_picture
from zsad.inference.tiling import Tiling

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_maps_in_float16_and_compressed_keep_three_digits_and_shrink():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.random((300, 400)), 0), 1).astype(np.float32)
    smooth /= smooth.max()
    plain, half, packed = (map_bytes(smooth, form) for form in ("float32", "float16", "compressed"))
    assert len(half) < 0.51 * len(plain) and len(packed) < len(half)
    np.testing.assert_allclose(np.load(io.BytesIO(half)), smooth, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.load(io.BytesIO(packed))["anomaly_map"], smooth, rtol=1e-3, atol=1e-4)
    assert np.array_equal(np.load(io.BytesIO(plain)), smooth)
    with pytest.raises(ConfigError, match="do not fit float16; save maps as float32"):
        map_bytes(np.full((2, 2), 1e6, np.float32), "float16")
    with pytest.raises(ConfigError, match="save_maps must be one of"):
        PredictConfig(save_maps="png")


def test_a_shrunk_overlay_still_outlines_a_one_pixel_defect():
    image = np.full((300, 200, 3), 90, dtype=np.uint8)
    anomaly_map = np.zeros((300, 200), dtype=np.float32)
    anomaly_map[151, 77] = 1.0  # one pixel: averaging would dilute it ninefold
    thresholds = Thresholds(pixel=0.5, colour_range=(0.0, 1.0))
    inspection = Inspection("x.png", 1.0, "", anomaly_map, find_regions(anomaly_map, 0.5), thresholds)
    picture = inspection_picture(image, inspection, max_side=100)
    assert picture.shape == (100, 2 * 67 + GAP, 3)  # a whole factor of 3: 300 x 200 -> 100 x 67
    heat = picture[:, 67 + GAP:]
    assert (heat[50, 25] == PREDICTED_COLOUR).all()  # the block holding the pixel, outlined
    assert inspection_picture(image, inspection, max_side=0).shape == (300, 2 * 200 + GAP, 3)
    assert block_max(np.arange(10, dtype=np.float32).reshape(2, 5), 2).tolist() == [[6, 8, 9]]


def test_plan_counts_tiles_from_headers(tmp_path):
    sizes = [(500, 700), (224, 224), (100, 90)]
    paths = []
    for k, (h, w) in enumerate(sizes):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    tiling = Tiling(224, 0.25)
    plan = plan_tiles(tiling, paths[:2], [*paths, tmp_path / "broken.png"])
    assert (plan.references, plan.images) == (2, 3)
    assert plan.reference_tiles == len(tiling.boxes(500, 700)) + 1 == 13
    assert plan.image_tiles == 13 + 1 and plan.largest_pixels == 500 * 700
    assert plan.reference_pixels == 500 * 700 + 224**2


@pytest.mark.parametrize("references, thresholds, passes", [
    (3, ["--threshold", "auto"], 2),  # each reference's part prepared once (knn composes), each scored once
    (1, ["--threshold", "0.5", "--pixel-threshold", "0.5"], 1),  # one reference: only the final memory
])
def test_the_tiled_progress_bar_counts_the_work_exactly(tmp_path, references, thresholds, passes):
    """The bar's total (announced before the work) is what calibration, preparation and inspection then do,
    leave-one-out included; the announcement names tiles and a memory estimate."""
    rng = np.random.default_rng(1)
    for folder, count in (("refs", references), ("images", 2)):
        (tmp_path / folder).mkdir()
        for k in range(count):
            Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / folder / f"{k}.png")
    done = subprocess.run([sys.executable, "-m", "zsad", "predict", "--method", "knn", "--backbone", "clip-tiny",
                           "--image-size", "32", "--tile", "auto", "--refs", str(tmp_path / "refs"), "--images",
                           str(tmp_path / "images"), "--out", str(tmp_path / "out"), *thresholds],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    tiles = len(Tiling(32, 0.25).boxes(70, 90))
    assert (f"tiling: {references * tiles} tiles of {references} reference(s), {2 * tiles} of 2 image(s) at 32 px"
            in done.stderr)
    assert re.search(r"peak memory about \d+\.\d GB", done.stderr)
    counts = re.findall(r"(\d+)/(\d+)", done.stderr)
    assert counts and counts[-1][0] == counts[-1][1] == str(2 * tiles + references * tiles * passes)
