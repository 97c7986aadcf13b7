"""BTAD (beanTech Anomaly Detection).

::

    <01|02|03>/train/ok/*.bmp|png
    <01|02|03>/test/ok/*
    <01|02|03>/test/ko/*
    <01|02|03>/ground_truth/ko/<name>.png|bmp

Images and masks use different formats depending on the category, so masks are matched by stem.
Anomalous records keep the folder name ``ko`` as their defect; normal ones are ``good`` as everywhere.
"""

from __future__ import annotations

from zsad.data.mvtec import MVTecDataset


class BTADDataset(MVTecDataset):
    format = "btad"
    description = "BTAD: <cat>/train/ok, <cat>/test/ok|ko, <cat>/ground_truth/ko (png/bmp, matched by stem)"

    normal_folders = ("ok",)
    mask_suffixes = ("",)
