"""MVTec 3D-AD, RGB images only (point clouds and the validation split are ignored).

::

    <category>/train/good/rgb/*.png
    <category>/test/<defect>/rgb/*.png
    <category>/test/<defect>/gt/*.png      (same file names as rgb/)
"""

from __future__ import annotations

from pathlib import Path

from zsad.data.base import image_files
from zsad.data.mvtec import MVTecDataset


class MVTec3DDataset(MVTecDataset):
    format = "mvtec3d"
    description = "MVTec 3D-AD, RGB only: <cat>/train/good/rgb, <cat>/test/<defect>/rgb, <cat>/test/<defect>/gt"

    mask_suffixes = ("",)

    def _layout_hint(self) -> str:
        return "expected <category>/train/good/rgb and <category>/test/<defect>/rgb"

    def _images(self, folder: Path) -> list[Path]:
        return image_files(folder / "rgb", self.format)

    def _mask_folder(self, category: str, defect: str) -> Path:
        return self.root / category / "test" / defect / "gt"
