"""Dual-Anchor: hierarchical group merging, the refiner, dynamic state prompts, and the method end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zsad.backbones import build_text_encoder
from zsad.data import open_dataset
from zsad.data.types import Batch
from zsad.engine.build import build_method
from zsad.engine.evaluate import EvalConfig, evaluate
from zsad.engine.train import Trainer, train_config_for, training_records
from zsad.errors import ConfigError
from zsad.methods.dual_anchor import (
    DualAnchor,
    DynamicStatePrompts,
    GroupGatedRefiner,
    HierarchicalGroupMerging,
    bipartite_merge_matrix,
    merge_groups,
)
from zsad.methods.dual_anchor.grouping import gumbel_assignment, member_means

DIM = 32


def grouping(counts: tuple[int, ...] = (16, 8, 4, 2), tau: float = 1.0, hard: bool = False) -> HierarchicalGroupMerging:
    torch.manual_seed(0)
    return HierarchicalGroupMerging(DIM, counts, heads=4, tau=tau, hard=hard, query_init_std=0.02)


def level_tokens(levels: int, batch: int = 3, patches: int = 49) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch, patches, DIM, generator=generator) for _ in range(levels)]


def random_assignment(batch: int, patches: int, groups: int) -> torch.Tensor:
    return torch.randn(batch, patches, groups, generator=torch.Generator().manual_seed(2)).softmax(-1)


# --- hierarchical group merging -----------------------------------------------------------------------
@pytest.mark.parametrize("counts", [(16, 8, 4, 2), (8, 4, 2), (6, 3, 2), (2,)])
def test_group_counts_follow_the_schedule(counts):
    result = grouping(counts)(level_tokens(len(counts)))
    assert [a.shape[-1] for a in result.level_assignments] == list(counts)
    assert result.groups.shape == (3, 2, DIM)
    assert result.assignment.shape == (3, 49, 2)


@pytest.mark.parametrize("counts", [(16, 4, 2), (8, 4), (4, 2, 1), (2, 2, 3)])
def test_impossible_schedules_are_refused(counts):
    with pytest.raises(ConfigError):
        grouping(counts)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("hard", [False, True])
def test_assignments_are_distributions(training, hard):
    module = grouping(hard=hard).train(training)
    result = module(level_tokens(4))
    for assignment in [*result.level_assignments, result.assignment]:
        assert (assignment >= 0).all()
        torch.testing.assert_close(assignment.sum(-1), torch.ones(assignment.shape[:-1]))


def test_evaluation_is_deterministic_and_training_samples():
    module = grouping().eval()
    tokens = level_tokens(4)
    torch.testing.assert_close(module(tokens).assignment, module(tokens).assignment)
    module.train()
    assert not torch.allclose(module(tokens).assignment, module(tokens).assignment)


def test_gumbel_temperature_towards_zero_gives_hard_assignments():
    logits = torch.randn(4, 50, 8, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    cold = gumbel_assignment(logits, tau=1e-4, hard=False, sample=True)
    assert torch.allclose(cold.amax(-1), torch.ones(4, 50), atol=1e-4)
    warm = gumbel_assignment(logits, tau=1.0, hard=False, sample=True)
    assert warm.amax(-1).mean() < 0.9
    # The whole hierarchy at a tiny temperature: every level assigns each patch to one group.
    result = grouping(tau=1e-6).train()(level_tokens(4))
    for assignment in result.level_assignments:
        assert torch.allclose(assignment.amax(-1), torch.ones(assignment.shape[:-1]), atol=1e-3)


def test_hard_assignment_is_one_hot_with_straight_through_gradients():
    logits = torch.randn(2, 10, 4, requires_grad=True)
    assignment = gumbel_assignment(logits, tau=1.0, hard=True, sample=True)
    assert set(assignment.unique().tolist()) == {0.0, 1.0}
    (assignment * torch.randn_like(assignment)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_merging_preserves_assignment_mass():
    tokens = torch.randn(3, 16, DIM)
    assignment = random_assignment(3, 49, 16)
    merged_tokens, merged = merge_groups(tokens, assignment, 8)
    assert merged.shape == (3, 49, 8) and merged_tokens.shape == (3, 8, DIM)
    torch.testing.assert_close(merged.sum((1, 2)), assignment.sum((1, 2)))  # total mass
    torch.testing.assert_close(merged.sum(-1), torch.ones(3, 49))  # every patch still fully assigned
    plan = bipartite_merge_matrix(tokens, 8)
    torch.testing.assert_close(plan.sum(-1), torch.ones(3, 16))  # each group goes to exactly one group
    torch.testing.assert_close(merged.sum(1), (assignment.sum(1).unsqueeze(1) @ plan).squeeze(1))


def test_merged_tokens_are_mass_weighted_averages_and_commute_with_the_update():
    patches = torch.randn(2, 49, DIM)
    assignment = random_assignment(2, 49, 8)
    means, _ = member_means(patches, assignment)
    merged_tokens, merged = merge_groups(means, assignment, 4)
    # Merging member means by mass = member means of the merged assignment (merge/update commute).
    torch.testing.assert_close(merged_tokens, member_means(patches, merged)[0], rtol=1e-4, atol=1e-5)


def test_bipartite_matching_merges_each_a_group_into_its_most_similar_b_group():
    base = F.normalize(torch.randn(4, DIM), dim=-1)
    # Slots 0, 2 (set A) are near copies of slots 3, 1 (set B).
    tokens = torch.stack([base[0], base[1], base[1] + 0.01, base[0] + 0.01]).unsqueeze(0)
    plan = bipartite_merge_matrix(tokens, 2)[0]
    assert plan.argmax(-1).tolist() == [1, 0, 0, 1]  # survivors: slot 1 -> 0, slot 3 -> 1
    # Removing one group merges only the most similar pair.
    tokens = torch.stack([base[0], base[1], base[2], base[0] + 0.01]).unsqueeze(0)
    assert bipartite_merge_matrix(tokens, 3)[0].argmax(-1).tolist() == [2, 0, 1, 2]


def test_groups_are_member_means_of_their_final_assignment():
    result = grouping().eval()(level_tokens(4))
    torch.testing.assert_close(result.groups, member_means(level_tokens(4)[-1], result.assignment)[0])


# --- refiner and prompts ------------------------------------------------------------------------------
def test_refiner_starts_as_a_small_fixed_share_of_the_groups_and_learns_from_similarities():
    refiner = GroupGatedRefiner(DIM, init_gate=0.1)
    global_token, groups = torch.randn(3, DIM), torch.randn(3, 2, DIM)
    torch.testing.assert_close(refiner(global_token, groups), global_token + 0.1 * groups.sum(1))
    refiner(global_token, groups).square().sum().backward()
    assert refiner.gate.weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def tiny_text():
    return build_text_encoder("clip-tiny")


def test_dynamic_prompts_batch_equals_one_image_at_a_time(tiny_text):
    torch.manual_seed(0)
    prompts = DynamicStatePrompts(tiny_text, DIM, context_tokens=4, state_words=("flawless", "damaged"),
                                  dynamic=True, init_std=0.02)
    groups = torch.randn(3, 2, DIM)
    names = ["bottle", "metal_nut", "bottle"]
    with torch.no_grad():
        batched = prompts(tiny_text, names, groups)
        single = torch.cat([prompts(tiny_text, [n], groups[i : i + 1]) for i, n in enumerate(names)])
    assert batched.shape == (3, 2, tiny_text.embed_dim)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(batched[0], batched[2])  # same class, different group tokens


def test_static_prompts_depend_on_the_class_only(tiny_text):
    torch.manual_seed(0)
    prompts = DynamicStatePrompts(tiny_text, DIM, context_tokens=4, state_words=("flawless", "damaged"),
                                  dynamic=False, init_std=0.02)
    with torch.no_grad():
        anchors = prompts(tiny_text, ["bottle", "cable", "bottle"])
    torch.testing.assert_close(anchors[0], anchors[2])
    assert not torch.allclose(anchors[0], anchors[1])
    assert not torch.allclose(anchors[0, 0], anchors[0, 1])  # normal and abnormal prompts differ


# --- the method ---------------------------------------------------------------------------------------
def images_and_batch(size: int = 64, count: int = 4) -> tuple[torch.Tensor, Batch]:
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(count, 3, size, size, generator=generator)
    masks = torch.zeros(count, size, size)
    masks[: count // 2, 8:30, 10:40] = 1
    labels = (masks.flatten(1).amax(1) > 0).long()
    return images, Batch(images, masks, labels, ["bottle", "metal_nut"] * (count // 2), ["x"] * count, [""] * count)


@pytest.mark.parametrize("backbone", ["clip-tiny", "dino-tiny"])
def test_predict_and_train_on_clip_and_dino(backbone):
    torch.manual_seed(0)
    method = build_method("dual-anchor", backbone=backbone, image_size=64)
    images, batch = images_and_batch()
    method.prepare("bottle", None)
    prediction = method.predict(images)
    assert prediction.anomaly_map.shape == (4, 64, 64) and torch.isfinite(prediction.anomaly_map).all()
    assert ((prediction.score > 0) & (prediction.score < 1)).all()
    method.train()
    losses = method.training_loss(batch)
    losses["loss"].backward()
    assert set(losses) == {"loss", "image", "focal", "dice", "orthogonality", "alignment"}
    trainable = [n for n, p in method.named_parameters() if p.requires_grad]
    assert all(method.get_parameter(n).grad is not None for n in trainable)
    assert all(not k.startswith(("backbone.", "text_encoder.")) for k in method.method_state_dict())
    if backbone == "dino-tiny":  # text from a separately built CLIP tower, tokens through learned maps
        assert method.text_encoder is not None and method.patch_projections is not None


def test_cached_features_give_the_same_loss_as_images():
    torch.manual_seed(0)
    method = build_method("dual-anchor", backbone="clip-tiny", image_size=64).train()
    images, batch = images_and_batch()
    with torch.no_grad():
        features = method.frozen_features(images)
    cached = Batch(torch.empty(4, 0), batch.masks, batch.labels, batch.categories, batch.defects, batch.paths)
    torch.manual_seed(1)
    live = method.training_loss(batch)["loss"]
    torch.manual_seed(1)
    torch.testing.assert_close(method.training_loss(cached, features)["loss"], live)


@pytest.mark.parametrize("overrides", [["hierarchy=false"], ["refiner=false"], ["dynamic_prompts=false"],
                                       ["assignment_map=false"], ["group_counts=8,4,2", "level_layers=last"],
                                       ["token_projection=learned", "hard_assignment=true"]])
def test_ablation_switches(overrides):
    torch.manual_seed(0)
    method = build_method("dual-anchor", backbone="clip-tiny", image_size=64, overrides=overrides)
    images, batch = images_and_batch()
    method.prepare("bottle", None)
    assert method.predict(images).anomaly_map.shape == (4, 64, 64)
    method.train()
    assert torch.isfinite(method.training_loss(batch)["loss"])
    config = method.config
    assert len(method.grouping.levels) == (len(config.group_counts) if config.hierarchy else 1)
    assert (method.refiner is None) == (not config.refiner)
    assert (method.prompts.group_projection is None) == (not config.dynamic_prompts)


def test_level_layers_spread_from_local_to_global():
    method = build_method("dual-anchor", backbone="clip-tiny", image_size=64)
    assert method.level_layers == [0, 1, 2, 3]
    assert build_method("dual-anchor", backbone="clip-tiny", overrides=["group_counts=4,2"]).level_layers == [1, 3]
    assert build_method("dual-anchor", backbone="clip-tiny", overrides=["hierarchy=false"]).level_layers == [3]


def test_configuration_errors():
    with pytest.raises(ConfigError):
        build_method("dual-anchor", backbone="dino-tiny", overrides=["token_projection=frozen"])
    with pytest.raises(ConfigError):
        build_method("dual-anchor", backbone="clip-tiny", overrides=["text_backbone=clip-vit-b16"])


def pixel_auroc(method: DualAnchor, root) -> float:
    doc = evaluate(method, open_dataset(f"mvtec:{root}"), EvalConfig(shots=(0,), batch_size=16))
    return doc["summary"]["0"]["mean"]["pixel_auroc"]


def test_short_training_beats_the_untrained_model_on_unseen_categories(synthetic_root, unseen_synthetic_root,
                                                                       tmp_path):
    """DINO tokens reach the text space only through learned maps, so this is where training must show.

    Measured pixel AUROC on the unseen categories (dino-tiny + clip-tiny text, 128 px, 15 epochs of 5
    steps): this run 0.39 -> 0.68; seeds 1-4 0.65 -> 0.76, 0.40 -> 0.74, 0.50 -> 0.73, 0.48 -> 0.71.
    """
    torch.manual_seed(0)
    method = build_method("dual-anchor", backbone="dino-tiny", image_size=128)
    untrained = pixel_auroc(method, unseen_synthetic_root)
    config = train_config_for(DualAnchor, {"epochs": 15, "seed": 0, "feature_cache": str(tmp_path / "cache")})
    records = training_records([open_dataset(f"mvtec:{synthetic_root}")], config)
    Trainer(method, records, config, tmp_path / "run").fit()
    trained = pixel_auroc(method, unseen_synthetic_root)
    assert trained > untrained + 0.05, (untrained, trained)
