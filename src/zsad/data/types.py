"""The records, samples and batches that flow from dataset files to methods."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Record:
    """Where one image (and its mask, if anomalous and annotated) lives; nothing is decoded yet."""

    image_path: Path
    mask_path: Path | None
    label: int  # 0 normal, 1 anomalous
    category: str
    defect: str  # "good" for normal images
    split: str  # "train" or "test"


@dataclass(frozen=True)
class Sample:
    """One decoded image: RGB uint8 ``[H, W, 3]`` and a boolean mask ``[H, W]`` (all False if normal)."""

    image: np.ndarray
    mask: np.ndarray
    label: int
    category: str
    defect: str
    path: str


@dataclass
class Batch:
    """Model input: images in [0, 1] ``[B, 3, H, W]``, masks in {0, 1} ``[B, H, W]``, labels ``[B]``.

    Normalisation to a backbone's mean/std is the backbone's job, so pixel-space augmentation and
    anomaly synthesis work on these tensors directly.
    """

    images: Tensor
    masks: Tensor
    labels: Tensor
    categories: list[str]
    defects: list[str]
    paths: list[str]

    def to(self, device: torch.device | str) -> Batch:
        return replace(
            self,
            images=self.images.to(device, non_blocking=True),
            masks=self.masks.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
        )

    def pin_memory(self) -> Batch:
        """Page-locked copy, called by ``DataLoader(pin_memory=True)`` so ``to(cuda)`` can be asynchronous."""
        return replace(
            self, images=self.images.pin_memory(), masks=self.masks.pin_memory(), labels=self.labels.pin_memory()
        )

    def __len__(self) -> int:
        return self.images.shape[0]
