"""The saved form of a report's inputs: ``report_data/`` beside an evaluation's ``results.json``.

``curves.json`` holds every run's curves on the fixed grids of :mod:`zsad.report.curves`;
``gallery.json`` describes the gallery pictures saved as PNG in ``gallery/``. JSON and PNG, so the data
outlives the code version that wrote it and can be read by anything.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zsad.core import io
from zsad.errors import DataError
from zsad.report.curves import CURVES, GRIDS

DATA_DIR = "report_data"


@dataclass
class GalleryExample:
    category: str
    shots: int
    seed: int | None
    path: str
    score: float
    quality: float  # per-image pixel AUROC, or the image score where the category has no masks
    quality_name: str
    rank: str  # "best" or "worst"
    file: str  # PNG name inside report_data/gallery
    png: bytes = field(repr=False, default=b"")


@dataclass
class ReportData:
    """Per-run curves (``{"category", "shots", "seed", <curve>: list | None}``) and the gallery."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    gallery: list[GalleryExample] = field(default_factory=list)

    def save(self, results_dir: Path) -> None:
        folder = Path(results_dir) / DATA_DIR
        staging = folder / ".gallery-new"  # swapped in whole: no picture of an earlier run stays behind
        shutil.rmtree(staging, ignore_errors=True)
        for example in self.gallery:
            io.write_bytes(_inside(staging, example.file), example.png)
        staging.mkdir(parents=True, exist_ok=True)
        if (folder / "gallery").exists():
            shutil.rmtree(folder / "gallery")
        staging.rename(folder / "gallery")
        entries = [{k: v for k, v in asdict(e).items() if k != "png"} for e in self.gallery]
        io.write_text(folder / "gallery.json", json.dumps(entries, indent=1))
        grids = {name: np.round(grid, 6).tolist() for name, grid in GRIDS.items()}
        io.write_text(folder / "curves.json", json.dumps({"grids": grids, "curves": CURVES, "runs": self.runs}))

    @classmethod
    def load(cls, results_dir: Path) -> ReportData | None:
        """The saved data, or None when the evaluation kept no predictions (a plain ``zsad eval``)."""
        folder = Path(results_dir) / DATA_DIR
        if not (folder / "curves.json").is_file():
            return None
        try:
            runs = json.loads((folder / "curves.json").read_text(encoding="utf-8"))["runs"]
            gallery = [GalleryExample(**entry, png=_inside(folder / "gallery", entry["file"]).read_bytes())
                       for entry in json.loads((folder / "gallery.json").read_text(encoding="utf-8"))]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{folder}: unreadable report data ({err}); run `zsad eval --report` again") from None
        return cls(runs, gallery)


def _inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused when ``name`` leads out of ``folder``: results folders may come from
    anyone, and a report must embed nothing but their own pictures."""
    path = folder / name
    if not isinstance(name, str) or not path.resolve().is_relative_to(folder.resolve()):
        raise DataError(f"{folder.parent / 'gallery.json'}: gallery entry {name!r} points outside {folder}")
    return path

