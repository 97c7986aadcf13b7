"""zsad.metrics against scikit-learn and the literal per-threshold references, ties and edge cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import average_precision_score, roc_auc_score

from zsad.metrics import (
    METRIC_KEYS,
    aupro,
    auroc,
    average_precision,
    compute_metrics,
    f1_max,
    image_metrics,
    pixel_metrics,
    pr_curve,
    pro_curve,
    roc_curve,
)
from zsad.metrics import ranking
from zsad.metrics.pro import region_weights
from zsad.metrics.reference import aupro_reference, f1_max_reference

pytestmark = pytest.mark.filterwarnings("error")  # undefined values must be NaN, silently
TOL = 1e-6


def trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def assert_same(actual: float, expected: float) -> None:
    if math.isnan(expected):
        assert math.isnan(actual)
    else:
        assert actual == pytest.approx(expected, abs=TOL)


def assert_binary_metrics_match(scores: np.ndarray, labels: np.ndarray) -> None:
    assert_same(auroc(scores, labels), roc_auc_score(labels, scores))
    assert_same(average_precision(scores, labels), average_precision_score(labels, scores))
    assert_same(f1_max(scores, labels), f1_max_reference(scores, labels))


def random_category(rng: np.random.Generator, shape: tuple[int, int, int], levels: int | None):
    """Blobby masks, some images without anomalies, and maps that partly follow them."""
    masks = rng.random(shape) < 0.15
    masks[rng.random(shape[0]) < 0.3] = False
    maps = rng.random(shape) + 0.6 * masks
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps, masks


# --- image-level metrics and binary curves --------------------------------------------------------


@pytest.mark.parametrize("levels", [None, 3, 20])
@pytest.mark.parametrize("seed", range(4))
def test_binary_metrics_match_sklearn_on_random_scores(seed: int, levels: int | None) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < rng.uniform(0.05, 0.6)
    scores = rng.random(300) + labels * rng.uniform(0, 1)
    if levels is not None:
        scores = np.round(scores * levels) / levels
    assert_binary_metrics_match(scores, labels)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=30).filter(
        lambda pairs: len({label for _, label in pairs}) == 2
    ),
    st.floats(0.01, 100),
)
def test_binary_metrics_match_sklearn_with_heavy_ties(pairs: list[tuple[int, bool]], scale: float) -> None:
    scores = np.array([score for score, _ in pairs]) * scale
    labels = np.array([label for _, label in pairs])
    assert_binary_metrics_match(scores, labels)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(2, 40), elements=st.floats(-1e6, 1e6)), st.randoms())
def test_binary_metrics_match_sklearn_on_arbitrary_floats(scores: np.ndarray, random) -> None:
    labels = np.array([random.random() < 0.4 for _ in scores])
    labels[:2] = [True, False]
    assert_binary_metrics_match(scores, labels)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=25).filter(
    lambda pairs: len({label for _, label in pairs}) == 2
))
def test_curves_carry_the_same_numbers_as_the_metrics(pairs: list[tuple[int, bool]]) -> None:
    scores = np.array([score for score, _ in pairs], dtype=float)
    labels = np.array([label for _, label in pairs])
    fpr, tpr = roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert trapezoid(fpr, tpr) == pytest.approx(auroc(scores, labels), abs=TOL)
    precision, recall = pr_curve(scores, labels)
    assert (precision[0], recall[0], recall[-1]) == (1, 0, 1)
    assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(average_precision(scores, labels), abs=TOL)


def test_a_single_class_gives_nan_and_empty_curves() -> None:
    scores = np.array([0.1, 0.4, 0.4])
    for labels in (np.zeros(3, bool), np.ones(3, bool)):
        assert all(math.isnan(v) for v in image_metrics(scores, labels).values())
        assert all(curve.size == 0 for curve in roc_curve(scores, labels) + pr_curve(scores, labels))
    assert all(math.isnan(v) for v in image_metrics([], []).values())


def test_perfect_and_inverted_scores() -> None:
    labels = np.array([0, 0, 1, 0, 1, 1])
    scores = labels + np.linspace(0, 0.5, 6)
    assert image_metrics(scores, labels) == {"image_auroc": 1.0, "image_ap": 1.0, "image_f1_max": 1.0}
    assert auroc(-scores, labels) == 0.0
    assert average_precision(-scores, labels) < 0.6


def test_all_tied_scores_are_chance() -> None:
    labels = np.array([0, 1, 1, 0, 0])
    assert auroc(np.ones(5), labels) == 0.5
    assert average_precision(np.ones(5), labels) == pytest.approx(0.4)
    assert f1_max(np.ones(5), labels) == pytest.approx(2 * 0.4 / 1.4)


# --- AUPRO ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [None, 4, 30])
@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_reference_on_random_maps(seed: int, levels: int | None) -> None:
    maps, masks = random_category(np.random.default_rng(seed), (4, 9, 11), levels)
    assert aupro(maps, masks) == pytest.approx(aupro_reference(maps, masks), abs=TOL)


category_shapes = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5))


@st.composite
def categories(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(category_shapes)
    levels = draw(st.sampled_from([2, 5, 1000]))
    maps = draw(arrays(np.float64, shape, elements=st.integers(0, levels).map(float)))
    masks = draw(arrays(np.bool_, shape))
    return maps, masks


@settings(max_examples=120, deadline=None)
@given(categories(), st.sampled_from([0.3, 0.05, 0.5, 1.0]))
def test_aupro_matches_reference_on_tiny_categories(category: tuple[np.ndarray, np.ndarray], max_fpr: float) -> None:
    maps, masks = category
    assert_same(aupro(maps, masks, max_fpr), aupro_reference(maps, masks, max_fpr))


@settings(max_examples=40, deadline=None)
@given(categories())
def test_pro_curve_is_the_integrated_curve(category: tuple[np.ndarray, np.ndarray]) -> None:
    maps, masks = category
    fpr, pro = pro_curve(maps, masks)
    if math.isnan(aupro(maps, masks)):
        assert fpr.size == 0 and pro.size == 0
        return
    assert (fpr[0], pro[0], fpr[-1]) == (0, 0, 0.3)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    assert trapezoid(fpr, pro) / 0.3 == pytest.approx(aupro(maps, masks), abs=TOL)


def test_pixels_touching_only_diagonally_form_one_region() -> None:
    masks = np.zeros((1, 4, 4), bool)
    masks[0, [0, 1, 3], [0, 1, 3]] = True  # (0,0)-(1,1) touch at a corner; (3,3) stands alone
    np.testing.assert_allclose(region_weights(masks), [1 / 4, 1 / 4, 1 / 2])
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1.0  # half of the diagonal region, none of the single pixel
    # PRO = 0.25 from FPR 0 on, rising to 1 at FPR 1: area up to 0.3 is 0.3 * (0.25 + (0.25 + 0.75 * 0.3)) / 2
    assert aupro(maps, masks) == pytest.approx((0.25 + 0.475) / 2)
    assert aupro(maps, masks) == pytest.approx(aupro_reference(maps, masks))


def test_regions_never_span_images() -> None:
    masks = np.zeros((2, 3, 3), bool)
    masks[0, 2, :] = True  # bottom row of image 0 ...
    masks[1, 0, 1] = True  # ... and one pixel at the top of image 1 are two regions
    np.testing.assert_allclose(region_weights(masks), [1 / 6, 1 / 6, 1 / 6, 1 / 2])


def test_single_pixel_regions_and_images_without_anomalies() -> None:
    rng = np.random.default_rng(7)
    masks = np.zeros((5, 8, 8), bool)
    masks[1, 3, 3] = masks[1, 6, 1] = masks[3, 0, 7] = True
    maps = np.round(rng.random(masks.shape) * 6) + 3 * masks
    assert aupro(maps, masks) == pytest.approx(aupro_reference(maps, masks), abs=TOL)


def test_undefined_aupro_is_nan() -> None:
    maps = np.random.default_rng(0).random((2, 4, 4))
    assert math.isnan(aupro(maps, np.ones(maps.shape, bool)))  # no anomaly-free pixel
    assert math.isnan(aupro(maps, np.zeros(maps.shape, bool)))  # no region
    assert all(math.isnan(v) for v in pixel_metrics(maps, np.zeros(maps.shape, bool)).values())
    assert all(c.size == 0 for c in pro_curve(maps, np.ones(maps.shape, bool)))


def test_perfect_map_scores_one_and_inverted_map_scores_zero() -> None:
    _, masks = random_category(np.random.default_rng(3), (4, 16, 16), None)
    perfect = masks + np.random.default_rng(4).random(masks.shape) * 0.5
    assert pixel_metrics(perfect, masks) == {
        "pixel_auroc": 1.0,
        "pixel_ap": 1.0,
        "pixel_f1_max": 1.0,
        "pixel_aupro": pytest.approx(1.0),
    }
    inverted = pixel_metrics(-perfect, masks)
    assert inverted["pixel_auroc"] == 0.0
    assert inverted["pixel_aupro"] == 0.0


def test_aupro_at_a_max_fpr_that_is_a_curve_point() -> None:
    masks = np.array([[[True, False, False, False, False]]])
    maps = np.array([[[0.5, 0.9, 0.4, 0.3, 0.2]]])  # one normal pixel above the region: FPR 0.25 at PRO 0
    assert aupro(maps, masks, max_fpr=0.25) == 0.0
    assert aupro(maps, masks, max_fpr=0.5) == pytest.approx(0.5)  # PRO 1 from FPR 0.25 to 0.5
    assert aupro(maps, masks, max_fpr=0.5) == pytest.approx(aupro_reference(maps, masks, 0.5))


# --- the shared ranking and the combined entry points ---------------------------------------------


def test_pixel_metrics_equal_the_single_metrics_and_sklearn() -> None:
    maps, masks = random_category(np.random.default_rng(11), (3, 12, 10), 25)
    metrics = pixel_metrics(maps, masks)
    assert metrics["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=TOL)
    assert metrics["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=TOL)
    assert metrics["pixel_f1_max"] == pytest.approx(f1_max_reference(maps, masks), abs=TOL)
    assert metrics["pixel_aupro"] == aupro(maps, masks)


def test_counting_negatives_in_many_chunks_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    maps, masks = random_category(np.random.default_rng(5), (4, 10, 10), 9)
    whole = pixel_metrics(maps, masks)
    monkeypatch.setattr(ranking, "_CHUNK", 7)
    assert pixel_metrics(maps, masks) == whole


def test_compute_metrics_returns_every_key_in_order() -> None:
    rng = np.random.default_rng(2)
    maps, masks = random_category(rng, (6, 8, 8), None)
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2))
    metrics = compute_metrics(scores, labels, maps, masks)
    assert tuple(metrics) == METRIC_KEYS
    assert metrics == image_metrics(scores, labels) | pixel_metrics(maps, masks)
    without_masks = compute_metrics(scores, labels, None, None)
    assert tuple(without_masks) == METRIC_KEYS
    assert all(math.isnan(without_masks[key]) for key in METRIC_KEYS[3:])


def test_inputs_of_other_types_and_layouts_give_the_same_numbers() -> None:
    maps, masks = random_category(np.random.default_rng(9), (3, 7, 9), None)
    maps = maps.astype(np.float32)
    expected = pixel_metrics(maps, masks)
    assert pixel_metrics(maps.astype(np.float64), masks) == expected
    assert pixel_metrics(torch.from_numpy(maps), torch.from_numpy(masks.astype(np.uint8))) == expected
    assert pixel_metrics(maps[:, None], masks[:, None]) == expected  # [N, 1, H, W]
    labels = np.array([1, 0, 1, 1, 0])
    scores = torch.tensor([0.5, 0.25, 0.75, 0.5, 0.5], dtype=torch.bfloat16)
    assert image_metrics(scores, labels) == image_metrics(scores.float().numpy(), labels == 1)


def test_invalid_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="scores has 3 values but labels has 2"):
        auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match=r"maps shape \(2, 4, 4\) does not match masks shape \(2, 4, 5\)"):
        pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool))
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W\]"):
        aupro(np.zeros(4), np.zeros(4, bool))
    with pytest.raises(ValueError, match="labels must be binary.*2"):
        image_metrics([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="maps contain NaN"):
        pixel_metrics(np.full((1, 2, 2), np.nan), np.eye(2, dtype=bool)[None])
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(np.zeros((1, 2, 2)), np.eye(2, dtype=bool)[None], max_fpr=0)
    with pytest.raises(ValueError, match="together"):
        compute_metrics([0.1, 0.2], [0, 1], np.zeros((2, 2, 2)), None)
