"""The backbone registry's table: names, hub ids, sizes. Plain data, so listing backbones or checking a
name never imports ``transformers`` (the builders in :mod:`zsad.backbones.registry` do)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from zsad.errors import ConfigError

Family = Literal["clip", "dinov2", "dinov3"]


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry. ``hub_id`` is None for the tiny models built in code and for ``converted`` ones,
    whose weights exist only in another library's layout (``zsad convert-openclip`` writes them as a
    transformers folder, passed as ``--weights``); ``text_width`` is the CLIP text tower's width (OpenAI's
    equals the joint embedding size), None for DINO and the tiny CLIP; ``activation`` is the MLP's (OpenAI
    CLIP: quick GELU; OpenCLIP's own models: exact GELU)."""

    name: str
    family: Family
    hub_id: str | None
    image_size: int  # default input size in pixels
    patch_size: int
    width: int
    num_layers: int
    summary: str
    text_width: int | None = None
    activation: str = "quick_gelu"
    converted: bool = False

    @property
    def builtin(self) -> bool:
        return self.hub_id is None and not self.converted


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("clip-vit-b16", "clip", "openai/clip-vit-base-patch16", 224, 16, 768, 12,
                     "OpenAI CLIP ViT-B/16, the fast variant", text_width=512),
        BackboneSpec("clip-vit-l14", "clip", "openai/clip-vit-large-patch14", 224, 14, 1024, 24,
                     "OpenAI CLIP ViT-L/14", text_width=768),
        BackboneSpec("clip-vit-l14-336", "clip", "openai/clip-vit-large-patch14-336", 336, 14, 1024, 24,
                     "OpenAI CLIP ViT-L/14@336, the default of the CLIP methods (often run at 518 px)",
                     text_width=768),
        # WinCLIP's backbone: OpenCLIP ViT-B-16-plus-240 trained on LAION-400M (896-wide vision tower,
        # 640-wide text tower and joint space, exact GELU, 240 px).
        BackboneSpec("openclip-vit-b16-plus-240", "clip", None, 240, 16, 896, 12,
                     "OpenCLIP ViT-B-16-plus-240 (LAION-400M), WinCLIP's backbone; weights via zsad convert-openclip",
                     text_width=640, activation="gelu", converted=True),
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
        close = difflib.get_close_matches(name, BACKBONES, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"unknown backbone {name!r}; {hint}choose one of {', '.join(BACKBONES)}") from None
