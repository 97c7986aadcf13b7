"""The patch nearest-neighbour baseline: finds planted defects, batch-invariant, input-resolution maps."""

from __future__ import annotations

import pytest
import torch

from zsad.data import open_dataset
from zsad.engine.build import build_method
from zsad.data.loading import load_arrays
from zsad.engine.evaluate import EvalConfig, evaluate
from zsad.errors import DataError
from zsad.methods.components.memory import PatchMemory


@pytest.fixture(scope="module")
def knn():
    return build_method("knn", backbone="clip-tiny", image_size=128)


def test_finds_planted_defects_at_four_shots(synthetic_root, knn):
    document = evaluate(knn, open_dataset(f"mvtec:{synthetic_root}"), EvalConfig(shots=(4,), seeds=1))
    assert document["summary"]["4"]["mean"]["pixel_auroc"] > 0.75


def test_maps_have_input_resolution_and_do_not_depend_on_the_batch(synthetic_root, knn):
    dataset = open_dataset(f"mvtec:{synthetic_root}")
    category = dataset.categories()[0]
    references = torch.from_numpy(load_arrays(dataset.records(category, "train")[:2], 128)[0]).permute(0, 3, 1, 2)
    images = torch.from_numpy(load_arrays(dataset.records(category, "test")[:5], 128)[0]).permute(0, 3, 1, 2)
    with torch.inference_mode():
        knn.prepare("object", references.float() / 255)
        whole = knn.predict(images.float() / 255)
        parts = [knn.predict(images[i : i + 2].float() / 255) for i in range(0, 5, 2)]
    assert whole.anomaly_map.shape == (5, 128, 128)
    torch.testing.assert_close(torch.cat([p.anomaly_map for p in parts]), whole.anomaly_map)
    torch.testing.assert_close(whole.score, whole.anomaly_map.flatten(1).amax(1))


def test_a_reference_is_no_anomaly_to_itself(synthetic_root, knn):
    dataset = open_dataset(f"mvtec:{synthetic_root}")
    images, _ = load_arrays(dataset.records(dataset.categories()[0], "train")[:3], 128)
    references = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.inference_mode():
        knn.prepare("object", references.float() / 255)
        features = knn.backbone(references.float() / 255, knn.layers)
        distances = knn.memory.distances(features.patch_tokens, features.grid)
    assert distances.abs().max() < 1e-4


def test_chunked_search_equals_one_pass():
    torch.manual_seed(0)
    bank = torch.randn(1000, 16)
    queries = [torch.randn(2, 12, 16)]
    small, large = PatchMemory(chunk_size=7), PatchMemory(chunk_size=4096)
    small.build([bank])
    large.build([bank])
    torch.testing.assert_close(small.distances(queries, (3, 4)), large.distances(queries, (3, 4)))


def test_more_shots_than_train_images_is_a_clear_error(synthetic_root, knn):
    dataset = open_dataset(f"mvtec:{synthetic_root}")
    with pytest.raises(DataError, match="fewer than k=50"):
        evaluate(knn, dataset, EvalConfig(shots=(50,), seeds=1))
