"""Pictures of anomaly maps: heatmap colouring, outlines of masks, side-by-side panels, PNG bytes.

Colours only mean something when the scale is stated, so every function takes an explicit ``(low, high)``
range; callers choose it once per category (or per prediction run) so that images are comparable.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from zsad.inference.inspection import Inspection

PREDICTED_COLOUR = (255, 255, 255)
TRUTH_COLOUR = (0, 255, 0)
GAP = 4  # pixels of white between panels


# The turbo colour map (Google, Apache-2.0) sampled at 256 levels as RGB bytes, as matplotlib rounds it:
# a table, so the runtime needs no plotting library to colour a map.
TURBO = np.frombuffer(bytes.fromhex(
    "30123b32154333184a341b51351e5836215f37246638276d392a733a2d793b2f803c32863d358b3e38913f3b973f3e9c"
    "4040a24143a74146ac4249b1424bb5434eba4451bf4454c34456c74559cb455ccf455ed34661d64664da4666dd4669e0"
    "466be3476ee64771e94773eb4776ee4778f0477bf2467df44680f64682f84685fa4687fb458afc458cfd448ffe4391fe"
    "4294ff4196ff4099ff3e9bfe3d9efe3ba0fd3aa3fc38a5fb37a8fa35abf833adf731aff52fb2f42eb4f22cb7f02ab9ee"
    "28bceb27bee925c0e723c3e422c5e220c7df1fc9dd1ecbda1ccdd81bd0d51ad2d21ad4d019d5cd18d7ca18d9c818dbc5"
    "18ddc218dec018e0bd19e2bb19e3b91ae4b61ce6b41de7b21fe9af20eaac22ebaa25eca727eea42aefa12cf09e2ff19b"
    "32f29835f39438f4913cf58e3ff68a43f78746f8844af8804ef97d52fa7a55fa7659fb735dfc6f61fc6c65fd6969fd66"
    "6dfe6271fe5f75fe5c79fe597dff5680ff5384ff5188ff4e8bff4b8fff4992ff4796fe4499fe429cfe409ffd3fa1fd3d"
    "a4fc3ca7fc3aa9fb39acfb38affa37b1f936b4f836b7f735b9f635bcf534bef434c1f334c3f134c6f034c8ef34cbed34"
    "cdec34d0ea34d2e935d4e735d7e535d9e436dbe236dde037dfdf37e1dd37e3db38e5d938e7d739e9d539ebd339ecd13a"
    "eecf3aefcd3af1cb3af2c93af4c73af5c53af6c33af7c13af8be39f9bc39faba39fbb838fbb637fcb336fcb136fdae35"
    "fdac34fea933fea732fea431fea130fe9e2ffe9b2dfe992cfe962bfe932afe9029fd8d27fd8a26fc8725fc8423fb8122"
    "fb7e21fa7b1ff9781ef9751df8721cf76f1af66c19f56918f46617f36315f26014f15d13f05b12ef5811ed5510ec530f"
    "eb500eea4e0de84b0ce7490ce5470be4450ae2430ae14109df3f08dd3d08dc3b07da3907d83706d63506d43305d23105"
    "d02f05ce2d04cc2b04ca2a04c82803c52603c32503c12302be2102bc2002b91e02b71d02b41b01b21a01af1801ac1701"
    "a91601a71401a41301a112019e10019b0f01980e01950d01920b018e0a018b09028808028507028106027e05027a0403"
), dtype=np.uint8).reshape(256, 3)


def heat_colours(anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` of ``anomaly_map`` on the turbo colour map, ``low`` blue and ``high`` red."""
    span = high - low if high > low else 1.0
    level = np.clip((anomaly_map.astype(np.float64) - low) / span, 0, 1)
    return TURBO[np.round(level * 255).astype(np.intp)]


def blend(image: np.ndarray, colours: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """``image`` under ``colours`` at ``opacity`` (both RGB ``uint8`` of one size)."""
    mixed = (1 - opacity) * image.astype(np.float32) + opacity * colours.astype(np.float32)
    return np.round(mixed).astype(np.uint8)


def outline(mask: np.ndarray, width: int | None = None) -> np.ndarray:
    """The boundary pixels of a boolean mask, ``width`` thick (default: about 1/200 of the image side)."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    width = width or max(1, round(max(mask.shape) / 200))
    return mask & ~_eroded(mask, width)


def _eroded(mask: np.ndarray, times: int) -> np.ndarray:
    """``mask`` eroded ``times`` by the 4-neighbour cross, pixels outside the image counting as unset."""
    inner = mask.copy()
    for _ in range(times):
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        shrunk[0] = shrunk[-1] = False
        shrunk[:, 0] = shrunk[:, -1] = False
        inner = shrunk
        if not inner.any():
            break
    return inner


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


def inspection_picture(image: np.ndarray, inspection: Inspection, opacity: float = 0.5,
                       max_side: int = 0) -> np.ndarray:
    """The image beside its heatmap on the thresholds' colour scale (or the map's own range without one),
    with the regions above the pixel threshold outlined; with ``max_side``, an image longer than that is drawn
    shrunk by a whole factor to fit (a 20-megapixel picture would be a 12 MB PNG): the image by area averaging,
    the map by the maximum of each block, so a defect smaller than a block still shows and is outlined."""
    anomaly_map, thresholds = inspection.anomaly_map, inspection.thresholds
    low, high = thresholds.colour_range or (float(anomaly_map.min()), float(anomaly_map.max()))
    if max_side and max(image.shape[:2]) > max_side:
        factor = -(-max(image.shape[:2]) // max_side)
        anomaly_map = block_max(anomaly_map, factor)
        size = anomaly_map.shape[1], anomaly_map.shape[0]
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    defects = anomaly_map >= thresholds.pixel if thresholds.pixel is not None else None
    return side_by_side(image, heatmap_overlay(image, anomaly_map, low, high, defects, opacity))


def block_max(values: np.ndarray, factor: int) -> np.ndarray:
    """The maximum of each ``factor`` x ``factor`` block (blocks at the far edges may be partial)."""
    height, width = values.shape
    rows, cols = -(-height // factor), -(-width // factor)
    padded = np.full((rows * factor, cols * factor), -np.inf, dtype=np.float32)
    padded[:height, :width] = values
    return padded.reshape(rows, factor, cols, factor).max(axis=(1, 3))


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
