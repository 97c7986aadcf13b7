"""Hierarchical group merging: patch tokens to a normal and an abnormal group token, level by level.

Each level runs four steps on the patch tokens it reads (``[B, N, D]``, in the joint space):

1. **Initialise** — the level's groups cross-attend to its patch tokens (pre-norm, residual). The first
   level's groups are learnable queries; later levels start from the previous level's merged groups.
2. **Assign** — every patch is assigned to the groups by a Gumbel-softmax over scaled dot products of
   learned key/query projections (GroupViT's grouping block): a distribution over groups per patch,
   sampled while training, the deterministic softmax at evaluation.
3. **Update** — each group becomes the assignment-weighted mean of its member tokens, so groups live in
   the tokens' own space and can be compared with patches and text.
4. **Merge** — bipartite soft matching (ToMe) shrinks the groups to the next level's count: groups are
   split alternately into sets A and B, each A group is matched to its most similar B group, and the
   most similar pairs merge; assignment columns add up and tokens are mass-weighted averages (mass =
   total assignment of a group).

The outline orders merge before update; the two orders give the same groups, because the mass-weighted
average of member means *is* the member mean under the summed assignment. Updating first lets the
matching compare what the groups contain rather than their initial queries. Merged groups keep the
original order of their slots, and with the default halving every A group merges, so the survivors are
always the B slots: the final two slots have fixed identities (slot 0 normal, slot 1 abnormal), which
the group-alignment and segmentation losses teach.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsad.errors import ConfigError

MASS_EPS = 1e-6  # keeps the mean of an (almost) empty group finite


def gumbel_assignment(logits: Tensor, tau: float, hard: bool, sample: bool) -> Tensor:
    """Assignment ``[..., K]`` of patches to groups from ``logits`` ``[..., K]``: each row a distribution.

    ``sample``: Gumbel-softmax at temperature ``tau`` (training); otherwise the deterministic
    ``softmax(logits / tau)``. ``hard`` returns one-hot rows (straight-through gradients when sampling).
    """
    if sample:
        return F.gumbel_softmax(logits, tau=tau, hard=hard, dim=-1)
    probs = (logits / tau).softmax(-1)
    if hard:
        return F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
    return probs


def member_means(tokens: Tensor, assignment: Tensor) -> tuple[Tensor, Tensor]:
    """Assignment-weighted means of ``tokens`` ``[B, N, D]`` per group ``[B, K, D]`` and group masses ``[B, K]``."""
    mass = assignment.sum(1)
    means = assignment.transpose(1, 2) @ tokens / (mass.unsqueeze(-1) + MASS_EPS)
    return means, mass


def check_merge_schedule(counts: tuple[int, ...] | list[int]) -> None:
    """Group counts must be positive and end at 2; each level keeps at least half its groups, the most
    one round of bipartite matching can merge."""
    if not counts or counts[-1] != 2 or any(c < 1 for c in counts):
        raise ConfigError(f"group counts must be positive and end with 2 (normal, abnormal); got {list(counts)}")
    for before, after in zip(counts, counts[1:]):
        if not before // 2 <= after <= before:
            raise ConfigError(f"bipartite merging takes {before} groups to between {before // 2} and {before}, "
                              f"not {after} (group counts {list(counts)})")


def bipartite_merge_matrix(tokens: Tensor, count: int) -> Tensor:
    """ToMe's bipartite soft matching as a 0/1 matrix ``[B, K, count]``: entry ``(k, j)`` is 1 when group
    ``k`` ends up in merged group ``j``.

    Even slots form set A, odd slots set B; each A group's partner is its most cosine-similar B group, and
    the ``K - count`` A groups with the most similar partners merge into them. Survivors keep their order.
    """
    batch, groups, _ = tokens.shape
    merges = groups - count
    if not 0 <= merges <= (groups + 1) // 2:
        raise ConfigError(f"bipartite matching cannot take {groups} groups to {count}")
    slots = torch.arange(groups, device=tokens.device)
    if merges == 0:
        return torch.eye(groups, device=tokens.device, dtype=tokens.dtype).expand(batch, -1, -1)
    normalised = F.normalize(tokens.detach(), dim=-1)
    similarity = normalised[:, ::2] @ normalised[:, 1::2].transpose(1, 2)  # [B, |A|, |B|]
    best, partner = similarity.max(-1)
    merged = best.argsort(-1, descending=True)[:, :merges]  # A groups that merge, as indices into A
    destination = slots.expand(batch, -1).clone()  # each group's surviving slot, in old indices
    destination.scatter_(1, 2 * merged, 2 * partner.gather(1, merged) + 1)
    survivor_rank = (destination == slots).long().cumsum(1) - 1  # new index of each surviving slot
    return F.one_hot(survivor_rank.gather(1, destination), count).to(tokens.dtype)


def merge_groups(tokens: Tensor, assignment: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Merge groups ``[B, K, D]`` (with their assignment ``[B, N, K]``) down to ``count`` groups.

    Assignment columns of merged groups add up (every patch's row still sums to one and the total mass
    is unchanged); merged tokens are the mass-weighted averages of their members.
    """
    plan = bipartite_merge_matrix(tokens, count)
    mass = assignment.sum(1)
    merged_mass = (mass.unsqueeze(1) @ plan).squeeze(1)
    merged_tokens = plan.transpose(1, 2) @ (mass.unsqueeze(-1) * tokens) / (merged_mass.unsqueeze(-1) + MASS_EPS)
    return merged_tokens, assignment @ plan


class GroupingLevel(nn.Module):
    """One level's learned parts: the cross-attention that initialises its groups from the patch tokens,
    and the key/query projections whose scaled dot products are the assignment logits."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.group_norm = nn.LayerNorm(dim)
        self.token_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.assign_query = nn.Linear(dim, dim)
        self.assign_key = nn.Linear(dim, dim)

    def initialise(self, groups: Tensor, tokens: Tensor) -> Tensor:
        """Groups ``[B, K, D]`` after attending to the patch tokens ``[B, N, D]`` (residual)."""
        normed = self.token_norm(tokens)
        attended, _ = self.attention(self.group_norm(groups), normed, normed, need_weights=False)
        return groups + attended

    def assignment_logits(self, groups: Tensor, tokens: Tensor) -> Tensor:
        """Patch–group logits ``[B, N, K]``: scaled dot products of projected tokens and groups."""
        keys = self.assign_key(self.token_norm(tokens))
        queries = self.assign_query(self.group_norm(groups))
        return keys @ queries.transpose(1, 2) / keys.shape[-1] ** 0.5


@dataclass
class Grouping:
    """What the hierarchy produced: the final ``groups`` ``[B, 2, D]`` (normal, abnormal), the final
    ``assignment`` ``[B, N, 2]`` of patches to them, and each level's assignment ``[B, N, K_level]``
    (before that level's merge)."""

    groups: Tensor
    assignment: Tensor
    level_assignments: list[Tensor]

    @property
    def normal(self) -> Tensor:
        return self.groups[:, 0]

    @property
    def abnormal(self) -> Tensor:
        return self.groups[:, 1]


class HierarchicalGroupMerging(nn.Module):
    """Learnable queries grouped and merged over ``len(counts)`` levels down to two group tokens."""

    def __init__(self, dim: int, counts: tuple[int, ...], heads: int, tau: float, hard: bool,
                 query_init_std: float) -> None:
        super().__init__()
        check_merge_schedule(counts)
        if tau <= 0:
            raise ConfigError(f"the Gumbel temperature must be positive; got {tau}")
        self.counts = tuple(counts)
        self.tau = tau
        self.hard = hard
        self.queries = nn.Parameter(query_init_std * torch.randn(counts[0], dim))
        self.levels = nn.ModuleList(GroupingLevel(dim, heads) for _ in counts)

    def forward(self, level_tokens: list[Tensor]) -> Grouping:
        """Group the patch tokens ``[B, N, D]`` that each level reads (one tensor per level)."""
        if len(level_tokens) != len(self.levels):
            raise ValueError(f"{len(self.levels)} levels need as many token tensors; got {len(level_tokens)}")
        groups = self.queries.to(level_tokens[0].dtype).expand(level_tokens[0].shape[0], -1, -1)
        next_counts = [*self.counts[1:], None]
        assignments = []
        for level, tokens, next_count in zip(self.levels, level_tokens, next_counts):
            groups = level.initialise(groups, tokens)
            assignment = gumbel_assignment(level.assignment_logits(groups, tokens), self.tau, self.hard,
                                           sample=self.training)
            assignments.append(assignment)
            groups, _ = member_means(tokens, assignment)
            if next_count is not None:
                groups, assignment = merge_groups(groups, assignment, next_count)
        return Grouping(groups, assignment, assignments)
