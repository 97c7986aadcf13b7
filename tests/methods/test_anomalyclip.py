"""AnomalyCLIP on ``clip-tiny``: the value-value path, the object-agnostic prompts and their depth rules,
the cacheable loss, and that prompt learning finds an anomaly direction shared by unseen images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zsad.data import open_dataset
from zsad.data.types import Batch
from zsad.engine.build import build_method
from zsad.engine.train import Trainer, train_config_for, training_records
from zsad.errors import ConfigError
from zsad.methods.anomalyclip import AnomalyClip
from zsad.methods.components.losses import anchor_logits
from zsad.metrics import auroc

SIZE = 64


def tiny(**overrides: object) -> AnomalyClip:
    torch.manual_seed(0)
    return build_method("anomalyclip", backbone="clip-tiny", image_size=SIZE,
                        overrides=[f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_value_value_attention_is_per_head_softmax_of_values_against_values():
    backbone = tiny().backbone
    block = backbone.blocks[0]
    attention = block.self_attn
    hidden = torch.randn(2, 5, attention.embed_dim)
    x = block.layer_norm1(hidden)
    heads, dim = attention.num_heads, attention.head_dim
    v = attention.v_proj(x).view(2, 5, heads, dim)
    mixed = torch.stack([torch.softmax(v[:, :, h] @ v[:, :, h].transpose(1, 2) * attention.scale, -1) @ v[:, :, h]
                         for h in range(heads)], 2)
    torch.testing.assert_close(backbone.value_value_attention(1, hidden), attention.out_proj(mixed.reshape(2, 5, -1)))


def test_vv_path_starts_at_its_block_and_leaves_the_original_path_alone(images):
    method = tiny(vv_start=3, layers="[1,2,3,4]", global_post_layernorm=True)
    backbone = method.backbone
    with torch.no_grad():
        patches, global_embedding, grid = method.dual_path(images)
        original = backbone(images, (1, 2, 3, 4))
    assert grid == original.grid and patches.shape == (2, 4, grid[0] * grid[1], backbone.embed_dim)
    for i in (0, 1):  # before the v-v path: the original tokens, projected
        torch.testing.assert_close(patches[:, i], backbone.project(original.patch_tokens[i]))
    for i in (2, 3):
        assert not torch.allclose(patches[:, i], backbone.project(original.patch_tokens[i]), atol=1e-3)
    torch.testing.assert_close(global_embedding, original.global_embedding)
    with torch.no_grad():  # the default: the class token projected without ln_post, as the reference code does
        _, raw_global, _ = tiny().dual_path(images)
        final_cls = backbone(images, (4,)).cls_tokens[0]
    torch.testing.assert_close(raw_global, backbone.projection(final_cls))


def test_depth_rules_and_trainable_prompts():
    method = tiny()
    assert method.layers == (4,)  # the last block
    assert method.vv_start == 1  # ceil(4 / 4); 6 for 24 blocks
    assert method.prompts.context.shape == (2, 12, method.backbone.text.width)
    assert method.prompts.deep.shape == (2, 4, method.backbone.text.width)  # blocks 2..round(3 * 4 / 4)
    assert set(method.method_state_dict()) == {"prompts.context", "prompts.deep"}
    assert tiny(deep_prompt_depth=4).prompts.deep.shape[0] == 3
    with pytest.raises(ConfigError, match="deep_prompt_depth"):
        tiny(deep_prompt_depth=5)
    with pytest.raises(ConfigError, match="layers"):
        tiny(layers="[5]")
    with pytest.raises(ConfigError, match="CLIP"):
        build_method("anomalyclip", backbone="dino-tiny", image_size=SIZE)


def test_prompts_ignore_the_class_name_and_the_score_is_the_global_probability(images):
    method = tiny()
    with torch.inference_mode():
        method.prepare("screw", None)
        screw = method.predict(images)
        text = method.text_features
        method.prepare("carpet", None)
        carpet = method.predict(images)
        _, global_embedding, _ = method.dual_path(images)
    torch.testing.assert_close(screw.anomaly_map, carpet.anomaly_map)
    assert screw.anomaly_map.shape == (2, SIZE, SIZE)
    assert screw.anomaly_map.min() >= 0 and screw.anomaly_map.max() <= 1
    torch.testing.assert_close(screw.score, anchor_logits(global_embedding, text, 1 / 0.07).softmax(-1)[:, 1])


def test_cached_features_give_the_loss_of_live_images(images):
    method = tiny()
    masks = torch.zeros(2, SIZE, SIZE)
    masks[1, 16:40, 8:24] = 1
    batch = Batch(images, masks, torch.tensor([0, 1]), ["a", "b"], [""] * 2, [""] * 2)
    live = method.training_loss(batch)
    with torch.no_grad():
        features = method.frozen_features(images)
    cached = method.training_loss(Batch(torch.empty(2, 0), masks, batch.labels, batch.categories, [""] * 2, [""] * 2),
                                  features)
    torch.testing.assert_close(cached["loss"], live["loss"])
    torch.testing.assert_close(live["loss"], 4 * live["segmentation"] + live["image"])
    live["loss"].backward()
    assert method.prompts.context.grad.abs().sum() > 0 and method.prompts.deep.grad.abs().sum() > 0


def test_training_lowers_the_loss(synthetic_root, tmp_path):
    method = tiny()
    config = train_config_for(AnomalyClip, {"epochs": 3, "feature_cache": str(tmp_path / "cache")})
    rows = Trainer(method, training_records([open_dataset(f"mvtec:{synthetic_root}")], config), config,
                   tmp_path / "run").fit()
    assert rows[-1]["loss"] < rows[0]["loss"]


def _planted(count: int, direction: torch.Tensor, generator: torch.Generator) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Projected features in which every anomalous patch (and image) leans along one shared direction."""
    grid, dim = SIZE // 16, direction.numel()
    anomalous = (torch.rand(count, grid * grid, generator=generator) < 0.15) & (torch.arange(count) % 2 == 1)[:, None]
    patches = torch.randn(count, 1, grid * grid, dim, generator=generator) + 6 * direction * anomalous[:, None, :, None]
    labels = anomalous.any(1).long()
    global_embedding = torch.randn(count, dim, generator=generator) + 6 * direction * labels[:, None]
    masks = F.interpolate(anomalous.float().view(count, 1, grid, grid), size=(SIZE, SIZE)).squeeze(1)
    return {"patch_tokens": patches, "global_embedding": global_embedding}, masks, labels


def test_prompt_learning_finds_an_anomaly_direction_shared_by_unseen_images():
    """Through the frozen text tower, the loss turns the prompts towards what anomalous patches share.

    (On the real synthetic benchmark, clip-tiny's random features give the one cosine direction that
    AnomalyCLIP learns too little contrast at temperature 0.07: its loss then prefers calling every pixel
    normal, and the learned map does not beat random prompts.)"""
    method = tiny()
    generator = torch.Generator().manual_seed(2)
    direction = F.normalize(torch.randn(method.backbone.embed_dim, generator=generator), dim=0)
    features, masks, labels = _planted(64, direction, generator)
    held_out, held_out_masks, _ = _planted(32, direction, generator)

    def patch_auroc() -> float:
        with torch.no_grad():
            text = method.prompts(method.backbone.text)
            probs = anchor_logits(held_out["patch_tokens"][:, 0], text, 1 / 0.07).softmax(-1)[..., 1]
        return auroc(probs.flatten(), F.max_pool2d(held_out_masks[:, None], 16).flatten())

    before = patch_auroc()
    optimizer = torch.optim.Adam(method.prompts.parameters(), lr=1e-2, betas=(0.5, 0.999))
    order = torch.randperm(64, generator=generator)
    for step in range(40):
        index = order[(step % 8) * 8 : (step % 8 + 1) * 8]
        batch = Batch(torch.empty(8, 0), masks[index], labels[index], ["x"] * 8, [""] * 8, [""] * 8)
        loss = method.training_loss(batch, {k: v[index] for k, v in features.items()})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before < 0.7 and patch_auroc() > 0.9
