"""What the service inspects with: :class:`Models` gives each product a scorer and the thresholds that decide
for it before its own images do.

Two kinds: one method on the PyTorch path shared by every product, each product prepared on its own images
(:mod:`zsad.serve.method`), or exported models, one per product with its references and thresholds folded in
(:class:`ExportedModels`, which needs neither PyTorch nor transformers, so an edge box or a CPU fleet serves
with the runtime install).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from zsad.deploy import DeployedModel
from zsad.deploy import load as load_model
from zsad.errors import ConfigError
from zsad.inference.inspection import Thresholds
from zsad.inference.scoring import Scorer
from zsad.serve.store import check_name

if TYPE_CHECKING:
    from zsad.serve.service import InspectionService


class Models(Protocol):
    few_shot: bool  # a product's normal images are the model's memory
    zero_shot: bool  # a product can be inspected without images of its own
    fixed_products: bool  # the products are the models' own: none is created or deleted over HTTP

    def scorer(self, product: str) -> Scorer:
        """A fresh, unprepared scorer for ``product`` (sharing the loaded weights)."""

    def fixed(self, product: str) -> Thresholds | None:
        """Thresholds stored with the model for ``product``, which decide until its own images calibrate it."""

    def identity(self, product: str) -> str:
        """What identifies ``product``'s model (recorded with its thresholds); empty for a shared method."""


class ExportedModels:
    """Exported models (``zsad export``), one product each, named after its model folder."""

    few_shot, zero_shot, fixed_products = False, True, True

    def __init__(self, folders: list[Path], batch_size: int = 8) -> None:
        self.models: dict[str, DeployedModel] = {}
        for folder in folders:
            name = Path(folder).resolve().name
            try:
                check_name(name)
            except ConfigError as err:
                raise ConfigError(f"--model {folder}: products are named after their model folders: {err}") from None
            if name.lower() in {n.lower() for n in self.models}:
                raise ConfigError(f"--model {folder}: two models are named {name!r} (products are named after "
                                  f"their folders): rename one folder")
            self.models[name] = load_model(folder, batch_size)

    def scorer(self, product: str) -> Scorer:
        return self.models[product].scorer

    def fixed(self, product: str) -> Thresholds | None:
        return self.models[product].thresholds

    def identity(self, product: str) -> str:
        files = self.models[product].meta.get("sha256", {})
        return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]

    def register(self, service: InspectionService) -> None:
        """Make each model a product of the service; a product whose model was exported again since gets a new
        revision: the new model's thresholds, or, when the product has images of its own, thresholds
        recalibrated on them with the new model (its history kept either way)."""
        for name, model in self.models.items():
            product = service.store.product(name)
            thresholds = service.stamped(name, Thresholds.from_dict(model.thresholds.to_dict()))
            if product is None:
                target = float(model.thresholds.calibration.get("target_fpr") or 0.05)
                service.store.add_product(name, model.class_name, [], thresholds, None, target)
            elif product.thresholds.calibration.get("model") != self.identity(name):
                if product.images:
                    service.recalibrate(name, "the exported model changed").result()
                else:
                    service.store.commit_revision(product, thresholds, "the exported model changed")
