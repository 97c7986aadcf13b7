"""Frozen vision (and CLIP text) backbones behind one interface; see :mod:`zsad.backbones.vit` for hooks.

The builders load ``transformers`` (seconds) and the interfaces torch, so both are imported on first use:
the table of names (:mod:`zsad.backbones.specs`) costs nothing to import, and the command line checks a
backbone name before torch loads.
"""

from typing import Any

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

_LAZY = {"build_backbone": "registry", "build_text_encoder": "registry", "FeatureExtractor": "base",
         "Features": "base", "TextEncoder": "base"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"zsad.backbones.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'zsad.backbones' has no attribute {name!r}")
