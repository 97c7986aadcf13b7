"""MVTec AD and the datasets that copy its folder tree (MPDD).

::

    <category>/train/good/*.png
    <category>/test/good/*.png
    <category>/test/<defect>/*.png
    <category>/ground_truth/<defect>/<name>_mask.png

Other tree layouts (BTAD, MVTec 3D-AD, generic folders) subclass :class:`MVTecDataset` and change only
the folder names and where masks live.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from zsad.data.base import AnomalyDataset, category_folders, image_files, masks_by_stem, subfolders
from zsad.data.types import Record
from zsad.errors import DataError


class MVTecDataset(AnomalyDataset):
    format = "mvtec"
    description = "MVTec AD: <cat>/train/good, <cat>/test/<defect>, <cat>/ground_truth/<defect>/<name>_mask.png"

    normal_folders: ClassVar[tuple[str, ...]] = ("good",)
    """Folder names holding normal images, in train and test."""
    mask_suffixes: ClassVar[tuple[str, ...]] = ("_mask",)
    """A mask is named ``<image stem><suffix>``; the first suffix that matches wins."""
    masks_required: ClassVar[bool] = True
    """Whether an anomalous image without a mask is an error (else its ``mask_path`` is None)."""

    def _find_categories(self) -> list[str]:
        return category_folders(self.root, "train", "test")

    def _layout_hint(self) -> str:
        return f"expected <category>/train/{self.normal_folders[0]} and <category>/test/<defect>"

    def _images(self, folder: Path) -> list[Path]:
        """The images of one split/defect folder (MVTec 3D-AD keeps them one level deeper)."""
        return image_files(folder, self.format)

    def _mask_folder(self, category: str, defect: str) -> Path:
        return self.root / category / "ground_truth" / defect

    def _scan(self, category: str, split: str) -> list[Record]:
        split_dir = self.root / category / split
        if split == "train":
            normal_dirs = [split_dir / name for name in self.normal_folders if (split_dir / name).is_dir()]
            if not normal_dirs:
                expected = split_dir / self.normal_folders[0]
                raise DataError(f"missing folder {expected} (expected by the {self.format} layout)")
            paths = [path for folder in normal_dirs for path in self._images(folder)]
            return [Record(path, None, 0, category, "good", split) for path in paths]
        if not split_dir.is_dir():
            raise DataError(f"missing folder {split_dir} (expected by the {self.format} layout)")
        records = []
        for folder in subfolders(split_dir):
            if folder.name in self.normal_folders:
                records += [Record(path, None, 0, category, "good", split) for path in self._images(folder)]
            else:
                records += self._anomalous(category, folder)
        return records

    def _anomalous(self, category: str, folder: Path) -> list[Record]:
        defect = folder.name
        mask_dir = self._mask_folder(category, defect)
        indexes = [masks_by_stem(mask_dir, suffix) for suffix in self.mask_suffixes]
        records = []
        for path in self._images(folder):
            mask = next((index[path.stem] for index in indexes if path.stem in index), None)
            if mask is None and self.masks_required:
                expected = mask_dir / f"{path.stem}{self.mask_suffixes[0]}.png"
                raise DataError(f"anomalous image {path} has no mask (expected {expected})")
            records.append(Record(path, mask, 1, category, defect, "test"))
        return records


class MPDDDataset(MVTecDataset):
    format = "mpdd"
    description = "MPDD (Metal Parts Defect Detection): the MVTec AD folder layout"
