"""A planted-signal task: anomalies that change any backbone's features the same way in every category.

Each category is a smooth two-colour weave with its own colours, period and orientation (drawn from the
seed); a defect is a blob of one saturated colour family (magenta to violet) with a soft edge, at a
random place and size. Because the defect look is shared across categories while the backgrounds are
not, what a method learns on one seed's categories is, by construction, what finds the defects of
another seed's: the task that checks that training *transfers*, even on random-initialised backbones
(``clip-tiny``), where real defects carry too little signal to tell learning from noise.

Layout: MVTec AD (``mvtec:ROOT``), with ``train/good``, ``test/good``, ``test/blob`` and masks.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from zsad.core.io import write_bytes


def _background(rng: np.random.Generator, size: int, look: dict) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = look["angle"]
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = -np.sin(angle) * xx + np.cos(angle) * yy
    weave = 0.5 + 0.5 * np.sin(2 * np.pi * u / look["period"]) * np.sin(2 * np.pi * v / look["period"])
    image = look["dark"] + weave[..., None] * (look["light"] - look["dark"])
    return image + rng.normal(0, 6, (size, size, 3))


def _blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """A soft mask in [0, 1] of an ellipse of random place, radii (8-20 % of the side) and angle."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    ry, rx = rng.uniform(0.08, 0.2, 2) * size
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    a = (np.cos(angle) * dx + np.sin(angle) * dy) / rx
    b = (-np.sin(angle) * dx + np.cos(angle) * dy) / ry
    return np.clip(1.5 - (a**2 + b**2), 0, 1)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_planted(out: str | Path, categories: int, seed: int, size: int = 64, train: int = 8, test_good: int = 6,
                  test_defect: int = 8) -> list[str]:
    """Write ``categories`` planted-signal categories under ``out``; return their names."""
    out = Path(out)
    rng = np.random.default_rng([seed, 271828])
    names = []
    for index in range(categories):
        look = {"dark": rng.uniform(20, 120, 3), "light": rng.uniform(120, 235, 3),
                "period": rng.uniform(5, 14), "angle": rng.uniform(0, np.pi)}
        name = f"planted_s{seed}_{index}"
        root = out / name
        for i in range(train):
            write_bytes(root / "train" / "good" / f"{i:03d}.png", _png(_background(rng, size, look)))
        for i in range(test_good):
            write_bytes(root / "test" / "good" / f"{i:03d}.png", _png(_background(rng, size, look)))
        for i in range(test_defect):
            image = _background(rng, size, look)
            soft = _blob(rng, size)
            colour = np.array([rng.uniform(200, 255), rng.uniform(0, 40), rng.uniform(150, 255)])
            image = image * (1 - soft[..., None]) + colour * soft[..., None]
            write_bytes(root / "test" / "blob" / f"{i:03d}.png", _png(image))
            write_bytes(root / "ground_truth" / "blob" / f"{i:03d}_mask.png", _png((soft > 0.5) * 255.0))
        names.append(name)
    return names
