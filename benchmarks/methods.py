"""Seconds per image of every registered method, as a ratio to the bare backbone forward in the same run.

Each method is built untrained on the chosen backbone, prepared for one category (k references for
few-shot methods, text only for zero-shot ones), and timed on the same batch of random images as a
plain ``backbone(images, layers)`` call. Training throughput (images/s) is measured for trainable
methods on random images with random masks. Ratios, not absolute times, are what carry over between
machines.

    python benchmarks/methods.py [--backbone clip-tiny] [--image-size 224] [--shots 4] [--methods knn,dictas]

The tiny default backbone is so cheap that per-method overheads dominate its ratios; the ratios that hold
for the real models (e.g. DictAS within 1.3x the ViT-L/14@336 forward at 4 shots) come from the real
architectures, which ``--weights random`` builds with no download (timings do not depend on the values)::

    OMP_NUM_THREADS=2 python benchmarks/methods.py --backbone clip-vit-l14-336 --weights random \\
        --image-size 336 --batch-size 2 --repeats 2 \\
        --methods anomalyclip,aprilgan,dictas,dual-anchor,knn,moeclip,spg,winclip
    OMP_NUM_THREADS=2 python benchmarks/methods.py --backbone dinov3-vit-l16 --weights random \\
        --image-size 448 --batch-size 2 --repeats 2 --methods spg,knn
    OMP_NUM_THREADS=2 python benchmarks/methods.py --backbone dinov3-vit-l16 --weights random \\
        --image-size 448 --batch-size 2 --repeats 2 --methods dual-anchor --set text_weights=random

(``--set`` overrides a config field of every listed method: dual-anchor's CLIP text tower beside DINO.)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from timing import interleaved, ratio_stats
from zsad.data.types import Batch
from zsad.engine.build import build_method
from zsad.methods import available_methods
from zsad.core.runtime import autocast, pick_device


def _training_images_per_s(method, images: torch.Tensor, device: torch.device, steps: int, precision: str) -> float:
    masks = torch.zeros(images.shape[0], *images.shape[-2:], device=device)
    masks[:, : images.shape[-2] // 4, : images.shape[-1] // 4] = 1
    labels = torch.ones(images.shape[0], dtype=torch.long, device=device)
    batch = Batch(images, masks, labels, ["object"] * len(images), ["synthetic"] * len(images), [""] * len(images))
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-5)
    method.train()

    def step() -> None:
        with autocast(device, precision):
            loss = method.training_loss(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_optimizer_step()

    seconds = statistics.median(interleaved({"step": step}, repeats=steps)["step"])
    method.eval()
    return images.shape[0] / seconds


def _peak_mib(method, images: torch.Tensor, device: torch.device, precision: str) -> float | None:
    """Peak GPU memory of one prediction (prepared state included); None on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), autocast(device, precision):
        method.predict(images)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="clip-tiny")
    parser.add_argument("--weights", default=None,
                        help="weights folder or hub id; 'random' for the architecture with random weights")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--methods", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field of every listed method (repeatable)")
    parser.add_argument("--json", type=Path, help="also write {method: {ratio, ratio_min, ratio_max, ms_per_image, "
                        "backbone_ms_per_image}} to this file")
    parser.add_argument("--no-train", action="store_true", help="skip the training throughput")
    args = parser.parse_args()

    device = pick_device(args.device)
    torch.manual_seed(0)
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    references = torch.rand(args.shots, 3, args.image_size, args.image_size, device=device)
    names = [n for n in args.methods.split(",") if n] or list(available_methods())
    print(f"device {device}, backbone {args.backbone} ({args.weights or 'default'} weights), {args.image_size} px, "
          f"batch {args.batch_size}, {args.shots} shots, {args.precision}")
    print(f"{args.repeats} interleaved repeats after a warm-up; ratio = method / bare backbone on the same batch "
          f"and layers, median (min-max) of the per-round ratios")
    print(f"{'method':<14}{'ms/image':>10}{'backbone ms/image':>19}{'ratio':>22}{'train img/s':>13}")
    table = {}
    for name in names:
        method = build_method(name, backbone=args.backbone, weights=args.weights, image_size=args.image_size,
                              overrides=args.overrides, device=device)
        layers = method.layers
        with torch.inference_mode(), autocast(device, args.precision):
            method.prepare("object", references if method.few_shot else None)
            times = interleaved({"backbone": lambda: method.backbone(images, layers),
                                 "method": lambda: method.predict(images)}, repeats=args.repeats)
        ratio = ratio_stats(times["method"], times["backbone"])
        per_image = 1000 / args.batch_size
        table[name] = {"ratio": ratio.median, "ratio_min": ratio.low, "ratio_max": ratio.high,
                       "ms_per_image": statistics.median(times["method"]) * per_image,
                       "backbone_ms_per_image": statistics.median(times["backbone"]) * per_image,
                       "images_per_s": args.batch_size / statistics.median(times["method"]),
                       "peak_mib": _peak_mib(method, images, device, args.precision)}
        train = ""
        if method.trainable and not args.no_train:
            train = f"{_training_images_per_s(method, images, device, args.repeats, args.precision):.1f}"
        row = table[name]
        print(f"{name:<14}{row['ms_per_image']:>10.2f}{row['backbone_ms_per_image']:>19.2f}{str(ratio):>22}{train:>13}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))

if __name__ == "__main__":
    main()
