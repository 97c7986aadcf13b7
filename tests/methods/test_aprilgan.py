"""APRIL-GAN on ``clip-tiny``: the per-layer linear heads, its zero- and few-shot maps and scores, the
cacheable training loss, and zero-shot transfer to unseen synthetic categories after training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zsad.data import open_dataset
from zsad.data.synthetic import write_synthetic
from zsad.data.types import Batch
from zsad.engine.build import build_method
from zsad.engine.evaluate import EvalConfig, evaluate
from zsad.engine.train import Trainer, train_config_for, training_records
from zsad.errors import ConfigError
from zsad.methods.aprilgan import AprilGan
from zsad.methods.components.losses import anchor_logits
from zsad.methods.components.prompts import text_anchors

SIZE = 64


@pytest.fixture(scope="module")
def method() -> AprilGan:
    torch.manual_seed(0)
    return build_method("aprilgan", backbone="clip-tiny", image_size=SIZE)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_one_linear_head_with_bias_per_layer_is_all_that_is_trained(method):
    backbone = method.backbone
    assert len(method.heads) == len(method.layers) == 4
    assert all(h.in_features == backbone.width and h.out_features == backbone.embed_dim and h.bias is not None
               for h in method.heads)
    assert {n for n, p in method.named_parameters() if p.requires_grad} == set(method.method_state_dict())
    assert all(name.startswith("heads.") for name in method.method_state_dict())


def test_zero_shot_map_sums_anomalous_probabilities_and_score_is_the_text_probability(method, images):
    with torch.inference_mode():
        method.prepare("metal_nut", None)
        prediction = method.predict(images)
        features = method.backbone(images, method.layers)
        anchors = text_anchors(method.backbone.text, "metal nut")
    assert prediction.anomaly_map.shape == (3, SIZE, SIZE)
    assert prediction.anomaly_map.min() >= 0 and prediction.anomaly_map.max() <= len(method.layers)
    expected = anchor_logits(features.global_embedding, anchors, 100.0).softmax(-1)[:, 1]
    torch.testing.assert_close(prediction.score, expected)


def test_references_add_their_nearest_neighbour_distance(method, images):
    with torch.inference_mode():
        method.prepare("object", None)
        zero_shot = method.predict(images)
        method.prepare("object", images[:1])
        few_shot = method.predict(images)
    # A reference's own patches are at distance zero: its map is the zero-shot map.
    torch.testing.assert_close(few_shot.anomaly_map[0], zero_shot.anomaly_map[0], atol=1e-4, rtol=0)
    assert (few_shot.anomaly_map[1:] > zero_shot.anomaly_map[1:]).float().mean() > 0.99
    maximum = few_shot.anomaly_map.flatten(1).amax(1)
    torch.testing.assert_close(few_shot.score, 0.5 * (zero_shot.score + maximum))


def test_test_set_minmax_is_a_named_benchmark_option():
    parts = {"text": torch.tensor([0.2, 0.6, 0.4]), "map": torch.tensor([3.0, 1.0, 2.0])}
    scores = 0.5 * (parts["text"] + parts["map"])
    default = build_method("aprilgan", backbone="clip-tiny", image_size=SIZE)
    assert torch.equal(default.category_scores(scores, parts), scores)
    benchmark = build_method("aprilgan", backbone="clip-tiny", image_size=SIZE,
                             overrides=["score_normalization=test_minmax"])
    torch.testing.assert_close(benchmark.category_scores(scores, parts),
                               0.5 * (parts["text"] + torch.tensor([1.0, 0.0, 0.5])))
    assert torch.equal(benchmark.category_scores(parts["text"], {}), parts["text"])  # zero-shot: untouched


def test_cached_features_give_the_loss_of_live_images(method, images):
    masks = torch.zeros(3, SIZE, SIZE)
    masks[1, 8:24, 16:40] = 1
    batch = Batch(images, masks, torch.tensor([0, 1, 0]), ["screw", "screw", "zipper"], [""] * 3, [""] * 3)
    live = method.training_loss(batch)
    with torch.no_grad():
        features = method.frozen_features(images)
    cached = method.training_loss(Batch(torch.empty(3, 0), masks, batch.labels, batch.categories, [""] * 3, [""] * 3),
                                  features)
    assert set(live) == {"loss", "focal", "dice"}
    torch.testing.assert_close(cached["loss"], live["loss"])
    live["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.heads.parameters())
    method.zero_grad(set_to_none=True)


def test_needs_a_clip_backbone():
    with pytest.raises(ConfigError, match="CLIP"):
        build_method("aprilgan", backbone="dino-tiny", image_size=SIZE)


@pytest.fixture(scope="module")
def auxiliary_and_unseen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Twelve auxiliary categories (as many as VisA) and six unseen ones, at 128 px (an 8x8 patch grid)."""
    root = tmp_path_factory.mktemp("aprilgan")
    write_synthetic(root / "auxiliary", categories=12, seed=3, size=128)
    write_synthetic(root / "unseen", categories=6, seed=4, size=128)
    return root / "auxiliary", root / "unseen"


def test_training_lowers_the_loss_and_transfers_to_unseen_categories(auxiliary_and_unseen, tmp_path):
    auxiliary, unseen = auxiliary_and_unseen
    torch.manual_seed(0)
    method = build_method("aprilgan", backbone="clip-tiny", image_size=128)
    unseen_data = open_dataset(f"mvtec:{unseen}")

    def pixel_auroc() -> float:
        document = evaluate(method, unseen_data, EvalConfig(shots=(0,), batch_size=16), meta={})
        return document["summary"]["0"]["mean"]["pixel_auroc"]

    untrained = pixel_auroc()
    config = train_config_for(AprilGan, {"epochs": 5, "feature_cache": str(tmp_path / "cache")})
    rows = Trainer(method, training_records([open_dataset(f"mvtec:{auxiliary}")], config), config,
                   tmp_path / "run").fit()
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert pixel_auroc() > untrained
