"""Load test of `zsad serve` on loopback against offline batch prediction of the same images.

A real server process (uvicorn, SQLite store in a temporary folder) gets one product; then, per round,
the same N images are (a) predicted offline in this process in batches, overlays drawn, as `zsad
predict` does, and (b) posted to the server by C concurrent clients, one image per request. Rounds
alternate (offline, served, offline, ...) so machine noise lands on both. Printed: throughput of each,
the served/offline ratio per round (median, min-max), request latency p50/p99, errors, and whether
every accepted image has its record and overlay file. The load is bounded (C x N/C requests per
round) and goes to 127.0.0.1 only.

    python benchmarks/serve.py [--clients 8] [--images 400] [--rounds 3] [--image-size 224]
    python benchmarks/serve.py --backbone clip-vit-b16 --weights random --images 96 --rounds 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from zsad.engine.build import build_method
from zsad.inference.calibration import IMAGE_RULE, PIXEL_RULE
from zsad.engine.scorer import method_scorer
from zsad.inference.calibration import calibrate
from zsad.inference.overlay import inspection_picture, png_bytes
from zsad.inference.scoring import Inspector


def texture(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    weave = 25 * np.sin(2 * np.pi * xx / 8) * np.sin(2 * np.pi * yy / 8)
    image = np.clip(128 + weave[..., None] + rng.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8)
    if seed % 5 == 0:
        image[size // 3 : size // 2, size // 3 : size // 2] = (230, 40, 40)
    return image


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def serving(args: argparse.Namespace, store: Path):
    port = 8000 + int(time.time()) % 1000
    command = [sys.executable, "-m", "zsad", "serve", "--method", args.method, "--backbone", args.backbone,
               "--image-size", str(args.image_size), "--store", str(store), "--port", str(port),
               "--batch-size", str(args.batch_size)] + (["--weights", args.weights] if args.weights else [])
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--images", type=int, default=400, help="images per round (default 8 clients x 50)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--method", default="knn")
    parser.add_argument("--backbone", default="clip-tiny")
    parser.add_argument("--weights", help="e.g. random: a real architecture with random weights")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    size = args.image_size
    references = [texture(1000 + i, size) for i in range(4)]
    images = [texture(i, size) for i in range(args.images)]
    payloads = [png(image) for image in images]

    method = build_method(args.method, backbone=args.backbone, image_size=size, weights=args.weights)
    scorer = method_scorer(method, None, args.batch_size)
    inspector = Inspector(scorer, calibrate(scorer, "fabric", references, IMAGE_RULE, PIXEL_RULE))

    def offline() -> float:
        start = time.perf_counter()
        for first in range(0, len(images), args.batch_size):
            chunk = images[first : first + args.batch_size]
            for image, inspection in zip(chunk, inspector.inspect(chunk)):
                png_bytes(inspection_picture(image, inspection))
        return len(images) / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as folder, serving(args, Path(folder) / "store") as url:
        created = httpx.post(f"{url}/products", data={"name": "fabric", "class_name": "fabric"}, timeout=300,
                             files=[("references", (f"r{i}.png", png(r), "image/png"))
                                    for i, r in enumerate(references)])
        if created.status_code != 201:
            raise SystemExit(f"creating the product failed: {created.text}")
        latencies: list[float] = []
        errors = 0
        accepted = 0

        def post(index: int) -> tuple[float, bool]:
            start = time.perf_counter()
            response = httpx.post(f"{url}/products/fabric/inspect", timeout=300,
                                  files=[("images", (f"{index}.png", payloads[index], "image/png"))])
            return time.perf_counter() - start, response.status_code == 200

        def served() -> float:
            nonlocal errors, accepted
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                for latency, ok in pool.map(post, range(len(images))):
                    latencies.append(latency)
                    accepted += ok
                    errors += not ok
            return len(images) / (time.perf_counter() - start)

        offline()  # warm-up of both paths
        served()
        latencies.clear()
        accepted = errors = 0
        rates: dict[str, list[float]] = {"offline": [], "served": []}
        for _ in range(args.rounds):
            rates["offline"].append(offline())
            rates["served"].append(served())
        store = Path(folder) / "store"
        rows = sqlite3.connect(store / "zsad.sqlite3").execute("SELECT overlay FROM inspections").fetchall()
        warm_up = len(images)
        records_ok = len(rows) == accepted + warm_up and all((store / r[0]).is_file() for r in rows)

    ratios = [s / o for s, o in zip(rates["served"], rates["offline"])]
    print(f"{args.method} on {args.backbone} at {size} px, {args.clients} clients x {args.images // args.clients} "
          f"images per round, {args.rounds} interleaved rounds")
    print(f"offline batch {args.batch_size}: {statistics.median(rates['offline']):.1f} images/s; served: "
          f"{statistics.median(rates['served']):.1f} images/s")
    print(f"served / offline throughput: {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    q = np.percentile(latencies, [50, 99]) * 1000
    print(f"latency p50 {q[0]:.0f} ms, p99 {q[1]:.0f} ms; errors {errors}; every accepted image recorded with its "
          f"overlay: {records_ok}")


if __name__ == "__main__":
    main()
