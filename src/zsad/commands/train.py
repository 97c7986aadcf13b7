"""``zsad train``: train a method's own parameters on one or more auxiliary datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsad.commands.common import add_method_arguments, method_overrides, run_device


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method on auxiliary data (frozen backbone)")
    add_method_arguments(p, checkpoint_help="initialise from this checkpoint's weights (e.g. an earlier stage)")
    p.add_argument("--data", action="append", required=True,
                   help="auxiliary dataset as FORMAT:PATH; repeat to train on several")
    p.add_argument("--split", choices=["train", "test"], help="auxiliary split (default: the method's)")
    p.add_argument("--allow-outside-root", action="store_true", help="let meta.json / VisA CSV entries name "
                   "files outside the dataset folder")
    p.add_argument("--stage", help="train only this stage of a multi-stage method (e.g. spg: sae, guides); "
                   "default: every stage in order, each into --out/STAGE")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="a budget of optimiser steps instead of --epochs (whole epochs, "
                   "rounded up)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-steps-per-epoch", type=int, help="cap optimizer steps per epoch (quick runs)")
    p.add_argument("--workers", type=int, help="data loader worker processes")
    p.add_argument("--train-set", dest="train_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training config field (repeatable), e.g. --train-set scheduler=cosine")
    p.add_argument("--calibration-fraction", type=float,
                   help="zero-shot methods: fraction of each auxiliary category's normal and defective images held "
                        "out of training to calibrate decision thresholds stored in the checkpoint (default 0.1 "
                        "when the training split has defective images; 0 turns it off)")
    p.add_argument("--target-fpr", type=float, help="false-positive rate of the stored image threshold on the "
                   "held-out normal images (default 0.05)")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="checkpoint folder (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--force-resume", action="store_true", help="with --resume: continue even though the data or "
                   "training config differ from the run's")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from zsad.engine import distributed
    from zsad.engine.assembly import TrainingPlan, train_method
    from zsad.engine.checkpoint import read_config
    from zsad.errors import ConfigError
    from zsad.inference.calibration import calibration_warnings

    if not args.method and not args.checkpoint:
        raise ConfigError("give --method NAME")
    method = args.method or read_config(args.checkpoint)["method"]
    flags = {"epochs": args.epochs, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
             "seed": args.seed, "split": args.split, "max_steps_per_epoch": args.max_steps_per_epoch,
             "num_workers": args.workers, "precision": args.precision if args.precision != "fp32" else None,
             "calibration_fraction": args.calibration_fraction, "target_fpr": args.target_fpr}
    console = Console(stderr=True, quiet=not distributed.is_main())
    plan = TrainingPlan(method, list(args.data), args.out, backbone=args.backbone, weights=args.weights,
                        image_size=args.image_size, overrides=method_overrides(args),
                        train={k: v for k, v in flags.items() if v is not None},
                        train_overrides=list(args.train_overrides),
                        stages=(args.stage,) if args.stage else None, init=args.checkpoint, resume=args.resume,
                        force_resume=args.force_resume, allow_outside_root=args.allow_outside_root,
                        device=run_device(args.device))
    result = train_method(plan, console=console)
    thresholds = result.thresholds
    if thresholds is not None:
        rates = thresholds.calibration
        console.print(f"decision thresholds stored in the checkpoint: image {thresholds.image:.4g} "
                      f"({thresholds.image_source}; on the held-out images: false-positive rate "
                      f"{100 * rates['normal_flagged']:.1f}%, true-positive rate {_percent(rates['defects_found'])}), "
                      f"pixel {thresholds.pixel:.4g}")
        for warning in calibration_warnings(thresholds):
            console.print(f"warning: {warning}", markup=False, highlight=False)
    console.print(f"checkpoint written to {result.checkpoint} ({result.records} training images, "
                  f"{result.steps} optimiser steps, device {plan.device})")
    return 0


def _percent(rate: float | None) -> str:
    return "undefined (no defective image held out)" if rate is None else f"{100 * rate:.1f}%"
