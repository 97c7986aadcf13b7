"""Tiny random-initialised CLIP and DINOv3 models, built in code.

They let tests and demos exercise the real Hugging Face code path with no download. Weights are drawn
from a private, fixed-seed random stream (:func:`seeded`, also behind ``weights="random"`` for the
full-size registry models), so every process builds identical models whatever the global RNG state.
``dino-tiny`` is a DINOv3 (register tokens and RoPE), so register dropping is exercised too.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import TypeVar

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, DINOv3ViTConfig, DINOv3ViTModel, PreTrainedTokenizerFast

SEED = 20240917
CONTEXT_LENGTH = 77
PAD, UNK, START, END = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"
M = TypeVar("M", bound=torch.nn.Module)

# Words of the prompt ensembles get one token each so sentences stay short; anything else (class names
# included) falls back to one token per character.
_WORDS = (
    "a an the this there is one my in of and with without photo scene object bad good low resolution "
    "cropped bright dark cool close up black white jpeg corrupted blurry large small flawless perfect "
    "unblemished flaw defect damage damaged broken normal anomalous"
).split()
_CHARS = string.ascii_lowercase + string.digits + string.punctuation


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-piece tokenizer over prompt words and single characters, so any class name is encodable."""
    vocab = list(dict.fromkeys([PAD, UNK, START, END, *_CHARS, *(f"##{c}" for c in _CHARS), *_WORDS]))
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(),
                                                 normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START} $A {END}", special_tokens=[(START, vocab.index(START)), (END, vocab.index(END))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=START, eos_token=END, pad_token=PAD,
                                   unk_token=UNK, model_max_length=CONTEXT_LENGTH)


def special_token_ids() -> dict[str, int]:
    """The tokenizer's pad, start and end ids, under the names a CLIP text config gives them."""
    tokenizer = tiny_tokenizer()
    return dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)


def tiny_clip_config() -> CLIPConfig:
    text = dict(vocab_size=len(tiny_tokenizer()), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                num_attention_heads=4, max_position_embeddings=CONTEXT_LENGTH, **special_token_ids())
    vision = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3,
                  image_size=224, patch_size=16)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=128)


def tiny_dino_config() -> DINOv3ViTConfig:
    return DINOv3ViTConfig(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3,
                           num_register_tokens=4, image_size=224, patch_size=16)


def tiny_clip() -> CLIPModel:
    return seeded(lambda: CLIPModel(tiny_clip_config()))


def tiny_dino() -> DINOv3ViTModel:
    return seeded(lambda: DINOv3ViTModel(tiny_dino_config()))


def seeded(build: Callable[[], M]) -> M:
    """Run ``build`` on a private CPU random stream seeded with :data:`SEED`; global RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build().eval()
