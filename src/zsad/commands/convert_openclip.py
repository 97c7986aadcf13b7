"""``zsad convert-openclip``: an open_clip checkpoint as a transformers CLIP folder for ``--weights``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert-openclip", help="convert open_clip weights (e.g. WinCLIP's ViT-B-16-plus-240) into "
                       "a folder that --weights reads",
                       description="Convert an open_clip ViT CLIP checkpoint (.safetensors, e.g. "
                                   "open_clip_model.safetensors of timm/vit_base_patch16_plus_240.laion400m_e32) into "
                                   "a transformers CLIP folder; then run with --backbone openclip-vit-b16-plus-240 "
                                   "--weights OUT.")
    p.add_argument("source", type=Path, help="the open_clip weights, a .safetensors file")
    p.add_argument("--out", type=Path, required=True, help="new folder for the converted model")
    p.add_argument("--tokenizer-from", type=Path, help="a CLIP folder whose tokenizer files to copy (every CLIP "
                   "shares OpenAI's BPE vocabulary, e.g. a local openai/clip-vit-base-patch16 snapshot)")
    p.add_argument("--quick-gelu", action="store_true", help="the checkpoint uses quick GELU (open_clip's "
                   "-quickgelu models); default: exact GELU, as open_clip's own models")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zsad.backbones.openclip import convert

    out = convert(args.source, args.out, args.tokenizer_from, "quick_gelu" if args.quick_gelu else "gelu")
    note = "" if args.tokenizer_from else " (no tokenizer copied: add one with --tokenizer-from before using it)"
    print(f"converted {args.source} into {out}{note}")
    return 0
