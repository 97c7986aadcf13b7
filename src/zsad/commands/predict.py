"""``zsad predict``: anomaly maps, overlays, contours and scores for new images."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsad.commands.common import add_method_arguments, add_tiling_arguments, method_from_args, tiling_from_args
from zsad.core.progress import progress_bar


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict anomaly maps and scores for a folder of images (or one image)")
    add_method_arguments(p)
    p.add_argument("--model", type=Path, help="an exported model folder (`zsad export`): runs on ONNX Runtime or "
                   "OpenVINO without PyTorch; its product, references and thresholds are folded in")
    p.add_argument("--images", type=Path, required=True, help="an image file, or a folder searched recursively")
    p.add_argument("--refs", type=Path, help="folder of normal reference images of the product (few-shot methods "
                   "need it; it also calibrates automatic thresholds)")
    p.add_argument("--class-name", default="object", help='product name for text prompts (default "object")')
    p.add_argument("--threshold", help="image decision threshold: a number, auto or auto:RULE with RULE max, "
                   "mean+Zstd or qP (default: auto with --refs; without, the thresholds stored in --checkpoint or "
                   "--model, else no decision)")
    p.add_argument("--pixel-threshold", help="threshold for defect contours, same forms (default: auto with "
                   "--refs, i.e. the q0.999 quantile of reference pixels; otherwise no contours)")
    p.add_argument("--batch-size", type=int, default=8, help="images (or tiles) per model call (default 8)")
    add_tiling_arguments(p)
    p.add_argument("--save-maps", nargs="?", const="float32", default="", choices=["float32", "float16", "compressed"],
                   help="also write every anomaly map at the image's size under maps/: float32 (the default) or "
                   "float16 as .npy, or compressed (float16, deflated, .npz)")
    p.add_argument("--overlay-side", type=int, default=2048, help="overlays of images longer than this are drawn "
                   "shrunk to fit (regions are still found at full size; 0: always full size; default 2048)")
    p.add_argument("--out", type=Path, default=Path("runs/predict"), help="output folder (default runs/predict)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from zsad.inference.calibration import IMAGE_RULE, PIXEL_RULE, calibration_warnings, parse_threshold
    from zsad.inference.folder import PredictConfig, list_files, predict_folder

    console = Console(stderr=True, soft_wrap=True)
    default = "auto" if args.refs else None
    config = PredictConfig(class_name=args.class_name,
                           threshold=parse_threshold(args.threshold or default, IMAGE_RULE),
                           pixel_threshold=parse_threshold(args.pixel_threshold or default, PIXEL_RULE),
                           batch_size=args.batch_size, save_maps=args.save_maps, max_pixels=int(args.max_pixels),
                           overlay_side=args.overlay_side)
    if args.model is not None:
        scorer, name = _exported(args, config)
    else:
        scorer, name = _method(args, config)
    files = list_files(args.images, exclude=args.out)[1]
    if scorer.tiling is None:
        with progress_bar(console, f"predicting with {name}") as advance:
            advance.total(len(files))
            summary = predict_folder(scorer, args.images, args.out, args.refs, config, advance, name)
    else:
        total = _announce_tiles(console, scorer, files, args, config)
        with progress_bar(console, f"predicting with {name}, tiles") as advance:
            advance.total(total)
            scorer.progress = advance
            summary = predict_folder(scorer, args.images, args.out, args.refs, config, None, name)
    for skipped in summary.skipped:
        console.print(f"skipped: {skipped.reason}", markup=False, highlight=False)
    t = summary.thresholds
    for warning in calibration_warnings(t):
        console.print(f"warning: {warning}", markup=False, highlight=False)
    if t.image is not None:
        console.print(f"image threshold {t.image:.4g} ({t.image_source}): {summary.anomalous} of "
                      f"{summary.predicted} images anomalous")
    if t.pixel is not None:
        console.print(f"pixel threshold {t.pixel:.4g} ({t.pixel_source}) outlines predicted defects")
    console.print(f"{summary.predicted} image(s) predicted, {len(summary.skipped)} file(s) skipped; "
                  f"scores in {args.out / 'scores.csv'}, regions in {args.out / 'inspections.json'}, overlays in "
                  f"{args.out / 'overlays'}")
    return 0


def _announce_tiles(console, scorer, files: list[Path], args: argparse.Namespace, config) -> int:
    """Say before the work starts how many tiles it is and roughly how much memory it takes; the tiles to
    be run (leave-one-out calibration and preparation included), for the progress bar."""
    import resource

    from zsad.inference.calibration import ThresholdRule
    from zsad.inference.folder import list_files, plan_tiles
    from zsad.inference.scoring import REFERENCE_CHUNK

    references = list_files(args.refs)[1] if args.refs else []
    plan = plan_tiles(scorer.tiling, references, files)
    state = getattr(scorer.model, "state_bytes", lambda pieces: 0)(plan.reference_tiles)
    process = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the model and libraries, loaded
    peak = process + plan.peak_bytes(scorer.tiling.tile, REFERENCE_CHUNK, state)
    console.print(f"tiling: {plan.reference_tiles} tiles of {plan.references} reference(s), {plan.image_tiles} of "
                  f"{plan.images} image(s) at {scorer.tiling.tile} px (overlap {scorer.tiling.overlap:g}); peak "
                  f"memory about {peak / 2**30:.1f} GB", markup=False, highlight=False)
    # What calibration (inference.calibration.calibrate) runs: each reference scored once; a few-shot scorer
    # prepares each reference's part once and joins them (composing models), or prepares the k - 1 leave-one-out
    # memories and then the final one; a few-shot scorer that scores nothing only prepares the final memory.
    k = plan.references
    rules = any(isinstance(t, ThresholdRule) for t in (config.threshold, config.pixel_threshold))
    scored = k > 0 and (rules or not scorer.few_shot or k >= 2)
    if not scorer.few_shot or not k:
        passes = int(scored)
    elif scored:
        passes = 2 if scorer.composes else 1 + (k - 1) + 1
    else:
        passes = 1
    return plan.image_tiles + plan.reference_tiles * passes


def _exported(args: argparse.Namespace, config):
    """The deploy runtime (no torch, no transformers): the model's product and thresholds."""
    from zsad import deploy
    from zsad.errors import ConfigError

    if args.method or args.checkpoint or args.refs:
        raise ConfigError("--model runs an exported model, which has its method, product and references folded "
                          "in: drop --method, --checkpoint and --refs")
    model = deploy.load(args.model, args.batch_size)
    if args.tile is not None:
        raise ConfigError(f"{args.model}: tiling is fixed at export (--tile on `zsad export`)")
    config.class_name = model.class_name
    config.fixed = model.thresholds
    return model.scorer, model.name


def _method(args: argparse.Namespace, config):
    """A method on the PyTorch path, resized or tiled; a checkpoint's stored thresholds without --refs."""
    from zsad.engine.checkpoint import stored_thresholds
    from zsad.engine.scorer import method_scorer

    method, _ = method_from_args(args)
    if args.checkpoint and not args.refs:
        config.fixed = stored_thresholds(args.checkpoint)
    return method_scorer(method, tiling_from_args(args, method), args.batch_size, args.precision), method.name

