"""The one inspection loop, without torch: batching, tiling, score parts, decisions and regions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from zsad.inference.inspection import Inspection, Thresholds, find_regions
from zsad.inference.scoring import Inspector, ModelOutput, Scorer
from zsad.inference.tiling import Tiling


class Brightness:
    """A model whose map is each pixel's mean brightness and whose score is the map's maximum; it records
    every call's batch size and what it was prepared with."""

    few_shot, zero_shot = False, True

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.prepared: tuple[str, int] | None = None

    def prepare(self, class_name: str, references: list[np.ndarray] | None, progress=None) -> None:
        self.prepared = (class_name, len(references or []))

    def run(self, pieces: list[np.ndarray]) -> ModelOutput:
        self.calls.append(len(pieces))
        maps = [piece.mean(-1).astype(np.float32) / 255 for piece in pieces]
        scores = np.array([m.max() for m in maps], dtype=np.float32)
        return ModelOutput(maps, scores, {"mean": np.array([m.mean() for m in maps], dtype=np.float32)})


def _image(height: int, width: int, square: tuple[int, int, int] | None = None) -> np.ndarray:
    image = np.full((height, width, 3), 40, dtype=np.uint8)
    if square:
        top, left, side = square
        image[top : top + side, left : left + side] = 250
    return image


def test_a_large_request_is_scored_in_bounded_batches_with_its_parts():
    model = Brightness()
    scored = Scorer(model, batch_size=4).score([_image(8, 8)] * 10)
    assert model.calls == [4, 4, 2]
    assert [s.parts["mean"] for s in scored] == pytest.approx([40 / 255] * 10)


def test_tiling_covers_the_image_and_prepares_on_reference_tiles():
    model = Brightness()
    scorer = Scorer(model, Tiling(16, 0.25), batch_size=3)
    scorer.prepare("plate", [_image(32, 32)])
    assert model.prepared == ("plate", 9)  # 3 x 3 tiles of the one reference
    (scored,) = scorer.score([_image(40, 56, square=(20, 30, 6))])
    assert scored.anomaly_map.shape == (40, 56) and scored.parts == {}
    assert scored.score == pytest.approx(250 / 255) and scored.anomaly_map[22, 32] == pytest.approx(250 / 255)
    assert max(model.calls) <= 3


def test_the_inspector_decides_and_outlines_under_its_thresholds():
    thresholds = Thresholds(image=0.5, pixel=0.5, image_source="given", pixel_source="given")
    inspector = Inspector(Scorer(Brightness()), thresholds)
    normal, defect = inspector.inspect([_image(24, 24), _image(24, 32, square=(4, 10, 5))], ["a.png", "b.png"])
    assert (normal.source, normal.decision, normal.regions) == ("a.png", "normal", [])
    assert defect.decision == "anomalous" and defect.size == (32, 24)
    (region,) = defect.regions
    assert region.box == (10, 4, 5, 5) and region.area == 25
    assert 10 <= region.peak_at[0] < 15 and 4 <= region.peak_at[1] < 9  # a flat square: any of its pixels
    assert defect.to_dict()["regions"][0]["box"] == [10, 4, 5, 5]
    assert Inspector(Scorer(Brightness()), Thresholds()).inspect([_image(4, 4)])[0].decision == ""


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(2, 24), st.integers(2, 24)),
              elements=st.floats(0, 1, width=32)), st.floats(0.05, 0.95))
def test_regions_partition_the_pixels_above_the_threshold(anomaly_map, threshold):
    threshold = float(np.float32(threshold))  # maps are float32: a threshold between two float32s is moot
    regions = find_regions(anomaly_map, threshold, limit=1000)
    above = anomaly_map >= threshold
    assert sum(r.area for r in regions) == above.sum()
    assert [r.peak for r in regions] == sorted((r.peak for r in regions), reverse=True)
    for region in regions:
        x, y, width, height = region.box
        px, py = region.peak_at
        assert x <= px < x + width and y <= py < y + height and anomaly_map[py, px] == region.peak
        assert threshold <= region.mean <= region.peak + 1e-6 and region.area <= width * height
        assert above[y : y + height, x : x + width].sum() >= region.area


def test_regions_are_capped_and_none_without_a_threshold():
    checker = (np.indices((20, 20)).sum(0) % 4 == 0).astype(np.float32)  # many isolated peaks
    assert len(find_regions(checker, 0.5, limit=7)) == 7
    assert find_regions(checker, None) == []
    assert isinstance(Inspection("x", 0.0, "", checker, [], Thresholds()).to_dict()["regions"], list)
