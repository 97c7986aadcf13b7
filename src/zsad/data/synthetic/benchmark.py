"""The synthetic benchmark: procedural categories written in the MVTec AD layout.

Categories alternate between textures and objects and cycle through the families, so even a handful
covers several of each; every parameter of a category's look comes from ``(seed, index)``, and names
carry the seed, so two seeds give disjoint categories: train on one, evaluate on an unseen other.
Every image has its own random stream keyed by its place in the dataset, which makes a file independent
of how many others are written.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from zsad.data.synthetic.defects import OBJECT_DEFECTS, SURFACE_DEFECTS, apply_defect
from zsad.data.synthetic.scenes import SHAPES, Look, sample_look
from zsad.data.synthetic.textures import PATTERNS, Array, pixel_grid
from zsad.errors import ConfigError, DataError
from zsad.core.io import write_bytes

MIN_SIZE = 32


@dataclass(frozen=True)
class Category:
    """One synthetic category: how it looks, which defects it suffers, and its sensor noise."""

    name: str
    look: Look
    defects: tuple[str, ...]
    noise: float  # standard deviation of per-pixel Gaussian noise, in [0, 1] intensity


def sample_categories(count: int, seed: int) -> list[Category]:
    """``count`` categories for ``seed``; category ``i`` is the same whatever ``count`` is."""
    order = np.random.default_rng([seed, 0])
    textures = itertools.cycle(order.permutation([p.name for p in PATTERNS]).tolist())
    shapes = itertools.cycle(order.permutation([s.name for s in SHAPES]).tolist())
    first = int(order.integers(2))
    categories = []
    for index in range(count):
        rng = np.random.default_rng([seed, 1, index])
        kind = ("texture", "object")[(index + first) % 2]
        family = next(textures if kind == "texture" else shapes)
        kinds = sorted(OBJECT_DEFECTS if kind == "object" else SURFACE_DEFECTS)
        defects = rng.choice(kinds, size=int(rng.integers(3, len(kinds) + 1)), replace=False)
        look = sample_look(rng, kind, family)
        name = f"{kind}_{family}_s{seed}_{index}"
        categories.append(Category(name, look, tuple(sorted(defects.tolist())), rng.uniform(0.004, 0.02)))
    return categories


def render(category: Category, size: int, rng: np.random.Generator, defect: str | None = None) -> tuple[Array, Array]:
    """One image of ``category`` as RGB ``uint8`` and its mask (all False when ``defect`` is None).

    The normal content and the sensor noise are drawn before the defect, so the same ``rng`` state with
    and without a defect yields images that differ exactly inside the mask.
    """
    x, y = pixel_grid(size)
    scene = category.look.scene(x, y, rng)
    noise = rng.normal(0, category.noise, scene.image.shape).astype(np.float32)
    image, mask = scene.image, np.zeros((size, size), dtype=bool)
    if defect is not None:
        image, mask = apply_defect(scene, defect, rng, min_pixels=max(6, size * size // 2000))
    pixels = np.clip(image + noise, 0, 1) * 255
    return np.round(pixels).astype(np.uint8), mask


def _png(array: Array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)  # speed over a few kB
    return buffer.getvalue()


def _check(out: Path, categories: int, size: int, counts: dict[str, int]) -> None:
    if categories < 1:
        raise ConfigError(f"--categories must be at least 1, got {categories}")
    if size < MIN_SIZE:
        raise ConfigError(f"--size must be at least {MIN_SIZE} pixels, got {size}")
    for name, count in counts.items():
        if count < 1:
            raise ConfigError(f"{name} must be at least 1, got {count}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"output folder {out} already exists and is not empty")


def write_synthetic(
    out: Path,
    categories: int,
    seed: int,
    size: int = 256,
    train_per_category: int = 8,
    test_good: int = 6,
    test_defect: int = 8,
) -> list[str]:
    """Write ``categories`` procedural categories under ``out`` (MVTec AD layout); return their names.

    Each category has ``train_per_category`` normal training images, ``test_good`` normal and
    ``test_defect`` defective test images (spread over its defect kinds), and a PNG mask per defect.
    """
    out = Path(out)
    _check(out, categories, size, {"train_per_category": train_per_category, "test_good": test_good,
                                   "test_defect": test_defect})
    if seed < 0:
        raise ConfigError(f"--seed must be non-negative, got {seed}")
    chosen = sample_categories(categories, seed)
    for index, category in enumerate(chosen):
        root = out / category.name
        for i in range(train_per_category):
            image, _ = render(category, size, np.random.default_rng([seed, 2, index, 0, i]))
            write_bytes(root / "train" / "good" / f"{i:03d}.png", _png(image))
        for i in range(test_good):
            image, _ = render(category, size, np.random.default_rng([seed, 2, index, 1, i]))
            write_bytes(root / "test" / "good" / f"{i:03d}.png", _png(image))
        for i in range(test_defect):
            kind = category.defects[i % len(category.defects)]
            number = i // len(category.defects)
            image, mask = render(category, size, np.random.default_rng([seed, 2, index, 2, i]), kind)
            write_bytes(root / "test" / kind / f"{number:03d}.png", _png(image))
            write_bytes(root / "ground_truth" / kind / f"{number:03d}_mask.png", _png(mask.astype(np.uint8) * 255))
    return [category.name for category in chosen]
