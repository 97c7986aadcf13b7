"""What a report needs from an evaluation's predictions, gathered run by run while it evaluates.

Anomaly maps of a whole benchmark do not fit in memory, and a report needs only two things from them:
every run's curves on fixed grids (:mod:`zsad.report.curves`) and a few pictures per category. So
:class:`ReportCollector`, called by the evaluator after each (category, k, seed) run, keeps exactly that,
and :meth:`ReportCollector.write` saves it (:mod:`zsad.report.data`), from which ``zsad report`` can
rebuild the page at any time.

The gallery shows, for the first seed of each (category, k), the ``per_side`` anomalous test images
whose maps find the defect best and worst, ranked by the pixel AUROC of each image's map against its
mask (by image score where there are no masks), each as image | ground truth | heatmap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zsad.data import load_image
from zsad.engine.evaluate import CategoryPredictions
from zsad.metrics import auroc
from zsad.report.curves import run_curves
from zsad.report.data import GalleryExample, ReportData
from zsad.inference.overlay import heatmap_overlay, mask_picture, png_bytes, resize_image, side_by_side
from zsad.report.page import Results, write_report


class ReportCollector:
    """The ``on_predictions`` callback of the evaluator that gathers :class:`ReportData`."""

    def __init__(self, per_side: int = 2) -> None:
        self.per_side = per_side
        self.data = ReportData()

    def __call__(self, predictions: CategoryPredictions) -> None:
        run = predictions.run
        curves = run_curves(predictions.scores, predictions.labels, predictions.maps, predictions.masks)
        self.data.runs.append({"category": run.category, "shots": run.shots, "seed": run.seed,
                               **{name: _rounded(curve) for name, curve in curves.items()}})
        if not any(e.category == run.category and e.shots == run.shots for e in self.data.gallery):
            self.data.gallery += gallery_examples(predictions, self.per_side)

    def write(self, results_dir: str | Path, document: dict[str, Any]) -> Path:
        """Save the data beside ``results.json`` and write the report there; return the HTML path."""
        self.data.save(Path(results_dir))
        return write_report([Results(Path(results_dir), document, self.data)], Path(results_dir))


def gallery_examples(predictions: CategoryPredictions, per_side: int) -> list[GalleryExample]:
    """The best and worst ``per_side`` anomalous images of one run, rendered (see the module docstring)."""
    anomalous = np.flatnonzero(predictions.labels == 1)
    if anomalous.size == 0:
        return []
    masked = [i for i in anomalous if 0 < predictions.masks[i].sum() < predictions.masks[i].size]
    if masked:
        chosen = np.array(masked)
        quality = np.array([auroc(predictions.maps[i], predictions.masks[i]) for i in chosen])
        quality_name = "pixel AUROC"
    else:
        chosen, quality, quality_name = anomalous, predictions.scores[anomalous], "score"
    order = np.argsort(-quality, kind="stable")
    best = order[: min(per_side, (order.size + 1) // 2)]
    worst = order[::-1][: min(per_side, order.size - best.size)]
    low, high = _colour_range(predictions.maps)
    run = predictions.run
    examples = []
    for rank, picks in (("best", best), ("worst", worst)):
        for n, pick in enumerate(picks):
            i = int(chosen[pick])
            panel = _panel(predictions.paths[i], predictions.maps[i], predictions.masks[i], low, high)
            name = f"{run.category}_k{run.shots}_{rank}{n}.png"
            examples.append(GalleryExample(run.category, run.shots, run.seed, predictions.paths[i],
                                           float(predictions.scores[i]), float(quality[pick]), quality_name,
                                           rank, name, png_bytes(panel, palette=True)))
    return examples


def _colour_range(maps: np.ndarray) -> tuple[float, float]:
    """One scale per run: the median pixel (mostly normal) blue, the run's highest pixel red."""
    return float(np.median(maps[:, ::4, ::4])), float(maps.max())


def _panel(path: str, anomaly_map: np.ndarray, mask: np.ndarray, low: float, high: float) -> np.ndarray:
    image = resize_image(load_image(path), anomaly_map.shape)
    return side_by_side(image, mask_picture(mask), heatmap_overlay(image, anomaly_map, low, high))


def _rounded(curve: np.ndarray | None) -> list[float] | None:
    return None if curve is None else [round(float(v), 5) for v in curve]
