"""Does each trainable method learn, and does what it learns transfer? One table of numbers.

Per method: a fixed small budget of optimiser steps on a planted-signal auxiliary set (seed 0,
:mod:`zsad.data.synthetic.planted`: the same defect look in every category), then pixel AUROC / AP /
AUPRO on the *seen* auxiliary categories and on *unseen* categories of another seed, before and after
training, and each loss part's mean over the first and the last epoch. Few-shot methods are evaluated
with 2 references, zero-shot ones from the class name alone. Regressions in training show up here as
numbers.

    python benchmarks/learning.py [--methods aprilgan,dictas] [--backbone clip-tiny] [--steps 60]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from zsad.data import open_dataset
from zsad.data.synthetic.planted import write_planted
from zsad.engine.build import build_method
from zsad.engine.evaluate import EvalConfig, evaluate
from zsad.engine.train import Trainer, train_config_for, training_records

TRAINABLE = ("aprilgan", "anomalyclip", "dictas", "moeclip", "spg:sae", "spg:guides", "dual-anchor")
METRICS = ("pixel_auroc", "pixel_ap", "pixel_aupro")


def measure(method, dataset) -> dict[str, float]:
    shots = (2,) if method.few_shot and not method.zero_shot else (0,)
    document = evaluate(method, dataset, EvalConfig(shots=shots, seeds=1, batch_size=8))
    return document["summary"][str(shots[0])]["mean"]


def train(name: str, stage: str | None, backbone: str, size: int, steps: int, data: Path, out: Path,
          start: Path | None = None):
    torch.manual_seed(0)
    overrides = [f"stage={stage}"] if stage else []
    method = build_method(name, backbone=backbone, image_size=size, overrides=overrides, checkpoint=start,
                          partial=start is not None)
    config = train_config_for(type(method), {}, method.config)
    records = training_records([open_dataset(f"mvtec:{data}")], config)
    batch = min(config.batch_size, 8)
    per_epoch = len(records) // batch
    epochs = max(2, math.ceil(steps / per_epoch))
    config = replace(config, batch_size=batch, epochs=epochs, feature_cache="off", lr=config.lr)
    return method, Trainer(method, records, config, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(TRAINABLE))
    parser.add_argument("--backbone", default="clip-tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        seen, unseen = Path(folder) / "seen", Path(folder) / "unseen"
        write_planted(seen, categories=3, seed=0, size=args.image_size)
        write_planted(unseen, categories=2, seed=1, size=args.image_size)
        seen_data, unseen_data = open_dataset(f"mvtec:{seen}"), open_dataset(f"mvtec:{unseen}")
        print(f"{args.backbone} at {args.image_size} px, about {args.steps} optimiser steps; pixel metrics before -> "
              f"after training; loss parts: first epoch -> last epoch")
        checkpoints: dict[str, Path] = {}
        for entry in args.methods.split(","):
            name, _, stage = entry.partition(":")
            start = checkpoints.get("spg:sae") if entry == "spg:guides" else None
            method, trainer = train(name, stage or None, args.backbone, args.image_size, args.steps, seen,
                                    Path(folder) / entry.replace(":", "-"), start)
            before = {"seen": measure(method, seen_data), "unseen": measure(method, unseen_data)}
            rows = trainer.fit()
            checkpoints[entry] = trainer.out
            after = {"seen": measure(method, seen_data), "unseen": measure(method, unseen_data)}
            print(f"\n{entry}: {trainer.config.epochs} epochs x {trainer.steps_per_epoch} steps")
            for split in ("seen", "unseen"):
                cells = "  ".join(f"{m.removeprefix('pixel_')} {before[split][m]:.3f} -> {after[split][m]:.3f}"
                                  for m in METRICS)
                print(f"  {split:7s} {cells}")
            parts = [k for k in rows[0] if k not in ("epoch", "steps", "images_per_s", "lr", "seconds")]
            print("  losses  " + "  ".join(f"{k} {rows[0][k]:.4g} -> {rows[-1][k]:.4g}" for k in parts))


if __name__ == "__main__":
    main()
