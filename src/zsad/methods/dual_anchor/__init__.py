"""Dual-Anchor: hierarchical group merging image anchors beside dynamic text anchors; see :mod:`.method`."""

from zsad.methods.dual_anchor.grouping import HierarchicalGroupMerging, bipartite_merge_matrix, merge_groups
from zsad.methods.dual_anchor.method import DualAnchor, DualAnchorConfig
from zsad.methods.dual_anchor.prompts import DynamicStatePrompts
from zsad.methods.dual_anchor.refiner import GroupGatedRefiner

__all__ = ["DualAnchor", "DualAnchorConfig", "DynamicStatePrompts", "GroupGatedRefiner", "HierarchicalGroupMerging",
           "bipartite_merge_matrix", "merge_groups"]
