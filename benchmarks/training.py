"""Where a training step goes, per trainable method: loading and decoding, augmentation and synthesis,
backbone, the method's own forward, backward, optimiser.

Live images (no feature cache), the method's own training split of a synthetic auxiliary set, the
method's default batch size unless ``--batch-size``. The backbone's share is timed by hooks around its
forward; the pipeline's by wrapping the live-image functions (DictAS's reference views and DRAEM
synthesis, MoECLIP's rigid augmentation); the method's own forward is the loss computation minus both.
The last column compares the live-image pipeline (loading + augmentation/synthesis) with the backbone:
``pipeline images/s / backbone training images/s``; at 2 or more the backbone, not the pipeline, bounds
a training run.

    python benchmarks/training.py [--methods dictas,moeclip,aprilgan] [--backbone clip-tiny] [--image-size 224]
    python benchmarks/training.py --backbone clip-vit-l14-336 --weights random --image-size 336 --batch-size 2 \
        --steps 2 --methods dictas,moeclip
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from zsad.data import make_loader, open_dataset
from zsad.data.synthetic import write_synthetic
from zsad.engine.build import build_method
from zsad.engine.train import train_config_for, training_records
from zsad.methods.dictas import method as dictas_method

PARTS = ("load", "pipeline", "backbone", "method", "backward", "optimiser")


class Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, part: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start
        return timed


def breakdown(name: str, args: argparse.Namespace, data: Path) -> tuple[dict[str, float], int]:
    torch.manual_seed(0)
    method = build_method(name, backbone=args.backbone, weights=args.weights, image_size=args.image_size)
    config = train_config_for(type(method), {"batch_size": args.batch_size} if args.batch_size else {},
                              method.config)
    records = training_records([open_dataset(f"mvtec:{data}")], config)
    clock = Clock()
    starts: list[float] = []
    method.backbone.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
    def backbone_done(*_) -> None:
        clock.seconds["backbone"] += time.perf_counter() - starts.pop()

    method.backbone.register_forward_hook(backbone_done)
    for part in ("embed", "run_block", "value_value_attention"):  # methods that run the tower block by block
        setattr(method.backbone, part, clock.wrap("backbone", getattr(method.backbone, part)))
    originals = {n: getattr(dictas_method, n) for n in ("reference_views", "synthesize_batch")}
    for n, fn in originals.items():
        setattr(dictas_method, n, clock.wrap("pipeline", fn))
    if hasattr(method, "augmentation"):  # a plain callable: wrap the instance
        method.augmentation = clock.wrap("pipeline", method.augmentation)
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-5)
    method.train()
    loader = make_loader(records, method.config.image_size, config.batch_size, shuffle=True, drop_last=True)
    images = 0
    try:
        for step, batch in enumerate(_timed_iter(loader, clock)):
            if step == args.steps + 1:
                break
            if step == 1:  # the first step warms up: start counting after it
                clock.seconds.clear()
                images = 0
            start = time.perf_counter()
            loss = method.training_loss(batch)["loss"]
            clock.seconds["forward"] += time.perf_counter() - start
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clock.seconds["backward"] += time.perf_counter() - start
            start = time.perf_counter()
            optimizer.step()
            method.after_optimizer_step()
            clock.seconds["optimiser"] += time.perf_counter() - start
            images += len(batch)
    finally:
        for n, fn in originals.items():
            setattr(dictas_method, n, fn)
    seconds = dict(clock.seconds)
    seconds["method"] = seconds.pop("forward") - seconds.get("backbone", 0) - seconds.get("pipeline", 0)
    return seconds, images


def _timed_iter(loader, clock: Clock):
    iterator = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        clock.seconds["load"] += time.perf_counter() - start
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="dictas,moeclip,aprilgan,anomalyclip,dual-anchor,spg")
    parser.add_argument("--backbone", default="clip-tiny")
    parser.add_argument("--weights", help="random: the real architecture with random weights")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, help="default: each method's own")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "aux"
        write_synthetic(data, categories=3, seed=0, size=256)
        print(f"{args.backbone} at {args.image_size} px, {args.steps} timed steps after one warm-up; share of the "
              f"step time per part")
        print(f"{'method':12} {'img/s':>7} " + " ".join(f"{p:>9}" for p in PARTS) + f" {'pipeline/backbone':>18}")
        for name in args.methods.split(","):
            seconds, images = breakdown(name, args, data)
            total = sum(seconds.get(p, 0) for p in PARTS)
            pipeline = seconds.get("load", 0) + seconds.get("pipeline", 0)
            backbone = seconds.get("backbone", 0)
            ratio = f"{backbone / pipeline:18.2f}" if pipeline > 0 else f"{'-':>18}"
            print(f"{name:12} {images / total:7.1f} "
                  + " ".join(f"{100 * seconds.get(p, 0) / total:8.1f}%" for p in PARTS) + ratio)


if __name__ == "__main__":
    main()
