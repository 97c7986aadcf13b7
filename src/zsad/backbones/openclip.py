"""OpenCLIP checkpoints in the transformers CLIP layout, so OpenCLIP-only backbones run through the same
extractor as OpenAI's (WinCLIP's ViT-B-16-plus-240 exists only as open_clip weights).

The two layouts hold the same tensors under other names, with two differences in form: open_clip keeps
each attention's query, key and value projections in one ``in_proj`` matrix (split here into three), and
stores the image and text projections as ``x @ proj`` matrices (transposed here into ``Linear`` weights).
Sizes are read off the tensors; the MLP activation is not in a state dict, so it is given (open_clip's
own models use exact GELU, its ``-quickgelu`` variants and OpenAI's checkpoints quick GELU).

Only safetensors files are read, never pickles: open_clip's hub repositories publish
``open_clip_model.safetensors`` next to the pickled ``.bin``.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from zsad.errors import ConfigError, DataError

HEAD_WIDTH = 64  # open_clip's default attention head width, for both towers
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_DIRECT = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "logit_scale": "logit_scale",
}
_NORMS = {"visual.ln_pre": "vision_model.pre_layrnorm", "visual.ln_post": "vision_model.post_layernorm",
          "ln_final": "text_model.final_layer_norm"}
_PROJECTIONS = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_IGNORED = {"attn_mask"}  # the text tower's causal mask buffer: transformers builds its own


def convert_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An open_clip ``CLIP`` state dict with transformers ``CLIPModel`` tensor names and forms."""
    converted: dict[str, Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        if key in _IGNORED:
            continue
        if key in _DIRECT:
            converted[_DIRECT[key]] = tensor
        elif key in _PROJECTIONS:
            converted[_PROJECTIONS[key]] = tensor.t().contiguous()
        elif key.rpartition(".")[0] in _NORMS:
            prefix, _, leaf = key.rpartition(".")
            converted[f"{_NORMS[prefix]}.{leaf}"] = tensor
        elif match := _BLOCK.match(key):
            tower = "vision_model" if match.group(1) else "text_model"
            layer = f"{tower}.encoder.layers.{match.group(2)}"
            part = match.group(3)
            if part in ("attn.in_proj_weight", "attn.in_proj_bias"):
                leaf = "weight" if part.endswith("weight") else "bias"
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
                    converted[f"{layer}.self_attn.{name}.{leaf}"] = chunk.contiguous()
            else:
                module, _, leaf = part.rpartition(".")
                if module not in _BLOCK_PARTS:
                    unknown.append(key)
                    continue
                converted[f"{layer}.{_BLOCK_PARTS[module]}.{leaf}"] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(f"not an open_clip ViT CLIP state dict (or one with parts this converter does not know): "
                          f"{', '.join(sorted(unknown)[:5])}")
    return converted


def clip_config(state: Mapping[str, Tensor], activation: str = "gelu") -> CLIPConfig:
    """The transformers config of an open_clip state dict, sizes read off its tensors."""
    try:
        conv = state["visual.conv1.weight"]
        width, patch = conv.shape[0], conv.shape[-1]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        text_width = state["token_embedding.weight"].shape[1]
        vocab = state["token_embedding.weight"].shape[0]
        context = state["positional_embedding"].shape[0]
        projection = state["visual.proj"].shape[1]
    except KeyError as err:
        raise ConfigError(f"not an open_clip ViT CLIP state dict: no {err.args[0]!r}") from None
    vision_layers = _count_blocks(state, "visual.transformer.resblocks.")
    text_layers = _count_blocks(state, "transformer.resblocks.")
    mlp = state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    vision = dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=vision_layers,
                  num_attention_heads=width // HEAD_WIDTH, patch_size=patch, image_size=grid * patch,
                  hidden_act=activation)
    text = dict(vocab_size=vocab, hidden_size=text_width,
                intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                num_hidden_layers=text_layers, num_attention_heads=text_width // HEAD_WIDTH,
                max_position_embeddings=context, hidden_act=activation,
                bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)


def _count_blocks(state: Mapping[str, Tensor], prefix: str) -> int:
    return len({key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix)})


def convert(source: str | Path, out: str | Path, tokenizer_from: str | Path | None = None,
            activation: str = "gelu") -> Path:
    """Write the open_clip safetensors file ``source`` as a transformers CLIP folder ``out`` (weights as
    safetensors, config, and the tokenizer of ``tokenizer_from`` when given), all or nothing."""
    from safetensors.torch import load_file

    source, out = Path(source), Path(out)
    if source.suffix != ".safetensors":
        raise DataError(f"{source}: give the open_clip weights as a .safetensors file (pickled .bin/.pt files are "
                        f"not read); open_clip's hub repositories publish open_clip_model.safetensors")
    if not source.is_file():
        raise DataError(f"{source}: file not found")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: folder exists and is not empty; choose a new --out")
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(source)).items()}
    config = clip_config(state, activation)
    model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(convert_state_dict(state), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ConfigError(f"{source}: converted tensors do not fill a CLIP model: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        model.save_pretrained(staging, safe_serialization=True)
        if tokenizer_from is not None:
            CLIPTokenizer.from_pretrained(str(tokenizer_from)).save_pretrained(staging)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out

