"""Timing that holds on a noisy machine: the candidates run interleaved (A B A B ...) after a warm-up,
so machine noise lands on all of them alike, and ratios are taken per round before the median. A
candidate faster than ``min_seconds`` is called several times per timed sample (as ``timeit`` does),
so millisecond calls are not measured at the resolution of scheduler noise.

    from timing import interleaved, ratio_stats
    times = interleaved({"method": run_method, "backbone": run_backbone}, repeats=5)
    print(ratio_stats(times["method"], times["backbone"]))
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _seconds(fn: Callable[[], object], number: int) -> float:
    _sync()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    _sync()
    return (time.perf_counter() - start) / number


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                min_seconds: float = 0.2) -> dict[str, list[float]]:
    """Seconds per call of each candidate per round: ``warmup`` untimed rounds (which also fix how many
    calls make one sample of at least ``min_seconds``), then ``repeats`` timed rounds in which every
    candidate is sampled once, in the same order each round."""
    numbers = dict.fromkeys(candidates, 1)
    for _ in range(warmup):
        for name, fn in candidates.items():
            numbers[name] = max(1, math.ceil(min_seconds / max(_seconds(fn, 1), 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            times[name].append(_seconds(fn, numbers[name]))
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
