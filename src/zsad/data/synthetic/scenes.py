"""What a synthetic image shows: a texture filling the frame, or a textured object on a background.

A *look* is drawn once per category; :meth:`scene` renders one normal image of it with fresh noise and
small pose jitter, together with what defects need to know: where they may go (``support``), how much
object covers each pixel (``coverage``) and what would show through a hole (``background``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from zsad.data.synthetic.textures import (
    PATTERNS,
    Array,
    Cloudy,
    Colour,
    Palette,
    TextureLook,
    ValueNoise,
    random_colour,
    rotate,
)


@dataclass(frozen=True)
class Scene:
    """One rendered normal image (float RGB in ``[0, 1]``) and the layers defects are drawn from."""

    image: Array  # [H, W, 3]
    background: Array  # [H, W, 3]: what shows where material is missing
    coverage: Array  # [H, W] in [0, 1]: how much of each pixel is object (all ones for a texture)
    support: Array  # bool [H, W]: where surface defects may be placed


class Look(ABC):
    """A category's appearance."""

    kind: ClassVar[str]  # "texture" or "object"

    @property
    @abstractmethod
    def family(self) -> str:
        """The word that names the category after its kind (``stripes``, ``ring``)."""

    @abstractmethod
    def scene(self, x: Array, y: Array, rng: np.random.Generator) -> Scene:
        """One normal image on the pixel grid ``(x, y)``."""


@dataclass(frozen=True)
class TextureCategory(Look):
    """A texture filling the frame; holes reveal a dark backing material."""

    kind: ClassVar[str] = "texture"
    texture: TextureLook
    backing: Colour

    @classmethod
    def sample(cls, rng: np.random.Generator, texture: TextureLook) -> TextureCategory:
        return cls(texture, random_colour(rng, value=(0.02, 0.18)))

    @property
    def family(self) -> str:
        return self.texture.pattern.name

    def scene(self, x: Array, y: Array, rng: np.random.Generator) -> Scene:
        image = self.texture.render(x, y, rng) * rng.uniform(0.97, 1.03)
        grain = ValueNoise(rng)(x * x.shape[1] / 2, y * y.shape[0] / 2)[..., None] - 0.5
        background = np.asarray(self.backing, dtype=np.float32) + 0.05 * grain
        ones = np.ones(x.shape, dtype=np.float32)
        return Scene(np.clip(image, 0, 1), np.clip(background, 0, 1), ones, ones.astype(bool))


class Shape(ABC):
    """An object outline as a signed distance (negative inside) in image sides, centred on the origin."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def sample(cls, rng: np.random.Generator) -> Shape:
        """Proportions for one category."""

    @abstractmethod
    def distance(self, x: Array, y: Array) -> Array:
        """Signed distance to the outline."""


def _rounded_box(x: Array, y: Array, half_w: float, half_h: float, corner: float) -> Array:
    qx, qy = np.abs(x) - (half_w - corner), np.abs(y) - (half_h - corner)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - corner


@dataclass(frozen=True)
class Disc(Shape):
    name: ClassVar[str] = "disc"
    radius: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Disc:
        return cls(rng.uniform(0.24, 0.37))

    def distance(self, x: Array, y: Array) -> Array:
        return np.hypot(x, y) - self.radius


@dataclass(frozen=True)
class Square(Shape):
    """A rounded square."""

    name: ClassVar[str] = "square"
    half: float
    corner: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Square:
        half = rng.uniform(0.2, 0.32)
        return cls(half, rng.uniform(0.02, 0.5) * half)

    def distance(self, x: Array, y: Array) -> Array:
        return _rounded_box(x, y, self.half, self.half, self.corner)


@dataclass(frozen=True)
class Ring(Shape):
    name: ClassVar[str] = "ring"
    radius: float
    thickness: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Ring:
        return cls(rng.uniform(0.24, 0.34), rng.uniform(0.07, 0.16))

    def distance(self, x: Array, y: Array) -> Array:
        return np.abs(np.hypot(x, y) - self.radius) - self.thickness / 2


@dataclass(frozen=True)
class Bar(Shape):
    """An elongated rounded rectangle: a pin, a bracket, a capsule."""

    name: ClassVar[str] = "bar"
    half_length: float
    half_width: float
    corner: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Bar:
        half_width = rng.uniform(0.07, 0.15)
        return cls(rng.uniform(0.3, 0.42), half_width, rng.uniform(0.1, 1.0) * half_width)

    def distance(self, x: Array, y: Array) -> Array:
        return _rounded_box(x, y, self.half_length, self.half_width, self.corner)


SHAPES: tuple[type[Shape], ...] = (Disc, Square, Ring, Bar)


@dataclass(frozen=True)
class ObjectCategory(Look):
    """A textured, shaded object with a soft shadow on a plain or mottled background."""

    kind: ClassVar[str] = "object"
    shape: Shape
    angle: float
    surface: TextureLook
    background_colour: Colour
    background_mottle: float
    shading: float
    light: float
    shadow: float
    position_jitter: float  # image sides
    angle_jitter: float  # radians, standard deviation

    @classmethod
    def sample(cls, rng: np.random.Generator, shape: type[Shape], surface: TextureLook) -> ObjectCategory:
        surface_low = float(np.mean(surface.palette.low))
        # keep the background clearly darker or lighter than the object so the outline is visible
        dark = surface_low > 0.45 if rng.random() < 0.8 else surface_low <= 0.45
        background = random_colour(rng, value=(0.05, 0.3) if dark else (0.65, 0.95))
        return cls(
            shape=shape.sample(rng),
            angle=rng.uniform(0, np.pi),
            surface=surface,
            background_colour=background,
            background_mottle=rng.uniform(0.03, 0.12) if rng.random() < 0.5 else 0.0,
            shading=rng.uniform(0.05, 0.3),
            light=rng.uniform(0, 2 * np.pi),
            shadow=rng.uniform(0.0, 0.45),
            position_jitter=rng.uniform(0.005, 0.03),
            # a quarter of the objects lie in any orientation (like screws or nuts), the rest are aligned
            angle_jitter=np.pi if rng.random() < 0.25 else rng.uniform(0.01, 0.08),
        )

    @property
    def family(self) -> str:
        return self.shape.name

    def scene(self, x: Array, y: Array, rng: np.random.Generator) -> Scene:
        pixels = x.shape[0]
        cx, cy = (0.5 + float(v) for v in rng.normal(0, self.position_jitter, size=2))
        scale = 1 + float(rng.normal(0, 0.02))
        angle = self.angle + rng.normal(0, self.angle_jitter)
        lx, ly = rotate(x - cx, y - cy, -angle)
        lx, ly = lx / scale, ly / scale
        distance = self.shape.distance(lx, ly) * scale
        coverage = np.clip(0.5 - distance * pixels, 0, 1).astype(np.float32)

        direction = np.cos(self.light) * (x - cx) + np.sin(self.light) * (y - cy)
        shade = 1 + self.shading * direction / 0.35 - 0.25 * np.exp(np.minimum(distance, 0) / 0.02)
        surface = self.surface.render(lx + 0.5, ly + 0.5, rng) * shade[..., None]

        mottle = self.background_mottle * (Cloudy(4, 3, 0.5, 1.0)(x, y, ValueNoise(rng)) - 0.5)
        offset = 0.015 + 0.01 * rng.random()
        sx, sy = rotate(x - cx - offset, y - cy - offset, -angle)
        shadow_distance = self.shape.distance(sx / scale, sy / scale) * scale
        shadow = self.shadow * (1 - np.clip(shadow_distance / 0.04 + 0.5, 0, 1))
        plain = np.asarray(self.background_colour, dtype=np.float32)
        background = (plain + mottle[..., None]) * (1 - shadow[..., None])

        image = background * (1 - coverage[..., None]) + surface * coverage[..., None]
        return Scene(np.clip(image, 0, 1), np.clip(background, 0, 1), coverage, coverage > 0.5)


def sample_look(rng: np.random.Generator, kind: str, family: str) -> Look:
    """A category's look of ``kind`` ("texture"/"object") and ``family`` (a pattern or shape name)."""
    if kind == "texture":
        pattern = next(p for p in PATTERNS if p.name == family)
        return TextureCategory.sample(rng, TextureLook.sample(rng, pattern))
    shape = next(s for s in SHAPES if s.name == family)
    surface = TextureLook(PATTERNS[rng.integers(len(PATTERNS))].sample(rng), Palette.sample(rng, (0.05, 0.3)), 0.02)
    return ObjectCategory.sample(rng, shape, surface)
