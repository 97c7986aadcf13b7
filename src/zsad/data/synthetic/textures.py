"""Procedural texture families for the synthetic benchmark.

A family's parameters are drawn once per category (its *look*: scale, orientation, sharpness) and its
pattern is evaluated per image on jittered coordinates with a fresh noise realisation, so the normal
images of a category differ in detail but share one appearance. Coordinates are in image sides
(``[0, 1)`` across the image); patterns return intensities in ``[0, 1]`` that a :class:`Palette` colours.
"""

from __future__ import annotations

import colorsys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

Array = np.ndarray
Colour = tuple[float, float, float]
"""RGB in ``[0, 1]``; a tuple, not an array, so looks compare and hash by value."""

_TABLE = 256


class ValueNoise:
    """Smoothly interpolated lattice noise in ``[0, 1]``, evaluable at any real coordinates.

    Its lattice values come from one draw of ``rng``: two instances built from different draws are two
    realisations of the same random texture.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.table = rng.random((_TABLE, _TABLE), dtype=np.float32)

    def __call__(self, x: Array, y: Array) -> Array:
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = x - x0, y - y0
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        ix, iy = x0.astype(np.int32) % _TABLE, y0.astype(np.int32) % _TABLE
        jx, jy = (ix + 1) % _TABLE, (iy + 1) % _TABLE
        flat = self.table.ravel()
        top = flat.take(iy * _TABLE + ix) * (1 - fx) + flat.take(iy * _TABLE + jx) * fx
        bottom = flat.take(jy * _TABLE + ix) * (1 - fx) + flat.take(jy * _TABLE + jx) * fx
        return top * (1 - fy) + bottom * fy

    def fbm(self, x: Array, y: Array, octaves: int = 4, persistence: float = 0.5) -> Array:
        """Fractal sum of ``octaves`` doublings, renormalised to ``[0, 1]``."""
        total, amplitude, norm = np.zeros_like(x), 1.0, 0.0
        for octave in range(octaves):
            scale = 2.0**octave
            total += amplitude * self(x * scale + 17.3 * octave, y * scale - 31.7 * octave)
            norm += amplitude
            amplitude *= persistence
        return total / norm


def smoothstep(edge0: float | Array, edge1: float | Array, x: Array) -> Array:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def rotate(x: Array, y: Array, angle: float) -> tuple[Array, Array]:
    c, s = float(np.cos(angle)), float(np.sin(angle))  # Python floats keep float32 arrays float32
    return c * x - s * y, s * x + c * y


def stretch(v: Array, contrast: float) -> Array:
    """Push ``v`` away from 0.5 (contrast > 1) around the middle, staying in ``[0, 1]``."""
    return np.clip(0.5 + (v - 0.5) * contrast, 0.0, 1.0)


class Pattern(ABC):
    """A texture family: ``sample`` draws a category's look, ``__call__`` renders one image of it."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def sample(cls, rng: np.random.Generator) -> Pattern:
        """The family's parameters for one category."""

    @abstractmethod
    def __call__(self, x: Array, y: Array, noise: ValueNoise) -> Array:
        """Intensities in ``[0, 1]`` at ``(x, y)``; ``noise`` is this image's noise realisation."""


@dataclass(frozen=True)
class Cloudy(Pattern):
    """Smooth fractal noise: stains of paint, concrete, leather-like mottling."""

    name: ClassVar[str] = "cloudy"
    scale: float
    octaves: int
    persistence: float
    contrast: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Cloudy:
        return cls(rng.uniform(3, 14), int(rng.integers(3, 6)), rng.uniform(0.4, 0.7), rng.uniform(1.5, 3.5))

    def __call__(self, x: Array, y: Array, noise: ValueNoise) -> Array:
        return stretch(noise.fbm(x * self.scale, y * self.scale, self.octaves, self.persistence), self.contrast)


@dataclass(frozen=True)
class Stripes(Pattern):
    """Parallel bands, optionally wavy: corduroy, ribbed plastic, brushed metal."""

    name: ClassVar[str] = "stripes"
    frequency: float
    angle: float
    sharpness: float
    warp: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Stripes:
        warp = rng.uniform(0.1, 0.6) if rng.random() < 0.5 else 0.0
        return cls(rng.uniform(4, 22), rng.uniform(0, np.pi), rng.uniform(1, 8), warp)

    def __call__(self, x: Array, y: Array, noise: ValueNoise) -> Array:
        u, _ = rotate(x, y, self.angle)
        wobble = self.warp * noise.fbm(x * 3, y * 3, 2)
        wave = np.sin(2 * np.pi * (u * self.frequency + wobble))
        return 0.5 + 0.5 * np.tanh(self.sharpness * wave) / np.tanh(self.sharpness)


@dataclass(frozen=True)
class Checker(Pattern):
    """A soft-edged checkerboard: tiles, woven mats seen from afar."""

    name: ClassVar[str] = "checker"
    cells: float
    angle: float
    sharpness: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Checker:
        return cls(rng.uniform(3, 12), rng.uniform(0, np.pi / 2), rng.uniform(2, 12))

    def __call__(self, x: Array, y: Array, noise: ValueNoise) -> Array:
        u, v = rotate(x, y, self.angle)
        wave = np.sin(np.pi * u * self.cells) * np.sin(np.pi * v * self.cells)
        return 0.5 + 0.5 * np.tanh(self.sharpness * wave) / np.tanh(self.sharpness)


@dataclass(frozen=True)
class Grid(Pattern):
    """Thin lines on a square lattice: wire mesh, grates, perforated sheet."""

    name: ClassVar[str] = "grid"
    cells: float
    angle: float
    width: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Grid:
        return cls(rng.uniform(4, 16), rng.uniform(0, np.pi / 2), rng.uniform(0.06, 0.25))

    def __call__(self, x: Array, y: Array, noise: ValueNoise) -> Array:
        u, v = rotate(x, y, self.angle)
        du = np.abs((u * self.cells) % 1.0 - 0.5)
        dv = np.abs((v * self.cells) % 1.0 - 0.5)
        edge = 0.5 - self.width / 2
        return np.maximum(smoothstep(edge - 0.04, edge, du), smoothstep(edge - 0.04, edge, dv))


@dataclass(frozen=True)
class Wood(Pattern):
    """Warped growth rings around a far-away centre: wood grain."""

    name: ClassVar[str] = "wood"
    rings: float
    centre: tuple[float, float]
    warp: float
    grain: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Wood:
        angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 2.5)
        centre = (0.5 + distance * np.cos(angle), 0.5 + distance * np.sin(angle))
        return cls(rng.uniform(5, 16), centre, rng.uniform(0.02, 0.1), rng.uniform(0.1, 0.35))

    def __call__(self, x: Array, y: Array, noise: ValueNoise) -> Array:
        radius = np.hypot(x - self.centre[0], y - self.centre[1]) + self.warp * noise.fbm(x * 4, y * 4, 3)
        rings = ((radius * self.rings) % 1.0) ** 2
        fibres = noise(x * 4, y * 60)  # streaks across the rings
        return np.clip((1 - self.grain) * rings + self.grain * fibres, 0.0, 1.0)


@dataclass(frozen=True)
class Fibre(Pattern):
    """Anisotropic noise stretched along one direction: brushed fibres, hair, textile felt."""

    name: ClassVar[str] = "fibre"
    angle: float
    along: float
    across: float
    contrast: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Fibre:
        return cls(rng.uniform(0, np.pi), rng.uniform(1.5, 5), rng.uniform(25, 90), rng.uniform(1.5, 3))

    def __call__(self, x: Array, y: Array, noise: ValueNoise) -> Array:
        u, v = rotate(x, y, self.angle)
        return stretch(noise.fbm(u * self.along, v * self.across, 3, 0.6), self.contrast)


@dataclass(frozen=True)
class Dots(Pattern):
    """Round dots on a square or hexagonal lattice, slightly jittered: perforations, pills, studs."""

    name: ClassVar[str] = "dots"
    cells: float
    radius: float
    hexagonal: bool
    jitter: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Dots:
        return cls(rng.uniform(4, 14), rng.uniform(0.15, 0.38), bool(rng.random() < 0.5), rng.uniform(0, 0.15))

    def __call__(self, x: Array, y: Array, noise: ValueNoise) -> Array:
        u, v = x * self.cells, y * self.cells
        row = np.floor(v)
        if self.hexagonal:
            u = u + 0.5 * (row % 2)
        col = np.floor(u)
        cell_u = noise.table[row.astype(np.int64) % _TABLE, col.astype(np.int64) % _TABLE]
        cell_v = noise.table[col.astype(np.int64) % _TABLE, row.astype(np.int64) % _TABLE]
        du = u - col - 0.5 - self.jitter * (cell_u - 0.5)
        dv = v - row - 0.5 - self.jitter * (cell_v - 0.5)
        return 1 - smoothstep(self.radius - 0.06, self.radius, np.hypot(du, dv))


@dataclass(frozen=True)
class Weave(Pattern):
    """Over-under threads in two directions: woven fabric, carpet, basketry."""

    name: ClassVar[str] = "weave"
    threads: float
    angle: float
    gap: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Weave:
        return cls(rng.uniform(6, 20), rng.uniform(0, np.pi / 2), rng.uniform(0.05, 0.3))

    def __call__(self, x: Array, y: Array, noise: ValueNoise) -> Array:
        u, v = rotate(x, y, self.angle)
        u, v = u * self.threads, v * self.threads
        over = (np.floor(u) + np.floor(v)) % 2 == 0
        across_u = np.abs((u % 1.0) - 0.5) * 2  # 0 on a thread's axis, 1 at its edge
        across_v = np.abs((v % 1.0) - 0.5) * 2
        profile = np.where(over, across_v, across_u)
        thread = 1 - smoothstep(1 - self.gap - 0.15, 1 - self.gap, profile)
        return thread * (0.55 + 0.45 * np.sqrt(np.clip(1 - profile**2, 0, 1)))


PATTERNS: tuple[type[Pattern], ...] = (Cloudy, Stripes, Checker, Grid, Wood, Fibre, Dots, Weave)


def random_colour(rng: np.random.Generator, value: tuple[float, float] = (0.2, 0.9)) -> Colour:
    hue, saturation = float(rng.random()), float(rng.uniform(0.05, 0.85))
    return colorsys.hsv_to_rgb(hue, saturation, float(rng.uniform(*value)))


@dataclass(frozen=True)
class Palette:
    """Two colours a pattern's intensity interpolates between."""

    low: Colour
    high: Colour

    @classmethod
    def sample(cls, rng: np.random.Generator, contrast: tuple[float, float] = (0.15, 0.6)) -> Palette:
        low = random_colour(rng, value=(0.1, 0.7))
        hue, saturation, value = colorsys.rgb_to_hsv(*low)
        hue = (hue + rng.choice([rng.uniform(-0.08, 0.08), rng.uniform(0.3, 0.7)])) % 1.0
        saturation = float(np.clip(saturation + rng.uniform(-0.3, 0.3), 0, 1))
        value = float(np.clip(value + rng.uniform(*contrast), 0, 1))
        return cls(low, colorsys.hsv_to_rgb(hue, saturation, value))

    def __call__(self, intensity: Array) -> Array:
        low, high = np.asarray(self.low, dtype=np.float32), np.asarray(self.high, dtype=np.float32)
        return low + intensity[..., None] * (high - low)


@dataclass(frozen=True)
class TextureLook:
    """A pattern, its colours and how much one image may differ from another of the same look."""

    pattern: Pattern
    palette: Palette
    angle_jitter: float  # radians

    @classmethod
    def sample(cls, rng: np.random.Generator, pattern: type[Pattern] | None = None) -> TextureLook:
        pattern = pattern or PATTERNS[rng.integers(len(PATTERNS))]
        return cls(pattern.sample(rng), Palette.sample(rng), rng.uniform(0.0, 0.05))

    def render(self, x: Array, y: Array, rng: np.random.Generator) -> Array:
        """One image of this look at coordinates ``(x, y)``: new noise, random shift, small rotation."""
        x, y = rotate(x - 0.5, y - 0.5, rng.normal(0.0, self.angle_jitter))
        x, y = x + rng.uniform(0, 8), y + rng.uniform(0, 8)
        return self.palette(self.pattern(x, y, ValueNoise(rng)))


def pixel_grid(size: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates ``(x, y)`` in image sides, each ``[size, size]``."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return x, y
