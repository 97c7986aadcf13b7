"""Pictures of anomaly maps: heatmap colouring, outlines of masks, side-by-side panels, PNG bytes.

Colours only mean something when the scale is stated, so every function takes an explicit ``(low, high)``
range; callers choose it once per category (or per prediction run) so that images are comparable.
"""

from __future__ import annotations

import io

import functools

import numpy as np
from PIL import Image
from scipy import ndimage

from zsad.inference.inspection import Inspection

PREDICTED_COLOUR = (255, 255, 255)
TRUTH_COLOUR = (0, 255, 0)
GAP = 4  # pixels of white between panels


@functools.cache
def _heat_table() -> np.ndarray:
    """The turbo colour map as 256 RGB rows; matplotlib is imported on first use only, so code that
    imports this module (the prediction engine) does not pay for it."""
    from matplotlib import colormaps

    return (colormaps["turbo"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def heat_colours(anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` of ``anomaly_map`` on the turbo colour map, ``low`` blue and ``high`` red."""
    span = high - low if high > low else 1.0
    level = np.clip((anomaly_map.astype(np.float64) - low) / span, 0, 1)
    return _heat_table()[np.round(level * 255).astype(np.intp)]


def blend(image: np.ndarray, colours: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """``image`` under ``colours`` at ``opacity`` (both RGB ``uint8`` of one size)."""
    mixed = (1 - opacity) * image.astype(np.float32) + opacity * colours.astype(np.float32)
    return np.round(mixed).astype(np.uint8)


def outline(mask: np.ndarray, width: int | None = None) -> np.ndarray:
    """The boundary pixels of a boolean mask, ``width`` thick (default: about 1/200 of the image side)."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    width = width or max(1, round(max(mask.shape) / 200))
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def draw(image: np.ndarray, pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """A copy of ``image`` with ``pixels`` (boolean ``[H, W]``) painted ``colour``."""
    painted = image.copy()
    painted[pixels] = colour
    return painted


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, low: float, high: float,
                    defects: np.ndarray | None = None, opacity: float = 0.5) -> np.ndarray:
    """``image`` with its anomaly map blended in and, if given, the outlines of ``defects`` drawn on top."""
    picture = blend(image, heat_colours(anomaly_map, low, high), opacity)
    return picture if defects is None else draw(picture, outline(defects), PREDICTED_COLOUR)


def side_by_side(*panels: np.ndarray) -> np.ndarray:
    """Panels of one height joined left to right with a thin white gap."""
    height = panels[0].shape[0]
    gap = np.full((height, GAP, 3), 255, dtype=np.uint8)
    parts = [p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=-1) for p in panels]
    return np.concatenate([x for p in parts for x in (p, gap)][:-1], axis=1)


def inspection_picture(image: np.ndarray, inspection: Inspection, opacity: float = 0.5) -> np.ndarray:
    """The image beside its heatmap on the thresholds' colour scale (or the map's own range without one),
    with the regions above the pixel threshold outlined."""
    anomaly_map, thresholds = inspection.anomaly_map, inspection.thresholds
    low, high = thresholds.colour_range or (float(anomaly_map.min()), float(anomaly_map.max()))
    defects = anomaly_map >= thresholds.pixel if thresholds.pixel is not None else None
    return side_by_side(image, heatmap_overlay(image, anomaly_map, low, high, defects, opacity))


def mask_picture(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as a black-and-white RGB picture."""
    return np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=-1)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB ``uint8`` resized to ``(height, width)`` bicubically, as the data loader resizes model inputs."""
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def png_bytes(picture: np.ndarray, palette: bool = False) -> bytes:
    """PNG of an RGB picture; ``palette`` quantises to 256 colours, about half the bytes, for pictures
    embedded many times over (report galleries), where the loss is invisible. Overlays are written per
    image on the prediction path, so zlib runs at its fastest level (a third of the time of the default
    for about 15 % more bytes)."""
    image = Image.fromarray(picture)
    buffer = io.BytesIO()
    (image.quantize(256) if palette else image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
