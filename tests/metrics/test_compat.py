"""The reference codes' AUPRO (compatibility metric) against their formula written out slowly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.metrics import auc

from zsad.metrics import aupro
from zsad.metrics.compat import aupro_compat


def slow_reference(masks: np.ndarray, amaps: np.ndarray, max_step: int = 200, expect_fpr: float = 0.3) -> float:
    """cal_pro_score as the CFlow-AD / AnomalyCLIP code has it: region loops, 200 thresholds, rescaled FPR."""
    binary_amaps = np.zeros_like(amaps, dtype=bool)
    min_th, max_th = amaps.min(), amaps.max()
    delta = (max_th - min_th) / max_step
    pros, fprs = [], []
    for th in np.arange(min_th, max_th, delta):
        binary_amaps[amaps <= th], binary_amaps[amaps > th] = 0, 1
        pro = []
        for binary_amap, mask in zip(binary_amaps, masks):
            labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
            for region in range(1, n + 1):
                coords = labelled == region
                pro.append(binary_amap[coords].sum() / coords.sum())
        inverse_masks = 1 - masks
        fprs.append(np.logical_and(inverse_masks, binary_amaps).sum() / inverse_masks.sum())
        pros.append(np.array(pro).mean())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < expect_fpr
    fprs = fprs[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return auc(fprs, pros[keep])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), images=st.integers(1, 3))
def test_matches_the_reference_formula(seed, images):
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, 24, 24), dtype=np.uint8)
    for mask in masks:
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, 20, 2)
            mask[y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = 1
    amaps = rng.random(masks.shape) + 0.8 * masks * rng.random()
    assert aupro_compat(amaps, masks.astype(bool)) == pytest.approx(slow_reference(masks, amaps), abs=1e-9)


def test_differs_from_the_exact_metric_and_is_not_the_default():
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 32, 32), dtype=bool)
    masks[0, 5:12, 5:12] = True
    masks[1, 20:25, 3:30] = True
    amaps = rng.random(masks.shape) + 0.5 * masks
    exact, compat = aupro(amaps, masks), aupro_compat(amaps, masks)
    assert abs(exact - compat) > 1e-3  # the rescaled axis and the threshold grid change the number
    assert np.isnan(aupro_compat(amaps, np.zeros_like(masks)))
