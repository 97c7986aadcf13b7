"""A 20-megapixel inspection with four full-resolution references, against the same run on reference crops.

The issue this answers: tiling four 5000x4000 references gives knn thousands of reference tiles (over half a
million patches per layer), which used to take more than 4 GB and ten minutes for one image. Here the same
product is predicted twice with ``zsad predict --method knn --tile auto``, each run in its own process:

- *crops*: references cut to four 1120x1120 crops (the workaround a user would reach for);
- *full*: the four full references, with ``--memory-budget`` set to the crops' memory size, so the coreset
  keeps as many patches as the crops hold, chosen from all of the references.

Runs alternate (crops, full, crops, ...) when ``--repeats`` > 1. Printed per run: wall time, peak resident
memory of the process (``ru_maxrss``), where the map peaks against the planted 26x30 px defect; then the
full/crops time ratio (median, min-max over rounds) and the largest peak memory of the full run.

    python benchmarks/large_image.py [--repeats 1] [--width 5000 --height 4000] [--backbone clip-tiny]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

DEFECT = (0.425, 0.46, 30, 26)  # top and left as fractions of the image; height and width in pixels
CROP = 1120
MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(done.stderr[-2000:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(done.returncode)
"""


def woven(height: int, width: int, seed: int) -> np.ndarray:
    """A woven texture with sensor noise; references differ from the inspected image by noise and phase."""
    rng = np.random.default_rng(seed)
    shift = rng.integers(0, 12, 2)
    rows = np.sin(2 * np.pi * (np.arange(height, dtype=np.float32) + shift[0]) / 12)[:, None]
    cols = np.sin(2 * np.pi * (np.arange(width, dtype=np.float32) + shift[1]) / 12)[None, :]
    image = np.array([150, 140, 120], np.float32) + (20 * rows * cols)[..., None]
    image += rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def defect_box(height: int, width: int) -> tuple[int, int, int, int]:
    return int(DEFECT[0] * height), int(DEFECT[1] * width), DEFECT[2], DEFECT[3]


def write_data(root: Path, height: int, width: int) -> None:
    for k in range(4):
        reference = woven(height, width, seed=k + 1)
        (root / "full").mkdir(parents=True, exist_ok=True)
        (root / "crops").mkdir(exist_ok=True)
        Image.fromarray(reference).save(root / "full" / f"ref{k}.png", compress_level=1)
        top, left = (k // 2) * (height - CROP), (k % 2) * (width - CROP)
        Image.fromarray(reference[top : top + CROP, left : left + CROP]).save(root / "crops" / f"ref{k}.png")
    image = woven(height, width, seed=0)
    top, left, h, w = defect_box(height, width)
    yy, xx = np.mgrid[:h, :w]
    blob = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 <= 1
    image[top : top + h, left : left + w][blob] = (40, 90, 200)
    (root / "images").mkdir(exist_ok=True)
    Image.fromarray(image).save(root / "images" / "part.png", compress_level=1)


def run(root: Path, refs: str, budget: int | None, args: argparse.Namespace) -> tuple[float, float, float]:
    """Seconds, peak RSS in GB and distance in px from the map peak to the defect's box."""
    out = root / f"out-{refs}"
    command = [sys.executable, "-m", "zsad", "predict", "--method", "knn", "--backbone", args.backbone,
               "--image-size", "224", "--tile", "auto", "--refs", str(root / refs), "--images", str(root / "images"),
               "--out", str(out), "--save-maps", "float16", "--batch-size", "16"]
    if budget:
        command += ["--memory-budget", str(budget)]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{refs}: zsad predict failed: {done.stderr.strip().splitlines()[-1]}")
    peak_gb = int(done.stdout.split()[-1]) / 2**20
    anomaly_map = np.load(out / "maps" / "part.npy")
    y, x = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
    top, left, h, w = defect_box(args.height, args.width)
    off = float(np.hypot(max(top - y, 0, y - (top + h - 1)), max(left - x, 0, x - (left + w - 1))))
    return seconds, peak_gb, off


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=5000)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--backbone", default="clip-tiny")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--memory-budget", type=int, help="patches the full run's memory keeps per layer "
                        "(default: as many as the crops' memory holds)")
    args = parser.parse_args()
    crop_tiles = 4 * ((CROP - 224) // 168 + 1 + ((CROP - 224) % 168 > 0)) ** 2
    budget = args.memory_budget or crop_tiles * (224 // 16) ** 2
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_data(root, args.height, args.width)
        print(f"{args.width}x{args.height} image, 26x30 px defect, knn on {args.backbone} tiled at 224 px; "
              f"full references with --memory-budget {budget} (the crops' {crop_tiles} tiles hold "
              f"{crop_tiles * (224 // 16) ** 2} patches)")
        times: dict[str, list[float]] = {"crops": [], "full": []}
        peaks: dict[str, list[float]] = {"crops": [], "full": []}
        for _ in range(args.repeats):
            for refs in ("crops", "full"):
                seconds, peak, off = run(root, refs, budget if refs == "full" else None, args)
                times[refs].append(seconds)
                peaks[refs].append(peak)
                print(f"  {refs:5s} {seconds:7.1f} s, peak RSS {peak:.2f} GB, map peak {off:.0f} px from the defect")
        ratios = [f / c for f, c in zip(times["full"], times["crops"])]
        print(f"full / crops time: {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}); "
              f"full run peak RSS {max(peaks['full']):.2f} GB")


if __name__ == "__main__":
    main()
