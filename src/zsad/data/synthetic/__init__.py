"""A procedural anomaly benchmark with exact masks, for tests, demos and held-out-category experiments.

``write_synthetic(out, categories, seed)`` writes the MVTec AD layout, readable as ``mvtec:OUT`` or
``folder:OUT``. See :mod:`~zsad.data.synthetic.benchmark` for how categories are drawn.
"""

from zsad.data.synthetic.benchmark import Category, render, sample_categories, write_synthetic

__all__ = ["Category", "render", "sample_categories", "write_synthetic"]
