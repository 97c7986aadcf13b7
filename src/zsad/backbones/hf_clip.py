"""CLIP through Hugging Face ``transformers``: the vision tower as a feature extractor, the text tower as
a text encoder with hooks for learnable prompts."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModel, PreTrainedTokenizerBase
from transformers.masking_utils import create_causal_mask

from zsad.backbones.base import TextEncoder
from zsad.backbones.vit import ViTExtractor
from zsad.errors import ConfigError, DataError

# transformers renamed the cache argument (``past_key_values`` -> ``cache``) and warns on the old name.
_NO_CACHE = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPTextTower(CLIPTextModelWithProjection):
    """The text half of a full CLIP checkpoint; the vision half's tensors are expected there, and skipped."""

    _keys_to_ignore_on_load_unexpected = [r"^vision_model\.", r"^visual_projection\.", r"^logit_scale$"]


class CLIPTextEncoder(TextEncoder):
    """CLIP's text transformer plus its projection, run layer by layer so prompts can be injected."""

    def __init__(self, model: CLIPTextModel, projection: nn.Linear, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        if tokenizer.eos_token_id is None:
            raise ConfigError("the CLIP tokenizer has no end-of-text token")
        self.model = model
        self.projection = projection
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        self.embed_dim = projection.out_features
        self.width = model.config.hidden_size
        self.context_length = model.config.max_position_embeddings
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> CLIPTextEncoder:
        """Always eval: the tower is frozen."""
        return super().train(False)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.embeddings.token_embedding

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.layers)

    def tokenize(self, texts: list[str]) -> Tensor:
        """Ids ``[T, context_length]`` on the encoder's device. Over-long sentences are cut and still end
        with the end-of-text token, as OpenAI's ``clip.tokenize(truncate=True)`` does."""
        ids = self.tokenizer(list(texts), padding="max_length", max_length=self.context_length, truncation=True,
                             return_tensors="pt")["input_ids"]
        ended = (ids == self.eos_token_id).any(dim=1)
        ids[~ended, -1] = self.eos_token_id
        return ids.to(self.token_embedding.weight.device)

    def encode(self, texts: list[str]) -> Tensor:
        return self.encode_tokens(self.tokenize(texts))

    def encode_tokens(self, token_ids: Tensor, token_embeddings: Tensor | None = None,
                      deep_prompts: list[Tensor | None] | None = None) -> Tensor:
        """Projected, unnormalised embeddings ``[T, D]`` of the end-of-text tokens (see :meth:`eot_features`)."""
        return self.projection(self.eot_features(token_ids, token_embeddings, deep_prompts))

    def eot_features(self, token_ids: Tensor, token_embeddings: Tensor | None = None,
                     deep_prompts: list[Tensor | None] | None = None) -> Tensor:
        """End-of-text tokens after the final LayerNorm, ``[T, width]``: what the text projection maps to
        the joint space, for methods that learn their own projection (MoECLIP's text adapter).

        ``token_embeddings`` ``[T, L, width]`` replaces the looked-up input embeddings (learnable context;
        position embeddings are still added). ``deep_prompts[i - 1]`` (``[n, width]`` or ``[T, n, width]``)
        replaces the ``n`` tokens right after the start token in the residual stream after block ``i``,
        for ``i = 1 .. len(deep_prompts)`` (None leaves a block alone): AnomalyCLIP's prompts in blocks
        2..9 are ``deep_prompts`` of length 8. The end-of-text position is the first ``eos`` id.
        """
        if token_ids.ndim != 2 or token_ids.shape[1] > self.context_length:
            raise DataError(f"token ids must be [T, <= {self.context_length}]; got {list(token_ids.shape)}")
        if deep_prompts is not None and len(deep_prompts) > len(self.model.encoder.layers):
            raise ConfigError(f"{len(deep_prompts)} deep prompts for {len(self.model.encoder.layers)} text blocks")
        is_eot = token_ids == self.eos_token_id
        if not bool(is_eot.any(dim=1).all()):
            raise DataError("every row of token ids needs an end-of-text token (use tokenize)")
        eot = is_eot.int().argmax(dim=-1)
        # Attention is causal, so positions after the last end-of-text token cannot matter: drop them.
        length = int(eot.max()) + 1
        token_ids = token_ids[:, :length]
        if token_embeddings is None:
            hidden = self.model.embeddings(input_ids=token_ids)
        else:
            hidden = self.model.embeddings(inputs_embeds=token_embeddings[:, :length])
        mask = create_causal_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=None,
                                  **{_NO_CACHE: None})
        for i, layer in enumerate(self.model.encoder.layers, start=1):
            hidden = layer(hidden, mask, is_causal=True)
            prompt = deep_prompts[i - 1] if deep_prompts is not None and i <= len(deep_prompts) else None
            if prompt is not None:
                prompt = prompt.expand(hidden.shape[0], -1, -1) if prompt.ndim == 2 else prompt
                if 1 + prompt.shape[1] >= length:
                    raise ConfigError(f"{prompt.shape[1]} deep prompt tokens do not fit before the end-of-text token")
                hidden = torch.cat([hidden[:, :1], prompt.to(hidden.dtype), hidden[:, 1 + prompt.shape[1]:]], dim=1)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eot.to(hidden.device)]
        return self.model.final_layer_norm(pooled)


class CLIPExtractor(ViTExtractor):
    """CLIP's vision tower. Tokens are pre-``post_layernorm``; :meth:`project` maps them to the joint space."""

    num_prefix_tokens = 1

    def __init__(self, name: str, vision: CLIPVisionModel, projection: nn.Linear, text: CLIPTextEncoder,
                 image_size: int) -> None:
        config = vision.config
        super().__init__(name, image_size=image_size, patch_size=config.patch_size, width=config.hidden_size,
                         num_layers=config.num_hidden_layers, mean=OPENAI_MEAN, std=OPENAI_STD)
        self.vision = vision
        self.projection = projection
        self.text_encoder = text
        self.embed_dim = projection.out_features
        self.requires_grad_(False)
        self.eval()

    @property
    def text(self) -> CLIPTextEncoder:
        return self.text_encoder

    @property
    def blocks(self) -> nn.ModuleList:
        return self.vision.encoder.layers

    def final_norm(self, tokens: Tensor) -> Tensor:
        return self.vision.post_layernorm(tokens)

    def project(self, tokens: Tensor, normalize: bool = True) -> Tensor:
        """Tokens ``[..., C]`` into the joint image-text space: ``visual_projection(post_layernorm(x))``."""
        return self.projection(self.final_norm(tokens) if normalize else tokens)

    def value_value_attention(self, block: int, hidden: Tensor) -> Tensor:
        """``softmax(v vᵀ · scale) v`` of block ``block``'s heads on ``layer_norm1(hidden)``, through its
        output projection."""
        layer = self.blocks[block - 1]
        attention = layer.self_attn
        x = layer.layer_norm1(hidden)
        b, t, c = x.shape
        heads = attention.num_heads
        v = attention.v_proj(x).view(b, t, heads, c // heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(v, v, v, scale=attention.scale)
        return attention.out_proj(out.transpose(1, 2).reshape(b, t, c))

    def _embed(self, pixels: Tensor) -> Tensor:
        # Interpolating is a no-op at the pretraining size and bicubic on the position grid otherwise.
        return self.vision.pre_layrnorm(self.vision.embeddings(pixels, interpolate_pos_encoding=True))

    def _block_kwargs(self, grid: tuple[int, int], hidden: Tensor) -> dict[str, Any]:
        return {"attention_mask": None}

    def _global_embedding(self, cls_token: Tensor) -> Tensor:
        return self.project(cls_token)
