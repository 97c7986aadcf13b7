"""Self-supervised training pairs for DictAS (its Appendix A.2): one reference and one query per normal image.

* **Reference**: with probability 0.9 an augmented copy of the image, standing in for another normal image
  of the same category. The paper's best transformation set (its Table 11) is geometric plus occlusion, with
  the public code's parameters: a random multiple of 90°, a rotation by U[30°, 270°] (reflected border),
  horizontal and vertical flips (p = 0.5 each), a grid dropout (p = 0.5: a 10 × 10 grid with a black hole of
  0.3 of each cell's side) and a coarse dropout (p = 0.5: 8 black squares of 1/32 of the side). The
  rotations and flips are composed into one resampling.
* **Query**: with probability 0.3 a DRAEM pseudo-anomaly (:mod:`zsad.methods.components.synthesis`;
  Perlin scales 2 and 4 per axis, noise rotated up to ±90°), else the raw image; its mask and label are
  the pseudo-labels of the regularisers.

All randomness comes from one ``torch.Generator`` per batch, drawn from torch's global RNG by the caller,
so an epoch seeded by the trainer replays exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from zsad.data.images import is_image_file, load_image
from zsad.errors import DataError

GRID_CELLS = 10  # grid dropout: cells per side
GRID_HOLE = 0.3  # grid dropout: hole side / cell side
COARSE_HOLES = 8  # coarse dropout: holes per image
COARSE_SIDE = 1 / 32  # coarse dropout: hole side / image side (32 px at the code's 1024 px)


def _draw(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


def geometric(images: Tensor, generator: torch.Generator) -> Tensor:
    """Rotate each image by ``90°·U{0..3} + U[30°, 270°]`` and flip it (p = 0.5 per axis), reflecting at
    the border, in one bilinear resampling."""
    b, _, h, w = images.shape
    u = _draw(generator, b, 4).to(images.device)
    angle = torch.deg2rad(90 * (u[:, 0] * 4).floor() + 30 + 240 * u[:, 1])
    flip_x = torch.where(u[:, 2] < 0.5, -1.0, 1.0)
    flip_y = torch.where(u[:, 3] < 0.5, -1.0, 1.0)
    cos, sin = angle.cos(), angle.sin()
    # Output -> input coordinates in the normalised [-1, 1] frame, corrected for non-square images.
    theta = torch.zeros(b, 2, 3, device=images.device)
    theta[:, 0, 0] = cos * flip_x
    theta[:, 0, 1] = -sin * flip_y * h / w
    theta[:, 1, 0] = sin * flip_x * w / h
    theta[:, 1, 1] = cos * flip_y
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def occlusion_mask(batch: int, size: tuple[int, int], generator: torch.Generator, device: torch.device) -> Tensor:
    """``[B, H, W]`` True where grid dropout (p = 0.5) or coarse dropout (p = 0.5) blacks a pixel out."""
    h, w = size
    u = _draw(generator, batch, 4).to(device)
    ys = torch.arange(h, device=device, dtype=torch.float32)
    xs = torch.arange(w, device=device, dtype=torch.float32)
    # Grid dropout, with a random grid offset per image.
    cell_h, cell_w = h / GRID_CELLS, w / GRID_CELLS
    in_y = ((ys[None] - u[:, 2:3] * cell_h) % cell_h) < GRID_HOLE * cell_h  # [B, H]
    in_x = ((xs[None] - u[:, 3:4] * cell_w) % cell_w) < GRID_HOLE * cell_w  # [B, W]
    grid = in_y[:, :, None] & in_x[:, None, :] & (u[:, 0] < 0.5)[:, None, None]
    # Coarse dropout: squares with uniformly drawn top-left corners.
    hole_h, hole_w = max(1, round(COARSE_SIDE * h)), max(1, round(COARSE_SIDE * w))
    corners = _draw(generator, batch, COARSE_HOLES, 2).to(device)
    top = (corners[..., 0] * (h - hole_h + 1)).floor()[..., None]  # [B, K, 1]
    left = (corners[..., 1] * (w - hole_w + 1)).floor()[..., None]
    rows = (ys >= top) & (ys < top + hole_h)  # [B, K, H]
    cols = (xs >= left) & (xs < left + hole_w)  # [B, K, W]
    coarse = (rows[..., :, None] & cols[..., None, :]).any(1) & (u[:, 1] < 0.5)[:, None, None]
    return grid | coarse


def reference_views(images: Tensor, probability: float, generator: torch.Generator) -> Tensor:
    """Each image augmented (geometric, then occlusion) with ``probability``, else unchanged."""
    augment = (_draw(generator, images.shape[0]) < probability).to(images.device)
    views = geometric(images, generator)
    views = views.masked_fill(occlusion_mask(images.shape[0], images.shape[-2:], generator, images.device)[:, None], 0)
    return torch.where(augment[:, None, None, None], views, images)


class AnomalySources:
    """Texture images for the synthesis (DTD in the paper), decoded and resized once, kept as uint8 on the CPU.

    Memory is ``count × size² × 3`` bytes (DTD's 5,640 images at 336 px: about 1.9 GB).
    """

    def __init__(self, folder: str | Path, size: int) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"anomaly source folder {folder} does not exist")
        paths = sorted(p for p in folder.rglob("*") if is_image_file(p))
        if not paths:
            raise DataError(f"anomaly source folder {folder} holds no images")
        arrays = [np.asarray(Image.fromarray(load_image(p)).resize((size, size), Image.Resampling.BICUBIC))
                  for p in paths]
        self.images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """``count`` sources drawn with replacement, ``[count, 3, S, S]`` in [0, 1] on ``device``."""
        index = (_draw(generator, count) * len(self.images)).long().clamp_max(len(self.images) - 1)
        return self.images[index.cpu()].to(device).float().div_(255)
