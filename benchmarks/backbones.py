"""Throughput and peak memory of every registry backbone at its default input size, fp32 vs bf16 autocast.

Models whose weights are not on this machine are listed as skipped, unless ``--random`` builds their
architectures with random weights (no download; speed and memory do not depend on the values). Run:
``python benchmarks/backbones.py [--device cuda] [--batch 8] [--names clip-tiny dino-tiny] [--random]``.
On CUDA the memory column is the peak allocated by torch during the run; on CPU it is the process's peak
resident set so far (a running maximum, so only its growth between rows says something).
"""

from __future__ import annotations

import argparse
import statistics
import resource
import sys
import time

import torch

from zsad.backbones import BACKBONES, build_backbone
from timing import interleaved, ratio_stats
from zsad.errors import WeightsNotFoundError
from zsad.methods.components.prompts import text_anchors
from zsad.core.runtime import autocast, pick_device


def peak_mib(extractor, images: torch.Tensor, precision: str) -> float:
    """Peak memory of one forward at ``precision`` (GPU: allocated; CPU: the process's maximum RSS)."""
    device = images.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), autocast(device, precision):
        extractor(images, extractor.default_layers)
    _sync(device)
    return _peak_mib(device)


def forward(extractor, images: torch.Tensor, precision: str):
    def run() -> None:
        with torch.inference_mode(), autocast(images.device, precision):
            extractor(images, extractor.default_layers)
    return run


def anchor_seconds(extractor) -> float:
    """Seconds to build the WinCLIP anchors (420 sentences) of one class, uncached."""
    start = time.perf_counter()
    text_anchors(extractor.text, f"class {time.perf_counter_ns()}")  # a fresh name: no cache hit
    _sync(next(extractor.parameters()).device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--device", default=None, help="default: the best available")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--random", action="store_true",
                        help="build every model with random weights instead of loading them (weights='random')")
    args = parser.parse_args()
    device = pick_device(args.device)
    print(f"device={device} batch={args.batch} iters={args.iters} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} weights={'random' if args.random else 'pretrained'}")
    print("fp32 and bf16 forwards interleaved; bf16 speed-up = fp32 time / bf16 time, median (min-max) per round")
    print(f"{'backbone':18} {'size':>5} {'fp32 img/s':>11} {'bf16 img/s':>11} {'bf16 speed-up':>18} "
          f"{'fp32 MiB':>9} {'bf16 MiB':>9} {'anchors s':>9}")
    for name in args.names:
        spec = BACKBONES[name]
        try:
            extractor = build_backbone(name, weights="random" if args.random else None, device=device)
        except WeightsNotFoundError:
            print(f"{name:18} skipped: weights not on this machine ({spec.hub_id})")
            continue
        images = torch.rand(args.batch, 3, spec.image_size, spec.image_size, device=device)
        times = interleaved({p: forward(extractor, images, p) for p in ("fp32", "bf16")}, repeats=args.iters)
        fp32, bf16 = (args.batch / statistics.median(times[p]) for p in ("fp32", "bf16"))
        speed = ratio_stats(times["fp32"], times["bf16"])
        fp32_mib, bf16_mib = peak_mib(extractor, images, "fp32"), peak_mib(extractor, images, "bf16")
        anchors = f"{anchor_seconds(extractor):9.2f}" if extractor.text is not None else f"{'-':>9}"
        print(f"{name:18} {spec.image_size:5d} {fp32:11.1f} {bf16:11.1f} {str(speed):>18} "
              f"{fp32_mib:9.0f} {bf16_mib:9.0f} {anchors}")
        del extractor
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
