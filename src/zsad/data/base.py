"""The dataset interface every on-disk layout implements, and the folder-scanning helpers they share.

A layout only answers two questions: which categories exist, and which files make up one category's
split. Validation, sorting, caching and the error messages users see are common to all of them and
live in :class:`AnomalyDataset`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from zsad.data.images import is_image_file
from zsad.data.types import Record
from zsad.errors import ConfigError, DataError

SPLITS = ("train", "test")


class AnomalyDataset(ABC):
    """A dataset on disk, listed lazily: nothing is decoded, each split is scanned once and cached."""

    format: ClassVar[str]
    description: ClassVar[str]
    allow_outside_root = False  # index files (meta.json, VisA's CSV) may name files outside the root

    def __init__(self, root: Path) -> None:
        self.root = root
        self._categories: list[str] | None = None
        self._records: dict[tuple[str, str], list[Record]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.format}:{self.root})"

    def categories(self) -> list[str]:
        """All categories, sorted."""
        if self._categories is None:
            found = sorted(self._find_categories())
            for name in found:  # category names become folder and file names in reports
                if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name.startswith("."):
                    raise DataError(f"{self.format} dataset {self.root}: category name {name!r} is not allowed "
                                    f"(it would be used as a file name)")
            if not found:
                raise DataError(f"{self.format} dataset {self.root} contains no categories ({self._layout_hint()})")
            self._categories = found
        return list(self._categories)

    def records(self, category: str, split: str) -> list[Record]:
        """The ``split`` ("train" or "test") of ``category``, sorted by image path."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        known = self.categories()
        if category not in known:
            raise ConfigError(
                f"{self.format} dataset {self.root} has no category {category!r}; known: {', '.join(known)}"
            )
        key = (category, split)
        if key not in self._records:
            found = sorted(self._scan(category, split), key=lambda record: record.image_path)
            if not found:
                raise DataError(f"{self.format} dataset {self.root}: category {category!r} has no {split} images")
            self._records[key] = found
        return list(self._records[key])

    def has_masks(self, category: str) -> bool:
        """Whether every anomalous test image of ``category`` has a ground-truth mask."""
        return all(r.mask_path is not None for r in self.records(category, "test") if r.label == 1)

    def listed_path(self, index: Path, relative: str, where: str) -> Path:
        """A path named by the index file ``index``, refused when it leaves the dataset root (absolute, or
        with ``..``) unless :attr:`allow_outside_root`."""
        path = self.root / relative
        if not self.allow_outside_root and not path.resolve().is_relative_to(self.root.resolve()):
            raise DataError(f"{index}: {where} names {relative!r}, outside the dataset root {self.root} (pass "
                            f"--allow-outside-root if that is intended)")
        return path

    @abstractmethod
    def _find_categories(self) -> list[str]:
        """Category names, in any order."""

    @abstractmethod
    def _scan(self, category: str, split: str) -> list[Record]:
        """The records of one split, in any order; missing files or folders raise DataError."""

    @abstractmethod
    def _layout_hint(self) -> str:
        """What the layout expects, for the error shown when no category is found."""


def subfolders(folder: Path) -> list[Path]:
    """Visible subdirectories of ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def category_folders(root: Path, *markers: str) -> list[str]:
    """Names of the subfolders of ``root`` that contain at least one of the ``markers`` folders."""
    return [p.name for p in subfolders(root) if any((p / m).is_dir() for m in markers)]


def image_files(folder: Path, layout: str) -> list[Path]:
    """The images directly inside ``folder``; a missing folder is reported by its path."""
    if not folder.is_dir():
        raise DataError(f"missing folder {folder} (expected by the {layout} layout)")
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def masks_by_stem(folder: Path, suffix: str = "") -> dict[str, Path]:
    """Map an image's stem to its mask in ``folder``: ``<stem><suffix>.<any image extension>``.

    Masks are matched by stem because several datasets store images and masks in different formats
    (BTAD: ``.bmp`` images with ``.png`` masks). Two masks for one stem are an error, not a guess.
    """
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if is_image_file(p)):
        stem = path.stem
        if suffix:
            if not stem.endswith(suffix):
                continue
            stem = stem[: -len(suffix)]
        if stem in found:
            raise DataError(f"two masks for image {stem!r} in {folder}: {found[stem].name} and {path.name}")
        found[stem] = path
    return found
