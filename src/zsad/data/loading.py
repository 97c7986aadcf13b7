"""From records to tensors: decoding, resizing and batching for training and evaluation loops."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from zsad.data.images import load_image, load_mask
from zsad.data.types import Batch, Record, Sample
from zsad.errors import ConfigError, DataError


def load_sample(record: Record, image_size: int | None = None) -> Sample:
    """Decode ``record``, resized to ``image_size`` x ``image_size`` (native size if None).

    The image is resized bicubically (PIL widens the filter when shrinking, i.e. antialiases); the mask
    with nearest neighbour so it stays binary. A record without a mask gets an all-False mask.
    """
    image = load_image(record.image_path)
    if record.mask_path is not None:
        mask = load_mask(record.mask_path, image.shape[:2])
    else:
        mask = np.zeros(image.shape[:2], dtype=bool)
    if image_size is not None:
        if image_size < 1:
            raise ConfigError(f"image size must be a positive number of pixels, got {image_size}")
        size = (image_size, image_size)
        if image.shape[:2] != size:
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    return Sample(image, mask, record.label, record.category, record.defect, str(record.image_path))


class RecordDataset(Dataset[Sample]):
    """A map-style torch dataset that decodes one record per item."""

    def __init__(self, records: Sequence[Record], image_size: int | None) -> None:
        self.records = list(records)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        return load_sample(self.records[index], self.image_size)


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples into a :class:`Batch`; images must share one size (pass ``image_size`` otherwise)."""
    if not samples:
        raise DataError("cannot make a batch from zero samples")
    first = samples[0]
    for sample in samples[1:]:
        if sample.image.shape != first.image.shape:
            raise DataError(
                f"cannot batch {first.path} ({first.image.shape[1]}x{first.image.shape[0]}) with {sample.path} "
                f"({sample.image.shape[1]}x{sample.image.shape[0]}); give an image size to resize them"
            )
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float().div_(255)
    masks = torch.from_numpy(np.stack([s.mask for s in samples])).float()
    return Batch(
        images=images.contiguous(),
        masks=masks,
        labels=torch.tensor([s.label for s in samples], dtype=torch.long),
        categories=[s.category for s in samples],
        defects=[s.defect for s in samples],
        paths=[s.path for s in samples],
    )


def make_loader(
    records: Sequence[Record],
    image_size: int | None,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader[Batch]:
    """A loader of :class:`Batch` over ``records``; shuffling is reproducible through ``seed``."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    return DataLoader(
        RecordDataset(records, image_size),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate,
        pin_memory=pin_memory,
    )


def load_arrays(records: Sequence[Record], image_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images ``[N, S, S, 3]`` uint8 and masks ``[N, S, S]`` bool, as evaluation reads them (kept
    compact: one category's test set is decoded once and reused for every reference draw)."""
    samples = [load_sample(r, image_size) for r in records]
    return np.stack([s.image for s in samples]), np.stack([s.mask for s in samples])
