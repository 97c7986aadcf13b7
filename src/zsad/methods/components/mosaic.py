"""2 × 2 mosaics of same-class training images: APRIL-GAN's augmentation for training on MVTec AD.

MVTec AD's test split has few images per defect type; the APRIL-GAN code replaces an image, at rate 0.2,
by four images of its class (defective or good, with their masks) pasted into a 2 × 2 grid and resized
back to the input size, so each training image shows several smaller defects. Here the four tiles are
drawn, with replacement, from the images of the same class *in the same batch* (the code draws from the
class's whole test split), which keeps the augmentation batched tensor code on the training device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mosaic_batch(images: Tensor, masks: Tensor, categories: list[str], prob: float,
                 generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Images ``[B, 3, H, W]`` and masks ``[B, H, W]`` with each image replaced, with probability ``prob``,
    by a mosaic of four same-class images at half size (masks resized by nearest neighbour)."""
    if prob <= 0:
        return images, masks
    chosen = torch.rand(len(images), generator=generator) < prob
    if not chosen.any():
        return images, masks
    h, w = images.shape[-2:]
    top, left = h // 2, w // 2
    mosaics, mosaic_masks = images.clone(), masks.clone()
    for i in torch.nonzero(chosen).flatten().tolist():
        pool = [j for j, c in enumerate(categories) if c == categories[i]]
        picks = [pool[int(k)] for k in torch.randint(len(pool), (4,), generator=generator)]
        for tile, j in enumerate(picks):
            rows = slice(0, top) if tile < 2 else slice(top, h)
            cols = slice(0, left) if tile % 2 == 0 else slice(left, w)
            size = (rows.stop - rows.start, cols.stop - cols.start)
            mosaics[i, :, rows, cols] = F.interpolate(images[j : j + 1].float(), size=size, mode="bilinear",
                                                      align_corners=False, antialias=True)[0].to(images.dtype)
            mosaic_masks[i, rows, cols] = F.interpolate(masks[j : j + 1, None].float(), size=size,
                                                        mode="nearest")[0, 0].to(masks.dtype)
    return mosaics, mosaic_masks
