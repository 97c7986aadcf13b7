"""Frozen vision (and CLIP text) backbones behind one interface; see :mod:`zsad.backbones.vit` for hooks."""

from zsad.backbones.base import FeatureExtractor, Features, TextEncoder
from zsad.backbones.registry import BACKBONES, BackboneSpec, build_backbone, build_text_encoder, get_spec

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "FeatureExtractor",
    "Features",
    "TextEncoder",
    "build_backbone",
    "build_text_encoder",
    "get_spec",
]
