"""DRAEM anomaly synthesis: Perlin noise and masks, blending, anomaly sources, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from zsad.errors import ConfigError
from zsad.methods.components.synthesis import (
    augment_source, draem_synthesize, perlin_mask, perlin_noise, synthesize_batch,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@settings(max_examples=15, deadline=None)
@given(height=st.integers(8, 70), width=st.integers(8, 70), rows=st.integers(1, 16), cols=st.integers(1, 16))
def test_perlin_noise_shape_range_and_lattice_zeros(height: int, width: int, rows: int, cols: int) -> None:
    noise = perlin_noise((height, width), (rows, cols), gen(0))
    assert noise.shape == (height, width) and noise.dtype == torch.float32
    assert noise.abs().max() <= 1 + 1e-5
    assert noise[0, 0].abs() < 1e-6  # gradient noise vanishes on lattice points


def test_perlin_noise_is_smooth_at_its_scale() -> None:
    noise = perlin_noise((128, 128), (4, 4), gen(1))
    assert noise.diff(dim=0).abs().max() < 0.1 and noise.std() > 0.1


def test_perlin_noise_is_seeded() -> None:
    assert torch.equal(perlin_noise((32, 48), (4, 2), gen(5)), perlin_noise((32, 48), (4, 2), gen(5)))
    assert not torch.equal(perlin_noise((32, 48), (4, 2), gen(5)), perlin_noise((32, 48), (4, 2), gen(6)))


def test_perlin_masks_are_binary_with_plausible_coverage() -> None:
    g = gen(0)
    masks = torch.stack([perlin_mask((48, 48), g) for _ in range(40)])
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    coverage = masks.mean(dim=(1, 2))
    assert 0.01 < coverage.mean() < 0.25
    assert coverage.max() < 0.6 and (coverage > 0).float().mean() > 0.7


def test_perlin_mask_scale_range_controls_blob_size() -> None:
    def blob_count(low: int, high: int) -> float:
        g = gen(2)
        return float(np.mean([ndimage.label(perlin_mask((48, 48), g, low, high).numpy())[1] for _ in range(10)]))

    assert blob_count(4, 6) > blob_count(0, 2)


def test_perlin_mask_is_seeded_and_rejects_empty_scale_ranges() -> None:
    assert torch.equal(perlin_mask((40, 30), gen(3)), perlin_mask((40, 30), gen(3)))
    with pytest.raises(ConfigError):
        perlin_mask((8, 8), gen(0), min_scale_exp=3, max_scale_exp=3)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), foreground=st.booleans())
def test_draem_changes_only_the_mask_and_labels_it(seed: int, foreground: bool) -> None:
    g = gen(seed)
    image, source = torch.rand(3, 40, 56, generator=g), torch.rand(3, 40, 56, generator=g)
    keep = torch.zeros(40, 56)
    keep[:, :28] = 1
    out, mask, label = draem_synthesize(image, source, g, foreground=keep if foreground else None)
    assert mask.shape == (40, 56) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert label == int(mask.any())
    outside = mask == 0
    assert torch.equal(out[:, outside], image[:, outside])
    if foreground:
        assert not mask[:, 28:].any()
    if not label:
        assert torch.equal(out, image)


def test_draem_blend_keeps_at_most_beta_max_of_the_original() -> None:
    g = gen(0)
    image, source = torch.zeros(3, 48, 48), torch.ones(3, 48, 48)
    opacities = []
    while len(opacities) < 20:
        out, mask, label = draem_synthesize(image, source, g, beta_max=0.8)
        if label:
            inside = out[:, mask.bool()]
            assert torch.allclose(inside, inside[0, 0].expand_as(inside))  # one beta per image
            opacities.append(float(inside[0, 0]))
    assert min(opacities) > 0.2 - 1e-6 and max(opacities) <= 1.0
    assert max(opacities) - min(opacities) > 0.3


def test_draem_is_seeded_and_keeps_dtype() -> None:
    image, source = torch.rand(3, 32, 32, dtype=torch.float64), torch.rand(3, 32, 32, dtype=torch.float64)
    first, second = draem_synthesize(image, source, gen(9)), draem_synthesize(image, source, gen(9))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]) and first[2] == second[2]
    assert first[0].dtype == first[1].dtype == torch.float64
    with pytest.raises(ValueError, match="source"):
        draem_synthesize(image, source[:, :16], gen(0))


@pytest.mark.parametrize("shape", [(3, 48, 48), (3, 36, 60)])
def test_augment_source_is_a_valid_different_image(shape: tuple[int, int, int]) -> None:
    image = torch.rand(*shape, generator=gen(0))
    source = augment_source(image, gen(1))
    assert source.shape == image.shape and source.dtype == image.dtype
    assert 0 <= source.min() and source.max() <= 1
    assert (source - image).abs().mean() > 0.05
    assert torch.equal(source, augment_source(image, gen(1)))
    assert not torch.equal(source, augment_source(image, gen(2)))


def test_synthesize_batch() -> None:
    images = torch.rand(6, 3, 32, 32, generator=gen(0))
    out, masks, labels = synthesize_batch(images, gen(1), probability=0.0)
    assert torch.equal(out, images) and not masks.any() and labels.tolist() == [0] * 6
    out, masks, labels = synthesize_batch(images, gen(1), probability=1.0, sources=torch.zeros_like(images))
    assert masks.shape == (6, 32, 32) and labels.dtype == torch.long
    assert labels.tolist() == [int(m.any()) for m in masks]
    assert torch.equal(out * (1 - masks[:, None]), images * (1 - masks[:, None]))
    assert images.equal(torch.rand(6, 3, 32, 32, generator=gen(0)))  # the input is not modified
