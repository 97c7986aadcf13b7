"""Training throughput of 2 processes (torchrun, gloo on CPU / NCCL on GPUs) relative to 1 process.

Both runs train the same method on the same synthetic auxiliary set for the same number of global
batches; the script reads each run's images/s from its ``train_log.jsonl`` and prints the ratio. On a
2-core CPU the ratio shows the overhead of gradient averaging more than any speed-up.

    python benchmarks/distributed.py [--method aprilgan] [--backbone clip-tiny] [--processes 2]
"""

from __future__ import annotations

import argparse
import statistics
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zsad.data.synthetic import write_synthetic


def _train(command_prefix: list[str], args: argparse.Namespace, data: Path, out: Path) -> tuple[float, float]:
    command = [*command_prefix, "-m", "zsad", "train", "--method", args.method, "--data", f"mvtec:{data}",
               "--backbone", args.backbone, "--image-size", str(args.image_size), "--epochs", "2",
               "--batch-size", str(args.batch_size), "--train-set", "feature_cache=off", "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return rows[-1]["images_per_s"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="aprilgan")
    parser.add_argument("--backbone", default="clip-tiny")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (1-process, N-process, ...)")
    args = parser.parse_args()
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "aux"
        write_synthetic(data, categories=4, seed=0, size=128)
        rates: dict[str, list[float]] = {"one": [], "many": []}
        for round_ in range(args.repeats):  # interleaved, so machine noise lands on both
            rates["one"].append(_train([sys.executable], args, data, Path(tmp) / f"one{round_}")[0])
            rates["many"].append(_train([torchrun, "--standalone", f"--nproc-per-node={args.processes}"], args, data,
                                        Path(tmp) / f"many{round_}")[0])
    ratios = [m / o for m, o in zip(rates["many"], rates["one"])]
    print(f"{args.method} on {args.backbone}, global batch {args.batch_size}, {args.repeats} interleaved rounds")
    print(f"1 process : {statistics.median(rates['one']):8.1f} images/s (second epoch, median)")
    print(f"{args.processes} processes: {statistics.median(rates['many']):8.1f} images/s (second epoch, median)")
    print(f"throughput ratio {args.processes}-process / 1-process: {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f}-{max(ratios):.2f})")

if __name__ == "__main__":
    main()
