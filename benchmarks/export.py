"""Exported models on ONNX Runtime (and OpenVINO) against the PyTorch eager path: CPU time per image.

Each method is built on the chosen backbone (``--weights random`` builds the real architecture with no
download), prepared for one product (k references for few-shot methods), exported at each of
``--precisions`` (the export checks itself on the timing batch: its map agreement with PyTorch fp32 is
printed as a fraction of the maps' range), and then timed on the same batch: PyTorch ``method.predict``
under inference mode, each ONNX Runtime artefact and, when asked, OpenVINO, interleaved round by round.
Printed per method: ms/image of each and the speed-up over eager (median, min-max over rounds).

    python benchmarks/export.py --backbone clip-vit-b16 --weights random --image-size 224 --methods knn \
        --precisions fp32,int8
    python benchmarks/export.py --backbone clip-vit-l14-336 --weights random --image-size 336 --methods knn \
        --precisions fp32,int8 --shots 1 --batch-size 2 --repeats 3

(``--shots 1`` for the large model: with two or more references an fp16/int8 export calibrates by
leave-one-out on one artefact per reference, minutes each at ViT-L size, which the timing does not need.)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from timing import interleaved, ratio_stats
from zsad import deploy
from zsad.engine.build import build_method
from zsad.export import export_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="clip-tiny")
    parser.add_argument("--weights")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--methods", default="knn,aprilgan,winclip,dictas")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precisions", default="fp32", help="ONNX artefact precisions to time, e.g. fp32,int8")
    parser.add_argument("--openvino", action="store_true", help="also time an OpenVINO export")
    args = parser.parse_args()
    size = args.image_size
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(args.batch_size)]
    refs = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(args.shots)]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    print(f"{args.backbone} ({args.weights or 'default weights'}) at {size} px, batch {args.batch_size}, "
          f"{args.repeats} interleaved rounds, {torch.get_num_threads()} threads; speed-up = eager / exported")
    for name in args.methods.split(","):
        torch.manual_seed(0)
        method = build_method(name, backbone=args.backbone, weights=args.weights, image_size=size)
        shots = refs if method.few_shot else None
        with tempfile.TemporaryDirectory() as folder:
            runners, agreement = {"eager": lambda: _eager(method, batch)}, {}
            for precision in args.precisions.split(","):
                meta = export_model(method, Path(folder) / precision, "object", shots, precision=precision,
                                    check_images=images)
                runners[f"onnxruntime {precision}"] = _runner(Path(folder) / precision, images)
                agreement[f"onnxruntime {precision}"] = meta["check"]["map_error"]
            if args.openvino:
                meta = export_model(method, Path(folder) / "ov", "object", shots, fmt="openvino", check_images=images)
                runners["openvino"] = _runner(Path(folder) / "ov", images)
                agreement["openvino"] = meta["check"]["map_error"]
            times = interleaved(runners, repeats=args.repeats)
        line = f"{name:12s} eager {1000 * statistics.median(times['eager']) / len(images):8.1f} ms/image"
        for runtime in [r for r in runners if r != "eager"]:
            line += (f"\n{'':12s} {runtime} {1000 * statistics.median(times[runtime]) / len(images):8.1f} ms/image, "
                     f"speed-up {ratio_stats(times['eager'], times[runtime])}, maps within "
                     f"{100 * agreement[runtime]:.2g}% of their range")
        print(line)


def _eager(method, batch: torch.Tensor) -> None:
    with torch.inference_mode():
        method.predict(batch)


def _runner(folder: Path, images: list[np.ndarray]):
    model = deploy.load(folder, batch_size=len(images))
    return lambda: model.run(images)


if __name__ == "__main__":
    main()
