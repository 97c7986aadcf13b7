"""Datasets on disk, decoded samples and batches.

``open_dataset("FORMAT:PATH")`` lists records; ``load_sample`` / ``make_loader`` decode them. Names are
imported on first use, so :mod:`zsad.data.images` (decoding only) stays free of torch for the deploy
runtime.
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "AnomalyDataset": "base", "decode_image_bytes": "images", "load_image": "images", "load_mask": "images",
    "RecordDataset": "loading", "collate": "loading", "load_sample": "loading", "make_loader": "loading",
    "FORMATS": "registry", "open_dataset": "registry",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"zsad.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'zsad.data' has no attribute {name!r}")
