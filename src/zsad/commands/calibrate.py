"""``zsad calibrate``: new decision thresholds for an exported model or a zero-shot checkpoint, calibrated
on normal images (and labelled defects) of the product, written with their provenance and sealed.

This is the proper way to change thresholds: an edit by hand is refused on loading, since the recorded
provenance would then describe another number.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zsad.commands.common import add_tiling_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="calibrate an exported model's or a zero-shot checkpoint's thresholds on "
                       "normal images (and defects) of the product")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="an exported model folder (`zsad export`); runs without PyTorch")
    source.add_argument("--checkpoint", type=Path, help="a zero-shot method's checkpoint folder")
    p.add_argument("--refs", type=Path, required=True, help="normal images of the product the model has not seen "
                   "(for an exported few-shot model: not the references folded into it)")
    p.add_argument("--defects", type=Path, help="defective images of the product: they widen the margin and the "
                   "rate of defects found is recorded")
    p.add_argument("--target-fpr", type=float, default=0.05, help="false-alarm rate the image threshold allows on "
                   "the normal images (default 0.05; reading it off needs 1/rate images)")
    p.add_argument("--class-name", help="product name for text prompts (checkpoints; a model has its own)")
    p.add_argument("--weights", help="backbone weights for a checkpoint (as on the other commands)")
    p.add_argument("--device", help="cpu, cuda, ... for a checkpoint (default: best available)")
    p.add_argument("--batch-size", type=int, default=8, help="images (or tiles) per model call (default 8)")
    add_tiling_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from zsad.errors import ConfigError
    from zsad.inference.calibration import calibration_warnings
    from zsad.inference.folder import load_references

    console = Console(stderr=True, soft_wrap=True)
    if not 0 < args.target_fpr < 1:
        raise ConfigError(f"--target-fpr must be in (0, 1), got {args.target_fpr}")
    normals, normal_paths, skipped = load_references(args.refs, int(args.max_pixels))
    defects = load_references(args.defects, int(args.max_pixels))[0] if args.defects else []
    for item in skipped:
        console.print(f"skipped: {item.reason}", markup=False, highlight=False)
    if args.model is not None:
        thresholds = _calibrate_model(args, normals, normal_paths, defects)
    else:
        thresholds = _calibrate_checkpoint(args, normals, defects)
    facts = thresholds.calibration
    found = "" if facts["defects_found"] is None else f", {_rate(facts['defects_found'])} of the defects found"
    console.print(f"image threshold {thresholds.image:.4g} ({thresholds.image_source}): "
                  f"{_rate(facts['normal_flagged'])} of the normal images flagged{found}")
    console.print(f"pixel threshold {thresholds.pixel:.4g}; written to {args.model or args.checkpoint}")
    for warning in calibration_warnings(thresholds):
        console.print(f"warning: {warning}", markup=False, highlight=False)
    return 0


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _calibrate_model(args: argparse.Namespace, normals, normal_paths, defects):
    """On the exported model's own runtime and precision; refuses the references folded into it."""
    import json

    from zsad import deploy
    from zsad.core import io
    from zsad.errors import ConfigError
    from zsad.inference.calibration import calibrate_on_images, image_digest

    if args.checkpoint or args.class_name or args.tile:
        raise ConfigError("--model has its product and tiling folded in: drop --class-name and --tile")
    model = deploy.load(args.model, args.batch_size, read_thresholds=False)
    folded = set(model.meta.get("reference_digests", []))
    for path, image in zip(normal_paths, normals):
        if image_digest(image) in folded:
            raise ConfigError(f"{path} is one of the references folded into {args.model}: it matches itself, so it "
                              f"calibrates nothing; use normal images the model has not seen")
    thresholds = calibrate_on_images(model.scorer, model.class_name, normals, defects, args.target_fpr,
                                     f" (zsad calibrate on {args.refs})")
    meta = {**model.meta, "thresholds": thresholds.to_dict(), "thresholds_sha256": thresholds.digest(),
            "format_version": max(model.meta["format_version"], deploy.FORMAT_VERSION)}
    io.write_text(args.model / deploy.METADATA, json.dumps(meta, indent=2))
    return thresholds


def _calibrate_checkpoint(args: argparse.Namespace, normals, defects):
    """A zero-shot method as it decides without references (few-shot ones calibrate on theirs at predict)."""
    from zsad.commands.common import run_device, tiling_from_args
    from zsad.engine.build import build_method
    from zsad.engine.checkpoint import update_config
    from zsad.engine.scorer import method_scorer
    from zsad.errors import ConfigError
    from zsad.inference.calibration import calibrate_on_images

    method = build_method(checkpoint=args.checkpoint, weights=args.weights, device=run_device(args.device))
    if not method.zero_shot:
        raise ConfigError(f"{args.checkpoint}: {method.name} is few-shot and decides with references: its thresholds "
                          f"are calibrated on them at prediction (zsad predict --refs DIR)")
    scorer = method_scorer(method, tiling_from_args(args, method), args.batch_size)
    thresholds = calibrate_on_images(scorer, args.class_name or "object", normals, defects, args.target_fpr,
                                     f" (zsad calibrate on {args.refs})")
    update_config(args.checkpoint, thresholds=thresholds.to_dict(), thresholds_sha256=thresholds.digest())
    return thresholds
