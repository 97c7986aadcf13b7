"""Prediction on new images: outputs per readable file, skipped files, and thresholds from normal references."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import Tensor

from zsad.cli import main
from zsad.inference.calibration import IMAGE_RULE, PIXEL_RULE, ThresholdRule, parse_threshold, score_references
from zsad.engine.scorer import method_scorer, predict_images
from zsad.inference.folder import PredictConfig, list_files, overlay_names
from zsad.errors import ConfigError, DataError
from zsad.methods.base import Method, MethodConfig, Prediction
from zsad.inference.overlay import GAP, PREDICTED_COLOUR

from fakes import ColourDistance, NoBackbone

SIZE = 32


class MeanColour(ColourDistance):
    """The colour-distance double as a few-shot-only method: it needs references."""

    name = "mean-colour"
    zero_shot = False


class Brightness(ColourDistance):
    """A zero-shot-only method: the pixel's brightness, whatever the references."""

    name = "brightness"
    few_shot = False

    def prepare(self, class_name: str, references: Tensor | None) -> None:
        self.prepared_with = references

    def predict(self, images: Tensor) -> Prediction:
        anomaly_map = images.mean(1)
        return Prediction(anomaly_map, anomaly_map.flatten(1).amax(1))


def _method(cls: type[Method] = MeanColour) -> Method:
    return cls(NoBackbone(), MethodConfig(image_size=SIZE))


def _save(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 30),
          spot: tuple[int, int, int] | None = None) -> None:
    """A flat ``size`` (W, H) image of ``colour``, with a square of ``spot`` colour in its middle if given."""
    pixels = np.full((size[1], size[0], 3), colour, dtype=np.uint8)
    if spot is not None:
        h, w = size[1], size[0]
        pixels[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = spot
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def references(tmp_path: Path) -> Path:
    folder = tmp_path / "refs"
    for i, grey in enumerate((100, 110, 120, 130)):
        _save(folder / f"{i}.png", (grey, grey, grey))
    return folder


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Two normal-looking images and one with a bright defect, of different sizes, one in a subfolder;
    plus a truncated PNG, a text file and a hidden file."""
    folder = tmp_path / "images"
    _save(folder / "a.png", (115, 115, 115), (40, 30))
    _save(folder / "sub" / "b.jpg", (118, 118, 118), (50, 20))
    _save(folder / "sub" / "defect.png", (115, 115, 115), (48, 48), spot=(250, 250, 250))
    (folder / "sub" / "broken.png").write_bytes((folder / "a.png").read_bytes()[:60])
    (folder / "notes.txt").write_text("not an image")
    _save(folder / ".hidden.png", (0, 0, 0))
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_folder_with_unreadable_files_completes(images, references, tmp_path):
    out = tmp_path / "out"
    config = PredictConfig(threshold=IMAGE_RULE, pixel_threshold=PIXEL_RULE)
    summary = predict_images(_method(), images, out, references, config)

    assert summary.predicted == 3
    scores = _rows(out / "scores.csv")
    assert [Path(r["path"]).relative_to(images).as_posix() for r in scores] == ["a.png", "sub/b.jpg", "sub/defect.png"]
    assert [r["overlay"] for r in scores] == ["overlays/a.png", "overlays/sub/b.png", "overlays/sub/defect.png"]
    written = sorted(p.relative_to(out).as_posix() for p in (out / "overlays").rglob("*") if p.is_file())
    assert written == ["overlays/a.png", "overlays/sub/b.png", "overlays/sub/defect.png"]
    for row in scores:  # the image beside its heatmap, at the original size
        width, height = Image.open(Path(row["path"])).size
        assert Image.open(out / row["overlay"]).size == (2 * width + GAP, height)
        assert float(row["score"]) >= 0 and row["decision"] in {"normal", "anomalous"}

    skipped = _rows(out / "skipped.csv")
    assert sorted(Path(r["path"]).name for r in skipped) == ["broken.png", "notes.txt"]
    assert all(r["path"] in r["reason"] for r in skipped)
    assert [Path(s.path).name for s in summary.skipped] == [Path(r["path"]).name for r in skipped]


def test_defect_is_decided_and_outlined(images, references, tmp_path):
    out = tmp_path / "out"
    predict_images(_method(), images, out, references, PredictConfig(threshold=IMAGE_RULE, pixel_threshold=PIXEL_RULE))
    decisions = {Path(r["path"]).name: r["decision"] for r in _rows(out / "scores.csv")}
    assert decisions == {"a.png": "normal", "b.jpg": "normal", "defect.png": "anomalous"}
    overlay = np.asarray(Image.open(out / "overlays" / "sub" / "defect.png"))
    right = overlay[:, 48 + GAP :]
    outlined = (right == PREDICTED_COLOUR).all(-1)
    rows, cols = np.nonzero(outlined)
    assert outlined.any() and rows.min() >= 14 and rows.max() <= 33 and cols.min() >= 14 and cols.max() <= 33
    clean = np.asarray(Image.open(out / "overlays" / "a.png"))[:, 40 + GAP :]
    assert not (clean == PREDICTED_COLOUR).all(-1).any()
    # the same regions, in numbers, beside scores.csv: one region, its box and peak on the outlined square
    inspections = {Path(i["source"]).name: i for i in json.loads((out / "inspections.json").read_text())}
    assert {name: len(i["regions"]) for name, i in inspections.items()} == {"a.png": 0, "b.jpg": 0, "defect.png": 1}
    assert {Path(r["path"]).name: r["regions"] for r in _rows(out / "scores.csv")}["defect.png"] == "1"
    (region,) = inspections["defect.png"]["regions"]
    x, y, width, height = region["box"]
    assert (x, y, x + width - 1, y + height - 1) == (cols.min(), rows.min(), cols.max(), rows.max())
    assert region["area"] <= width * height and region["mean"] <= region["peak"]
    assert 14 <= region["peak_at"][0] <= 33 and 14 <= region["peak_at"][1] <= 33


def test_auto_thresholds_are_leave_one_out_rules(references, images, tmp_path):
    method = _method()
    greys = np.array([100, 110, 120, 130]) / 255
    # each reference against the mean of the other three, summed over three channels
    expected = np.array([3 * abs(g - np.delete(greys, i).mean()) for i, g in enumerate(greys)])
    summary = predict_images(method, images, tmp_path / "out", references,
                             PredictConfig(threshold=ThresholdRule("mean+2std"), pixel_threshold=ThresholdRule("max")))
    thresholds = json.loads((tmp_path / "out" / "thresholds.json").read_text())
    assert np.allclose(thresholds["reference_scores"], expected, atol=1e-5)
    assert summary.thresholds.image == pytest.approx(expected.mean() + 2 * expected.std(), abs=1e-5)
    assert summary.thresholds.pixel == pytest.approx(expected.max(), abs=1e-5)  # flat images: map == score
    assert thresholds["image_source"] == "auto: mean+2std of reference scores"


def test_leave_one_out_never_sees_the_scored_reference():
    greys = np.array([51, 102, 230]) / 255
    refs = [np.full((SIZE, SIZE, 3), g * 255, dtype=np.uint8) for g in greys]
    scored = score_references(method_scorer(_method()), "object", refs)
    assert scored.leave_one_out
    expected = [3 * abs(g - np.delete(greys, i).mean()) for i, g in enumerate(greys)]
    assert scored.scores == pytest.approx(expected, abs=1e-5)


def test_zero_shot_method_scores_references_directly(references, images, tmp_path):
    method = _method(Brightness)
    summary = predict_images(method, images, tmp_path / "out", references, PredictConfig(threshold=IMAGE_RULE))
    assert summary.thresholds.image == pytest.approx(130 / 255, abs=1e-5)
    assert summary.thresholds.pixel is None
    assert method.prepared_with is None  # references calibrate, they are not the zero-shot method's input


def test_numbers_and_no_threshold(images, references, tmp_path):
    summary = predict_images(_method(), images, tmp_path / "out", references, PredictConfig(threshold=0.5))
    assert summary.thresholds.image == 0.5 and summary.thresholds.image_source == "given"
    assert {r["decision"] for r in _rows(tmp_path / "out" / "scores.csv")} == {"normal", "anomalous"}
    predict_images(_method(Brightness), images, tmp_path / "plain", None, PredictConfig())
    assert {r["decision"] for r in _rows(tmp_path / "plain" / "scores.csv")} == {""}


def test_what_auto_needs(images, tmp_path):
    with pytest.raises(ConfigError, match="--refs"):
        predict_images(_method(Brightness), images, tmp_path / "a", None, PredictConfig(threshold=IMAGE_RULE))
    with pytest.raises(ConfigError, match="few-shot"):
        predict_images(_method(), images, tmp_path / "b", None, PredictConfig())
    single = tmp_path / "single"
    _save(single / "0.png", (100, 100, 100))
    with pytest.raises(ConfigError, match="at least 2 references"):
        predict_images(_method(), images, tmp_path / "c", single, PredictConfig(threshold=IMAGE_RULE))
    predict_images(_method(), images, tmp_path / "d", single, PredictConfig(threshold=0.2))  # numbers need no LOO
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files"):
        predict_images(_method(), tmp_path / "empty", tmp_path / "e", single, PredictConfig())


def test_threshold_rules():
    values = np.arange(11.0)
    assert ThresholdRule("max").apply(values) == 10
    assert ThresholdRule("mean+3std").apply(values) == pytest.approx(5 + 3 * values.std())
    assert ThresholdRule("q0.9").apply(values) == pytest.approx(9)
    for bad in ("median", "q1.5", "mean+std", "q"):
        with pytest.raises(ConfigError, match="threshold rule"):
            ThresholdRule(bad)
    assert parse_threshold(None, IMAGE_RULE) is None
    assert parse_threshold("auto", IMAGE_RULE) == IMAGE_RULE
    assert parse_threshold("auto:q0.99", IMAGE_RULE) == ThresholdRule("q0.99")
    assert parse_threshold("0.25", IMAGE_RULE) == 0.25
    with pytest.raises(ConfigError, match="auto:RULE"):
        parse_threshold("high", IMAGE_RULE)


def test_listing_skips_hidden_files_and_the_output_folder(images):
    (images / "out" / "overlays").mkdir(parents=True)
    _save(images / "out" / "overlays" / "a.png", (0, 0, 0))
    root, files = list_files(images, exclude=images / "out")
    assert root == images
    assert [f.relative_to(images).as_posix() for f in files] == [
        "a.png", "notes.txt", "sub/b.jpg", "sub/broken.png", "sub/defect.png"]
    assert list_files(images / "a.png") == (images, [images / "a.png"])


def test_overlay_names_keep_inputs_apart():
    names = overlay_names([Path("x/a.jpg"), Path("x/a.png"), Path("b.bmp")])
    assert names == [Path("x/a.jpg.png"), Path("x/a.png.png"), Path("b.png")]


def test_cli_with_a_real_method(images, references, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", "--method", "knn", "--backbone", "clip-tiny", "--image-size", "64", "--images",
                 str(images), "--refs", str(references), "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "broken.png" in err and "notes.txt" in err and "3 image(s) predicted, 2 file(s) skipped" in err
    assert len(_rows(out / "scores.csv")) == 3 and len(_rows(out / "skipped.csv")) == 2
    assert json.loads((out / "thresholds.json").read_text())["image_source"] == "auto: max of reference scores"

    one = tmp_path / "one"
    assert main(["predict", "--method", "knn", "--backbone", "clip-tiny", "--image-size", "64", "--images",
                 str(images / "a.png"), "--refs", str(references), "--threshold", "0.5", "--out", str(one)]) == 0
    assert [r["overlay"] for r in _rows(one / "scores.csv")] == ["overlays/a.png"]

    assert main(["predict", "--method", "knn", "--backbone", "clip-tiny", "--images", str(images),
                 "--out", str(tmp_path / "none")]) == 2
    assert "pass --refs" in capsys.readouterr().err
