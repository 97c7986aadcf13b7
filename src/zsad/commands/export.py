"""``zsad export``: a method prepared for one product, as an ONNX or OpenVINO model for the deploy runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsad.commands.common import add_method_arguments, add_tiling_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a method prepared for one product to ONNX/OpenVINO (runs without "
                       "PyTorch)")
    add_method_arguments(p, precisions=("fp32", "fp16", "int8"))
    add_tiling_arguments(p)
    p.add_argument("--class-name", default="object", help='product name for text prompts (default "object")')
    p.add_argument("--refs", type=Path, help="folder of normal reference images: folded into the model (few-shot "
                   "methods need it) and used to calibrate the thresholds as `zsad predict` does")
    p.add_argument("--check-images", type=Path, help="images the written model is checked on against the PyTorch path "
                   "(default: the references turned a quarter)")
    p.add_argument("--check-masks", type=Path, help="defect masks of the check images (same relative path and stem, "
                   "or stem_mask; bright = defect): the model is refused if it loses more than 1 point of pixel "
                   "AUROC against the PyTorch path")
    p.add_argument("--format", dest="fmt", default="onnx", choices=["onnx", "openvino"])
    p.add_argument("--out", type=Path, required=True, help="the model folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from zsad.commands.common import method_from_args, tiling_from_args
    from zsad.engine.checkpoint import stored_thresholds
    from zsad.export import export_model
    from zsad.errors import ConfigError
    from zsad.inference.folder import load_masks, load_references

    console = Console(stderr=True, soft_wrap=True)
    method, _ = method_from_args(args)
    references = None
    if args.refs is not None:
        references, _, skipped = load_references(args.refs, int(args.max_pixels))
        for item in skipped:
            console.print(f"skipped: {item.reason}", markup=False, highlight=False)
    fixed = stored_thresholds(args.checkpoint) if args.checkpoint and args.refs is None else None
    check, masks = None, None
    if args.check_images:
        check, paths, _ = load_references(args.check_images, int(args.max_pixels))
        if args.check_masks:
            masks = load_masks(args.check_masks, check, paths, args.check_images)
    elif args.check_masks:
        raise ConfigError("--check-masks goes with --check-images DIR: the images the masks belong to")
    meta = export_model(method, args.out, args.class_name, references, args.fmt, args.precision,
                        tiling_from_args(args, method), fixed, args.overwrite, check_images=check, check_masks=masks,
                        source={"checkpoint": str(args.checkpoint or ""), "weights": args.weights,
                                "refs": str(args.refs or "")})
    from zsad.inference.calibration import calibration_warnings
    from zsad.inference.inspection import Thresholds

    for warning in calibration_warnings(Thresholds.from_dict(meta["thresholds"])):
        console.print(f"warning: {warning}", markup=False, highlight=False)
    c = meta["check"]
    console.print(f"checked on {c['images']} {c['on']} with {args.fmt} at {args.precision}: maps within "
                  f"{100 * c['map_error']:.2g}% of their range, scores within {100 * c['score_error']:.2g}% of the "
                  f"PyTorch path")
    if "pixel_auroc" in c:
        a = c["pixel_auroc"]
        console.print(f"pixel AUROC on the check masks: {100 * a['exported']:.2f} exported vs {100 * a['pytorch']:.2f} "
                      f"in PyTorch (loss {100 * a['loss']:.2f} points)")
    t = meta["thresholds"]
    console.print(f"exported {meta['method']} for {meta['class_name']!r} to {args.out} ({args.fmt}, "
                  f"{meta['input_size']} px input, {meta['references']} references folded in)")
    if t["image"] is not None:
        console.print(f"image threshold {t['image']:.4g} ({t['image_source']})")
    return 0
