"""Run by ``tests/test_distributed.py``, once plainly and once under ``torchrun --nproc-per-node 2``.

``train``: a small trainable method (no randomness inside its loss, so one process and two processes
must agree) trained for two epochs; rank 0 writes the checkpoint. ``eval``: the k-shot protocol with a
deterministic method; rank 0 writes results.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from zsad.data import open_dataset
from zsad.data.types import Batch
from zsad.engine import distributed
from zsad.engine.evaluate import EvalConfig, evaluate, write_results
from zsad.engine.train import TrainConfig, Trainer, training_records
from zsad.methods.base import Method, MethodConfig, Prediction


class ConstantBackbone(nn.Module):
    default_layers = (1,)

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)


@dataclass
class PixelConfig(MethodConfig):
    image_size: int = 32


class PixelLogistic(Method):
    """Per-pixel logistic regression on colour, plus a small MLP on the image mean (for image labels)."""

    name = "pixel-logistic"
    zero_shot = True
    few_shot = True
    trainable = True
    Config = PixelConfig

    def __init__(self, backbone: nn.Module, config: PixelConfig) -> None:
        super().__init__(backbone, config)
        self.pixel = nn.Conv2d(3, 1, 1)
        self.image = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_loss(self, batch: Batch, features=None) -> dict[str, Tensor]:
        pixel = nn.functional.binary_cross_entropy_with_logits(self.pixel(batch.images).squeeze(1), batch.masks)
        image = nn.functional.binary_cross_entropy_with_logits(
            self.image(batch.images.mean((2, 3))).squeeze(1), batch.labels.float())
        return {"loss": pixel + image, "pixel": pixel.detach(), "image": image.detach()}

    def prepare(self, class_name: str, references: Tensor | None) -> None:
        self.reference_mean = None if references is None else references.mean((0, 2, 3))

    def predict(self, images: Tensor) -> Prediction:
        anomaly_map = self.pixel(images).squeeze(1).sigmoid()
        if self.reference_mean is not None:
            anomaly_map = anomaly_map + (images - self.reference_mean.view(1, 3, 1, 1)).abs().mean(1)
        return Prediction(anomaly_map, anomaly_map.flatten(1).amax(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "eval"])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = distributed.init_from_env("cpu") or torch.device("cpu")
    torch.manual_seed(0)
    method = PixelLogistic(ConstantBackbone(), PixelConfig()).to(device)
    dataset = open_dataset(args.data)
    if args.mode == "train":
        config = TrainConfig(epochs=2, batch_size=4, lr=0.05, seed=1, scheduler="plateau", feature_cache="off")
        Trainer(method, training_records([dataset], config), config, args.out).fit()
    else:
        document = evaluate(method, dataset, EvalConfig(shots=(0, 2), seeds=2, batch_size=3),
                            meta={"world_size": distributed.world_size()})
        if distributed.is_main():
            write_results(args.out, document)
            (args.out / "ranks.json").write_text(json.dumps(distributed.world_size()))
    distributed.shutdown()


if __name__ == "__main__":
    main()
