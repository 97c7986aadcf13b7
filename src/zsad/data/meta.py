"""Datasets described by an AnomalyCLIP-style ``meta.json``.

::

    {"train": {"<class>": [{"img_path": ..., "mask_path": ..., "cls_name": ..., "specie_name": ...,
                            "anomaly": 0 | 1}, ...]},
     "test":  {...}}

Paths are relative to the folder holding ``meta.json``; ``mask_path`` is empty for normal images.
The class key names the category; ``specie_name`` names the defect of anomalous entries.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from zsad.data.base import SPLITS, AnomalyDataset
from zsad.data.types import Record
from zsad.errors import DataError


class MetaDataset(AnomalyDataset):
    format = "meta"
    description = "AnomalyCLIP-style meta.json ({train,test}: {class: [{img_path, mask_path, specie_name, anomaly}]})"

    def __init__(self, path: Path) -> None:
        """``path`` is the ``meta.json`` itself or the folder that holds it."""
        self.meta_file = path if path.is_file() else path / "meta.json"
        super().__init__(self.meta_file.parent)

    def _layout_hint(self) -> str:
        return f"{self.meta_file} lists no classes"

    def _find_categories(self) -> list[str]:
        return sorted({category for classes in self._meta.values() for category in classes})

    def _scan(self, category: str, split: str) -> list[Record]:
        entries = self._meta.get(split, {}).get(category, [])
        records = [self._record(entry, f"{split}/{category}[{i}]", category, split) for i, entry in enumerate(entries)]
        for record in records:
            for path in (record.image_path, record.mask_path):
                if path is not None and not path.is_file():
                    raise DataError(f"{self.meta_file} lists {path}, which does not exist")
        return records

    @cached_property
    def _meta(self) -> dict[str, dict[str, list[Any]]]:
        if not self.meta_file.is_file():
            raise DataError(f"missing {self.meta_file} (expected by the meta layout)")
        try:
            meta = json.loads(self.meta_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{self.meta_file} is not valid JSON: {err.msg} at line {err.lineno}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read {self.meta_file}: {err}") from None
        if not isinstance(meta, dict) or not any(split in meta for split in SPLITS):
            raise DataError(f"{self.meta_file} must be an object with 'train' and/or 'test' keys")
        for split in SPLITS:
            classes = meta.setdefault(split, {})
            if not isinstance(classes, dict) or not all(isinstance(v, list) for v in classes.values()):
                raise DataError(f"{self.meta_file}: '{split}' must map class names to lists of entries")
        return {split: meta[split] for split in SPLITS}

    def _record(self, entry: Any, where: str, category: str, split: str) -> Record:
        if not isinstance(entry, dict) or not isinstance(entry.get("img_path"), str) or not entry["img_path"]:
            raise DataError(f"{self.meta_file}: {where} lacks an 'img_path' string")
        anomaly = entry.get("anomaly")
        if anomaly not in (0, 1):  # True/False compare equal to 1/0 and are accepted too
            raise DataError(f"{self.meta_file}: {where} has 'anomaly' {anomaly!r}, expected 0 or 1")
        mask = entry.get("mask_path") or None
        if mask is not None and not isinstance(mask, str):
            raise DataError(f"{self.meta_file}: {where} has a non-string 'mask_path'")
        label = int(anomaly)
        return Record(
            image_path=self.listed_path(self.meta_file, entry["img_path"], where),
            mask_path=self.listed_path(self.meta_file, mask, where) if mask and label else None,
            label=label,
            category=category,
            defect=str(entry.get("specie_name") or "anomaly") if label else "good",
            split=split,
        )
