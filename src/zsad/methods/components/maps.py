"""Turning patch scores into anomaly maps: patch–anchor maps, upsampling, Gaussian smoothing."""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from zsad.errors import ConfigError
from zsad.methods.components.losses import anchor_logits


def tokens_to_grid(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, N, C]`` row-major tokens to ``[B, C, h, w]``."""
    b, n, c = tokens.shape
    h, w = grid
    return tokens.transpose(1, 2).reshape(b, c, h, w)


def grid_to_tokens(x: Tensor) -> Tensor:
    """``[B, C, h, w]`` to ``[B, h*w, C]``."""
    return x.flatten(2).transpose(1, 2)


def neighbourhood_mean(tokens: Tensor, grid: tuple[int, int], size: int) -> Tensor:
    """Tokens ``[B, N, C]`` averaged over each ``size × size`` neighbourhood on the patch grid (odd
    ``size``, stride 1), so a pooled token describes a region. Zero padding counts in the mean, as in the
    reference codes (DictAS, MoECLIP), so border tokens are damped towards zero; ``size = 1`` returns
    the tokens themselves."""
    if size == 1:
        return tokens
    if size < 1 or size % 2 == 0:
        raise ConfigError(f"neighbourhood sizes must be odd and positive, got {size}")
    pooled = F.avg_pool2d(tokens_to_grid(tokens, grid), size, stride=1, padding=size // 2, count_include_pad=True)
    return grid_to_tokens(pooled)


def mask_fractions(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """Fraction of each patch's pixels inside the mask, ``[B, h * w]`` from masks ``[B, H, W]``: the one
    way pixel masks become patch labels (threshold it for hard labels)."""
    return F.adaptive_avg_pool2d(masks.float().unsqueeze(1), grid).flatten(1)


def minmax(values: Tensor) -> Tensor:
    """``values`` rescaled to [0, 1] over all their elements; all zeros when every value is equal.

    Over a category's test set this is the reference codes' transductive score normalisation, so
    methods use it only behind a named ``test_minmax`` option."""
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else torch.zeros_like(values)


def anchor_map(probs: Tensor) -> Tensor:
    """The two-anchor anomaly map ``(p_a + 1 - p_n) / 2`` from ``[..., 2]`` (normal, anomalous)."""
    return (probs[..., 1] + 1 - probs[..., 0]) / 2


def anchor_probabilities(tokens: Tensor, anchors: Tensor, grid: tuple[int, int], size: tuple[int, int] | int,
                         scale: float = 100.0, softmax_first: bool = False, align_corners: bool = False) -> Tensor:
    """Per-pixel (normal, anomalous) probabilities ``[B, 2, H, W]`` of patch tokens ``[B, N, D]`` against
    two anchors ``[2, D]`` (or per-image ``[B, 2, D]``), at ``size``, from ``scale * cos`` logits.

    Methods differ in where the softmax goes: APRIL-GAN and MoECLIP upsample the logits and take the
    softmax per pixel (``softmax_first=False``); AnomalyCLIP and SPG take it on the patch grid and
    upsample the probabilities (``softmax_first=True``).
    """
    logits = tokens_to_grid(anchor_logits(tokens, anchors, scale), grid)
    if softmax_first:
        return upsample(logits.softmax(1), size, align_corners)
    return upsample(logits, size, align_corners).softmax(1)


def upsample(maps: Tensor, size: tuple[int, int] | int, align_corners: bool = False) -> Tensor:
    """Bilinear upsampling of ``[B, h, w]`` or ``[B, K, h, w]`` maps to ``size``.

    ``align_corners=False`` treats patches as areas (a patch's value sits at its centre); the reference
    codes use ``True`` (the corner patches' values sit on the image corners), which shifts maps by up to
    half a patch — a protocol option (``MethodConfig.align_corners``), not a default."""
    size = (size, size) if isinstance(size, int) else size
    squeeze = maps.dim() == 3
    x = maps.unsqueeze(1) if squeeze else maps
    x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=align_corners)
    return x.squeeze(1) if squeeze else x


@functools.lru_cache(maxsize=32)
def _gaussian_kernel(sigma: float, radius: int) -> Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


BorderMode = Literal["mirror", "reflect"]


def gaussian_blur(maps: Tensor, sigma: float, truncate: float = 4.0, mode: BorderMode = "mirror") -> Tensor:
    """Separable Gaussian smoothing of ``[B, H, W]`` maps with ``scipy.ndimage.gaussian_filter``'s kernel
    (``radius = int(truncate * sigma + 0.5)``) and border, named as scipy names them:

    * ``"mirror"`` (the default here): reflection about the edge pixel, which is not repeated
      (``d c b | a b c d``; torch's ``reflect`` padding);
    * ``"reflect"`` (scipy's default, what the reference codes' ``gaussian_filter`` calls use): reflection
      about the edge, which repeats the edge pixel (``c b a | a b c``).
    """
    if sigma <= 0:
        return maps
    radius = int(truncate * sigma + 0.5)
    h, w = maps.shape[-2:]
    radius = min(radius, h - 1, w - 1) if mode == "mirror" else min(radius, h, w)
    kernel = _gaussian_kernel(float(sigma), radius).to(maps.device, torch.float32)
    x = maps.float().unsqueeze(1)
    x = F.conv2d(_pad(x, radius, -1, mode), kernel.view(1, 1, 1, -1))
    x = F.conv2d(_pad(x, radius, -2, mode), kernel.view(1, 1, -1, 1))
    return x.squeeze(1).to(maps.dtype)


def _pad(x: Tensor, radius: int, dim: int, mode: BorderMode) -> Tensor:
    """``radius`` symmetric border values on both ends of ``dim`` (see :func:`gaussian_blur`)."""
    if mode == "mirror":
        pad = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
        return F.pad(x, pad, mode="reflect")
    if mode != "reflect":
        raise ConfigError(f"blur border mode must be 'mirror' or 'reflect', got {mode!r}")
    n = x.shape[dim]
    before = x.narrow(dim, 0, radius).flip(dim)
    after = x.narrow(dim, n - radius, radius).flip(dim)
    return torch.cat([before, x, after], dim)


def sigma_for(size: int, sigma_at_reference: float, reference_size: int) -> float:
    """Scale a smoothing width given at one input size to another (σ = 4 at 518 px -> σ at ``size``)."""
    return sigma_at_reference * size / reference_size


def harmonic_mean(values: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    return values.shape[dim] / (1.0 / values.clamp_min(eps)).sum(dim)


def min_cosine_distance(queries: Tensor, bank: Tensor, chunk: int = 4096) -> Tensor:
    """For each query ``[M, C]``, ``min(1 - cos)`` to the rows of ``bank`` ``[R, C]``, in chunks of the bank
    so memory stays ``M × chunk`` however many references there are."""
    q = F.normalize(queries.float(), dim=-1)
    best = torch.full((q.shape[0],), math.inf, device=q.device)
    for start in range(0, bank.shape[0], chunk):
        b = F.normalize(bank[start : start + chunk].float(), dim=-1)
        best = torch.minimum(best, 1 - (q @ b.t()).amax(1))
    return best
