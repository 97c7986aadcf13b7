"""Backbone names users type, what they stand for, and how to build them.

``weights="random"`` builds a name's exact architecture (its hub checkpoint's config) with fixed-seed
random weights. It exists to measure speed and memory and to test shapes at full size with nothing to
download: features take the same extractor code path as real weights but carry no information. CLIP's
text tower then reads the tiny in-code tokenizer (:mod:`zsad.backbones.tiny`) through the real 49408-row
embedding, so shapes match but text embeddings mean nothing either. For the tiny names, ``"random"`` is
their usual in-code model. (A weights folder named ``random`` is passed as ``./random``.)
"""

from __future__ import annotations

import torch
from transformers import (CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model, DINOv3ViTConfig, DINOv3ViTModel,
                          PretrainedConfig, PreTrainedTokenizerBase)

from zsad.backbones import tiny
from zsad.backbones.base import FeatureExtractor
from zsad.backbones.hf_clip import CLIPExtractor, CLIPTextEncoder, CLIPTextTower
from zsad.backbones.hf_dino import DinoExtractor
from zsad.backbones.specs import BACKBONES, BackboneSpec, get_spec
from zsad.backbones.weights import load_config, load_model, load_tokenizer, resolve_source
from zsad.errors import ConfigError, WeightsNotFoundError
from zsad.core.runtime import pick_device

_MODEL_TYPES = {"clip": "clip", "dinov2": "dinov2", "dinov3": "dinov3_vit"}
RANDOM = "random"  # the ``weights`` value that builds the architecture with seeded random weights
CLIP_VOCAB_SIZE = 49408


def build_backbone(name: str, weights: str | None = None,
                   device: torch.device | str | None = None) -> FeatureExtractor:
    """The frozen feature extractor ``name``, from ``weights`` (a local ``save_pretrained`` folder, a hub
    id, or ``"random"``, see the module docstring; default: the registry's hub id, or the in-code tiny
    model), on ``device`` (default: CPU)."""
    spec = get_spec(name)
    if spec.family == "clip":
        model = _clip_model(spec, weights)
        text = CLIPTextEncoder(model.text_model, model.text_projection, _clip_tokenizer(spec, weights))
        extractor = CLIPExtractor(name, model.vision_model, model.visual_projection, text, spec.image_size)
    else:
        extractor = DinoExtractor(name, _dino_model(spec, weights), spec.image_size)
    return extractor.to(_device(device))


def build_text_encoder(name: str, weights: str | None = None,
                       device: torch.device | str | None = None) -> CLIPTextEncoder:
    """The frozen CLIP text tower of ``name`` (only the text half of the checkpoint is loaded; random
    weights build the whole model, so the tower equals :func:`build_backbone`'s)."""
    spec = get_spec(name)
    if spec.family != "clip":
        clip_names = ", ".join(n for n, s in BACKBONES.items() if s.family == "clip")
        raise ConfigError(f"backbone {name!r} has no text encoder; use a CLIP name ({clip_names})")
    if _is_random(spec, weights):
        model = _clip_model(spec, weights)
        text_model, projection = model.text_model, model.text_projection
    else:
        source = _source(spec, weights)
        config = load_config(source, "clip", name)
        text_config = config.text_config
        text_config.projection_dim = config.projection_dim  # the joint size lives on the outer config
        model = load_model(CLIPTextTower, source, name, text_config)
        text_model, projection = model.text_model, model.text_projection
    return CLIPTextEncoder(text_model, projection, _clip_tokenizer(spec, weights)).to(_device(device))


def random_config(spec: BackboneSpec) -> PretrainedConfig:
    """The Hugging Face config of ``spec``'s architecture, as its hub checkpoint has it (tiny: in code).

    Every model here has 64-wide heads and a 4x MLP; HF's defaults hold the rest (CLIP's quick GELU,
    DINOv2's LayerScale, DINOv3's RoPE base, biases and LayerScale). The position grid is the registry
    size for CLIP and DINOv2 (37x37 at 518 px); DINOv3's RoPE has none, so its config keeps 224.
    """
    if spec.builtin:
        return tiny.tiny_clip_config() if spec.family == "clip" else tiny.tiny_dino_config()
    vision = dict(hidden_size=spec.width, num_hidden_layers=spec.num_layers, num_attention_heads=spec.width // 64,
                  patch_size=spec.patch_size)
    if spec.family == "dinov2":
        return Dinov2Config(mlp_ratio=4, image_size=spec.image_size, **vision)
    vision["intermediate_size"] = 4 * spec.width
    if spec.family == "dinov3":
        return DINOv3ViTConfig(num_register_tokens=4, **vision)
    vision["hidden_act"] = spec.activation
    width = spec.text_width
    text = dict(vocab_size=CLIP_VOCAB_SIZE, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=12,
                hidden_act=spec.activation,
                num_attention_heads=width // 64, max_position_embeddings=tiny.CONTEXT_LENGTH,
                **tiny.special_token_ids())
    return CLIPConfig(text_config=text, vision_config=dict(image_size=spec.image_size, **vision),
                      projection_dim=width)


def _source(spec: BackboneSpec, weights: str | None) -> str:
    """Where ``spec``'s weights come from: ``weights``, else its hub id; converted backbones have none."""
    if weights is None and spec.converted:
        raise WeightsNotFoundError(f"{spec.name} has no transformers checkpoint to download: convert its open_clip "
                                   f"weights (a .safetensors file) with `zsad convert-openclip FILE --out DIR` and "
                                   f"pass --weights DIR")
    return resolve_source(weights or spec.hub_id)


def _is_random(spec: BackboneSpec, weights: str | None) -> bool:
    return weights == RANDOM or (spec.builtin and weights is None)


def _clip_model(spec: BackboneSpec, weights: str | None) -> CLIPModel:
    if _is_random(spec, weights):
        return tiny.seeded(lambda: CLIPModel(random_config(spec)))
    source = _source(spec, weights)
    return load_model(CLIPModel, source, spec.name, load_config(source, "clip", spec.name))


def _clip_tokenizer(spec: BackboneSpec, weights: str | None) -> PreTrainedTokenizerBase:
    # The tiny tokenizer is part of the tiny model's definition, so it comes from code even for a folder;
    # random weights have no tokenizer to load.
    if spec.builtin or weights == RANDOM:
        return tiny.tiny_tokenizer()
    return load_tokenizer(_source(spec, weights), spec.name)


def _dino_model(spec: BackboneSpec, weights: str | None) -> Dinov2Model | DINOv3ViTModel:
    model_class = Dinov2Model if spec.family == "dinov2" else DINOv3ViTModel
    if _is_random(spec, weights):
        return tiny.seeded(lambda: model_class(random_config(spec)))
    source = _source(spec, weights)
    return load_model(model_class, source, spec.name, load_config(source, _MODEL_TYPES[spec.family], spec.name))


def _device(device: torch.device | str | None) -> torch.device:
    return torch.device("cpu") if device is None else pick_device(str(device))
