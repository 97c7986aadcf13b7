"""Segmentation and classification losses shared by the mask-supervised methods (METHODS.md §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def focal_loss(probs: Tensor, target: Tensor, gamma: float = 2.0, eps: float = 1e-6) -> Tensor:
    """Focal loss on per-class probabilities.

    ``probs`` ``[B, K, H, W]`` sum to one over K; ``target`` ``[B, H, W]`` holds class indices
    (0 normal, 1 anomalous). Mean of ``-(1 - p_t)^gamma * log p_t`` over pixels.
    """
    p_t = probs.gather(1, target.long().unsqueeze(1)).squeeze(1).clamp(eps, 1.0)
    return (-((1 - p_t) ** gamma) * p_t.log()).mean()


def dice_loss(prob: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice loss ``1 - (2|P∩T| + eps) / (|P| + |T| + eps)`` per image, averaged over the batch.

    ``prob`` and ``target`` are ``[B, H, W]``; apply it to the anomalous channel with the mask, and to
    the normal channel with ``1 - mask``.
    """
    prob = prob.flatten(1)
    target = target.flatten(1).to(prob.dtype)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()


def segmentation_losses(probs: Tensor, mask: Tensor, normal_dice: bool = True) -> dict[str, Tensor]:
    """``focal``, ``dice_anomaly`` [and ``dice_normal``] of two-channel probabilities ``[B, 2, H, W]``
    (normal, anomalous) against a binary mask ``[B, H, W]``, so methods can log each part."""
    parts = {"focal": focal_loss(probs, mask), "dice_anomaly": dice_loss(probs[:, 1], mask)}
    if normal_dice:
        parts["dice_normal"] = dice_loss(probs[:, 0], 1 - mask)
    return parts


def segmentation_loss(probs: Tensor, mask: Tensor, normal_dice: bool = True) -> Tensor:
    """Focal + Dice(anomalous) [+ Dice(normal)] for two-channel probabilities ``[B, 2, H, W]``."""
    return sum(segmentation_losses(probs, mask, normal_dice).values())


def anchor_logits(embeddings: Tensor, anchors: Tensor, scale: float = 100.0) -> Tensor:
    """``scale * cos`` between embeddings ``[..., D]`` and anchors ``[K, D]`` (or per-sample ``[B, K, D]``)."""
    embeddings = F.normalize(embeddings, dim=-1)
    anchors = F.normalize(anchors, dim=-1)
    if anchors.dim() == 3:
        return scale * torch.einsum("b...d,bkd->b...k", embeddings, anchors)
    return scale * embeddings @ anchors.t()


def anomalous_probability(embeddings: Tensor, anchors: Tensor, scale: float = 100.0) -> Tensor:
    """``softmax(scale · cos(e, (normal, anomalous)))[anomalous]`` of embeddings ``[..., D]``: CLIP's
    zero-shot anomaly probability, ``[...]``."""
    return anchor_logits(embeddings, anchors, scale).softmax(-1)[..., 1]


def image_cross_entropy(embedding: Tensor, anchors: Tensor, labels: Tensor, scale: float = 100.0) -> Tensor:
    """Cross-entropy of global embeddings ``[B, D]`` against normal/anomalous anchors (logit scale 100)."""
    return F.cross_entropy(anchor_logits(embedding, anchors, scale), labels.long())
