"""Backbones: features equal Hugging Face's own hidden states, the real loading path, hooks and errors."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from transformers import CLIPModel, Dinov2Config, Dinov2Model

from zsad.backbones import BACKBONES, build_backbone, build_text_encoder
from zsad.backbones import tiny
from zsad.errors import ConfigError, DataError, WeightsNotFoundError


@pytest.fixture(scope="module")
def clip():
    return build_backbone("clip-tiny")


@pytest.fixture(scope="module")
def dino():
    return build_backbone("dino-tiny")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-tiny")
    tiny.tiny_clip().save_pretrained(folder)
    return folder


def images(size: int | tuple[int, int] = 224, batch: int = 2, seed: int = 0) -> torch.Tensor:
    height, width = (size, size) if isinstance(size, int) else size
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_unknown_name_lists_the_registry():
    with pytest.raises(ConfigError, match="clip-vit-l14-336.*dino-tiny"):
        build_backbone("clip-vit-h14")


def test_tiny_models_ignore_and_keep_global_rng_state():
    torch.manual_seed(1)
    state = torch.random.get_rng_state()
    first = tiny.tiny_clip().state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(2)
    second = tiny.tiny_clip().state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_frozen_and_stays_in_eval(clip, dino):
    for extractor in (clip, dino):
        assert not any(p.requires_grad for p in extractor.parameters())
        parent = nn.Sequential(extractor)
        parent.train()
        assert not any(m.training for m in extractor.modules())


@pytest.mark.parametrize("size", [224, 288, (224, 288)])
def test_clip_layers_match_hf_hidden_states(clip, size):
    x = images(size)
    reference = tiny.tiny_clip()
    with torch.no_grad():
        out = reference.vision_model(pixel_values=clip.normalize(x), output_hidden_states=True,
                                     interpolate_pos_encoding=True)
        feats = clip(x, [1, 3])
        image_embeds = reference.visual_projection(out.pooler_output)
    h, w = x.shape[-2] // 16, x.shape[-1] // 16
    assert feats.grid == (h, w) and feats.layers == (1, 3)
    for tokens, cls, layer in zip(feats.patch_tokens, feats.cls_tokens, feats.layers):
        assert tokens.shape == (2, h * w, clip.width)
        torch.testing.assert_close(tokens, out.hidden_states[layer][:, 1:])
        torch.testing.assert_close(cls, out.hidden_states[layer][:, 0])
    torch.testing.assert_close(feats.global_embedding, image_embeds)
    torch.testing.assert_close(clip.project(feats.cls_tokens[-1]), reference.visual_projection(
        reference.vision_model.post_layernorm(out.hidden_states[3][:, 0])))


@pytest.mark.parametrize("size", [224, 128, (96, 160)])
def test_dinov3_drops_registers_and_matches_hf(dino, size):
    x = images(size)
    reference = tiny.tiny_dino()
    with torch.no_grad():
        out = reference(pixel_values=dino.normalize(x), output_hidden_states=True)
        feats = dino(x, [2, 4])
    h, w = x.shape[-2] // 16, x.shape[-1] // 16
    prefix = 1 + reference.config.num_register_tokens
    assert dino.num_prefix_tokens == prefix == 5
    assert feats.grid == (h, w)
    for tokens, layer in zip(feats.patch_tokens, feats.layers):
        assert tokens.shape == (2, h * w, dino.width)
        torch.testing.assert_close(tokens, out.hidden_states[layer][:, prefix:])
    torch.testing.assert_close(feats.global_embedding, out.pooler_output)


def test_clip_folder_loads_identically(clip, clip_folder):
    loaded = build_backbone("clip-tiny", weights=str(clip_folder))
    x = images()
    with torch.no_grad():
        expected, got = clip(x, [2, 4]), loaded(x, [2, 4])
    for a, b in zip(expected.patch_tokens + [expected.global_embedding], got.patch_tokens + [got.global_embedding]):
        assert torch.equal(a, b)
    texts = ["a photo of a screw.", "a damaged metal_nut"]
    text_only = build_text_encoder("clip-tiny", weights=str(clip_folder))
    with torch.no_grad():
        assert torch.equal(text_only.encode(texts), clip.text.encode(texts))
        assert torch.equal(loaded.text.encode(texts), clip.text.encode(texts))


def test_dinov2_folder_interpolates_like_hf(tmp_path):
    config = Dinov2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
                          patch_size=14, image_size=56)
    torch.manual_seed(0)
    reference = Dinov2Model(config).eval()
    reference.save_pretrained(tmp_path)
    extractor = build_backbone("dinov2-vit-l14", weights=str(tmp_path))
    assert (extractor.patch_size, extractor.num_layers, extractor.num_prefix_tokens) == (14, 3, 1)
    x = images(112)
    with torch.no_grad():
        out = reference(pixel_values=extractor.normalize(x), output_hidden_states=True)
        feats = extractor(x, [1, 3])
    assert feats.grid == (8, 8)
    for tokens, layer in zip(feats.patch_tokens, feats.layers):
        torch.testing.assert_close(tokens, out.hidden_states[layer][:, 1:])
    torch.testing.assert_close(feats.global_embedding, out.pooler_output)


def test_folder_of_the_wrong_family_is_refused(clip_folder):
    with pytest.raises(ConfigError, match="'clip'.*dinov3"):
        build_backbone("dino-tiny", weights=str(clip_folder))


def test_pickled_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(WeightsNotFoundError, match="safetensors only"):
        build_backbone("clip-vit-b16", weights=str(tmp_path))


def test_missing_folder_is_reported(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_backbone("clip-vit-b16", weights=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name, weights", [("clip-vit-b16", "zsad-tests/no-such-model"),
                                           ("dinov3-vit-l16", "zsad-tests/no-such-dino")])
def test_offline_error_is_fast_and_one_line(monkeypatch, name, weights):
    monkeypatch.delenv("ZSAD_ALLOW_DOWNLOAD", raising=False)
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        build_backbone(name, weights=weights)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "\n" not in message
    for part in (name, weights, "--weights", f"hf download {weights}", "ZSAD_ALLOW_DOWNLOAD=1"):
        assert part in message


def test_registry_hub_ids_are_named_when_missing(monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    monkeypatch.delenv("ZSAD_ALLOW_DOWNLOAD", raising=False)
    spec = BACKBONES["clip-vit-l14-336"]
    if isinstance(try_to_load_from_cache(spec.hub_id, "config.json"), str):
        pytest.skip("weights are cached on this machine")
    with pytest.raises(WeightsNotFoundError, match=spec.hub_id):
        build_text_encoder(spec.name)


def test_bad_layers_and_images_are_one_line_errors(clip):
    with pytest.raises(ConfigError, match="blocks 1..4"):
        clip(images(), [0, 2])
    with pytest.raises(ConfigError, match="blocks 1..4"):
        clip.set_block_adapter(5, nn.Identity())
    with pytest.raises(DataError, match="multiples of its patch size 16"):
        clip(images(230), [1])
    with pytest.raises(DataError, match=r"\[B, 3, H, W\]"):
        clip(images()[0], [1])


class Scale(nn.Module):
    """A trainable per-channel scale: the simplest adapter whose effect and gradient are easy to check."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((width,), 1.5))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden * self.weight


@pytest.mark.parametrize("name", ["clip-tiny", "dino-tiny"])
def test_adapter_feeds_next_block_and_gets_gradients(name):
    extractor = build_backbone(name)
    x = images(128)
    with torch.no_grad():
        plain = extractor(x, [1, 2, 3, 4])
    adapter = Scale(extractor.width)
    extractor.set_block_adapter(2, adapter)
    assert not any(p is adapter.weight for p in extractor.parameters())
    assert not any("weight" == k.split(".")[-1] and v is adapter.weight for k, v in extractor.state_dict().items())
    adapted = extractor(x, [1, 2, 3, 4])
    torch.testing.assert_close(adapted.patch_tokens[0], plain.patch_tokens[0])
    torch.testing.assert_close(adapted.patch_tokens[1], 1.5 * plain.patch_tokens[1])
    assert not torch.allclose(adapted.patch_tokens[3], plain.patch_tokens[3])
    adapted.patch_tokens[3].square().mean().backward()
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
    extractor.set_block_adapter(2, None)
    with torch.no_grad():
        torch.testing.assert_close(extractor(x, [4]).patch_tokens[0], plain.patch_tokens[3])


@pytest.mark.parametrize("name, size", [("clip-tiny", (128, 160)), ("dino-tiny", (128, 160)), ("dino-tiny", 128)])
def test_custom_path_reproduces_forward(name, size):
    extractor = build_backbone(name)
    x = images(size)
    with torch.no_grad():
        feats = extractor(x, [extractor.num_layers])
        hidden = extractor.embed(x)
        grid = feats.grid if isinstance(size, tuple) else None  # square inputs infer their grid
        for i in range(1, extractor.num_layers + 1):
            hidden = extractor.run_block(i, hidden, grid)
    torch.testing.assert_close(hidden[:, extractor.num_prefix_tokens:], feats.patch_tokens[0])
    assert len(extractor.blocks) == extractor.num_layers


def test_default_layers_and_attributes(clip, dino):
    assert clip.default_layers == (1, 2, 3, 4)
    assert (clip.image_size, clip.patch_size, clip.width, clip.embed_dim) == (224, 16, 192, 128)
    assert (dino.embed_dim, dino.text) == (192, None)
    assert clip.text.embed_dim == clip.embed_dim
    assert clip.mean != dino.mean


def test_text_encoder_prompt_hooks(clip):
    text = clip.text
    ids = text.tokenize(["a photo of a screw.", "a flawless pcb4 with émoji ✓"])
    assert ids.shape == (2, text.context_length)
    with torch.no_grad():
        plain = text.encode_tokens(ids)
        torch.testing.assert_close(text.encode_tokens(ids, token_embeddings=text.token_embedding(ids)), plain)
        torch.testing.assert_close(text.encode_tokens(ids, deep_prompts=[None, None]), plain)
        # Causal attention: tokens after the end-of-text token cannot change the embedding.
        padded = ids.clone()
        padded[:, -1] = 7
        torch.testing.assert_close(text.encode_tokens(padded), plain)
    prompts = [torch.zeros(3, text.width, requires_grad=True) for _ in range(2)]
    prompted = text.encode_tokens(ids, deep_prompts=prompts)
    assert prompted.shape == (2, text.embed_dim) and not torch.allclose(prompted, plain)
    prompted.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts)


def test_long_sentences_still_end_with_end_token(clip):
    ids = clip.text.tokenize(["defect " * 200])
    assert ids[0, -1] == clip.text.eos_token_id


def test_tiny_forward_is_batched_and_on_the_requested_device(clip):
    moved = build_backbone("clip-tiny", device="cpu")
    assert next(moved.parameters()).device.type == "cpu"
    with pytest.raises(ConfigError):
        build_backbone("clip-tiny", device="nonsense")


def test_text_encoder_needs_a_clip_name():
    with pytest.raises(ConfigError, match="no text encoder.*clip-tiny"):
        build_text_encoder("dino-tiny")


def test_tiny_clip_is_a_real_hf_model(clip_folder):
    assert isinstance(CLIPModel.from_pretrained(clip_folder), CLIPModel)


def test_incomplete_weights_are_refused_not_randomly_filled(tmp_path):
    config = Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          patch_size=14, image_size=28)
    Dinov2Model(config).save_pretrained(tmp_path)
    config.num_hidden_layers = 2
    config.save_pretrained(tmp_path)
    with pytest.raises(WeightsNotFoundError, match="lack .* tensors, e.g. encoder.layer.1"):
        build_backbone("dinov2-vit-l14", weights=str(tmp_path))


def test_text_matches_hf_and_trims_padding(clip):
    reference = tiny.tiny_clip()
    ids = clip.text.tokenize(["a photo of a screw.", "a"])
    with torch.no_grad():
        expected = reference.get_text_features(input_ids=ids).pooler_output
        torch.testing.assert_close(clip.text.encode_tokens(ids), expected)
        torch.testing.assert_close(clip.text.projection(clip.text.eot_features(ids)), expected)
    with pytest.raises(DataError, match="end-of-text"):
        clip.text.encode_tokens(torch.zeros(1, 5, dtype=torch.long))


@pytest.mark.parametrize("name, legacy", [
    # The hub's facebook/dinov2-large predates transformers 5's attention names.
    ("dinov2-vit-l14", {".attention.q_proj.": ".attention.attention.query.", ".attention.k_proj.":
                        ".attention.attention.key.", ".attention.v_proj.": ".attention.attention.value.",
                        ".attention.o_proj.": ".attention.output.dense."}),
    # The hub's DINOv3 checkpoints keep their blocks at the top level.
    ("dinov3-vit-l16", {"model.layer.": "layer."}),
])
def test_hub_checkpoint_layouts_load(tmp_path, name, legacy):
    from safetensors.torch import save_file
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    if name == "dinov2-vit-l14":
        reference = Dinov2Model(Dinov2Config(patch_size=14, image_size=28, **small)).eval()
    else:
        reference = DINOv3ViTModel(DINOv3ViTConfig(patch_size=16, num_register_tokens=2, **small)).eval()
    reference.config.save_pretrained(tmp_path)
    state = {}
    for key, value in reference.state_dict().items():
        for new, old in legacy.items():
            key = key.replace(new, old)
        state[key] = value.contiguous()
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    extractor = build_backbone(name, weights=str(tmp_path))
    x = images(reference.config.patch_size * 4)
    with torch.no_grad():
        expected = reference(pixel_values=extractor.normalize(x)).pooler_output
        torch.testing.assert_close(extractor(x, [2]).global_embedding, expected)


# weights="random": the hub architectures in code. Only their configs are checked here, plus one ViT-B
# forward; ViT-L models take too long to build for the test suite.
@pytest.mark.parametrize("name, vision, text, extra, parameters", [
    ("clip-vit-b16", (768, 12, 12, 16, 224), (512, 12, 8), {"projection_dim": 512}, 149_620_737),
    ("clip-vit-l14", (1024, 24, 16, 14, 224), (768, 12, 12), {"projection_dim": 768}, 427_616_513),
    ("clip-vit-l14-336", (1024, 24, 16, 14, 336), (768, 12, 12), {"projection_dim": 768}, 427_944_193),
    ("dinov2-vit-l14", (1024, 24, 16, 14, 518), None, {"mlp_ratio": 4, "layerscale_value": 1.0}, 304_368_640),
    ("dinov3-vit-l16", (1024, 24, 16, 16, 224), None,
     {"num_register_tokens": 4, "intermediate_size": 4096, "layerscale_value": 1.0, "rope_theta": 100.0,
      "use_gated_mlp": False}, 303_129_600),
])
def test_random_configs_are_the_hub_architectures(name, vision, text, extra, parameters):
    from transformers import DINOv3ViTModel

    from zsad.backbones.registry import random_config

    spec = BACKBONES[name]
    config = random_config(spec)
    vision_config = config.vision_config if spec.family == "clip" else config
    assert (vision_config.hidden_size, vision_config.num_hidden_layers, vision_config.num_attention_heads,
            vision_config.patch_size, vision_config.image_size) == vision
    assert (spec.width, spec.num_layers, spec.patch_size) == (vision[0], vision[1], vision[3])
    if text is not None:
        text_config = config.text_config
        assert (text_config.hidden_size, text_config.num_hidden_layers, text_config.num_attention_heads) == text
        assert text_config.intermediate_size == 4 * text[0] and text_config.vocab_size == 49408
        assert vision_config.intermediate_size == 4 * vision[0]
    assert all(getattr(config, key) == value for key, value in extra.items())
    model_class = {"clip": CLIPModel, "dinov2": Dinov2Model, "dinov3": DINOv3ViTModel}[spec.family]
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = model_class(config)
    assert sum(p.numel() for p in model.parameters()) == parameters  # as the hub checkpoints count them


def test_random_clip_b16_has_the_registry_shapes():
    extractor = build_backbone("clip-vit-b16", weights="random")
    spec = BACKBONES["clip-vit-b16"]
    with torch.inference_mode():
        features = extractor(images(spec.image_size, batch=1))
        text = extractor.text.encode(["a photo of a screw"])
    grid = spec.image_size // spec.patch_size
    assert features.grid == (grid, grid) and features.layers == (3, 6, 9, 12)
    assert all(tokens.shape == (1, grid * grid, spec.width) for tokens in features.patch_tokens)
    assert features.global_embedding.shape == text.shape == (1, 512)
    assert extractor.text.token_embedding.weight.shape == (49408, 512)


def test_random_tiny_is_the_builtin_tiny(clip):
    state = build_backbone("clip-tiny", weights="random").state_dict()
    assert all(torch.equal(state[k], v) for k, v in clip.state_dict().items())
    text = build_text_encoder("clip-tiny", weights="random")
    assert torch.equal(text.token_embedding.weight, clip.text.token_embedding.weight)
