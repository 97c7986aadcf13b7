"""``zsad train``: train a method's own parameters on one or more auxiliary datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsad.commands.common import add_method_arguments, run_device
from zsad.core.progress import progress_bar


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method on auxiliary data (frozen backbone)")
    add_method_arguments(p, checkpoint_help="initialise from this checkpoint's weights (e.g. an earlier stage)")
    p.add_argument("--data", action="append", required=True,
                   help="auxiliary dataset as FORMAT:PATH; repeat to train on several")
    p.add_argument("--split", choices=["train", "test"], help="auxiliary split (default: the method's)")
    p.add_argument("--allow-outside-root", action="store_true", help="let meta.json / VisA CSV entries name "
                   "files outside the dataset folder")
    p.add_argument("--stage", help="training stage for multi-stage methods (e.g. spg: sae, guides)")
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
    from dataclasses import replace

    from rich.console import Console

    from zsad.config import to_dict, with_overrides
    from zsad.data import open_dataset
    from zsad.engine import distributed
    from zsad.engine.build import build_method, method_config
    from zsad.engine.checkpoint import read_config, update_config
    from zsad.engine.train import (
        Trainer, calibrate_held_out, has_checkpoint, hold_out_for_calibration, train_config_for, training_records,
    )
    from zsad.errors import ConfigError
    from zsad.methods import method_class
    from zsad.core.runtime import seed_everything

    if not args.method:
        raise ConfigError("give --method NAME")
    cls = method_class(args.method)
    if not cls.trainable:
        raise ConfigError(f"method {args.method!r} is training-free; evaluate it directly with `zsad eval`")
    flags = {"epochs": args.epochs, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
             "seed": args.seed,
             "split": args.split, "max_steps_per_epoch": args.max_steps_per_epoch, "num_workers": args.workers,
             "precision": args.precision if args.precision != "fp32" else None,
             "calibration_fraction": args.calibration_fraction, "target_fpr": args.target_fpr}
    if has_checkpoint(args.out) and not args.resume:
        raise ConfigError(f"{args.out}: already holds a checkpoint; pass --resume to continue it or choose --out")
    overrides = list(args.overrides) + ([f"stage={args.stage}"] if args.stage else [])
    base = read_config(args.checkpoint)["config"] if args.checkpoint else None
    stage_config = method_config(args.method, base, args.backbone, args.image_size, overrides)
    config = train_config_for(cls, {k: v for k, v in flags.items() if v is not None}, stage_config)
    if args.calibration_fraction is None and cls.zero_shot and not config.normal_only:
        config = replace(config, calibration_fraction=0.1)  # labelled auxiliary data: hold some out to calibrate
    config = with_overrides(config, args.train_overrides)
    device = run_device(args.device)
    console = Console(stderr=True, quiet=not distributed.is_main())
    datasets = [open_dataset(spec, args.allow_outside_root) for spec in args.data]
    seed_everything(config.seed)  # the method's fresh parameters are part of the run's reproducibility
    method = build_method(args.method, checkpoint=args.checkpoint, backbone=args.backbone, weights=args.weights,
                          image_size=args.image_size, overrides=overrides, device=device, partial=True)
    if args.checkpoint:
        console.print(f"initialised from {args.checkpoint}: {method.load_report}")
    records, held_out = hold_out_for_calibration(training_records(datasets, config), config)
    trainer = Trainer(method, records, config, args.out, meta={"data": args.data, "weights": args.weights})
    if args.resume:
        trainer.resume(allow_changes=args.force_resume)
    with progress_bar(console, f"training {method.name}") as advance:
        advance.total(config.epochs * trainer.steps_per_epoch)
        advance(trainer.epoch * trainer.steps_per_epoch)
        trainer.on_step = lambda step, losses: (advance(1), advance.info(_losses(losses)))
        while trainer.epoch < config.epochs:
            row = trainer.train_epoch()
            console.log(f"epoch {row['epoch']}/{config.epochs}: " + _losses(row))
    if held_out and any(r.label == 0 for r in held_out) and distributed.is_main():
        thresholds = calibrate_held_out(method, held_out, config)
        update_config(args.out, thresholds=to_dict(thresholds))
        console.print(f"decision thresholds stored in the checkpoint: image {thresholds.image:.4g} "
                      f"({thresholds.source}; on the held-out images: false-positive rate "
                      f"{100 * thresholds.achieved['image_fpr']:.1f}%, true-positive rate "
                      f"{100 * thresholds.achieved['image_tpr']:.1f}%), pixel {thresholds.pixel:.4g}")
    console.print(f"checkpoint written to {args.out} ({len(records)} training images, device {device})")
    return 0


def _losses(values: dict[str, float]) -> str:
    parts = [f"{k} {v:.4f}" for k, v in values.items() if k not in {"epoch", "steps", "lr", "images_per_s"}]
    return " · ".join(parts)
