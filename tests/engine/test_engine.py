"""The evaluation protocol and the trainer, exercised with tiny methods defined here."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from zsad.data import open_dataset
from zsad.data.types import Batch
from zsad.engine.checkpoint import flatten_state, unflatten_state
from zsad.engine.evaluate import EvalConfig, draw_references, evaluate, plan_runs, write_results
from zsad.engine.train import TrainConfig, Trainer, training_records
from zsad.errors import ConfigError, DataError
from zsad.methods.base import Method, MethodConfig

from fakes import ColourDistance, NoBackbone, colour_distance


@pytest.fixture
def oracle() -> ColourDistance:
    return colour_distance(64)


def test_protocol_summary_structure(synthetic_root, oracle, tmp_path):
    dataset = open_dataset(f"mvtec:{synthetic_root}")
    config = EvalConfig(shots=(0, 2), seeds=3, batch_size=4)
    document = evaluate(oracle, dataset, config, meta={"method": oracle.name})
    summary = document["summary"]
    assert set(summary) == {"0", "2"}
    assert len(summary["2"]["seeds"]) == 3 and summary["0"]["seeds"] == [None]
    categories = dataset.categories()
    assert summary["2"]["categories"] == categories
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        per_seed = [v[key] for v in summary["2"]["per_seed"].values()]
        assert summary["2"]["mean"][key] == pytest.approx(np.mean(per_seed))
        assert summary["2"]["std"][key] == pytest.approx(np.std(per_seed))
        assert 0.0 <= summary["2"]["mean"][key] <= 1.0
    runs = [r for r in document["runs"] if r["shots"] == 2]
    assert len(runs) == 3 * len(categories)
    assert all(len(r["references"]) == 2 for r in runs)
    write_results(tmp_path, document)
    reloaded = json.loads((tmp_path / "results.json").read_text())
    assert reloaded["summary"]["2"]["mean"]["pixel_auroc"] == pytest.approx(summary["2"]["mean"]["pixel_auroc"])
    assert "| **mean** |" in (tmp_path / "results.md").read_text()


def test_reference_draw_depends_only_on_seed_and_category(synthetic_root):
    dataset = open_dataset(f"mvtec:{synthetic_root}")
    category = dataset.categories()[0]
    records = dataset.records(category, "train")
    first = draw_references(records, 3, seed=1, category=category)
    assert first == draw_references(records, 3, seed=1, category=category)
    assert len({r.image_path for r in first}) == 3
    assert all(r.label == 0 and r.split == "train" for r in first)
    draws = {tuple(r.image_path for r in draw_references(records, 3, s, category)) for s in range(6)}
    assert len(draws) > 1
    with pytest.raises(DataError, match="fewer than k"):
        draw_references(records, len(records) + 1, seed=0, category=category)


def test_plan_rejects_unsupported_shots_and_unknown_categories(synthetic_root, oracle):
    dataset = open_dataset(f"mvtec:{synthetic_root}")
    with pytest.raises(ConfigError, match="unknown categor"):
        plan_runs(dataset, EvalConfig(categories=("nope",)), oracle)
    ColourDistance.zero_shot = False
    try:
        with pytest.raises(ConfigError, match="few-shot only"):
            plan_runs(dataset, EvalConfig(shots=(0,)), oracle)
    finally:
        ColourDistance.zero_shot = True


def test_results_do_not_depend_on_batch_size(synthetic_root, oracle):
    dataset = open_dataset(f"mvtec:{synthetic_root}")
    category = dataset.categories()[:1]
    a = evaluate(oracle, dataset, EvalConfig(shots=(1,), seeds=1, categories=tuple(category), batch_size=1))
    b = evaluate(oracle, dataset, EvalConfig(shots=(1,), seeds=1, categories=tuple(category), batch_size=5))
    assert a["summary"]["1"]["mean"] == pytest.approx(b["summary"]["1"]["mean"])


@dataclass
class _LinearConfig(MethodConfig):
    image_size: int = 32


class TinyTrainable(Method):
    """A per-pixel logistic regression on colour: trainable, with a known optimum."""

    name = "tiny-trainable"
    zero_shot = True
    trainable = True
    Config = _LinearConfig

    def __init__(self, backbone, config) -> None:
        super().__init__(backbone, config)
        self.head = nn.Conv2d(3, 1, 1)
        self.dropout = nn.Dropout(0.2)  # randomness that an exact resume must reproduce

    def training_loss(self, batch: Batch, features=None) -> dict[str, Tensor]:
        logits = self.dropout(self.head(batch.images)).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.masks)
        return {"loss": loss, "bce": loss.detach()}


def _trainer(root, out, epochs):
    torch.manual_seed(0)
    method = TinyTrainable(NoBackbone(), _LinearConfig())
    config = TrainConfig(epochs=epochs, batch_size=4, lr=0.05, seed=3, scheduler="plateau")
    records = training_records([open_dataset(f"mvtec:{root}")], config)
    return Trainer(method, records, config, out)


def test_training_reduces_loss_and_resume_is_exact(synthetic_root, tmp_path):
    straight = _trainer(synthetic_root, tmp_path / "straight", epochs=4)
    rows = straight.fit()
    assert rows[-1]["loss"] < rows[0]["loss"]
    first = _trainer(synthetic_root, tmp_path / "resumed", epochs=2)
    first.fit()  # "interrupted" after two epochs
    second = _trainer(synthetic_root, tmp_path / "resumed", epochs=4)
    second.resume()
    assert second.epoch == 2
    second.fit()
    for name, value in straight.method.method_state_dict().items():
        torch.testing.assert_close(second.method.method_state_dict()[name], value, rtol=0, atol=0)
    log = (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2, 3, 4]


def test_optimizer_state_round_trips_through_flat_tensors():
    params = [nn.Parameter(torch.randn(3, 2))]
    optimizer = torch.optim.Adam(params)
    params[0].grad = torch.ones(3, 2)
    optimizer.step()
    tensors: dict[str, Tensor] = {}
    structure = json.loads(json.dumps(flatten_state(optimizer.state_dict(), "opt", tensors)))
    restored = unflatten_state(structure, tensors)
    fresh = torch.optim.Adam([nn.Parameter(torch.randn(3, 2))])
    fresh.load_state_dict(restored)
    torch.testing.assert_close(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_cli_prints_one_line_for_errors_raised_in_loader_workers(tmp_path, capsys):
    from zsad.cli import _one_line

    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                        '  File "x.py", line 1, in f\nzsad.errors.DataError: /data/a.png: truncated image')
    assert _one_line(wrapped) == "/data/a.png: truncated image"
    assert _one_line(DataError("/data/b.png: not an image")) == "/data/b.png: not an image"


class CachedTrainable(TinyTrainable):
    """Trains on cached colour features, with dropout drawing from the seeded global RNG."""

    name = "cached-trainable"

    def frozen_features(self, images: Tensor) -> dict[str, Tensor]:
        return {"colour": images}

    def training_loss(self, batch: Batch, features=None) -> dict[str, Tensor]:
        images = features["colour"] if features is not None else batch.images
        logits = self.dropout(self.head(images)).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.masks)
        return {"loss": loss}


def test_filling_the_feature_cache_does_not_change_the_run(synthetic_root, tmp_path):
    def run(out):
        torch.manual_seed(0)
        method = CachedTrainable(NoBackbone(), _LinearConfig())
        config = TrainConfig(epochs=2, batch_size=4, lr=0.05, seed=3, feature_cache=str(tmp_path / "cache"))
        trainer = Trainer(method, training_records([open_dataset(f"mvtec:{synthetic_root}")], config), config, out)
        trainer.fit()
        return method.method_state_dict()

    fresh = run(tmp_path / "fresh")  # computes and writes the cache
    cached = run(tmp_path / "cached")  # reads it back
    assert len(list((tmp_path / "cache").iterdir())) == 1
    for name, value in fresh.items():
        torch.testing.assert_close(cached[name], value, rtol=0, atol=0)


def test_a_step_budget_sets_the_epochs_and_short_runs_are_flagged(synthetic_root, tmp_path, caplog):
    caplog.set_level("WARNING", logger="zsad")
    method = TinyTrainable(NoBackbone(), _LinearConfig())
    records = training_records([open_dataset(f"mvtec:{synthetic_root}")], TrainConfig())
    per_epoch = len(records) // 4
    trainer = Trainer(method, records, TrainConfig(steps=2 * per_epoch + 1, batch_size=4), tmp_path / "a")
    assert trainer.config.epochs == 3
    assert any(f"takes {3 * per_epoch} optimiser steps" in r.getMessage() for r in caplog.records)
    caplog.clear()
    Trainer(method, records, TrainConfig(steps=60, batch_size=4), tmp_path / "b")
    assert not [r for r in caplog.records if "optimiser steps" in r.getMessage()]
    with pytest.raises(ConfigError, match=r"steps must be in \[0, inf\], got -1"):
        TrainConfig(steps=-1)
