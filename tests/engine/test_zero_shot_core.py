"""The mask-supervised zero-shot protocol end to end, with APRIL-GAN on ``clip-tiny``: training on several
auxiliary datasets, exact resume from the feature cache, cache reuse, and ``zsad train`` -> ``zsad eval``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zsad.cli import main
from zsad.data import open_dataset
from zsad.engine.build import build_method
from zsad.engine.train import Trainer, train_config_for, training_records
from zsad.methods.aprilgan import AprilGan

SIZE = 64


def _trainer(root: Path, out: Path, cache: Path, epochs: int) -> Trainer:
    torch.manual_seed(0)  # identical initial heads in every run
    method = build_method("aprilgan", backbone="clip-tiny", image_size=SIZE)
    config = train_config_for(AprilGan, {"epochs": epochs, "seed": 5, "feature_cache": str(cache)})
    return Trainer(method, training_records([open_dataset(f"mvtec:{root}")], config), config, out)


def _count_backbone_calls(trainer: Trainer) -> list[int]:
    calls = [0]
    trainer.method.backbone.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_resume_after_an_interrupted_epoch_equals_an_uninterrupted_run(synthetic_root, tmp_path):
    cache = tmp_path / "cache"
    straight = _trainer(synthetic_root, tmp_path / "straight", cache, epochs=3)
    straight.fit()

    interrupted = _trainer(synthetic_root, tmp_path / "resumed", cache, epochs=3)
    interrupted.train_epoch()

    def crash(step: int, losses: dict[str, float]) -> None:
        if step == 2:
            raise KeyboardInterrupt

    interrupted.on_step = crash
    with pytest.raises(KeyboardInterrupt):
        interrupted.train_epoch()  # epoch 2 dies half-way: weights and optimizer moved, nothing saved

    resumed = _trainer(synthetic_root, tmp_path / "resumed", cache, epochs=3)
    resumed.resume()
    assert resumed.epoch == 1
    resumed.fit()
    expected = straight.method.method_state_dict()
    assert set(resumed.method.method_state_dict()) == set(expected)
    for name, value in resumed.method.method_state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2, 3]


def test_second_run_reads_the_feature_cache_without_running_the_backbone(synthetic_root, tmp_path):
    first = _trainer(synthetic_root, tmp_path / "first", tmp_path / "cache", epochs=1)
    first_calls = _count_backbone_calls(first)
    first.fit()
    assert first_calls[0] > 0
    assert first.cache is not None and first.cache.complete

    second = _trainer(synthetic_root, tmp_path / "second", tmp_path / "cache", epochs=1)
    second_calls = _count_backbone_calls(second)
    second.fit()
    assert second_calls[0] == 0
    for name, value in second.method.method_state_dict().items():
        torch.testing.assert_close(value, first.method.method_state_dict()[name], rtol=0, atol=0)


def test_train_on_two_auxiliary_datasets_then_evaluate_the_checkpoint(synthetic_root, unseen_synthetic_root,
                                                                      tmp_path):
    run, results = tmp_path / "run", tmp_path / "eval"
    first, second = f"mvtec:{synthetic_root}", f"mvtec:{unseen_synthetic_root}"
    assert main(["train", "--method", "aprilgan", "--backbone", "clip-tiny", "--image-size", str(SIZE),
                 "--data", first, "--data", second, "--epochs", "1", "--batch-size", "4", "--device", "cpu",
                 "--calibration-fraction", "0", "--train-set", f"feature_cache={tmp_path / 'cache'}",
                 "--out", str(run)]) == 0
    images = sum(len(open_dataset(spec).records(c, "test")) for spec in (first, second)
                 for c in open_dataset(spec).categories())
    (row,) = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert row["steps"] == images // 4  # every test image of both datasets, one pass
    assert json.loads((run / "config.json").read_text())["data"] == [first, second]

    assert main(["eval", "--checkpoint", str(run), "--data", second, "--shots", "0", "--device", "cpu",
                 "--out", str(results)]) == 0
    summary = json.loads((results / "results.json").read_text())["summary"]["0"]
    assert summary["categories"] == open_dataset(second).categories()
    assert 0.0 <= summary["mean"]["pixel_auroc"] <= 1.0
