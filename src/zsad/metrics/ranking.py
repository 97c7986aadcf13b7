"""The one sort every metric shares: counts of positives and negatives at each distinct positive score.

AUROC, AP, F1-max and the PRO curve only change where the threshold crosses the score of a positive,
so all of them are exact functions of, for every distinct positive score ``t``: the positives scoring
``>= t``, the negatives scoring ``>= t`` and the negatives scoring ``> t`` (the last two place the
negatives tied with ``t``). No threshold grid, no ``[thresholds, samples]`` array.

Positives are few (a few percent of the pixels) and are arg-sorted, because per-positive weights (PRO)
follow them. Negatives are only counted, so their values are sorted without indices, in cache-sized
chunks on a thread pool (NumPy releases the GIL while sorting), and each chunk is searched for the
positive scores. On the pixels of an MVTec-sized category this is several times faster, and needs far
less memory, than arg-sorting all scores; ``benchmarks/metrics.py`` measures it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

_CHUNK = 1 << 21  # scores per sorted chunk of negatives: about 8 MiB of float32


@dataclass(frozen=True)
class Ranking:
    """Cumulative counts at the distinct positive scores, in descending score order.

    ``tp[k]``: positives scoring ``>= t_k``; ``fp[k]``: negatives scoring ``>= t_k``; ``fp_above[k]``:
    negatives scoring ``> t_k``; ``weight[k]``: summed weights of the positives scoring ``>= t_k``
    (``None`` when no weights were given).
    """

    tp: np.ndarray
    fp: np.ndarray
    fp_above: np.ndarray
    weight: np.ndarray | None
    n_pos: int
    n_neg: int

    @property
    def defined(self) -> bool:
        """Whether both classes are present, without which no metric here has a value."""
        return self.n_pos > 0 and self.n_neg > 0

    def fpr_curve(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The curve ``(FPR, y)`` swept from the highest threshold to the lowest, starting at ``(0, 0)``.

        ``y[k]`` is the curve's value at ``t_k``. Between two positive scores only negatives enter, so
        the curve runs flat at the previous value up to ``fp_above[k]``, then rises to ``(fp[k], y[k])``
        across the tie group at ``t_k``; after the last positive it runs flat to FPR 1. These corners
        are exactly the points a per-threshold sweep visits, less collinear ones.
        """
        before = np.concatenate([[0.0], y[:-1]])
        fpr = np.stack([self.fp_above, self.fp], axis=1).ravel() / self.n_neg
        values = np.stack([before, y], axis=1).ravel()
        return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], values, y[-1:]])


def rank(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> Ranking:
    """Rank 1-D ``scores`` against boolean ``labels``; ``weights`` follow ``scores[labels]`` in order."""
    positives = scores[labels]
    order = np.argsort(positives)[::-1]
    positives = positives[order]
    is_last_of_ties = np.ones(positives.size, dtype=bool)
    is_last_of_ties[:-1] = positives[:-1] != positives[1:]
    ends = np.flatnonzero(is_last_of_ties)
    fp, fp_above = _negatives_at_or_above(scores[~labels], positives[ends])
    weight = None if weights is None else np.cumsum(weights[order])[ends]
    return Ranking(ends + 1, fp, fp_above, weight, int(positives.size), int(labels.size - positives.size))


def _negatives_at_or_above(negatives: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of ``negatives >= t`` and ``> t`` for descending thresholds; sorts ``negatives`` in place."""
    ascending = np.ascontiguousarray(thresholds[::-1])
    chunks = [negatives[i : i + _CHUNK] for i in range(0, negatives.size, _CHUNK)]
    at_or_above = np.zeros(thresholds.size, dtype=np.int64)
    above = np.zeros(thresholds.size, dtype=np.int64)
    with ThreadPoolExecutor(max_workers=max(1, min(len(chunks), _cpu_count()))) as pool:
        for chunk_at_or_above, chunk_above in pool.map(partial(_count_in_chunk, ascending=ascending), chunks):
            at_or_above += chunk_at_or_above
            above += chunk_above
    return at_or_above[::-1], above[::-1]


def _count_in_chunk(chunk: np.ndarray, ascending: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of ``chunk >= t`` and ``> t`` for ascending thresholds ``t``; sorts ``chunk`` in place."""
    chunk.sort()
    return (
        chunk.size - np.searchsorted(chunk, ascending, side="left"),
        chunk.size - np.searchsorted(chunk, ascending, side="right"),
    )


def _cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, where the OS exposes one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
