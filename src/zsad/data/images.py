"""Decoding image and mask files into arrays, with every failure reported as a one-line DataError.

Anomaly datasets come as PNG, JPEG, BMP and TIFF in every pixel mode PIL knows. Everything downstream
wants RGB ``uint8`` images and boolean masks, so the conversions live here, once, and are explicit:

* grayscale, bilevel and palette images are expanded to RGB;
* 16-bit (``I;16*``) and 32-bit integer (``I``) images are read as 16-bit intensities and mapped to 8 bits
  by dividing by 257 (65535 -> 255, exact for values that came from 8 bits);
* images with transparency are composited over **black**: a transparent pixel carries no colour, and
  black keeps fully transparent backgrounds uniform instead of exposing whatever RGB was stored there;
* CMYK, YCbCr and other colour spaces go through PIL's RGB conversion;
* floating-point images are refused, because their intensity range is not recorded in the file.

EXIF orientation is deliberately *not* applied: masks are drawn on the stored pixel grid.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from zsad.errors import DataError, TooLargeError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

_WIDE_INTEGER_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an image we can read (hidden files such as macOS ``._x.png`` excluded)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _decode(path: Path, what: str) -> Image.Image:
    """Open and fully decode ``path`` so truncation is detected here, not later inside a resize."""
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # callers apply their own limit
            img.load()  # the pixels stay in memory after the file is closed
            return img
    except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise DataError(f"cannot read {what} {path}: {_one_line(err)}") from None


def _composite_over_black(img: Image.Image) -> np.ndarray:
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
    rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
    return rgb.astype(np.uint8)


def _has_alpha(img: Image.Image) -> bool:
    return "A" in img.getbands() or "transparency" in img.info


def _to_rgb(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in _WIDE_INTEGER_MODES:
        wide = np.asarray(img).astype(np.int64)
        gray = np.clip((wide + 128) // 257, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        raise DataError(f"image {path} has floating-point pixels (mode F); save it as 8- or 16-bit")
    if _has_alpha(img):
        return _composite_over_black(img)
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as err:
        raise DataError(f"cannot convert image {path} from mode {mode} to RGB: {_one_line(err)}") from None


def load_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` to an RGB ``uint8`` array ``[H, W, 3]`` (conversions: see the module docstring)."""
    path = Path(path)
    rgb = _to_rgb(_decode(path, "image"), path)
    return np.ascontiguousarray(rgb)


def decode_image_bytes(data: bytes, name: str, max_pixels: int | None = None) -> np.ndarray:
    """Decode an uploaded image (``name`` is what errors call it) like :func:`load_image`; with
    ``max_pixels``, the size is checked from the header before any pixel is decoded."""
    if not data:
        raise DataError(f"image {name} is an empty file")
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as img:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise TooLargeError(f"image {name} is {width}x{height} ({width * height / 1e6:.3g} MP), over the "
                                f"limit of {max_pixels / 1e6:.3g} MP")
            img.load()
            return np.ascontiguousarray(_to_rgb(img, Path(name)))
    except DataError:  # TooLargeError included
        raise
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {name}: not a recognised image format") from None
    except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise DataError(f"cannot read image {name}: {_one_line(err)}") from None


def load_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Decode a ground-truth mask to ``bool [H, W]``: a pixel is anomalous when it is non-zero.

    Palette masks are read by index (index 0 is normal), multi-channel masks by their colour channels
    (any non-zero channel; alpha is ignored). ``shape`` is the ``(H, W)`` of the image the mask belongs
    to; a different size is an error, since resizing would silently shift the annotation.
    """
    path = Path(path)
    img = _decode(path, "mask")
    bands = img.getbands()
    if len(bands) == 1:
        mask = np.asarray(img) != 0
    else:
        colour = [i for i, band in enumerate(bands) if band != "A"]
        mask = (np.asarray(img)[..., colour] != 0).any(axis=-1)
    if mask.shape != tuple(shape):
        raise DataError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is {shape[1]}x{shape[0]}"
        )
    return mask
