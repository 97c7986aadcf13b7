"""One way to train a method: stages, seeding, held-out thresholds and checkpoints, whoever asks.

``zsad train``, the demo and ``zsad reproduce`` all describe what they want as a :class:`TrainingPlan`
and call :func:`train_method`. The method declares its own facts (its stages in
:attr:`~zsad.methods.base.Method.stages`, its paper's training defaults per stage); the plan only says
what the caller changes. For every stage the plan trains:

1. seed from the training config (the fresh parameters are part of a run's reproducibility);
2. build the method — the first stage from defaults or ``init``, each later one from the stage before
   (partially: the tensors a stage adds start fresh);
3. hold out auxiliary images for threshold calibration (zero-shot methods trained on labelled data,
   unless the plan sets ``calibration_fraction``), the same ones in every stage;
4. train, resuming a checkpoint already in the stage's folder when ``resume`` is set;

and after the last stage, calibrate the decision thresholds on the held-out images and store them in
the checkpoint. One stage trains into ``out``; several train into ``out/<stage>`` each.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from zsad.config import with_overrides
from zsad.core.progress import progress_bar
from zsad.core.runtime import seed_everything
from zsad.data import open_dataset
from zsad.data.base import AnomalyDataset
from zsad.engine import distributed
from zsad.engine.build import build_method, method_config
from zsad.engine.checkpoint import read_config, update_config
from zsad.engine.train import (
    Trainer, TrainConfig, calibrate_held_out, has_checkpoint, hold_out_for_calibration, train_config_for,
    training_records,
)
from zsad.errors import ConfigError
from zsad.inference.inspection import Thresholds
from zsad.methods.base import Method, method_class

LOG_KEYS = {"epoch", "steps", "lr", "images_per_s"}  # bookkeeping in a log row, not losses


@dataclass
class TrainingPlan:
    """What to train: a method, its auxiliary data and what the caller changes from the method's defaults."""

    method: str
    data: list[str]  # auxiliary datasets as FORMAT:PATH, recorded in the checkpoint
    out: Path
    backbone: str | None = None
    weights: str | None = None
    image_size: int | None = None
    overrides: list[str] = field(default_factory=list)  # method config key=value, every stage
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields, every stage
    train_overrides: list[str] = field(default_factory=list)  # TrainConfig key=value strings, after ``train``
    stages: tuple[str, ...] | None = None  # None: every stage the method declares, in order
    init: Path | None = None  # start the first stage from this checkpoint's weights
    resume: bool = False  # continue a checkpoint already in a stage's folder
    force_resume: bool = False  # ... even though data or settings changed
    allow_outside_root: bool = False
    device: torch.device | None = None


@dataclass
class TrainingResult:
    checkpoint: Path  # the last stage's folder
    method: Method  # trained, in eval mode
    rows: dict[str, list[dict[str, float]]]  # per stage, one log row per epoch trained now
    records: int  # training images (of the last stage)
    steps: int  # optimiser steps of the whole run, all stages
    thresholds: Thresholds | None  # stored in the checkpoint, when calibrated


def stages_of(method: str, requested: tuple[str, ...] | None = None) -> tuple[str | None, ...]:
    """The stages to train: ``requested`` (each one the method declares), or all of them; ``(None,)`` for
    a single-stage method."""
    declared = method_class(method).stages
    if requested is None:
        return declared or (None,)
    unknown = [s for s in requested if s not in declared]
    if unknown:
        raise ConfigError(f"method {method!r} has no training stage {', '.join(unknown)}"
                          + (f"; its stages: {', '.join(declared)}" if declared else " (it trains in one stage)"))
    return requested


def train_method(plan: TrainingPlan, datasets: list[AnomalyDataset] | None = None,
                 console: Console | None = None) -> TrainingResult:
    """Train every stage of ``plan`` (see the module docstring); ``datasets`` may be given already opened."""
    cls = method_class(plan.method)
    if not cls.trainable:
        raise ConfigError(f"method {plan.method!r} is training-free; evaluate it directly with `zsad eval`")
    console = console or Console(stderr=True, quiet=True)
    datasets = datasets or [open_dataset(spec, plan.allow_outside_root) for spec in plan.data]
    stages = stages_of(plan.method, plan.stages)
    previous, rows, steps = plan.init, {}, 0
    method, records, held_out, config = None, [], [], None
    for stage in stages:
        folder = plan.out / stage if len(stages) > 1 else plan.out
        overrides = [*plan.overrides, *([f"stage={stage}"] if stage else [])]
        base = read_config(previous)["config"] if previous else None
        stage_config = method_config(plan.method, base, plan.backbone, plan.image_size, overrides)
        config = _train_config(cls, plan, stage_config)
        if has_checkpoint(folder) and not plan.resume:
            raise ConfigError(f"{folder}: already holds a checkpoint; pass --resume to continue it or choose --out")
        seed_everything(config.seed)
        method = build_method(plan.method, checkpoint=previous, backbone=plan.backbone, weights=plan.weights,
                              image_size=plan.image_size, overrides=overrides, device=plan.device, partial=True)
        if previous is not None and previous == plan.init:
            console.print(f"initialised from {previous}: {method.load_report}")
        records, held_out = hold_out_for_calibration(training_records(datasets, config), config)
        trainer = Trainer(method, records, config, folder, meta={"data": plan.data, "weights": plan.weights})
        if plan.resume and has_checkpoint(folder):
            trainer.resume(allow_changes=plan.force_resume)
        rows[stage or method.name] = _fit(trainer, console, f"training {method.name}" + (f" ({stage})" if stage
                                                                                         else ""))
        steps += trainer.config.epochs * trainer.steps_per_epoch
        previous = folder
    assert method is not None and config is not None and previous is not None
    thresholds = None
    if held_out and any(r.label == 0 for r in held_out) and distributed.is_main():
        thresholds = calibrate_held_out(method, held_out, config)
        update_config(previous, thresholds=thresholds.to_dict(), thresholds_sha256=thresholds.digest())
    method.eval()
    return TrainingResult(previous, method, rows, len(records), steps, thresholds)


def _train_config(cls: type[Method], plan: TrainingPlan, stage_config: Any) -> TrainConfig:
    """The method's defaults for this stage, then the plan's fields; zero-shot methods trained on labelled
    data hold out a tenth of it for threshold calibration unless the plan says otherwise."""
    config = train_config_for(cls, plan.train, stage_config)
    if "calibration_fraction" not in plan.train and cls.zero_shot and not config.normal_only:
        config = replace(config, calibration_fraction=0.1)
    return with_overrides(config, plan.train_overrides)


def _fit(trainer: Trainer, console: Console, description: str) -> list[dict[str, float]]:
    config, rows = trainer.config, []
    with progress_bar(console, description) as advance:
        advance.total(config.epochs * trainer.steps_per_epoch)
        advance(trainer.epoch * trainer.steps_per_epoch)
        trainer.on_step = lambda step, losses: (advance(1), advance.info(describe_losses(losses)))
        while trainer.epoch < config.epochs:
            row = trainer.train_epoch()
            rows.append(row)
            console.print(f"epoch {row['epoch']}/{config.epochs}: " + describe_losses(row))
    return rows


def describe_losses(values: dict[str, float]) -> str:
    return " · ".join(f"{k} {v:.4f}" for k, v in values.items() if k not in LOG_KEYS)
