"""Frozen vision (and CLIP text) backbones behind one interface; see :mod:`zsad.backbones.vit` for hooks.

The builders load ``transformers`` (seconds), so they are imported on first use: the interfaces and the
registry table cost nothing to import.
"""

from typing import Any

from zsad.backbones.base import FeatureExtractor, Features, TextEncoder
from zsad.backbones.specs import BACKBONES, BackboneSpec, get_spec

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

_BUILDERS = ("build_backbone", "build_text_encoder")


def __getattr__(name: str) -> Any:
    if name in _BUILDERS:
        from zsad.backbones import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'zsad.backbones' has no attribute {name!r}")
