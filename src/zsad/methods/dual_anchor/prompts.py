"""Dynamic State Prompts: text anchors written partly by the image's own group tokens.

Each state's prompt is the token sequence::

    [SOS] [V_1] ... [V_M] <state word> [G] <class name> . [EOT]

``V_1..V_M`` are learnable context embeddings, one set per state (normal and abnormal prompts describe
different things); ``<state word>`` is a real word (``flawless`` / ``damaged`` by default) that keeps
the frozen text tower on familiar ground; ``[G]`` is the image's normal (resp. abnormal) group token,
L2-normalised and mapped by one Linear to the text tower's token width (normalising first keeps the
inserted embedding near the scale of word embeddings whatever the vision backbone). The frozen CLIP text
encoder turns the sequences into per-image (normal, abnormal) anchors in the joint space.

All prompts of a batch go through the text encoder in one call of ``2 B`` sequences. With
``dynamic=False`` (the ablation "static learnable prompts") ``[G]`` is left out and the anchors depend
only on the class name, so each distinct class is encoded once per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsad.backbones.base import TextEncoder
from zsad.errors import ConfigError
from zsad.methods.components.prompts import clean_class_name


class DynamicStatePrompts(nn.Module):
    def __init__(self, text: TextEncoder, group_dim: int, context_tokens: int, state_words: tuple[str, str],
                 dynamic: bool, init_std: float) -> None:
        super().__init__()
        if context_tokens < 0 or len(state_words) != 2:
            raise ConfigError("dynamic state prompts need context_tokens >= 0 and two state words (normal, abnormal)")
        self.state_words = tuple(state_words)
        self.dynamic = dynamic
        self.eos_token_id = text.eos_token_id
        self.context = nn.Parameter(init_std * torch.randn(2, context_tokens, text.width))
        self.group_projection = nn.Linear(group_dim, text.width) if dynamic else None
        ids = text.tokenize(list(self.state_words))
        state_lengths = ((ids == self.eos_token_id).int().argmax(1) - 1).tolist()  # tokens between SOS and EOT
        # The group slot follows the state word, so its position depends on the state only.
        self.register_buffer("group_positions", torch.tensor([1 + context_tokens + n for n in state_lengths]),
                             persistent=False)
        self._state_lengths = state_lengths
        self._ids: dict[str, Tensor] = {}

    @property
    def context_tokens(self) -> int:
        return self.context.shape[1]

    def token_ids(self, text: TextEncoder, class_name: str) -> Tensor:
        """Ids ``[2, context_length]`` of both states' prompts for one class, with placeholder ids (the
        start token, any non-terminal id does) where the context and group embeddings go. Cached per class."""
        name = clean_class_name(class_name)
        if name not in self._ids:
            # Built outside inference mode: the cache serves prediction and training alike.
            with torch.inference_mode(False):
                self._ids[name] = self._build_ids(text, name)
        return self._ids[name]

    def _build_ids(self, text: TextEncoder, name: str) -> Tensor:
        rows = []
        for word, length in zip(self.state_words, self._state_lengths):
            ids = text.tokenize([f"{word} {name}."])[0]
            start = ids[:1]
            parts = [start, start.expand(self.context_tokens), ids[1 : 1 + length]]
            if self.dynamic:
                parts.append(start)
            parts.append(ids[1 + length :])
            row = torch.cat(parts)[: text.context_length]
            if not bool((row == self.eos_token_id).any()):
                raise ConfigError(f"the prompt for {name!r} with {self.context_tokens} context tokens does not fit "
                                  f"the text encoder's {text.context_length} tokens")
            rows.append(row)
        return torch.stack(rows)

    def forward(self, text: TextEncoder, class_names: list[str], groups: Tensor | None = None) -> Tensor:
        """Unnormalised anchors ``[B, 2, D]`` (normal, abnormal) for images of ``class_names``, from their
        group tokens ``[B, 2, D_group]`` (required when dynamic, ignored otherwise)."""
        names = [clean_class_name(n) for n in class_names]
        distinct = sorted(set(names))
        ids = torch.stack([self.token_ids(text, n) for n in distinct]).to(self.context.device)  # [U, 2, L]
        if self.dynamic and groups is None:
            raise ValueError("dynamic state prompts need the images' group tokens")
        if len(distinct) == 1:  # one product (prediction): no per-image gather, so the batch size stays free
            if self.dynamic:
                ids = ids.expand(groups.shape[0], -1, -1)
            embeddings = self._embeddings(text, ids, groups if self.dynamic else None)
            anchors = text.encode_tokens(ids.flatten(0, 1), embeddings.flatten(0, 1)).view(*ids.shape[:2], -1)
            return anchors if self.dynamic else anchors.expand(len(names), -1, -1)
        which = torch.tensor([distinct.index(n) for n in names], device=self.context.device)
        if self.dynamic:
            ids = ids[which]  # one pair of prompts per image
        embeddings = self._embeddings(text, ids, groups if self.dynamic else None)
        anchors = text.encode_tokens(ids.flatten(0, 1), embeddings.flatten(0, 1)).view(*ids.shape[:2], -1)
        return anchors if self.dynamic else anchors[which]

    def _embeddings(self, text: TextEncoder, ids: Tensor, groups: Tensor | None) -> Tensor:
        """Input embeddings ``[X, 2, L, width]`` of ``ids`` with the context (and group tokens) in place."""
        words = text.token_embedding(ids)
        context = self.context.to(words.dtype).expand(ids.shape[0], -1, -1, -1)
        embeddings = torch.cat([words[:, :, :1], context, words[:, :, 1 + self.context_tokens :]], dim=2)
        if groups is None:
            return embeddings
        inserted = self.group_projection(F.normalize(groups, dim=-1)).to(words.dtype)  # [B, 2, width]
        slot = torch.arange(ids.shape[-1], device=ids.device) == self.group_positions.unsqueeze(-1)  # [2, L]
        return torch.where(slot[None, :, :, None], inserted.unsqueeze(2), embeddings)
