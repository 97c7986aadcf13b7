"""MoECLIP's training augmentation: one random rigid transform per image, applied to image and mask alike.

The public recipe (torchvision, on the normalised image stacked with its mask) is, in order: rotation by
U(−30°, 30°) with p = 0.5, translation by U(−15 %, 15 %) of each side with p = 0.5, horizontal flip with
p = 0.5, vertical flip with p = 0.5. Here the four are composed into one affine map per image and sampled
once with nearest-neighbour interpolation (torchvision's default there), so the mask stays binary and
exactly aligned with the image. Uncovered pixels get ``fill``: the backbone's normalisation mean is what
the recipe's zero fill of a normalised image amounts to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class RigidAugmentation:
    rotation_degrees: float = 30.0
    rotation_p: float = 0.5
    translation: float = 0.15  # fraction of the image side
    translation_p: float = 0.5
    flip_p: float = 0.5  # for each of the horizontal and vertical flips

    def __call__(self, images: Tensor, masks: Tensor, fill: tuple[float, ...]) -> tuple[Tensor, Tensor]:
        """Images ``[B, 3, H, W]`` and masks ``[B, H, W]``, transformed; draws from torch's global RNG."""
        theta = self.sample_inverse_transforms(images.shape[0], images.shape[-2:]).to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        background = torch.tensor(fill, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        images = F.grid_sample(images - background, grid, mode="nearest", align_corners=False) + background
        masks = F.grid_sample(masks.unsqueeze(1).to(images.dtype), grid, mode="nearest", align_corners=False)
        return images, masks.squeeze(1).to(torch.float32)

    def sample_inverse_transforms(self, batch: int, size: tuple[int, int]) -> Tensor:
        """``[B, 2, 3]`` maps from output to input coordinates (``affine_grid``'s convention, in [−1, 1]).

        The content transform is ``x ↦ F (R x + t)`` in pixel units (rotation about the centre, then
        translation, then flips); sampling needs its inverse ``R⁻¹ (F x − t)``, as ``F⁻¹ = F``.
        """
        height, width = size
        angle = torch.empty(batch).uniform_(-self.rotation_degrees, self.rotation_degrees) * math.pi / 180
        angle = torch.where(torch.rand(batch) < self.rotation_p, angle, torch.zeros(batch))
        shift = torch.empty(batch, 2).uniform_(-2 * self.translation, 2 * self.translation)  # [-1, 1] spans 2
        shift = torch.where(torch.rand(batch, 1) < self.translation_p, shift, torch.zeros(batch, 2))
        flips = torch.where(torch.rand(batch, 2) < self.flip_p, -1.0, 1.0)
        # Rotate in pixel units: normalised coordinates scale x by W/2 and y by H/2.
        aspect = torch.tensor([width / 2, height / 2])
        cos, sin = angle.cos(), angle.sin()
        rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [B, 2, 2]
        to_pixels, to_normalised = torch.diag(aspect), torch.diag(1 / aspect)
        rotation_normalised = to_normalised @ rotation @ to_pixels
        inverse_rotation = torch.linalg.inv(rotation_normalised)
        linear = inverse_rotation @ torch.diag_embed(flips)
        offset = -(inverse_rotation @ shift.unsqueeze(-1))
        return torch.cat([linear, offset], -1)
