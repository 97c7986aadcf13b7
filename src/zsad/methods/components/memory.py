"""A memory of reference patch tokens, searched by nearest cosine neighbour: the few-shot half of knn,
APRIL-GAN and the DictAS dictionary's input.

With a ``budget`` the memory keeps at most that many patches per layer, chosen by greedy coreset selection
(:mod:`zsad.methods.components.coreset`) on the layers' normalised tokens side by side, so a kept patch keeps
its tokens in every layer. Tokens can arrive in pieces (:func:`reduce_pieces`): the tiles of several large
images are then never held at once, and each block is reduced as it completes. A memory is joined from
parts reduced one reference at a time (:meth:`PatchMemory.combine`), so leave-one-out calibration joins the
other references' parts instead of running the backbone over them again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsad.backbones.base import FeatureExtractor
from zsad.methods.components.coreset import BLOCK, greedy_coreset
from zsad.methods.components.maps import min_cosine_distance


class PatchMemory(nn.Module):
    """Per-layer banks of reference patch tokens, queried by minimum cosine distance; ``budget`` > 0 caps
    the patches kept per layer (0 keeps every one)."""

    def __init__(self, chunk_size: int = 4096, budget: int = 0) -> None:
        super().__init__()
        self.chunk_size, self.budget = chunk_size, budget
        self.banks: list[Tensor] = []

    def build(self, banks: list[Tensor]) -> None:
        """``banks[l]`` holds every reference patch of layer l, ``[k * N, C]``; kept within the budget."""
        self.banks = reduce_pieces([banks] if banks else [], len(banks[0]) if banks else 0, self.budget)

    def combine(self, parts: list[list[Tensor]]) -> None:
        """Banks joined from parts reduced separately (one per reference: see :func:`reduce_pieces`)."""
        self.banks = [torch.cat(layer) for layer in zip(*parts)] if parts else []

    def distances(self, tokens: list[Tensor], grid: tuple[int, int]) -> Tensor:
        """Min cosine distance of each query patch, ``[B, L, h, w]`` for per-layer tokens ``[B, N, C]``."""
        if not self.banks:
            raise RuntimeError("PatchMemory.build must be called with reference features first")
        b = tokens[0].shape[0]
        maps = [min_cosine_distance(t.reshape(-1, t.shape[-1]), bank, self.chunk_size).view(b, *grid)
                for t, bank in zip(tokens, self.banks)]
        return torch.stack(maps, 1)


def reduce_pieces(pieces: Iterable[list[Tensor]], patches: int, keep: int) -> list[Tensor]:
    """Per-layer banks of the ``patches`` tokens arriving as ``pieces``: all of them when ``keep`` is 0 or not
    fewer, else about ``keep``, each block of :data:`BLOCK` reduced to its share as it completes."""
    if not keep or patches <= keep:
        return [layer[0] if len(layer) == 1 else torch.cat(layer) for layer in zip(*pieces)]
    share = keep / patches
    kept: list[list[Tensor]] = []
    pending: list[list[Tensor]] = []
    for piece in pieces:
        pending.append(piece)
        while sum(len(p[0]) for p in pending) >= BLOCK:
            block = [torch.cat(layer) for layer in zip(*pending)]
            kept.append(_coreset([b[:BLOCK] for b in block], max(1, round(share * BLOCK))))
            pending = [[b[BLOCK:] for b in block]] if len(block[0]) > BLOCK else []
    if pending:
        rest = [torch.cat(layer) for layer in zip(*pending)]
        kept.append(_coreset(rest, max(1, round(share * len(rest[0])))))
    return [torch.cat(layer) for layer in zip(*kept)]


def _coreset(banks: list[Tensor], count: int) -> list[Tensor]:
    """The same ``count`` patches of every layer, chosen on the layers' unit tokens side by side."""
    chosen = greedy_coreset(torch.cat([F.normalize(bank.float(), dim=-1) for bank in banks], dim=1), count)
    return [bank[chosen] for bank in banks]


def reference_tokens(backbone: FeatureExtractor, references: Tensor, layers: tuple[int, ...],
                     batch_size: int) -> list[Tensor]:
    """Patch tokens of all references per layer, flattened to ``[k * N, C]``."""
    return [torch.cat(layer) for layer in zip(*token_pieces(backbone, [references], layers, batch_size))]


def token_pieces(backbone: FeatureExtractor, batches: Iterable[Tensor], layers: tuple[int, ...],
                 batch_size: int) -> Iterator[list[Tensor]]:
    """Per-layer patch tokens ``[b * N, C]`` of each ``batch_size`` references, batch after batch."""
    for references in batches:
        for start in range(0, references.shape[0], batch_size):
            features = backbone(references[start : start + batch_size], layers)
            yield [tokens.reshape(-1, tokens.shape[-1]) for tokens in features.patch_tokens]
