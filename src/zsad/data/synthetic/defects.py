"""Defects painted onto a rendered scene, each with the exact mask of the pixels it changed.

Every kind returns a candidate defected image and a boolean region; :func:`apply_defect` keeps the
candidate only inside the region (``where(mask, defected, image)``), so the mask is exact by
construction: no pixel outside it differs from the normal image. Sizes are log-uniform from a few
pixels to a fifth of the image, and about a third of the defects are low-contrast.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from zsad.data.synthetic.scenes import Scene
from zsad.data.synthetic.textures import Array, Colour, TextureLook, ValueNoise, random_colour

Defect = Callable[[Scene, np.random.Generator], tuple[Array, Array]]


def _extent(rng: np.random.Generator) -> float:
    """A defect's size in image sides, log-uniform so small defects are as common as large ones."""
    return float(np.exp(rng.uniform(np.log(0.03), np.log(0.28))))


def _strength(rng: np.random.Generator) -> float:
    """Blend weight of the defect's colour: subtle one time in three."""
    return rng.uniform(0.15, 0.3) if rng.random() < 1 / 3 else rng.uniform(0.35, 0.9)


def _luminance(rgb: Array) -> Array:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _contrasting(image: Array, region: Array, rng: np.random.Generator) -> Colour:
    """A colour far from the region's mean brightness: dark on light surfaces, light on dark ones."""
    light = _luminance(image[region]).mean() < 0.5 if region.any() else rng.random() < 0.5
    return random_colour(rng, value=(0.8, 1.0) if light else (0.0, 0.15))


def _centre(scene: Scene, rng: np.random.Generator, where: Array | None = None) -> tuple[float, float]:
    """A random pixel (x, y) of ``where`` (default: the scene's support) away from the image border."""
    size = scene.support.shape[0]
    allowed = (scene.support if where is None else where).copy()
    margin = max(1, size // 16)
    allowed[:margin], allowed[-margin:], allowed[:, :margin], allowed[:, -margin:] = False, False, False, False
    ys, xs = np.nonzero(allowed if allowed.any() else scene.support)
    i = rng.integers(len(ys))
    return float(xs[i]) + 0.5, float(ys[i]) + 0.5


def _raster(size: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> Array:
    canvas = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _blob(size: int, centre: tuple[float, float], radius: float, rng: np.random.Generator) -> Array:
    """An irregular star-shaped region: radii wobble smoothly around the circle."""
    count = int(rng.integers(10, 20))
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    wobble = rng.uniform(0.55, 1.3, count)
    wobble = (wobble + np.roll(wobble, 1) + np.roll(wobble, -1)) / 3
    aspect, tilt = rng.uniform(0.5, 1.0), rng.uniform(0, np.pi)
    dx, dy = np.cos(angles) * wobble * radius, np.sin(angles) * wobble * radius * aspect
    xs = centre[0] + dx * np.cos(tilt) - dy * np.sin(tilt)
    ys = centre[1] + dx * np.sin(tilt) + dy * np.cos(tilt)
    points = list(zip(xs.tolist(), ys.tolist()))
    return _raster(size, lambda d: d.polygon(points, fill=255))


def _blend(image: Array, colour: Array | Colour, alpha: float | Array) -> Array:
    """``image`` moved towards ``colour`` (one colour, or an image) by ``alpha`` (scalar or per pixel)."""
    colour = np.asarray(colour, dtype=np.float32)
    alpha = np.asarray(alpha, dtype=np.float32)
    alpha = alpha[..., None] if alpha.ndim == 2 else alpha
    return image * (1 - alpha) + colour * alpha


def scratch(scene: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    """A thin, gently curved line, usually lighter or darker than the surface."""
    size = scene.image.shape[0]
    cx, cy = _centre(scene, rng)
    length = 1.6 * _extent(rng) * size
    angle, bend = rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3)
    t = np.linspace(-0.5, 0.5, 24)
    along, across = t * length, bend * length * (1 - 4 * t**2)
    xs = cx + along * np.cos(angle) - across * np.sin(angle)
    ys = cy + along * np.sin(angle) + across * np.cos(angle)
    width = max(1, round(size * rng.uniform(0.003, 0.012)))
    points = list(zip(xs.tolist(), ys.tolist()))
    region = _raster(size, lambda d: d.line(points, fill=255, width=width, joint="curve")) & scene.support
    return _blend(scene.image, _contrasting(scene.image, region, rng), _strength(rng)), region


def spot(scene: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    """A compact blob of a different shade, strongest at its centre: dirt, a dent, a bubble."""
    size = scene.image.shape[0]
    centre = _centre(scene, rng)
    radius = 0.5 * _extent(rng) * size + 1
    region = _blob(size, centre, radius, rng) & scene.support
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    falloff = np.clip(1 - np.hypot(xs - centre[0], ys - centre[1]) / (1.4 * radius), 0.3, 1)
    colour = _contrasting(scene.image, region, rng) if rng.random() < 0.7 else random_colour(rng)
    return _blend(scene.image, colour, _strength(rng) * falloff), region


def stain(scene: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    """A large, ragged, translucent patch of foreign colour: oil, rust, glue."""
    size = scene.image.shape[0]
    cx, cy = _centre(scene, rng)
    radius = 0.7 * _extent(rng) * size + 2
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    noise = ValueNoise(rng)
    ragged = noise.fbm((xs - cx) / radius * 2, (ys - cy) / radius * 2, 3)
    region = (np.hypot(xs - cx, ys - cy) / radius + 0.8 * (ragged - 0.5) < 1) & scene.support
    alpha = min(_strength(rng), 0.7) * (0.6 + 0.4 * noise(xs / radius * 3, ys / radius * 3))
    return _blend(scene.image, random_colour(rng, value=(0.1, 0.9)), alpha), region


def crack(scene: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    """A dark, jagged random walk, sometimes with a branch."""
    size = scene.image.shape[0]
    step = max(1.0, size * rng.uniform(0.008, 0.02))
    steps = max(3, int(2 * _extent(rng) * size / step))
    angle = rng.uniform(0, 2 * np.pi)
    walk = [_centre(scene, rng)]
    for _ in range(steps):
        angle += rng.normal(0, 0.45)
        x, y = walk[-1]
        walk.append((x + step * np.cos(angle), y + step * np.sin(angle)))
    paths = [walk]
    if rng.random() < 0.5:
        start = int(rng.integers(len(walk)))
        branch_angle = angle + rng.choice([-1, 1]) * rng.uniform(0.4, 1.2)
        branch = [walk[start]]
        for _ in range(steps // 2):
            branch_angle += rng.normal(0, 0.45)
            x, y = branch[-1]
            branch.append((x + step * np.cos(branch_angle), y + step * np.sin(branch_angle)))
        paths.append(branch)
    width = max(1, round(size * rng.uniform(0.004, 0.01)))

    def draw(d: ImageDraw.ImageDraw) -> None:
        for path in paths:
            d.line(path, fill=255, width=width, joint="curve")

    region = _raster(size, draw) & scene.support
    darkness = rng.uniform(0.45, 0.9) if rng.random() < 0.75 else rng.uniform(0.2, 0.4)
    return _blend(scene.image, scene.image * 0.15, darkness), region


def _see_through(scene: Scene, region: Array, rng: np.random.Generator) -> Array:
    """What an opening shows: the background, or a contrasting fill where the background looks alike."""
    similar = abs(_luminance(scene.background[region]).mean() - _luminance(scene.image[region]).mean()) < 0.2
    if region.any() and similar:
        return _blend(scene.background, _contrasting(scene.image, region, rng), 0.85)
    return scene.background


def hole(scene: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    """An opening through the material, showing what lies behind it."""
    size = scene.image.shape[0]
    interior = ndimage.binary_erosion(scene.support, iterations=max(1, size // 20))
    region = _blob(size, _centre(scene, rng, interior), 0.45 * _extent(rng) * size + 1, rng)
    region &= scene.coverage > 0
    return _see_through(scene, region, rng), region


def missing(scene: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    """A chunk bitten out of an object's outline."""
    size = scene.image.shape[0]
    edge = scene.support & ~ndimage.binary_erosion(scene.support, iterations=max(1, size // 40))
    region = _blob(size, _centre(scene, rng, edge), (0.4 * _extent(rng) + 0.03) * size, rng)
    region &= scene.coverage > 0
    return _see_through(scene, region, rng), region


def patch(scene: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    """A piece of a foreign texture: a wrong material, a label, a contaminating fragment."""
    size = scene.image.shape[0]
    cx, cy = _centre(scene, rng)
    half = 0.5 * _extent(rng) * size + 1
    if rng.random() < 0.5:
        aspect, angle = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
        corners = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]]) * half
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = [(cx + px, cy + py) for px, py in (corners @ rotation.T).tolist()]
        region = _raster(size, lambda d: d.polygon(points, fill=255))
    else:
        region = _blob(size, (cx, cy), half, rng)
    region &= scene.support
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(axis, axis, indexing="ij")
    foreign = TextureLook.sample(rng).render(x, y, rng)
    alpha = rng.uniform(0.3, 0.6) if rng.random() < 1 / 3 else rng.uniform(0.7, 1.0)
    return _blend(scene.image, foreign, alpha), region


SURFACE_DEFECTS: dict[str, Defect] = {
    "scratch": scratch,
    "spot": spot,
    "stain": stain,
    "crack": crack,
    "hole": hole,
    "patch": patch,
}
"""Defects for any surface; objects may also have ``missing`` parts (see :data:`OBJECT_DEFECTS`)."""

OBJECT_DEFECTS: dict[str, Defect] = {**SURFACE_DEFECTS, "missing": missing}


def apply_defect(scene: Scene, kind: str, rng: np.random.Generator, min_pixels: int) -> tuple[Array, Array]:
    """Paint one defect of ``kind``; returns the defective image and its exact mask (``min_pixels`` or more)."""
    defect = OBJECT_DEFECTS[kind]
    for _ in range(100):
        defected, mask = defect(scene, rng)
        if mask.sum() >= min_pixels:
            return np.where(mask[..., None], np.clip(defected, 0, 1), scene.image), mask
    raise RuntimeError(f"could not place a {kind} defect of {min_pixels} pixels; the scene has too little support")
