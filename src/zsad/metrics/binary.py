"""Threshold-free binary metrics: AUROC, average precision, F1-max, and the ROC and PR curves.

Each public function takes scores and binary labels of any shape (flattened) and matches scikit-learn's
definition exactly, ties included. The ``ranked_*`` forms take a :class:`Ranking`, so pixel metrics
compute them all from one sort. Undefined values (a single class present) are NaN, and curves empty.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zsad.metrics.inputs import scores_and_labels
from zsad.metrics.ranking import Ranking, rank


def ranked_auroc(r: Ranking) -> float:
    """Mann-Whitney U with ties counted half: the area under sklearn's ROC curve, from exact counts."""
    if not r.defined:
        return float("nan")
    per_threshold = np.diff(r.tp, prepend=0)
    negatives_below = r.n_neg - (r.fp + r.fp_above) / 2
    return float(per_threshold @ negatives_below / (r.n_pos * r.n_neg))


def ranked_average_precision(r: Ranking) -> float:
    """sklearn's step-wise AP: precision at each threshold, weighted by the recall it adds."""
    if not r.defined:
        return float("nan")
    per_threshold = np.diff(r.tp, prepend=0)
    return float(per_threshold @ (r.tp / (r.tp + r.fp)) / r.n_pos)


def ranked_f1_max(r: Ranking) -> float:
    """The best F1 over thresholds. ``F1 = 2PR/(P+R) = 2tp/(tp+fp+n_pos)``.

    Lowering the threshold from a positive score to a lower negative-only score adds false positives
    and no true positives, so the maximum is reached at a positive score: those are all it checks.
    """
    if not r.defined:
        return float("nan")
    return float(np.max(2 * r.tp / (r.tp + r.fp + r.n_pos)))


def ranked_roc_curve(r: Ranking) -> tuple[np.ndarray, np.ndarray]:
    if not r.defined:
        return np.empty(0), np.empty(0)
    return r.fpr_curve(r.tp / r.n_pos)


def ranked_pr_curve(r: Ranking) -> tuple[np.ndarray, np.ndarray]:
    if not r.defined:
        return np.empty(0), np.empty(0)
    precision = np.concatenate([[1.0], r.tp / (r.tp + r.fp)])
    recall = np.concatenate([[0.0], r.tp / r.n_pos])
    return precision, recall


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve, equal to ``sklearn.metrics.roc_auc_score``; NaN for a single class."""
    return ranked_auroc(rank(*scores_and_labels(scores, labels)))


def average_precision(scores: Any, labels: Any) -> float:
    """Equal to ``sklearn.metrics.average_precision_score``; NaN for a single class."""
    return ranked_average_precision(rank(*scores_and_labels(scores, labels)))


def f1_max(scores: Any, labels: Any) -> float:
    """The maximum over thresholds ``score >= t`` of F1; NaN for a single class."""
    return ranked_f1_max(rank(*scores_and_labels(scores, labels)))


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` from ``(0, 0)`` to ``(1, 1)`` through every corner of the ROC curve."""
    return ranked_roc_curve(rank(*scores_and_labels(scores, labels)))


def pr_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(precision, recall)`` with recall rising from 0 (precision 1) at every threshold that adds recall.

    These are the points the average precision sums over; thresholds that add only false positives
    are left out, as they add no recall.
    """
    return ranked_pr_curve(rank(*scores_and_labels(scores, labels)))
