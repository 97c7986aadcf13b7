"""Generic good/defect folders, for user data that follows MVTec's tree without its strictness.

::

    <category>/train/good/*
    <category>/test/good/*            (``ok`` and ``normal`` are also read as normal)
    <category>/test/<any defect>/*
    <category>/ground_truth/<defect>/<name>_mask.png or <name>.png   (optional)

Anomalous images without a mask are kept with ``mask_path=None``; such a category reports
``has_masks() == False`` so pixel metrics can be skipped for it.
"""

from __future__ import annotations

from zsad.data.mvtec import MVTecDataset


class FolderDataset(MVTecDataset):
    format = "folder"
    description = "generic: <cat>/train/good, <cat>/test/<good|defect>, optional <cat>/ground_truth/<defect> masks"

    normal_folders = ("good", "ok", "normal")
    mask_suffixes = ("_mask", "")
    masks_required = False
