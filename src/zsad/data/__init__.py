"""Datasets on disk, decoded samples and batches.

``open_dataset("FORMAT:PATH")`` lists records; ``load_sample`` / ``make_loader`` decode them.
"""

from zsad.data.base import AnomalyDataset
from zsad.data.images import decode_image_bytes, load_image, load_mask
from zsad.data.loading import RecordDataset, collate, load_sample, make_loader
from zsad.data.registry import FORMATS, open_dataset

__all__ = [
    "FORMATS",
    "AnomalyDataset",
    "RecordDataset",
    "collate",
    "decode_image_bytes",
    "load_image",
    "load_mask",
    "load_sample",
    "make_loader",
    "open_dataset",
]
