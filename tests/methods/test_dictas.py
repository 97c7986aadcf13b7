"""DictAS: dictionary shapes, lookup strategies, training pairs, losses, and learning on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zsad.cli import main as cli_main
from zsad.data import open_dataset
from zsad.data.synthetic import write_synthetic
from zsad.data.types import Batch
from zsad.engine.build import build_method
from zsad.engine.checkpoint import WEIGHTS, load_tensors
from zsad.data.loading import load_arrays
from zsad.engine.evaluate import EvalConfig, evaluate
from zsad.engine.train import Trainer, train_config_for, training_records
from zsad.errors import ConfigError, DataError
from zsad.methods.dictas import DictAS
from zsad.methods.dictas.lookup import lookup
from zsad.methods.components.maps import neighbourhood_mean
from zsad.methods.dictas.pairs import occlusion_mask, reference_views

SIZE = 128  # 8 x 8 patches on the tiny backbone


def tiny(**overrides: object) -> DictAS:
    torch.manual_seed(0)
    return build_method("dictas", backbone="clip-tiny", image_size=SIZE,
                        overrides=[f"{k}={v}" for k, v in overrides.items()])


def batch_of(images: torch.Tensor, category: str = "texture") -> Batch:
    b = images.shape[0]
    return Batch(images, torch.zeros(b, *images.shape[-2:]), torch.zeros(b, dtype=torch.long), [category] * b,
                 ["good"] * b, [""] * b)


# --- model -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3])
def test_dictionary_concatenates_references_and_maps_have_input_size(k: int) -> None:
    method = tiny()
    method.prepare("screw", torch.rand(k, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(k)))
    assert len(method._dictionary) == 4 and all(len(scales) == 2 for scales in method._dictionary)
    for keys, values in (entry for scales in method._dictionary for entry in scales):
        assert keys.shape == values.shape == (1, k * 64, 192)
    prediction = method.predict(torch.rand(2, 3, SIZE, SIZE))
    assert prediction.anomaly_map.shape == (2, SIZE, SIZE) and prediction.score.shape == (2,)
    assert torch.all(prediction.anomaly_map >= 0) and torch.all(prediction.anomaly_map <= 1)
    assert set(prediction.score_parts) == {"map", "text"}
    alpha = method.config.score_alpha
    parts = prediction.score_parts
    torch.testing.assert_close(prediction.score, alpha * parts["text"] + (1 - alpha) * parts["map"])


def test_max_lookup_returns_a_dictionary_value_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(2, 5, 8, generator=g)
    keys, values = torch.randn(1, 7, 8, generator=g), torch.randn(1, 7, 8, generator=g)
    retrieved = lookup(queries, keys, values, "max")
    best = (queries @ keys.transpose(1, 2)).argmax(-1)
    assert torch.equal(retrieved, values[0][best])
    # Sparse and dense results are convex mixtures of the values.
    for strategy in ("sparse", "dense"):
        mixed = lookup(queries, keys, values, strategy)
        weights = torch.linalg.lstsq(values[0].T.double(), mixed.reshape(-1, 8).T.double()).solution
        torch.testing.assert_close(weights.sum(0), torch.ones(10, dtype=torch.float64), atol=1e-4, rtol=0)


def test_neighbourhood_mean_counts_zero_padding() -> None:
    tokens = torch.ones(1, 16, 2)
    pooled = neighbourhood_mean(tokens, (4, 4), 3).view(4, 4, 2)[..., 0]
    assert pooled[0, 0] == pytest.approx(4 / 9) and pooled[0, 1] == pytest.approx(6 / 9) and pooled[1, 1] == 1
    assert neighbourhood_mean(tokens, (4, 4), 1) is tokens


def test_generators_are_shared_unless_per_layer_and_ablations_are_identities() -> None:
    assert len(tiny().generators) == 1 and len(tiny(per_layer_generators=True).generators) == 4
    assert {k.split(".")[0] for k in tiny().method_state_dict()} == {"generators", "alignment"}  # no text tower
    ablated = tiny(query_generator=False, key_generator=False, value_generator=False)
    x = torch.randn(1, 3, 192)
    generators = ablated.generators[0]
    assert generators.query(x) is x and generators.key(x) is x and generators.value(x) is x
    frozen = tiny(query_feature="value").generators[0]
    assert not any(p.requires_grad for p in frozen.value_block.parameters())
    assert all(p.requires_grad for p in frozen.query_block.parameters())


def test_vision_only_backbone_has_no_text_score_and_no_alignment_loss() -> None:
    torch.manual_seed(0)
    method = build_method("dictas", backbone="dino-tiny", image_size=SIZE)
    assert method.alignment is None
    method.prepare("cable", torch.rand(2, 3, SIZE, SIZE))
    prediction = method.predict(torch.rand(2, 3, SIZE, SIZE))
    torch.testing.assert_close(prediction.score, prediction.anomaly_map.flatten(1).amax(1))
    method.train()
    assert "tac" not in method.training_loss(batch_of(torch.rand(2, 3, SIZE, SIZE)))


def test_test_minmax_is_an_explicit_benchmark_option() -> None:
    parts = {"map": torch.tensor([0.2, 0.4, 0.3]), "text": torch.tensor([0.9, 0.1, 0.5])}
    scores = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(tiny().category_scores(scores, parts), scores)
    normalised = tiny(score_normalization="test_minmax").category_scores(scores, parts)
    torch.testing.assert_close(normalised, 0.2 * torch.tensor([1.0, 0.0, 0.5]) + 0.8 * torch.tensor([0.0, 1.0, 0.5]),
                               atol=1e-5, rtol=0)


def test_bad_configuration_and_missing_references_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="odd"):
        tiny(scales="1,2")
    with pytest.raises(ConfigError, match="k >= 1"):
        tiny().prepare("bottle", None)


# --- training pairs and losses ----------------------------------------------------------------------------
def test_reference_views_are_reproducible_and_augment_with_the_given_probability() -> None:
    images = torch.rand(6, 3, 64, 64)
    same = reference_views(images, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(same, images)
    a = reference_views(images, 1.0, torch.Generator().manual_seed(1))
    b = reference_views(images, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, images)
    # A constant image stays constant under rotation and flips (reflected border); only holes are black.
    flat = reference_views(torch.full((8, 3, 64, 64), 0.5), 1.0, torch.Generator().manual_seed(2))
    assert torch.all((flat == 0) | ((flat - 0.5).abs() < 1e-6))
    holes = occlusion_mask(64, (64, 64), torch.Generator().manual_seed(3), torch.device("cpu"))
    assert 0.2 < (holes.flatten(1).any(1)).float().mean() < 0.95  # each dropout kind has p = 0.5


def test_training_loss_is_deterministic_under_the_global_seed_and_reaches_every_part() -> None:
    method = tiny(synthesis_prob=1.0)
    method.train()
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    first = method.training_loss(batch_of(images))
    torch.manual_seed(5)
    second = method.training_loss(batch_of(images))
    assert set(first) == {"loss", "query", "cqc", "tac"}
    assert all(torch.equal(first[k], second[k]) for k in first)
    first["loss"].backward()
    trainable = {n: p for n, p in method.named_parameters() if p.requires_grad}
    assert not any(n.startswith("backbone.") for n in trainable)
    assert all(p.grad is not None for n, p in trainable.items()), "every generator and the head get gradients"


def test_anomaly_source_folder_is_loaded_on_first_training_use(tmp_path) -> None:
    folder = tmp_path / "textures"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    method = tiny(anomaly_source=str(folder), synthesis_prob=1.0)
    method.train()
    assert torch.isfinite(method.training_loss(batch_of(torch.rand(2, 3, SIZE, SIZE)))["loss"])
    assert method._sources is not None and len(method._sources) == 3
    broken = tiny(anomaly_source=str(tmp_path / "missing"))
    with pytest.raises(DataError, match="does not exist"):
        broken.training_loss(batch_of(torch.rand(2, 3, SIZE, SIZE)))


# --- learning on synthetic data --------------------------------------------------------------------------
EPOCHS = 5  # of the short training below: 24 images in batches of 4, 30 steps at the paper's lr 1e-4


@pytest.fixture(scope="module")
def short_training(synthetic_root, tmp_path_factory):
    """DictAS on clip-tiny trained briefly on the normal train images of the seen synthetic categories, with
    its query loss on one fixed batch of them before and after."""
    method = tiny()
    dataset = open_dataset(f"mvtec:{synthetic_root}")
    category = dataset.categories()[0]
    images = torch.from_numpy(load_arrays(dataset.records(category, "train")[:4], SIZE)[0]).permute(0, 3, 1, 2)
    fixed = batch_of(images.float() / 255, category)

    def fixed_query_loss() -> float:
        torch.manual_seed(11)
        with torch.no_grad():
            return float(method.training_loss(fixed)["query"])

    before = fixed_query_loss()
    config = train_config_for(DictAS, {"epochs": EPOCHS, "batch_size": 4})
    records = training_records([dataset], config)
    rows = Trainer(method, records, config, tmp_path_factory.mktemp("dictas")).fit()
    method.eval()
    return method, before, fixed_query_loss(), rows


@pytest.fixture(scope="module")
def unseen_pixel_auroc(short_training, tmp_path_factory) -> dict[str, float]:
    """2-shot pixel AUROC (2 reference draws) on four unseen categories at 128 px.

    Four categories rather than the two of ``unseen_synthetic_root``: with two, one near-chance texture
    decides every comparison; the categories come from another seed than the training ones.
    """
    root = tmp_path_factory.mktemp("unseen") / "seed1"
    write_synthetic(root, categories=4, seed=1, size=SIZE)
    dataset = open_dataset(f"mvtec:{root}")

    def auroc(method) -> float:
        document = evaluate(method, dataset, EvalConfig(shots=(2,), seeds=2, batch_size=8))
        return document["summary"]["2"]["mean"]["pixel_auroc"]

    return {"trained": auroc(short_training[0]), "untrained": auroc(tiny()),
            "knn": auroc(build_method("knn", backbone="clip-tiny", image_size=SIZE))}


def test_query_loss_falls_during_short_training(short_training) -> None:
    _, before, after, rows = short_training
    assert after < 0.8 * before
    assert rows[-1]["query"] < rows[0]["query"]
    assert len(rows) == EPOCHS and sum(row["steps"] for row in rows) == 30


def test_training_improves_unseen_segmentation_over_the_untrained_model(unseen_pixel_auroc) -> None:
    assert unseen_pixel_auroc["trained"] > unseen_pixel_auroc["untrained"] + 0.05, unseen_pixel_auroc


@pytest.mark.xfail(strict=False, reason=(
    "not reached with the random clip-tiny backbone: here about 0.82 vs knn 0.85. On random features the "
    "learned lookup converges to nearest-neighbour matching at best: 480 steps (0.82/0.84 vs knn 0.84/0.85 "
    "at 1/4 shots), unaugmented references (0.83/0.84) and the code's Value-feature second phase "
    "(0.83/0.85) all stay at or below knn. The paper's gain rests on CLIP features."))
def test_trained_model_beats_patch_knn_on_unseen_categories(unseen_pixel_auroc) -> None:
    assert unseen_pixel_auroc["trained"] > unseen_pixel_auroc["knn"], unseen_pixel_auroc


def test_cli_trains_resumes_exactly_and_evaluates_from_the_checkpoint(synthetic_root, unseen_synthetic_root, tmp_path):
    textures = tmp_path / "textures"
    textures.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(textures / "a.png")
    common = ["--method", "dictas", "--data", f"mvtec:{synthetic_root}", "--backbone", "clip-tiny", "--image-size",
              "64", "--batch-size", "4", "--max-steps-per-epoch", "1", "--set", f"anomaly_source={textures}"]
    assert cli_main(["train", *common, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert cli_main(["train", *common, "--epochs", "2", "--resume", "--out", str(tmp_path / "run")]) == 0
    assert cli_main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "straight")]) == 0
    resumed, straight = (load_tensors(tmp_path / name / WEIGHTS) for name in ("run", "straight"))
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in resumed)
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", f"mvtec:{unseen_synthetic_root}",
                     "--shots", "1", "--seeds", "1", "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "results.json").is_file()


def test_inference_lookup_takes_the_sparse_product_and_matches_the_dense_one():
    from zsad.methods.dictas.lookup import sparse_weighted_sum
    from zsad.methods.components.sparsemax import sparsemax

    torch.manual_seed(0)
    queries, keys, values = torch.randn(2, 50, 16), torch.randn(1, 300, 16), torch.randn(1, 300, 16)
    weights = sparsemax(torch.randn(2, 50, 300) * 4)
    assert torch.allclose(sparse_weighted_sum(weights, values[0]), weights @ values, atol=1e-5)
    with torch.inference_mode():
        fast = lookup(queries, keys, values, "sparse")  # the sparse product
    dense = lookup(queries, keys, values, "sparse")  # gradients enabled: the dense product
    assert torch.allclose(fast, dense, atol=1e-5)
