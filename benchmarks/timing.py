"""Timing that holds on a noisy machine: the candidates run interleaved (A B A B ...) after a warm-up,
so machine noise lands on all of them alike, and ratios are taken per round before the median.

    from timing import interleaved, ratio_stats
    times = interleaved({"method": run_method, "backbone": run_backbone}, repeats=5)
    print(ratio_stats(times["method"], times["backbone"]))
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int = 5,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each candidate per round: ``warmup`` untimed rounds, then ``repeats`` timed rounds in
    which every candidate runs once, in the same order each round."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(warmup + repeats):
        for name, fn in candidates.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


@dataclass(frozen=True)
class Ratio:
    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median:.2f} ({self.low:.2f}-{self.high:.2f})"


def ratio_stats(numerator: list[float], denominator: list[float]) -> Ratio:
    """Median, min and max over rounds of the per-round ratio ``numerator / denominator``."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return Ratio(statistics.median(ratios), min(ratios), max(ratios))
