"""Dataset formats by name, and ``FORMAT:PATH`` specs as users type them."""

from __future__ import annotations

from pathlib import Path

from zsad.data.base import AnomalyDataset
from zsad.data.btad import BTADDataset
from zsad.data.folder import FolderDataset
from zsad.data.meta import MetaDataset
from zsad.data.mvtec import MPDDDataset, MVTecDataset
from zsad.data.mvtec3d import MVTec3DDataset
from zsad.data.visa import VisADataset
from zsad.errors import ConfigError, DataError

_LAYOUTS: dict[str, type[AnomalyDataset]] = {
    layout.format: layout
    for layout in (MVTecDataset, VisADataset, MPDDDataset, BTADDataset, MVTec3DDataset, MetaDataset, FolderDataset)
}

FORMATS: dict[str, str] = {name: layout.description for name, layout in _LAYOUTS.items()}
"""Format name -> one-line description of the layout it reads."""


def open_dataset(spec: str, allow_outside_root: bool = False) -> AnomalyDataset:
    """Open ``FORMAT:PATH`` (e.g. ``mvtec:/data/mvtec``); nothing is scanned until it is asked for.
    ``allow_outside_root`` lets index files name images outside the dataset's folder."""
    name, sep, location = spec.partition(":")
    if not sep or not location:
        example = "mvtec:/data/mvtec"
        raise ConfigError(f"dataset {spec!r} must be FORMAT:PATH (e.g. {example}); formats: {', '.join(FORMATS)}")
    layout = _LAYOUTS.get(name.strip().lower())
    if layout is None:
        raise ConfigError(f"unknown dataset format {name!r} in {spec!r}; formats: {', '.join(FORMATS)}")
    path = Path(location).expanduser().resolve()
    if not path.exists():
        raise DataError(f"{layout.format} dataset path {path} does not exist")
    if not path.is_dir() and layout is not MetaDataset:
        raise DataError(f"{layout.format} dataset path {path} is not a folder")
    dataset = layout(path)
    dataset.allow_outside_root = allow_outside_root
    return dataset
