"""One method on the PyTorch path shared by every product of the service, each product prepared on its own
images (the :class:`~zsad.serve.models.Models` of ``zsad serve --method/--checkpoint``)."""

from __future__ import annotations

import copy

from zsad.engine.scorer import method_scorer
from zsad.inference.inspection import Thresholds
from zsad.inference.scoring import Scorer
from zsad.inference.tiling import Tiling
from zsad.methods.base import Method


def fresh_copy(method: Method) -> Method:
    """An unprepared copy of ``method`` that shares its frozen towers (backbone, separately built text
    tower) and copies only the method's own small tensors: one per product, prepared once."""
    shared = [method.backbone, getattr(method, "text_encoder", None)]
    memo = {id(module): module for tower in shared if tower is not None for module in tower.modules()}
    memo.update({id(t): t for tower in shared if tower is not None for t in (*tower.parameters(), *tower.buffers())})
    return copy.deepcopy(method, memo)


class MethodModels:
    """``fixed``: the thresholds the method's checkpoint stores (zero-shot products start from them)."""

    fixed_products = False

    def __init__(self, method: Method, tiling: Tiling | None = None, batch_size: int = 8, precision: str = "fp32",
                 fixed: Thresholds | None = None) -> None:
        self.base, self.tiling, self.batch_size, self.precision = fresh_copy(method), tiling, batch_size, precision
        self.few_shot, self.zero_shot, self.stored = method.few_shot, method.zero_shot, fixed

    def scorer(self, product: str) -> Scorer:
        return method_scorer(fresh_copy(self.base), self.tiling, self.batch_size, self.precision)

    def fixed(self, product: str) -> Thresholds | None:
        return self.stored

    def identity(self, product: str) -> str:
        return ""
