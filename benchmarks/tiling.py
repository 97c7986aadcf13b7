"""Tiled prediction against image size: time and peak memory per megapixel, as ratios to the 1 MP case.

Each size runs a synthetic woven image through the inspection loop's scorer with ``--tile auto`` (tiles at the
method's input size, overlap 0.25); the sizes are timed interleaved (1, 4, 16, 64 MP, 1, 4, ...) so
machine noise lands on all alike. Peak memory is what Python and numpy allocate during one prediction
(tracemalloc: the decoded image, the tile batches on the host, the two float32 stitching planes), the
part that grows with the image; the model's own memory does not. Linear scaling shows as time and
memory ratios close to the megapixel ratio, a quadratic blow-up as ratios far above it.

    python benchmarks/tiling.py [--sizes 1,4,16,64] [--repeats 3] [--backbone clip-tiny] [--method knn]
"""

from __future__ import annotations

import argparse
import statistics
import tracemalloc

import numpy as np
import torch

from timing import interleaved
from zsad.engine.build import build_method
from zsad.engine.scorer import method_scorer
from zsad.inference.tiling import Tiling


def woven(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.sin(2 * np.pi * np.arange(height, dtype=np.float32) / 12)[:, None]
    cols = np.sin(2 * np.pi * np.arange(width, dtype=np.float32) / 12)[None, :]
    image = np.array([150, 140, 120], np.float32) + (20 * rows * cols)[..., None]
    image += rng.normal(0, 5, (height, width, 1)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,16,64", help="image sizes in megapixels (4:3 images)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbone", default="clip-tiny")
    parser.add_argument("--method", default="knn")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    method = build_method(args.method, backbone=args.backbone)
    scorer = method_scorer(method, Tiling(method.config.image_size, 0.25), args.batch_size)
    scorer.prepare("fabric", [woven(768, 768, 2)] if method.few_shot else None)
    sizes = [float(s) for s in args.sizes.split(",")]
    images = {}
    for mp in sizes:
        width = int(round((mp * 1e6 * 4 / 3) ** 0.5))
        images[mp] = woven(int(round(width * 3 / 4)), width, 1)
    times = interleaved({mp: (lambda image=image: scorer.score([image])) for mp, image in images.items()},
                        repeats=args.repeats)
    peaks = {}
    for mp, image in images.items():
        tracemalloc.start()
        scorer.score([image])
        peaks[mp] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    base = sizes[0]
    print(f"{args.method} on {args.backbone}, tiles {method.config.image_size} px, overlap 0.25, "
          f"{args.repeats} interleaved repeats (median, min-max)")
    print(f"{'MP':>6} {'tiles':>6} {'s':>8} {'time ratio':>18} {'peak MiB':>9} {'memory ratio':>12} {'MP ratio':>8}")
    for mp, image in images.items():
        ratios = [t / b for t, b in zip(times[mp], times[base])]
        tiles = len(scorer.tiling.boxes(*image.shape[:2]))
        print(f"{mp:6.0f} {tiles:6d} {statistics.median(times[mp]):8.2f} "
              f"{statistics.median(ratios):6.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
              f"{peaks[mp] / 2**20:9.0f} {peaks[mp] / peaks[base]:12.2f} {mp / base:8.0f}")


if __name__ == "__main__":
    main()
