"""Decoding images and masks: every pixel mode to RGB uint8, masks to bool, failures as one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from zsad.data import load_image, load_mask
from zsad.errors import DataError


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def test_grayscale_is_replicated_to_three_channels(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = load_image(save(Image.fromarray(gray, "L"), tmp_path / "g.png"))
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert all((rgb[..., c] == gray).all() for c in range(3))


def test_bilevel_becomes_black_and_white(tmp_path: Path) -> None:
    bits = np.array([[0, 1], [1, 0]], dtype=bool)
    rgb = load_image(save(Image.fromarray(bits), tmp_path / "b.png"))
    assert (rgb[..., 0] == bits * 255).all()


def test_rgba_is_composited_over_black(tmp_path: Path) -> None:
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 128], [200, 100, 50, 0]]], dtype=np.uint8)
    rgb = load_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    assert rgb[0, 0].tolist() == [200, 100, 50]
    assert rgb[0, 1].tolist() == [100, 50, 25]
    assert rgb[0, 2].tolist() == [0, 0, 0]


def test_palette_uses_palette_colours(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 150, 100] + [0, 0, 0] * 254)
    img.putdata([0, 1])
    rgb = load_image(save(img, tmp_path / "p.png"))
    assert rgb[0].tolist() == [[10, 20, 30], [200, 150, 100]]


def test_palette_with_transparency_is_composited(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 150, 100] + [0, 0, 0] * 254)
    img.putdata([0, 1])
    rgb = load_image(save(img, tmp_path / "pt.png", transparency=0))
    assert rgb[0].tolist() == [[0, 0, 0], [200, 150, 100]]


def test_cmyk_is_converted(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # no black ink, full magenta + yellow: red
    rgb = load_image(save(cmyk, tmp_path / "c.tif"))
    assert (rgb == [255, 0, 0]).all()


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (257, 1), (32896, 128), (65535, 255), (65534, 255)])
def test_16_bit_png_is_scaled_to_8_bits(tmp_path: Path, value: int, expected: int) -> None:
    wide = np.full((2, 3), value, dtype=np.uint16)
    path = save(Image.fromarray(wide), tmp_path / "w.png")
    assert Image.open(path).mode.startswith("I;16")
    rgb = load_image(path)
    assert rgb.dtype == np.uint8 and (rgb == expected).all()


def test_32_bit_integer_is_read_as_16_bit_and_clipped(tmp_path: Path) -> None:
    wide = np.array([[-5, 0, 65535, 100000]], dtype=np.int32)
    path = save(Image.fromarray(wide, "I"), tmp_path / "i.tif")
    assert Image.open(path).mode == "I"
    assert load_image(path)[0, :, 0].tolist() == [0, 0, 255, 255]


@settings(max_examples=20, deadline=None)
@given(arrays(np.uint16, (3, 5)))
def test_16_bit_scaling_rounds_to_nearest(tmp_path_factory: pytest.TempPathFactory, wide: np.ndarray) -> None:
    path = tmp_path_factory.mktemp("wide") / "w.png"
    Image.fromarray(wide).save(path)
    gray = load_image(path)[..., 0].astype(float)
    assert np.abs(gray - wide / 257).max() <= 0.5 + 1e-9


@settings(max_examples=15, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9), st.just(3))))
def test_rgb_png_round_trips_exactly(tmp_path_factory: pytest.TempPathFactory, rgb: np.ndarray) -> None:
    path = tmp_path_factory.mktemp("rgb") / "x.png"
    Image.fromarray(rgb).save(path)
    assert (load_image(path) == rgb).all()


def test_float_images_are_refused_with_the_file_named(tmp_path: Path) -> None:
    path = save(Image.fromarray(np.zeros((2, 2), dtype=np.float32), "F"), tmp_path / "f.tif")
    with pytest.raises(DataError, match="f.tif.*floating-point"):
        load_image(path)


def test_truncated_png_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    full = save(Image.fromarray(noise), tmp_path / "t.png")
    full.write_bytes(full.read_bytes()[:200])
    with pytest.raises(DataError) as err:
        load_image(full)
    message = str(err.value)
    assert str(full) in message and "\n" not in message


def test_not_an_image_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.png"
    path.write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match="junk.png"):
        load_image(path)


def test_missing_image_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.png does not exist"):
        load_image(tmp_path / "nope.png")


def test_mask_is_nonzero_pixels(tmp_path: Path) -> None:
    values = np.array([[0, 1, 255], [0, 0, 7]], dtype=np.uint8)
    mask = load_mask(save(Image.fromarray(values), tmp_path / "m.png"), (2, 3))
    assert mask.dtype == bool
    assert mask.tolist() == [[False, True, True], [False, False, True]]


def test_palette_mask_reads_indices(tmp_path: Path) -> None:
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 0, 0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253)  # index 1 is drawn black
    img.putdata([0, 1, 2])
    assert load_mask(save(img, tmp_path / "pm.png"), (1, 3)).tolist() == [[False, True, True]]


def test_colour_mask_ignores_alpha(tmp_path: Path) -> None:
    rgba = np.array([[[0, 0, 0, 255], [0, 0, 9, 255], [0, 0, 0, 0]]], dtype=np.uint8)
    mask = load_mask(save(Image.fromarray(rgba, "RGBA"), tmp_path / "cm.png"), (1, 3))
    assert mask.tolist() == [[False, True, False]]


def test_mask_size_mismatch_names_mask_and_both_sizes(tmp_path: Path) -> None:
    path = save(Image.new("L", (40, 30)), tmp_path / "small_mask.png")
    with pytest.raises(DataError) as err:
        load_mask(path, (64, 48))
    message = str(err.value)
    assert "small_mask.png" in message and "40x30" in message and "48x64" in message


def test_corrupt_mask_is_named_as_a_mask(tmp_path: Path) -> None:
    path = tmp_path / "bad_mask.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="mask .*bad_mask.png"):
        load_mask(path, (1, 1))
