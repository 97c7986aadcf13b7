"""Backbone names users type, what they stand for, and how to build them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import CLIPModel, Dinov2Model, DINOv3ViTModel, PreTrainedTokenizerBase

from zsad.backbones import tiny
from zsad.backbones.base import FeatureExtractor
from zsad.backbones.hf_clip import CLIPExtractor, CLIPTextEncoder, CLIPTextTower
from zsad.backbones.hf_dino import DinoExtractor
from zsad.backbones.weights import load_config, load_model, load_tokenizer, resolve_source
from zsad.errors import ConfigError
from zsad.runtime import pick_device

Family = Literal["clip", "dinov2", "dinov3"]
_MODEL_TYPES = {"clip": "clip", "dinov2": "dinov2", "dinov3": "dinov3_vit"}


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry. ``hub_id`` is None for the tiny models built in code."""

    name: str
    family: Family
    hub_id: str | None
    image_size: int  # default input size in pixels
    patch_size: int
    width: int
    num_layers: int
    summary: str

    @property
    def builtin(self) -> bool:
        return self.hub_id is None


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("clip-vit-b16", "clip", "openai/clip-vit-base-patch16", 224, 16, 768, 12,
                     "OpenAI CLIP ViT-B/16, the fast variant"),
        BackboneSpec("clip-vit-l14", "clip", "openai/clip-vit-large-patch14", 224, 14, 1024, 24,
                     "OpenAI CLIP ViT-L/14"),
        BackboneSpec("clip-vit-l14-336", "clip", "openai/clip-vit-large-patch14-336", 336, 14, 1024, 24,
                     "OpenAI CLIP ViT-L/14@336, the default of the CLIP methods (often run at 518 px)"),
        # 518 px: the native 37x37 position grid of the checkpoint (no interpolation), and the pixel count
        # the CLIP methods run at, so DINOv2 and CLIP maps are compared at equal resolution.
        BackboneSpec("dinov2-vit-l14", "dinov2", "facebook/dinov2-large", 518, 14, 1024, 24,
                     "DINOv2 ViT-L/14 (no registers)"),
        BackboneSpec("dinov3-vit-l16", "dinov3", "facebook/dinov3-vitl16-pretrain-lvd1689m", 448, 16, 1024, 24,
                     "DINOv3 ViT-L/16, 4 register tokens dropped, RoPE"),
        BackboneSpec("clip-tiny", "clip", None, 224, 16, 192, 4,
                     "random-initialised tiny CLIP for tests and demos (no download)"),
        BackboneSpec("dino-tiny", "dinov3", None, 224, 16, 192, 4,
                     "random-initialised tiny DINOv3 for tests and demos (no download)"),
    )
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


def build_backbone(name: str, weights: str | None = None,
                   device: torch.device | str | None = None) -> FeatureExtractor:
    """The frozen feature extractor ``name``, from ``weights`` (a local ``save_pretrained`` folder or a hub
    id; default: the registry's hub id, or the in-code tiny model), on ``device`` (default: CPU)."""
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
    """The frozen CLIP text tower of ``name`` (only the text half of the checkpoint is loaded)."""
    spec = get_spec(name)
    if spec.family != "clip":
        clip_names = ", ".join(n for n, s in BACKBONES.items() if s.family == "clip")
        raise ConfigError(f"backbone {name!r} has no text encoder; use a CLIP name ({clip_names})")
    if spec.builtin and weights is None:
        model = tiny.tiny_clip()
        text_model, projection = model.text_model, model.text_projection
    else:
        source = resolve_source(weights or spec.hub_id)
        config = load_config(source, "clip", name)
        text_config = config.text_config
        text_config.projection_dim = config.projection_dim  # the joint size lives on the outer config
        model = load_model(CLIPTextTower, source, name, text_config)
        text_model, projection = model.text_model, model.text_projection
    return CLIPTextEncoder(text_model, projection, _clip_tokenizer(spec, weights)).to(_device(device))


def _clip_model(spec: BackboneSpec, weights: str | None) -> CLIPModel:
    if spec.builtin and weights is None:
        return tiny.tiny_clip()
    source = resolve_source(weights or spec.hub_id)
    return load_model(CLIPModel, source, spec.name, load_config(source, "clip", spec.name))


def _clip_tokenizer(spec: BackboneSpec, weights: str | None) -> PreTrainedTokenizerBase:
    # The tiny tokenizer is part of the tiny model's definition, so it comes from code even for a folder.
    if spec.builtin:
        return tiny.tiny_tokenizer()
    return load_tokenizer(resolve_source(weights or spec.hub_id), spec.name)


def _dino_model(spec: BackboneSpec, weights: str | None) -> Dinov2Model | DINOv3ViTModel:
    if spec.builtin and weights is None:
        return tiny.tiny_dino()
    source = resolve_source(weights or spec.hub_id)
    model_class = Dinov2Model if spec.family == "dinov2" else DINOv3ViTModel
    return load_model(model_class, source, spec.name, load_config(source, _MODEL_TYPES[spec.family], spec.name))


def _device(device: torch.device | str | None) -> torch.device:
    return torch.device("cpu") if device is None else pick_device(str(device))
