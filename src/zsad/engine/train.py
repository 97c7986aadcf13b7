"""The generic training loop: any method with a ``training_loss`` trains here.

The engine owns the optimizer, schedule, seeding, precision, logging and checkpoints; the method owns
its losses. Each epoch is seeded from ``(seed, epoch)`` and the loader's shuffle from the same pair, so a
run resumed from its last completed epoch (``resume=True``) continues exactly as if never interrupted.
After every epoch the folder holds a complete checkpoint (see :mod:`zsad.engine.checkpoint`) and one
JSON line per epoch in ``train_log.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from zsad.config import check_range, from_dict, to_dict
from zsad.data import RecordDataset, collate
from zsad.data.types import Batch, Record
from zsad.engine.checkpoint import (
    CONFIG,
    STATE_JSON,
    STATE_TENSORS,
    WEIGHTS,
    CheckpointWriter,
    add_checkpoint,
    flatten_state,
    load_tensors,
    read_config,
    unflatten_state,
)
from zsad.engine import distributed
from zsad.data.loading import load_arrays
from zsad.engine.scorer import method_scorer
from zsad.inference.calibration import calibrate_on_held_out, pixel_sample
from zsad.inference.inspection import Thresholds
from zsad.engine.feature_cache import FeatureCache
from zsad.errors import ConfigError, DataError
from zsad.methods.base import Method, MethodConfig
from zsad.core.runtime import autocast, seed_everything


@dataclass
class TrainConfig:
    epochs: int = 10
    steps: int = 0  # a budget of optimiser steps instead of epochs: epochs = ceil(steps / steps per epoch)
    batch_size: int = 8
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    scheduler: Literal["none", "multistep", "plateau", "cosine"] = "none"
    milestones: tuple[int, ...] = ()  # optimizer steps, for "multistep"
    gamma: float = 0.5
    plateau_factor: float = 0.8
    plateau_patience: int = 2
    plateau_metric: str = "loss"  # the logged loss part that "plateau" watches (DictAS: its query loss)
    grad_clip: float = 0.0  # 0 disables clipping
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_workers: int = 0
    max_steps_per_epoch: int = 0  # 0: the whole epoch
    split: Literal["train", "test"] = "test"  # auxiliary split trained on
    normal_only: bool = False  # keep only normal images (self-supervised methods)
    feature_cache: str = "auto"  # folder for cached frozen features; "auto": $ZSAD_CACHE or ~/.cache/zsad; "off"
    # Reference-free decisions (zero-shot methods): auxiliary images held out of training, per category,
    # on which thresholds are calibrated after training and stored in the checkpoint.
    calibration_fraction: float = 0.0
    target_fpr: float = 0.05  # image threshold: this fraction of held-out normal images is flagged
    pixel_fpr: float = 0.01  # pixel threshold: this fraction of held-out normal pixels is outlined

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}: with no epoch there is nothing to train")
        check_range("batch_size", self.batch_size, 1)
        check_range("steps", self.steps, 0)
        check_range("lr", self.lr, 0, low_open=True)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("gamma", self.gamma, 0, low_open=True)
        check_range("grad_clip", self.grad_clip, 0)
        check_range("max_steps_per_epoch", self.max_steps_per_epoch, 0)
        check_range("num_workers", self.num_workers, 0)
        check_range("calibration_fraction", self.calibration_fraction, 0, 0.5)
        check_range("target_fpr", self.target_fpr, 0, 1, low_open=True, high_open=True)
        check_range("pixel_fpr", self.pixel_fpr, 0, 1, low_open=True, high_open=True)


FEW_STEPS = 50  # fewer optimiser steps than this rarely move a method (benchmarks/learning.py)


def train_config_for(method_cls: type[Method], overrides: dict[str, Any] | None = None,
                     method_config: MethodConfig | None = None) -> TrainConfig:
    """The method's paper defaults (for ``method_config``'s stage, when given), then ``overrides``."""
    defaults = method_cls.train_defaults_for(method_config or method_cls.Config())
    return from_dict(TrainConfig, {**defaults, **(overrides or {})})


def training_records(datasets: list, config: TrainConfig) -> list[Record]:
    """Every record of the chosen split of every auxiliary dataset (all categories)."""
    records = [r for d in datasets for c in d.categories() for r in d.records(c, config.split)]
    if config.normal_only:
        records = [r for r in records if r.label == 0]
    if not records:
        raise DataError(f"no {'normal ' if config.normal_only else ''}{config.split} images in the training data")
    return records


def hold_out_for_calibration(records: list[Record], config: TrainConfig) -> tuple[list[Record], list[Record]]:
    """``(training, held out)``: ``calibration_fraction`` of each category's normal and of its defective
    images (at least one of each where there are two or more), drawn by ``seed``; never trained on."""
    if config.calibration_fraction <= 0:
        return records, []
    rng = np.random.default_rng([config.seed, 7919])
    held: set[int] = set()
    groups: dict[tuple[str, int], list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault((record.category, record.label), []).append(i)
    for members in groups.values():
        count = min(len(members) - 1, max(1, round(config.calibration_fraction * len(members))))
        held.update(int(i) for i in rng.choice(members, size=max(count, 0), replace=False))
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def feature_cache_dir(config: TrainConfig) -> Path | None:
    if config.feature_cache == "off":
        return None
    if config.feature_cache != "auto":
        return Path(config.feature_cache)
    return Path(os.environ.get("ZSAD_CACHE", Path.home() / ".cache" / "zsad")) / "features"


def _optimizer(params: list[Tensor], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    if config.scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), config.gamma)
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.plateau_factor,
                                                          patience=config.plateau_patience)
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs * steps_per_epoch))
    return None


class Trainer:
    """Trains one method on a list of records, checkpointing into ``out`` after every epoch."""

    def __init__(self, method: Method, records: list[Record], config: TrainConfig, out: str | Path,
                 on_step: Callable[[int, dict[str, float]], None] | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        self.method = method
        self.records = records
        self.config = config
        self.out = Path(out)
        self.on_step = on_step
        self.meta = meta or {}
        self.params = [p for p in method.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError(f"method {method.name!r} has no trainable parameters")
        self.steps_per_epoch = self._steps_per_epoch()
        if config.steps:
            self.config = config = replace(config, epochs=math.ceil(config.steps / self.steps_per_epoch))
        if config.epochs * self.steps_per_epoch < FEW_STEPS:
            logging.getLogger("zsad").warning(
                f"note: this run takes {config.epochs * self.steps_per_epoch} optimiser steps; the methods here "
                f"need about {FEW_STEPS} to move (raise --epochs, or give a budget with --steps)")
        self.cache = self._feature_cache()
        self.optimizer = _optimizer(self.params, config)
        self.scheduler = _scheduler(self.optimizer, config, self.steps_per_epoch)
        self.loss_fn = distributed.data_parallel(method) if distributed.world_size() > 1 else method.training_loss
        self.epoch = 0

    def _steps_per_epoch(self) -> int:
        steps = len(self.records) // self.config.batch_size
        if steps == 0:
            raise DataError(f"{len(self.records)} training images are fewer than one batch of "
                            f"{self.config.batch_size}; lower --batch-size")
        return min(steps, self.config.max_steps_per_epoch) if self.config.max_steps_per_epoch else steps

    def _feature_cache(self) -> FeatureCache | None:
        """A cache when the method's training reads only frozen features (see zsad.engine.feature_cache)."""
        directory = feature_cache_dir(self.config)
        if directory is None or not self.method.trains_on_frozen_features:
            return None
        return FeatureCache(self.method, self.records, directory, weights=self.meta.get("weights"),
                            batch_size=self.config.batch_size)

    def global_batches(self, epoch: int) -> list[list[int]]:
        """This epoch's global batches of record indices: a permutation fixed by (seed, epoch), cut into
        ``batch_size`` pieces (the incomplete last one dropped), at most ``steps_per_epoch`` of them."""
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        order = torch.randperm(len(self.records), generator=generator).tolist()
        size = self.config.batch_size
        return [order[i : i + size] for i in range(0, len(order) - size + 1, size)][: self.steps_per_epoch]

    def batches(self, epoch: int, sharded: bool = True) -> Iterator[tuple[Batch, dict[str, Tensor] | None]]:
        """This epoch's ``(batch, cached features or None)``; under torchrun each rank gets its slice of
        every global batch unless ``sharded`` is False."""
        batches = self.global_batches(epoch)
        if sharded and distributed.world_size() > 1:
            share, rank = distributed.local_batch_size(self.config.batch_size), distributed.rank()
            batches = [b[rank * share : (rank + 1) * share] for b in batches]
        if self.cache is not None:
            self._build_cache()
            for indices in batches:
                yield self.cache.batch(indices)
            return
        loader = DataLoader(RecordDataset(self.records, self.method.config.image_size), batch_sampler=batches,
                            collate_fn=collate, num_workers=self.config.num_workers)
        for batch in loader:
            yield batch, None

    def _build_cache(self) -> None:
        """Rank 0 computes missing features first; the other ranks then map the finished files."""
        if self.cache.arrays:
            return
        if distributed.is_main():
            self.cache.build()
        distributed.barrier()
        if not self.cache.arrays:
            self.cache.build()

    def fit(self) -> list[dict[str, float]]:
        """Train the remaining epochs; return one log row per epoch trained now."""
        rows = []
        while self.epoch < self.config.epochs:
            rows.append(self.train_epoch())
        return rows

    def train_epoch(self) -> dict[str, float]:
        config, method = self.config, self.method
        if self.cache is not None:
            self._build_cache()  # before seeding: a first run that fills the cache must draw the same numbers
        if self.epoch == 0:
            method.before_training(self.batches(0, sharded=False))
        seed_everything(config.seed * 100_003 + self.epoch)
        method.train()
        device = method.device
        sums: dict[str, float] = {}
        start = time.perf_counter()
        steps = 0
        for batch, features in self.batches(self.epoch):
            if steps >= self.steps_per_epoch:
                break
            if features is not None:
                features = {k: v.to(device, non_blocking=True) for k, v in features.items()}
            with autocast(device, config.precision):
                losses = self.loss_fn(batch.to(device), features)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{method.name}: loss became {loss.item()} at epoch {self.epoch + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, config.grad_clip)
            self.optimizer.step()
            method.after_optimizer_step()
            if isinstance(self.scheduler, (torch.optim.lr_scheduler.MultiStepLR,
                                           torch.optim.lr_scheduler.CosineAnnealingLR)):
                self.scheduler.step()
            values = {k: float(v.detach()) for k, v in losses.items()}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
            if self.on_step:
                self.on_step(steps, values)
        method.eval()
        row = distributed.mean_over_ranks({k: v / max(steps, 1) for k, v in sums.items()})
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if config.plateau_metric not in row:
                raise ConfigError(f"plateau_metric {config.plateau_metric!r} is not a loss part of "
                                  f"{method.name}; parts: {', '.join(sorted(row))}")
            self.scheduler.step(row[config.plateau_metric])
        self.epoch += 1
        row.update(epoch=self.epoch, steps=steps, lr=self.optimizer.param_groups[0]["lr"],
                   images_per_s=steps * config.batch_size / max(time.perf_counter() - start, 1e-9))
        if distributed.is_main():
            self.save(row)
        distributed.barrier()
        return row

    def save(self, row: dict[str, float]) -> None:
        """Optimizer/scheduler state, the log, weights and config: one checkpoint, committed as a unit."""
        tensors: dict[str, Tensor] = {}
        structure = {
            "optimizer": flatten_state(self.optimizer.state_dict(), "optimizer", tensors),
            "scheduler": flatten_state(self.scheduler.state_dict(), "scheduler", tensors) if self.scheduler else None,
            "epoch": self.epoch,
        }
        writer = CheckpointWriter(self.out)
        writer.tensors(STATE_TENSORS, tensors)
        writer.text(STATE_JSON, json.dumps(structure))
        log = self.out / "train_log.jsonl"
        previous = log.read_text() if log.exists() and self.epoch > 1 else ""
        writer.text(log.name, previous + json.dumps({k: _finite(v) for k, v in row.items()}) + "\n")
        add_checkpoint(writer, self.method.name, to_dict(self.method.config), self.method.method_state_dict(),
                       self.method.config_version, epoch=self.epoch, train=to_dict(self.config), **self.meta)
        writer.commit()

    def resume(self, allow_changes: bool = False) -> None:
        """Continue from the checkpoint in ``out`` (weights, optimizer, schedule, epoch counter). A run
        resumed with other data or another training config is refused, naming the difference, unless
        ``allow_changes`` (more epochs are always allowed)."""
        saved = read_config(self.out)
        if saved["method"] != self.method.name:
            raise ConfigError(f"{self.out}: holds a {saved['method']!r} run, not {self.method.name!r}")
        changes = self._changes(saved)
        if changes and not allow_changes:
            raise ConfigError(f"{self.out}: --resume with {'; '.join(changes)}; run it as it was, or pass "
                              f"--force-resume to continue with the changes")
        state_path = self.out / STATE_JSON
        if not state_path.is_file():
            raise ConfigError(f"{self.out}: no training state to resume from ({STATE_JSON} missing)")
        structure = json.loads(state_path.read_text())
        if structure["epoch"] != saved.get("epoch"):
            raise ConfigError(f"{self.out}: checkpoint files disagree on the epoch (interrupted while saving)")
        device = self.method.device
        self.method.load_method_state_dict(load_tensors(self.out / WEIGHTS, device))
        tensors = load_tensors(self.out / STATE_TENSORS)  # the optimizer moves its state to the params
        self.optimizer.load_state_dict(unflatten_state(structure["optimizer"], tensors))
        if self.scheduler is not None and structure["scheduler"] is not None:
            self.scheduler.load_state_dict(unflatten_state(structure["scheduler"], tensors))
        self.epoch = structure["epoch"]

    IGNORED_ON_RESUME = ("epochs", "num_workers", "feature_cache")  # may change without changing the run

    def _changes(self, saved: dict[str, Any]) -> list[str]:
        before, now = saved.get("train", {}), to_dict(self.config)
        changes = [_changed(k, before[k], now[k]) for k in now
                   if k in before and k not in self.IGNORED_ON_RESUME and before[k] != now[k]]
        for key in ("data", "weights"):
            if key in self.meta and key in saved and saved[key] != self.meta[key]:
                changes.append(_changed(key, saved[key], self.meta[key]))
        if saved.get("config") != to_dict(self.method.config):
            changes.append("another method config (--set or --image-size)")
        return changes


def _changed(name: str, before: Any, now: Any) -> str:
    return f"{name} {now!r} (the run had {before!r})"


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def has_checkpoint(out: str | Path) -> bool:
    return (Path(out) / CONFIG).is_file()


def calibrate_held_out(method: Method, records: list[Record], config: TrainConfig) -> Thresholds:
    """Decision thresholds of a trained zero-shot ``method`` from auxiliary ``records`` it never trained
    on (see :func:`hold_out_for_calibration`), each category prepared from its name alone and scored by
    the inspection loop as evaluation scores it."""
    method.eval()
    scorer = method_scorer(method, batch_size=config.batch_size, precision=config.precision)
    scores, labels, normal_pixels = [], [], []
    categories = sorted({r.category for r in records})
    for category in categories:
        items = [r for r in records if r.category == category]
        scorer.prepare(category, None)
        images, masks = load_arrays(items, method.config.image_size)
        for scored, mask in zip(scorer.score(images), masks):
            normal_pixels.append(pixel_sample(np.where(mask, np.nan, scored.anomaly_map)))
            scores.append(scored.score)
        labels += [r.label for r in items]
    pixels = np.concatenate(normal_pixels)
    return calibrate_on_held_out(np.array(scores, dtype=np.float32), np.array(labels), pixels[~np.isnan(pixels)],
                                 len(categories), config.target_fpr, config.pixel_fpr)
