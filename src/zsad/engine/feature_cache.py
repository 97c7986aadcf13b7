"""Frozen-feature cache: a multi-epoch training run costs one backbone pass.

Methods whose training never changes what the frozen backbone sees (no augmentation of the image, no
trainable part inside the vision tower) expose :meth:`~zsad.methods.base.Method.frozen_features`. The
trainer computes those tensors once per auxiliary image and stores them as memory-mapped ``.npy`` files
(float16 by default), one per tensor name, keyed by method, backbone, weights, image size and layers;
later epochs and later runs read them back instead of running the backbone. Masks are cached beside
them so a cached batch never decodes an image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zsad import io
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
        "images": [str(r.image_path) for r in records],
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


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
        writers: dict[str, np.memmap] = {}
        tmp_paths: dict[str, Path] = {}
        offset = 0
        self.path.mkdir(parents=True, exist_ok=True)
        for batch in loader:
            features = method.frozen_features(batch.images.to(method.device))
            features["mask"] = batch.masks.to(torch.uint8)
            for name, tensor in features.items():
                if name not in writers:
                    tmp_paths[name] = self.path / f".{name}.npy.tmp"
                    dtype = np.uint8 if name == "mask" else self.dtype
                    writers[name] = np.lib.format.open_memmap(
                        tmp_paths[name], mode="w+", dtype=dtype, shape=(len(self.records), *tensor.shape[1:]))
                writers[name][offset : offset + len(tensor)] = tensor.float().cpu().numpy() if name != "mask" \
                    else tensor.cpu().numpy()
            offset += len(batch)
            if progress:
                progress(len(batch))
        for name, array in writers.items():
            array.flush()
            tmp_paths[name].replace(self.path / f"{name}.npy")
        io.write_text(self.path / MANIFEST, json.dumps({"names": sorted(writers), "count": len(self.records)}))
        method.train(was_training)

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
