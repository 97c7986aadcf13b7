"""The k-shot evaluation protocol (METHODS.md §1–2).

For every category and every k in ``shots``: for k > 0, k normal references are drawn from the
category's *train* split for each of ``seeds`` seeds (the draw depends only on seed and category, and
the drawn paths are recorded); the method prepares its per-category state once per (category, k, seed)
and predicts every test image in batches; the seven metrics are computed per category. Results are
averaged over categories per seed, then reported as mean ± std over seeds (population std, ddof=0).
k = 0 is deterministic and runs once.

Images are scored by the inspection loop's :class:`~zsad.inference.scoring.Scorer`, as ``zsad predict``
scores them. Without tiling they are read at the method's input size. With ``tiling``, images and
references are read at their own resolution and cut into tiles at the method's input size
(:mod:`zsad.inference.tiling`); the stitched maps and the masks are compared at the source resolution,
or at ``eval_size`` pixels square when given (needed when a category mixes image sizes). Per-image score
parts are not kept under tiling, so the named test-set normalisations do not apply.

The work is a flat list of :class:`Run` s so that it can be sharded across processes
(:mod:`zsad.engine.distributed`) with results identical to a single process.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zsad.config import check_range
from zsad.core import io
from zsad.data import AnomalyDataset, load_sample
from zsad.data.loading import load_arrays
from zsad.data.types import Record
from zsad.engine import distributed
from zsad.engine.scorer import method_scorer
from zsad.errors import ConfigError, DataError
from zsad.inference.scoring import Scored
from zsad.inference.tiling import Tiling
from zsad.methods.base import Method
from zsad.metrics import METRIC_KEYS, compute_metrics
from zsad.metrics.compat import COMPAT_AUPRO, aupro_compat


@dataclass
class EvalConfig:
    shots: tuple[int, ...] = (0,)
    seeds: int = 5
    categories: tuple[str, ...] | None = None
    batch_size: int = 8
    precision: str = "fp32"
    tiling: Tiling | None = None
    eval_size: int | None = None  # tiled runs: metrics at this square size; None: the images' own size
    compat_aupro: bool = False  # also the reference codes' AUPRO (metrics.compat), as "pixel_aupro_compat"

    def __post_init__(self) -> None:
        check_range("seeds", self.seeds, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("eval_size", self.eval_size, 2)


@dataclass(frozen=True)
class Run:
    """One (category, k, seed) cell of the protocol."""

    category: str
    shots: int
    seed: int | None  # None for k = 0


@dataclass
class RunResult:
    category: str
    shots: int
    seed: int | None
    references: list[str]
    metrics: dict[str, float]
    num_images: int


@dataclass
class CategoryPredictions:
    """Everything one run predicted, for reports: arrays on the CPU, maps at evaluation resolution."""

    run: Run
    paths: list[str]
    labels: np.ndarray
    scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    references: list[str] = field(default_factory=list)


def plan_runs(dataset: AnomalyDataset, config: EvalConfig, method: type[Method] | Method) -> list[Run]:
    """Every (category, k, seed) to evaluate, after checking the method supports each k."""
    categories = list(config.categories) if config.categories else dataset.categories()
    known = set(dataset.categories())
    unknown = [c for c in categories if c not in known]
    if unknown:
        raise ConfigError(f"{dataset.root}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                          f"{', '.join(unknown)}; available: {', '.join(sorted(known))}")
    if not config.shots:
        raise ConfigError("no shot counts given (e.g. --shots 0,1,4)")
    runs = []
    for k in sorted(set(config.shots)):
        if k < 0:
            raise ConfigError(f"shot count must be >= 0, got {k}")
        if k == 0 and not method.zero_shot:
            raise ConfigError(f"method {method.name!r} is few-shot only; use --shots with k >= 1")
        if k > 0 and not method.few_shot:
            raise ConfigError(f"method {method.name!r} is zero-shot only; use --shots 0")
        seeds: Iterable[int | None] = [None] if k == 0 else range(config.seeds)
        runs += [Run(c, k, s) for c in categories for s in seeds]
    return sorted(runs, key=lambda r: (r.category, r.shots, -1 if r.seed is None else r.seed))


def draw_references(records: list[Record], k: int, seed: int, category: str) -> list[Record]:
    """k distinct train records chosen by (seed, category) alone, so every method sees the same ones."""
    if len(records) < k:
        raise DataError(f"category {category!r} has {len(records)} normal train image(s), fewer than k={k}")
    rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
    return [records[i] for i in sorted(rng.choice(len(records), size=k, replace=False))]


class Evaluator:
    """Runs :class:`Run` s of one method on one dataset, caching each category's decoded test set."""

    def __init__(self, method: Method, dataset: AnomalyDataset, config: EvalConfig,
                 progress: Callable[[int], None] | None = None,
                 on_predictions: Callable[[CategoryPredictions], None] | None = None) -> None:
        self.method = method
        self.dataset = dataset
        self.config = config
        self.progress = progress
        self.on_predictions = on_predictions
        self.scorer = method_scorer(method, config.tiling, config.batch_size, config.precision)
        self._cached: tuple[str, list[Record], np.ndarray, np.ndarray] | None = None

    @property
    def read_size(self) -> int | None:
        """Images are read at the method's input size, or at their own when tiled."""
        return None if self.config.tiling is not None else self.method.config.image_size

    def test_set(self, category: str) -> tuple[list[Record], np.ndarray | None, np.ndarray | None]:
        """The category's test records and, untiled, its decoded images and masks (decoded once, reused by
        every reference draw); tiled runs read each image when it is scored (sizes may differ)."""
        if self._cached is None or self._cached[0] != category:
            records = self.dataset.records(category, "test")
            self._cached = (category, records, *(load_arrays(records, self.read_size) if self.read_size
                                                  else (None, None)))
        return self._cached[1:]

    def references(self, run: Run) -> tuple[list[Record], list[np.ndarray] | None]:
        if run.shots == 0:
            return [], None
        chosen = draw_references(self.dataset.records(run.category, "train"), run.shots, run.seed, run.category)
        return chosen, [load_sample(r, self.read_size).image for r in chosen]

    def run(self, run: Run) -> RunResult:
        records, images, masks = self.test_set(run.category)
        ref_records, refs = self.references(run)
        self.scorer.prepare(run.category, refs)
        scored: list[Scored] = []
        mask_list = []
        for start in range(0, len(records), self.config.batch_size):
            chunk = records[start : start + self.config.batch_size]
            if images is not None:
                scored += self.scorer.score(images[start : start + len(chunk)])
            else:
                samples = [load_sample(r) for r in chunk]
                scored += self.scorer.score([s.image for s in samples])
                mask_list += [s.mask for s in samples]
            if self.progress:
                self.progress(len(chunk))
        maps = [s.anomaly_map for s in scored]
        if images is None:
            maps, masks = self._at_eval_size(run.category, maps, mask_list)
        scores = torch.from_numpy(np.array([s.score for s in scored], dtype=np.float32))
        parts = {name: torch.from_numpy(np.array([s.parts[name] for s in scored], dtype=np.float32))
                 for name in (scored[0].parts if scored else {})}
        image_scores = self.method.category_scores(scores, parts).numpy()
        anomaly_maps = np.stack(maps)
        if anomaly_maps.shape != masks.shape:
            raise RuntimeError(f"{self.method.name} returned maps of shape {anomaly_maps.shape}, "
                               f"expected {masks.shape}")
        return self._result(run, records, ref_records, image_scores, anomaly_maps, masks)

    def _at_eval_size(self, category: str, maps: list[np.ndarray], masks: list[np.ndarray],
                      ) -> tuple[list[np.ndarray], np.ndarray]:
        """Tiled maps and masks at their source size, or at ``eval_size`` square; one size per category."""
        if self.config.eval_size:
            size = (self.config.eval_size, self.config.eval_size)
            maps = [np.asarray(Image.fromarray(m).resize(size, Image.Resampling.BILINEAR)) for m in maps]
            masks = [np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in masks]
        shapes = sorted({m.shape for m in maps})
        if len(shapes) > 1:
            raise DataError(f"category {category!r} mixes image sizes {shapes[:3]}: give --eval-size N to "
                            f"compare tiled maps and masks at one size")
        return maps, np.stack(masks)

    def _result(self, run: Run, records: list[Record], ref_records: list[Record], image_scores: np.ndarray,
                anomaly_maps: np.ndarray, mask_array: np.ndarray) -> RunResult:
        labels = np.array([r.label for r in records])
        has_masks = self.dataset.has_masks(run.category)
        metrics = compute_metrics(image_scores, labels, anomaly_maps if has_masks else None,
                                  mask_array if has_masks else None)
        if self.config.compat_aupro:
            metrics[COMPAT_AUPRO] = aupro_compat(anomaly_maps, mask_array) if has_masks else float("nan")
        references = [str(r.image_path) for r in ref_records]
        if self.on_predictions:
            self.on_predictions(CategoryPredictions(run, [str(r.image_path) for r in records], labels,
                                                    image_scores, anomaly_maps, mask_array, references))
        return RunResult(run.category, run.shots, run.seed, references, metrics, len(records))

    def count_images(self, runs: list[Run]) -> int:
        return sum(len(self.dataset.records(r.category, "test")) for r in runs)


def metric_keys(results: list[RunResult]) -> tuple[str, ...]:
    """:data:`METRIC_KEYS`, then any further metric the runs computed (the compatibility AUPRO)."""
    extra = dict.fromkeys(k for r in results for k in r.metrics if k not in METRIC_KEYS)
    return (*METRIC_KEYS, *extra)


def summarize(results: list[RunResult]) -> dict[str, Any]:
    """Per k: per-category means over seeds, the mean over categories per seed, mean ± std over seeds."""
    summary: dict[str, Any] = {}
    keys = metric_keys(results)
    for k in sorted({r.shots for r in results}):
        cell = [r for r in results if r.shots == k]
        categories = sorted({r.category for r in cell})
        seeds = sorted({r.seed for r in cell}, key=lambda s: -1 if s is None else s)
        per_seed = {
            str(s): {m: _nanmean([r.metrics[m] for r in cell if r.seed == s]) for m in keys} for s in seeds
        }
        per_category: dict[str, Any] = {}
        for c in categories:
            rows = [r.metrics for r in cell if r.category == c]
            per_category[c] = {
                "mean": {m: _nanmean([row[m] for row in rows]) for m in keys},
                "std": {m: _nanstd([row[m] for row in rows]) for m in keys},
            }
        summary[str(k)] = {
            "mean": {m: _nanmean([v[m] for v in per_seed.values()]) for m in keys},
            "std": {m: _nanstd([v[m] for v in per_seed.values()]) for m in keys},
            "per_seed": per_seed,
            "per_category": per_category,
            "seeds": [s for s in seeds],
            "categories": categories,
        }
    return summary


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _nanstd(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.std(finite)) if finite else float("nan")


def results_document(results: list[RunResult], meta: dict[str, Any]) -> dict[str, Any]:
    return {**meta, "runs": [asdict(r) for r in results], "summary": summarize(results)}


def results_markdown(document: dict[str, Any]) -> str:
    """A readable table per k: categories × metrics in percent, mean ± std over seeds, then the mean row."""
    lines = [f"# {document.get('method', '?')} on {document.get('dataset', '?')}", ""]
    first = next(iter(document["summary"].values()), {"mean": dict.fromkeys(METRIC_KEYS)})
    keys = list(first["mean"])  # summarize orders them: METRIC_KEYS, then the compatibility metrics
    header = "| category | " + " | ".join(keys) + " |"
    rule = "|---|" + "---:|" * len(keys)
    for k, cell in document["summary"].items():
        lines += [f"## {k}-shot" + ("" if k == "0" else f" ({len(cell['seeds'])} seeds, mean ± std)"), "", header, rule]
        for category, stats in cell["per_category"].items():
            cells = " | ".join(_pct(stats["mean"][m], stats["std"][m], k) for m in keys)
            lines.append(f"| {category} | {cells} |")
        lines.append("| **mean** | " + " | ".join(_pct(cell["mean"][m], cell["std"][m], k) for m in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def _pct(mean: float, std: float, k: str) -> str:
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.1f}" if k == "0" else f"{100 * mean:.1f} ± {100 * std:.1f}"


def write_results(out: str | Path, document: dict[str, Any]) -> None:
    """``results.json`` (undefined metrics as null, so it stays strict JSON) and ``results.md``."""
    out = Path(out)
    io.write_text(out / "results.json", json.dumps(_json_safe(document), indent=2, allow_nan=False))
    io.write_text(out / "results.md", results_markdown(document))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def evaluate(method: Method, dataset: AnomalyDataset, config: EvalConfig, meta: dict[str, Any] | None = None,
             progress: Callable[[int], None] | None = None,
             on_predictions: Callable[[CategoryPredictions], None] | None = None,
             on_total: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run the whole protocol and return the results document.

    Under torchrun the runs are dealt to the ranks and every rank returns the same, complete document.
    ``on_total`` learns how many test images this process will predict (for a progress bar).
    """
    evaluator = Evaluator(method, dataset, config, progress, on_predictions)
    runs = distributed.shard(plan_runs(dataset, config, method))
    if on_total:
        on_total(evaluator.count_images(runs))
    results = distributed.gather([evaluator.run(r) for r in runs])
    results.sort(key=lambda r: (r.category, r.shots, -1 if r.seed is None else r.seed))
    return results_document(results, meta or {})
