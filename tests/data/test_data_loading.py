"""Samples, batches and loaders, on the shared synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsad.data import RecordDataset, collate, load_sample, make_loader, open_dataset
from zsad.data.types import Batch, Record
from zsad.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def records(synthetic_root: Path) -> list[Record]:
    dataset = open_dataset(f"mvtec:{synthetic_root}")
    return dataset.records(dataset.categories()[0], "test")


def test_native_size_sample(records: list[Record]) -> None:
    anomalous = next(r for r in records if r.label)
    sample = load_sample(anomalous)
    assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.uint8
    assert sample.mask.dtype == bool and sample.mask.any()
    assert (sample.label, sample.category, sample.defect, sample.path) == (
        1, anomalous.category, anomalous.defect, str(anomalous.image_path)
    )


def test_normal_record_gets_an_empty_mask(records: list[Record]) -> None:
    sample = load_sample(next(r for r in records if not r.label), image_size=32)
    assert sample.mask.shape == (32, 32) and not sample.mask.any()


def test_resizing_keeps_masks_binary_and_constant_images_constant(tmp_path: Path) -> None:
    Image.new("RGB", (50, 30), (10, 200, 90)).save(tmp_path / "i.png")
    mask = np.zeros((30, 50), dtype=np.uint8)
    mask[:, 25:] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    record = Record(tmp_path / "i.png", tmp_path / "m.png", 1, "c", "d", "test")
    sample = load_sample(record, image_size=20)
    assert sample.image.shape == (20, 20, 3) and (sample.image == [10, 200, 90]).all()
    assert sample.mask.dtype == bool and sample.mask[:, 10:].all() and not sample.mask[:, :10].any()
    with pytest.raises(ConfigError):
        load_sample(record, image_size=0)


def test_collate_stacks_into_a_batch(records: list[Record]) -> None:
    batch = collate([load_sample(r, 48) for r in records[:4]])
    assert isinstance(batch, Batch) and len(batch) == 4
    assert batch.images.shape == (4, 3, 48, 48) and batch.images.dtype == torch.float32
    assert 0 <= batch.images.min() and batch.images.max() <= 1
    assert batch.masks.shape == (4, 48, 48) and set(batch.masks.unique().tolist()) <= {0.0, 1.0}
    assert batch.labels.dtype == torch.long and batch.labels.tolist() == [r.label for r in records[:4]]
    assert batch.paths == [str(r.image_path) for r in records[:4]]


def test_collate_refuses_mixed_sizes_with_both_files_named(records: list[Record]) -> None:
    small, large = load_sample(records[0], 32), load_sample(records[1], 40)
    with pytest.raises(DataError) as err:
        collate([small, large])
    assert small.path in str(err.value) and large.path in str(err.value)


def test_loader_covers_every_record_once(records: list[Record]) -> None:
    loader = make_loader(records, image_size=32, batch_size=5)
    paths = [p for batch in loader for p in batch.paths]
    assert paths == [str(r.image_path) for r in records]
    assert len(RecordDataset(records, 32)) == len(records)


def test_shuffling_is_seeded(records: list[Record]) -> None:
    def order(seed: int) -> list[str]:
        return [p for batch in make_loader(records, 16, 4, shuffle=True, seed=seed) for p in batch.paths]

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)) == sorted(str(r.image_path) for r in records)


def test_drop_last_and_bad_batch_size(records: list[Record]) -> None:
    batches = list(make_loader(records, 16, len(records) - 1, drop_last=True))
    assert len(batches) == 1
    with pytest.raises(ConfigError):
        make_loader(records, 16, 0)
