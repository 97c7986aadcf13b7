"""Frozen-feature cache: a multi-epoch training run costs one backbone pass.

Methods whose training never changes what the frozen backbone sees (no augmentation of the image, no
trainable part inside the vision tower) expose :meth:`~zsad.methods.base.Method.frozen_features`. The
trainer computes those tensors once per auxiliary image and stores them as memory-mapped ``.npy`` files
(float16 by default), one per tensor name, keyed by method, backbone, weights, image size and layers;
later epochs and later runs read them back instead of running the backbone. Masks are cached beside
them so a cached batch never decodes an image.

The key covers the *content* of every image and mask file (size, modification time and SHA-256), so a
file edited in place gets a new cache. A cache is built in a private staging folder and renamed into
place in one step, so concurrent runs on the same data never see or break each other's half-written
files: the first to finish wins, the other uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zsad.core import io
from zsad.data import make_loader
from zsad.data.types import Batch, Record
from zsad.methods.base import Method

MANIFEST = "manifest.json"


def cache_key(method: Method, records: list[Record], weights: str | None) -> str:
    """Changes whenever the cached tensors could differ: method, backbone, weights, size, layers, images."""
    description = {
        "method": method.name,
        "backbone": method.config.backbone,
        "weights": weights or "",
        "image_size": method.config.image_size,
        "layers": list(method.layers),
        "extra": method.frozen_features_key(),
        "images": [[_fingerprint(r.image_path), _fingerprint(r.mask_path)] for r in records],
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def _fingerprint(path: Path | None) -> list[object] | None:
    """Path, size, modification time and SHA-256 of a file: changes whenever its content can have."""
    if path is None:
        return None
    stat = Path(path).stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return [str(path), stat.st_size, stat.st_mtime_ns, digest.hexdigest()]


class FeatureCache:
    """Per-record frozen features in ``directory/<key>/<name>.npy``, built on first use."""

    def __init__(self, method: Method, records: list[Record], directory: str | Path, weights: str | None = None,
                 batch_size: int = 8, dtype: np.dtype = np.float16) -> None:
        self.method = method
        self.records = records
        self.path = Path(directory) / cache_key(method, records, weights)
        self.batch_size = batch_size
        self.dtype = np.dtype(dtype)
        self.arrays: dict[str, np.ndarray] = {}

    @property
    def complete(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def build(self, progress: Callable[[int], None] | None = None) -> None:
        """Compute every record's features (unless already cached) and map them into memory."""
        if not self.complete:
            self._compute(progress)
        manifest = json.loads((self.path / MANIFEST).read_text())
        self.arrays = {name: np.load(self.path / f"{name}.npy", mmap_mode="r") for name in manifest["names"]}

    @torch.inference_mode()
    def _compute(self, progress: Callable[[int], None] | None) -> None:
        method = self.method
        was_training = method.training
        method.eval()
        loader = make_loader(self.records, method.config.image_size, self.batch_size, shuffle=False)
        staging = self.path.parent / f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        staging.mkdir(parents=True)
        try:
            self._fill(staging, loader, progress)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            staging.rename(self.path)
        except OSError:  # another run finished the same cache first (or a stale incomplete one is there)
            if not self.complete:
                shutil.rmtree(self.path, ignore_errors=True)
                staging.rename(self.path)
            else:
                shutil.rmtree(staging)
        method.train(was_training)

    def _fill(self, staging: Path, loader, progress: Callable[[int], None] | None) -> None:
        method, writers, offset = self.method, {}, 0
        for batch in loader:
            features = method.frozen_features(batch.images.to(method.device))
            features["mask"] = batch.masks.to(torch.uint8)
            for name, tensor in features.items():
                if name not in writers:
                    dtype = np.uint8 if name == "mask" else self.dtype
                    writers[name] = np.lib.format.open_memmap(
                        staging / f"{name}.npy", mode="w+", dtype=dtype, shape=(len(self.records), *tensor.shape[1:]))
                writers[name][offset : offset + len(tensor)] = tensor.float().cpu().numpy() if name != "mask" \
                    else tensor.cpu().numpy()
            offset += len(batch)
            if progress:
                progress(len(batch))
        for array in writers.values():
            array.flush()
        io.write_text(staging / MANIFEST, json.dumps({"names": sorted(writers), "count": len(self.records)}))

    def batch(self, indices: list[int]) -> tuple[Batch, dict[str, Tensor]]:
        """Records ``indices`` as ``(Batch, features)``; ``Batch.images`` is empty ``[B, 0]``: only the
        cached tensors, masks and labels are needed."""
        index = np.asarray(indices)
        features = {n: torch.from_numpy(np.ascontiguousarray(a[index])).float()
                    for n, a in self.arrays.items() if n != "mask"}
        records = [self.records[i] for i in indices]
        batch = Batch(
            images=torch.empty(len(indices), 0),
            masks=torch.from_numpy(np.ascontiguousarray(self.arrays["mask"][index])).float(),
            labels=torch.tensor([r.label for r in records]),
            categories=[r.category for r in records],
            defects=[r.defect for r in records],
            paths=[str(r.image_path) for r in records],
        )
        return batch, features
