"""The open_clip -> transformers converter, pinned to open_clip's forward pass written out on a random
state dict with open_clip's tensor names (a small ViT: the real ViT-B-16-plus-240 differs only in sizes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPModel

from zsad.backbones import build_backbone
from zsad.backbones.openclip import clip_config, convert_state_dict
from zsad.backbones.registry import random_config
from zsad.backbones.specs import get_spec
from zsad.backbones.tiny import tiny_tokenizer
from zsad.cli import main
from zsad.errors import ConfigError, WeightsNotFoundError

WIDTH, TEXT_WIDTH, EMBED, LAYERS, PATCH, GRID, CONTEXT, VOCAB = 128, 64, 48, 2, 8, 4, 77, 49408


def _block(prefix: str, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.05

    return {
        f"{prefix}.ln_1.weight": 1 + rand(width), f"{prefix}.ln_1.bias": rand(width),
        f"{prefix}.attn.in_proj_weight": rand(3 * width, width), f"{prefix}.attn.in_proj_bias": rand(3 * width),
        f"{prefix}.attn.out_proj.weight": rand(width, width), f"{prefix}.attn.out_proj.bias": rand(width),
        f"{prefix}.ln_2.weight": 1 + rand(width), f"{prefix}.ln_2.bias": rand(width),
        f"{prefix}.mlp.c_fc.weight": rand(4 * width, width), f"{prefix}.mlp.c_fc.bias": rand(4 * width),
        f"{prefix}.mlp.c_proj.weight": rand(width, 4 * width), f"{prefix}.mlp.c_proj.bias": rand(width),
    }


def open_clip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {
        "visual.class_embedding": torch.randn(WIDTH, generator=g) * 0.05,
        "visual.positional_embedding": torch.randn(GRID * GRID + 1, WIDTH, generator=g) * 0.05,
        "visual.conv1.weight": torch.randn(WIDTH, 3, PATCH, PATCH, generator=g) * 0.05,
        "visual.ln_pre.weight": torch.ones(WIDTH), "visual.ln_pre.bias": torch.zeros(WIDTH),
        "visual.ln_post.weight": torch.ones(WIDTH), "visual.ln_post.bias": torch.zeros(WIDTH),
        "visual.proj": torch.randn(WIDTH, EMBED, generator=g) * 0.05,
        "token_embedding.weight": torch.randn(VOCAB, TEXT_WIDTH, generator=g) * 0.05,
        "positional_embedding": torch.randn(CONTEXT, TEXT_WIDTH, generator=g) * 0.05,
        "ln_final.weight": torch.ones(TEXT_WIDTH), "ln_final.bias": torch.zeros(TEXT_WIDTH),
        "text_projection": torch.randn(TEXT_WIDTH, EMBED, generator=g) * 0.05,
        "logit_scale": torch.tensor(4.6052),
        "attn_mask": torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1),
    }
    for i in range(LAYERS):
        state |= _block(f"visual.transformer.resblocks.{i}", WIDTH, g)
        state |= _block(f"transformer.resblocks.{i}", TEXT_WIDTH, g)
    return state


def _residual_blocks(x: torch.Tensor, state: dict, prefix: str, width: int, mask: torch.Tensor | None) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock stack: x + attn(ln_1 x); x + mlp(ln_2 x), exact GELU."""
    heads = width // 64
    for i in range(LAYERS):
        p = f"{prefix}.{i}"
        h = F.layer_norm(x, (width,), state[f"{p}.ln_1.weight"], state[f"{p}.ln_1.bias"])
        q, k, v = F.linear(h, state[f"{p}.attn.in_proj_weight"], state[f"{p}.attn.in_proj_bias"]).chunk(3, -1)
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        attention = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        attention = attention.transpose(1, 2).reshape(h.shape)
        x = x + F.linear(attention, state[f"{p}.attn.out_proj.weight"], state[f"{p}.attn.out_proj.bias"])
        h = F.layer_norm(x, (width,), state[f"{p}.ln_2.weight"], state[f"{p}.ln_2.bias"])
        h = F.gelu(F.linear(h, state[f"{p}.mlp.c_fc.weight"], state[f"{p}.mlp.c_fc.bias"]))
        x = x + F.linear(h, state[f"{p}.mlp.c_proj.weight"], state[f"{p}.mlp.c_proj.bias"])
    return x


def open_clip_image_features(state: dict, images: torch.Tensor) -> torch.Tensor:
    x = F.conv2d(images, state["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = state["visual.class_embedding"].expand(len(images), 1, -1)
    x = torch.cat([cls, x], 1) + state["visual.positional_embedding"]
    x = F.layer_norm(x, (WIDTH,), state["visual.ln_pre.weight"], state["visual.ln_pre.bias"])
    x = _residual_blocks(x, state, "visual.transformer.resblocks", WIDTH, None)
    pooled = F.layer_norm(x[:, 0], (WIDTH,), state["visual.ln_post.weight"], state["visual.ln_post.bias"])
    return pooled @ state["visual.proj"]


def open_clip_text_features(state: dict, ids: torch.Tensor) -> torch.Tensor:
    x = state["token_embedding.weight"][ids] + state["positional_embedding"]
    x = _residual_blocks(x, state, "transformer.resblocks", TEXT_WIDTH, state["attn_mask"])
    x = F.layer_norm(x, (TEXT_WIDTH,), state["ln_final.weight"], state["ln_final.bias"])
    return x[torch.arange(len(ids)), ids.argmax(-1)] @ state["text_projection"]  # at the end-of-text token


def test_converted_weights_compute_open_clips_features():
    state = open_clip_state()
    model = CLIPModel(clip_config(state))
    missing, unexpected = model.load_state_dict(convert_state_dict(state), strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    model.eval()
    images = torch.rand(2, 3, GRID * PATCH, GRID * PATCH)
    ids = torch.zeros(2, CONTEXT, dtype=torch.long)
    ids[0, :5] = torch.tensor([VOCAB - 2, 320, 1125, 539, VOCAB - 1])
    ids[1, :3] = torch.tensor([VOCAB - 2, 4558, VOCAB - 1])
    with torch.no_grad():
        image_features = model.visual_projection(model.vision_model(pixel_values=images).pooler_output)
        text_features = model.text_projection(model.text_model(input_ids=ids).pooler_output)
    assert torch.allclose(image_features, open_clip_image_features(state, images), atol=1e-5)
    assert torch.allclose(text_features, open_clip_text_features(state, ids), atol=1e-5)


def test_the_command_writes_a_folder_the_backbone_loads(tmp_path):
    source = tmp_path / "open_clip_model.safetensors"
    save_file(open_clip_state(), str(source))
    tokenizer = tmp_path / "tokenizer"
    tiny_tokenizer().save_pretrained(tokenizer)
    assert main(["convert-openclip", str(source), "--out", str(tmp_path / "converted"),
                 "--tokenizer-from", str(tokenizer)]) == 0
    backbone = build_backbone("openclip-vit-b16-plus-240", weights=str(tmp_path / "converted"))
    features = backbone(torch.rand(1, 3, GRID * PATCH, GRID * PATCH), (2,))
    assert features.patch_tokens[0].shape == (1, GRID * GRID, WIDTH)
    assert backbone.text.encode(["a photo of a screw"]).shape == (1, EMBED)


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="zsad convert-openclip"):
        build_backbone("openclip-vit-b16-plus-240")
    pickle = tmp_path / "open_clip_pytorch_model.bin"
    pickle.write_bytes(b"not read")
    assert main(["convert-openclip", str(pickle), "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(ConfigError, match="not an open_clip ViT CLIP state dict"):
        convert_state_dict({"encoder.weight": torch.zeros(1)})
    assert not (tmp_path / "x").exists()


def test_the_registry_entry_is_winclips_architecture():
    config = random_config(get_spec("openclip-vit-b16-plus-240"))
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_attention_heads, vision.num_hidden_layers, vision.patch_size,
            vision.image_size, vision.hidden_act) == (896, 14, 12, 16, 240, "gelu")
    assert (text.hidden_size, text.num_attention_heads, text.hidden_act) == (640, 10, "gelu")
    assert config.projection_dim == 640
