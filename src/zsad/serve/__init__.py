"""The inspection service: :func:`build_service` wires a loaded method to a store and a model worker."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from zsad.engine.scorer import method_scorer
from zsad.methods.base import Method
from zsad.serve.service import InspectionService, Limits
from zsad.serve.store import Store
from zsad.inference.inspection import Thresholds
from zsad.inference.tiling import Tiling


def fresh_copy(method: Method) -> Method:
    """An unprepared copy of ``method`` that shares its frozen towers (backbone, separately built text
    tower) and copies only the method's own small tensors: one per product, prepared once."""
    shared = [method.backbone, getattr(method, "text_encoder", None)]
    memo = {id(module): module for tower in shared if tower is not None for module in tower.modules()}
    memo.update({id(t): t for tower in shared if tower is not None for t in (*tower.parameters(), *tower.buffers())})
    return copy.deepcopy(method, memo)


def build_service(method: Method, store: str | Path, tiling: Tiling | None = None, limits: Limits | None = None,
                  batch_size: int = 8, max_wait: float = 0.005, precision: str = "fp32",
                  describe: dict[str, Any] | None = None, fixed: Thresholds | None = None) -> InspectionService:
    """``fixed``: the thresholds the method's checkpoint stores (zero-shot products start from them)."""
    base = fresh_copy(method)
    return InspectionService(Store(Path(store)),
                             lambda: method_scorer(fresh_copy(base), tiling, batch_size, precision),
                             describe or {"method": method.name}, limits, batch_size, max_wait, fixed)
