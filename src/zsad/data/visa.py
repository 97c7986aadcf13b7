"""VisA, through its official one-class split file ``split_csv/1cls.csv``.

Columns ``object,split,label,image,mask``; ``label`` is ``normal`` or ``anomaly``; paths are relative to
the dataset root; normal rows leave ``mask`` empty. VisA masks store instance ids, so they are binarised
with ``!= 0`` like every other mask (see :func:`zsad.data.images.load_mask`). VisA names no defect
types, so anomalous records get the defect ``anomaly``.
"""

from __future__ import annotations

import csv
from functools import cached_property
from pathlib import Path

from zsad.data.base import AnomalyDataset
from zsad.data.types import Record
from zsad.errors import DataError

_COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": 0, "anomaly": 1}


class VisADataset(AnomalyDataset):
    format = "visa"
    description = "VisA: split_csv/1cls.csv (object,split,label,image,mask) with paths relative to the root"

    @property
    def split_file(self) -> Path:
        return self.root / "split_csv" / "1cls.csv"

    def _layout_hint(self) -> str:
        return f"{self.split_file} lists no rows"

    def _find_categories(self) -> list[str]:
        return sorted({record.category for record in self._all_records})

    def _scan(self, category: str, split: str) -> list[Record]:
        records = [r for r in self._all_records if r.category == category and r.split == split]
        for record in records:
            for path in (record.image_path, record.mask_path):
                if path is not None and not path.is_file():
                    raise DataError(f"{self.split_file} lists {path}, which does not exist")
        return records

    @cached_property
    def _all_records(self) -> list[Record]:
        if not self.split_file.is_file():
            raise DataError(f"missing split file {self.split_file} (expected by the visa layout)")
        with self.split_file.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{self.split_file} lacks the column(s) {', '.join(missing)}")
            return [self._record(row, reader.line_num) for row in reader]

    def _record(self, raw: dict[str, str | None], line: int) -> Record:
        row = {column: (raw.get(column) or "").strip() for column in _COLUMNS}
        where = f"{self.split_file} line {line}"
        label = _LABELS.get(row["label"])
        if label is None:
            raise DataError(f"{where}: label {row['label']!r} is neither 'normal' nor 'anomaly'")
        if row["split"] not in ("train", "test"):
            raise DataError(f"{where}: split {row['split']!r} is neither 'train' nor 'test'")
        if not row["image"] or not row["object"]:
            raise DataError(f"{where}: empty object or image")
        return Record(
            image_path=self.listed_path(self.split_file, row["image"], f"line {line}"),
            mask_path=self.listed_path(self.split_file, row["mask"], f"line {line}") if row["mask"] and label else None,
            label=label,
            category=row["object"],
            defect="anomaly" if label else "good",
            split=row["split"],
        )
