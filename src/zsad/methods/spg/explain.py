"""Tracing SPG's decisions back to dictionary atoms.

A guide is ``g = c · D`` with unit-norm atoms ``d_j``, so its cosine with a token ``x`` splits exactly
over atoms: ``cos(x, g) = Σ_j (c_j / ‖g‖) (x̂ · d_j)``. The local anomaly margin
``(cos(x, g_a) - cos(x, g_n)) / τ`` (the logit of ``p_a`` against ``p_n``) is therefore the sum of
per-atom contributions ``w_j (x̂ · d_j)`` with ``w_j = (c_a,j / ‖g_a‖ - c_n,j / ‖g_n‖) / τ``; atoms with
no weight in either local code contribute nothing.

An atom *drives* a category's anomaly decision by how much more it contributes on that category's
anomalous patches than on its normal ones: ``separation = mean over anomalous - mean over normal``,
each patch weighted by the fraction of its pixels inside (resp. outside) the ground-truth mask. An atom
of the anomaly guide drives it by being present on anomalous patches; an atom of the normal guide, by
being absent from them. Atoms
among the ``top`` drivers of at least ``shared_fraction`` of the categories (and of two at least) are
*shared* (category-general factors); the others are *specific* to the categories they drive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from zsad.methods.spg.guides import GUIDE_NAMES


@dataclass(frozen=True)
class GuideAtom:
    guide: str
    rank: int  # 1 = largest coefficient
    atom: int
    coefficient: float


@dataclass(frozen=True)
class Driver:
    category: str
    rank: int  # 1 = largest separation in this category
    atom: int
    separation: float  # mean contribution on anomalous minus normal patches (logit units)
    anomalous: float  # mean contribution on anomalous patches
    normal: float  # mean contribution on normal patches
    categories: int  # how many categories have this atom among their top drivers
    kind: str  # "shared" or "specific"


def top_atoms(codes: Tensor, count: int) -> list[GuideAtom]:
    """Each guide's ``count`` largest positive coefficients, ``codes`` being ``[4, latents]``."""
    rows = []
    for name, code in zip(GUIDE_NAMES, codes.float().cpu()):
        values, atoms = code.topk(min(count, code.numel()))
        rows += [GuideAtom(name, rank, int(a), float(v))
                 for rank, (v, a) in enumerate(zip(values, atoms), 1) if v > 0]
    return rows


def atom_weights(local_codes: Tensor, dictionary: Tensor, temperature: float) -> Tensor:
    """``w [latents]`` such that the local anomaly margin of a token is ``Σ_j w_j (x̂ · d_j)``.

    ``local_codes`` is ``[2, latents]`` (normal, anomaly); ``dictionary`` ``[latents, C]`` has unit rows.
    """
    norms = (local_codes @ dictionary).norm(dim=-1, keepdim=True).clamp_min(1e-12)
    normal, anomaly = local_codes / norms
    return (anomaly - normal) / temperature


def atom_contributions(tokens: Tensor, dictionary: Tensor, weights: Tensor) -> Tensor:
    """Per-atom contributions ``[..., latents]`` to the local anomaly margin of tokens ``[..., C]``."""
    return (F.normalize(tokens.float(), dim=-1) @ dictionary.t()) * weights


class DecisionAttribution:
    """Accumulates, per category, each atom's mean contribution on anomalous and on normal patches."""

    def __init__(self, codes: Tensor, dictionary: Tensor, temperature: float) -> None:
        weights = atom_weights(codes[2:].float(), dictionary.float(), temperature)
        self.latents = weights.numel()
        self.support = weights.nonzero().flatten()  # only these atoms can contribute
        self.weights = weights[self.support]
        self.atoms = dictionary.float()[self.support]
        self._sums: dict[str, list[Tensor]] = {}  # category -> [anomalous sum, anomalous weight, normal ...]

    def add(self, category: str, tokens: Tensor, anomalous: Tensor) -> None:
        """Tokens ``[B, N, C]`` of one category's images and each patch's anomalous fraction ``[B, N]``."""
        contributions = atom_contributions(tokens, self.atoms, self.weights).flatten(0, 1)
        fraction = anomalous.float().flatten().unsqueeze(1)
        update = [(contributions * fraction).sum(0), fraction.sum(), (contributions * (1 - fraction)).sum(0),
                  (1 - fraction).sum()]
        sums = self._sums.setdefault(category, [torch.zeros_like(u) for u in update])
        for total, value in zip(sums, update):
            total += value

    @property
    def categories(self) -> list[str]:
        """Categories seen with at least some anomalous and some normal pixels, in the order added."""
        return [c for c, (_, anomalous, _, normal) in self._sums.items() if anomalous > 0 and normal > 0]

    def means(self, category: str) -> tuple[Tensor, Tensor]:
        """Mean contribution of every atom ``[latents]`` on anomalous and on normal patches."""
        anomalous_sum, anomalous_weight, normal_sum, normal_weight = self._sums[category]
        anomalous = self.weights.new_zeros(self.latents).index_copy(0, self.support, anomalous_sum / anomalous_weight)
        normal = self.weights.new_zeros(self.latents).index_copy(0, self.support, normal_sum / normal_weight)
        return anomalous, normal

    def drivers(self, top: int, shared_fraction: float = 0.5) -> list[Driver]:
        """Each category's ``top`` atoms by positive separation, classed as shared or specific."""
        chosen: dict[str, list[tuple[int, float, float, float]]] = {}
        for category in self.categories:
            anomalous, normal = self.means(category)
            separation = anomalous - normal
            values, atoms = separation.topk(min(top, self.latents))
            chosen[category] = [(int(a), float(v), float(anomalous[a]), float(normal[a]))
                                for v, a in zip(values, atoms) if v > 0]
        counts: dict[int, int] = {}
        for rows in chosen.values():
            for atom, *_ in rows:
                counts[atom] = counts.get(atom, 0) + 1
        needed = max(2, math.ceil(shared_fraction * len(chosen)))
        return [Driver(category, rank, atom, separation, anomalous, normal, counts[atom],
                       "shared" if counts[atom] >= needed else "specific")
                for category, rows in chosen.items()
                for rank, (atom, separation, anomalous, normal) in enumerate(rows, 1)]
