"""Running a paper's own protocol: auxiliary training, target datasets, shots, seeds and score rules.

A protocol (:class:`zsad.protocols.Protocol`, shipped as ``zsad/protocols/<paper>.json``) says what the
paper ran — method, backbone, input size, which auxiliary dataset trains the model for which target, the
shot counts and reference draws — in two flavours: ``paper`` (what the paper writes, deployment-safe) and
``code`` (what the public code ran, including its per-dataset tuning and test-set statistics). Each
code-only option is listed in the protocol's ``differences`` with whether it reads test-set statistics,
so the report can name it next to the numbers. The published tables ship in the same file, cell by
cell, with the table they come from.

Everything a user changes (a tiny backbone, fewer epochs, fewer seeds) is recorded as a *deviation* and
printed with the results: a reproduction that quietly ran something else would be worse than none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from zsad.backbones import get_spec
from zsad.config import to_dict
from zsad.data import AnomalyDataset
from zsad.engine.build import build_method
from zsad.engine.checkpoint import read_config
from zsad.engine.evaluate import EvalConfig, evaluate, write_results
from zsad.engine.assembly import TrainingPlan, train_method
from zsad.errors import ConfigError
from zsad.protocols import Flavour, Protocol

_log = logging.getLogger("zsad")


@dataclass
class Deviations:
    """What this run changed from the protocol, each change named in the report."""

    backbone: str | None = None
    weights: str | None = None
    image_size: int | None = None
    seeds: int | None = None
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields (epochs, steps, ...)
    overrides: list[str] = field(default_factory=list)  # method config key=value for every target
    checkpoint: Path | None = None

    def describe(self, protocol: Protocol, flavour: Flavour) -> list[str]:
        lines = []
        if self.backbone and self.backbone != protocol.backbone:
            lines.append(f"backbone {self.backbone} instead of {protocol.backbone} (layer indices rescaled to "
                         f"its depth)")
        if self.weights:
            lines.append(f"backbone weights from {self.weights}")
        if self.image_size and self.image_size != protocol.image_size:
            lines.append(f"image size {self.image_size} instead of {protocol.image_size}")
        if self.seeds and self.seeds != protocol.flavours[flavour]["seeds"]:
            lines.append(f"{self.seeds} reference draw(s) instead of {protocol.flavours[flavour]['seeds']}")
        lines += [f"training {key}={value} instead of the protocol's" for key, value in self.train.items()]
        lines += [f"method option {o} for every target" for o in self.overrides]
        if self.checkpoint:
            lines.append(f"no training: every target evaluated with the checkpoint {self.checkpoint}")
        return lines


@dataclass
class Reproduction:
    """What :func:`reproduce` measured: per target, the results document of its evaluation (the
    compatibility AUPRO included), and which auxiliary model it used."""

    protocol: Protocol
    flavour: Flavour
    results: dict[str, dict[str, Any]]
    auxiliary_used: dict[str, str | None]
    deviations: list[str]
    not_run: list[str]


def reproduce(protocol: Protocol, flavour: Flavour, datasets: dict[str, AnomalyDataset], deviations: Deviations,
              out: Path, device: Any = None, batch_size: int = 8, precision: str = "fp32",
              log: Callable[[str], None] = _log.info) -> Reproduction:
    """Train (per auxiliary set, once) and evaluate every target in ``datasets`` under ``flavour``."""
    if flavour not in protocol.flavours:
        raise ConfigError(f"{protocol.paper}: unknown protocol {flavour!r}; choose {' or '.join(protocol.flavours)}")
    known = protocol.datasets()
    unknown = sorted(set(datasets) - set(known))
    if unknown:
        raise ConfigError(f"{protocol.paper} reads no dataset named {', '.join(unknown)}; its datasets: "
                          f"{', '.join(known)}")
    targets = [t for t in protocol.targets if t in datasets]
    if not targets:
        raise ConfigError(f"{protocol.paper}: give at least one target dataset as --data NAME=FORMAT:PATH "
                          f"(targets: {', '.join(protocol.targets)})")
    if deviations.checkpoint and not deviations.backbone:  # its weights belong to the backbone it was trained on
        deviations = replace(deviations, backbone=read_config(deviations.checkpoint)["config"]["backbone"])
    settings = protocol.flavours[flavour]
    seeds = deviations.seeds or settings["seeds"]
    results, used = {}, {}
    checkpoints: dict[str, Path] = {}
    for target in targets:
        auxiliary = None if deviations.checkpoint else protocol.auxiliary_for(target)
        checkpoint = deviations.checkpoint
        if auxiliary is not None:
            if auxiliary not in datasets:
                raise ConfigError(f"{protocol.paper}: target {target} is evaluated with a model trained on "
                                  f"{auxiliary}; give --data {auxiliary}=FORMAT:PATH (or --checkpoint DIR)")
            if auxiliary not in checkpoints:
                log(f"training {protocol.method} on {auxiliary} ({flavour} protocol)")
                checkpoints[auxiliary] = _train(protocol, flavour, auxiliary, datasets[auxiliary], deviations,
                                                out / "train" / auxiliary, device)
            checkpoint = checkpoints[auxiliary]
        log(f"evaluating on {target}")
        method = build_method(None if checkpoint else protocol.method, checkpoint=checkpoint,
                              backbone=_backbone(protocol, deviations), weights=deviations.weights,
                              image_size=deviations.image_size or protocol.image_size,
                              overrides=_evaluation_overrides(protocol, flavour, target, auxiliary, deviations),
                              device=device)
        config = EvalConfig(shots=protocol.shots, seeds=seeds, batch_size=batch_size, precision=precision,
                            compat_aupro=True)
        meta = {"paper": protocol.paper, "protocol": flavour, "method": protocol.method, "dataset": target,
                "auxiliary": auxiliary, "checkpoint": str(checkpoint or ""), "method_config": to_dict(method.config),
                "eval": to_dict(config)}
        document = evaluate(method, datasets[target], config, meta)
        write_results(out / "eval" / target, document)
        results[target], used[target] = document, auxiliary
    not_run = [t for t in protocol.targets if t not in datasets]
    return Reproduction(protocol, flavour, results, used, deviations.describe(protocol, flavour), not_run)


def _backbone(protocol: Protocol, deviations: Deviations) -> str:
    return deviations.backbone or protocol.backbone


def _scaled_layers(layers: list[int], protocol: Protocol, backbone: str) -> list[int]:
    """Layer indices written for the protocol's backbone, mapped to another backbone's depth in proportion
    (blocks 6 and 12 of 24 are blocks 1 and 2 of 4), so a tiny stand-in reads the same relative depths."""
    paper_depth, depth = get_spec(protocol.backbone).num_layers, get_spec(backbone).num_layers
    if depth == paper_depth:
        return layers
    return sorted({min(depth, max(1, round(layer * depth / paper_depth))) for layer in layers})


def _as_overrides(config: dict[str, Any], protocol: Protocol, backbone: str) -> list[str]:
    """``key=value`` strings of a protocol's config dict, in the form :func:`with_overrides` reads."""
    items = []
    for key, value in config.items():
        if key == "layers":
            value = _scaled_layers(value, protocol, backbone)
        items.append(f"{key}={json.dumps(value)}" if isinstance(value, (list, dict, bool)) else f"{key}={value}")
    return items


def _method_config(protocol: Protocol, flavour: Flavour, auxiliary: str | None) -> dict[str, Any]:
    settings = protocol.flavours[flavour]
    per_auxiliary = settings.get("per_auxiliary", {}).get(auxiliary or "", {})
    return {**settings["config"], **per_auxiliary.get("config", {})}


def _evaluation_overrides(protocol: Protocol, flavour: Flavour, target: str, auxiliary: str | None,
                          deviations: Deviations) -> list[str]:
    settings = protocol.flavours[flavour]
    config = {**_method_config(protocol, flavour, auxiliary), **settings["evaluate"],
              **settings["per_target"].get(target, {})}
    return [*_as_overrides(config, protocol, _backbone(protocol, deviations)), *deviations.overrides]


def _train(protocol: Protocol, flavour: Flavour, auxiliary: str, dataset: AnomalyDataset, deviations: Deviations,
           folder: Path, device: Any) -> Path:
    """Every training stage on ``auxiliary`` through the training assembly; returns the last stage's
    checkpoint. A folder from an earlier run of the same reproduction is resumed (a finished stage trains
    no further; other settings are refused, naming the change). The protocols train on the whole auxiliary
    set, so no images are held out for thresholds (their metrics need none)."""
    settings = protocol.flavours[flavour]
    per_auxiliary = settings.get("per_auxiliary", {}).get(auxiliary, {})
    backbone = _backbone(protocol, deviations)
    plan = TrainingPlan(
        protocol.method, [auxiliary], folder, backbone=backbone, weights=deviations.weights,
        image_size=deviations.image_size or protocol.image_size,
        overrides=[*_as_overrides(_method_config(protocol, flavour, auxiliary), protocol, backbone),
                   *deviations.overrides],
        train={**settings.get("train", {}), **per_auxiliary.get("train", {}), "calibration_fraction": 0.0,
               **deviations.train},
        resume=True, device=device)
    return train_method(plan, datasets=[dataset]).checkpoint
