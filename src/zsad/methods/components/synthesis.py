"""DRAEM-style pseudo-anomalies for training on normal images only.

A Perlin-noise field, thresholded, marks where the anomaly goes; inside it the image is blended with an
*anomaly source* (a texture image, or a colour-jittered, flipped and patch-shuffled copy of the image
itself when no texture folder is given). Everything runs in torch on the image's device; randomness
comes only from the ``torch.Generator`` passed in, so a run is reproducible from its seed. Random
numbers are drawn on the generator's device and moved, so a CPU generator gives the same anomalies on
every device.

Reference: Zavrtanik et al., "DRAEM", ICCV 2021, and its public code (Perlin scale ``2^u`` per axis,
noise rotated by up to 90 degrees, threshold 0.5, blend weight ``beta ~ U[0, 0.8)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from zsad.errors import ConfigError


def batch_generator() -> torch.Generator:
    """A CPU generator seeded from torch's global RNG, so the trainer's per-epoch seed fixes every draw."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))


def _rand(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(_rand(generator, 1))


def perlin_noise(shape: tuple[int, int], scale: tuple[int, int], generator: torch.Generator) -> Tensor:
    """2-D gradient (Perlin) noise of ``shape`` with ``scale`` lattice cells per axis, values in ``[-1, 1]``.

    Returned on the generator's device. As in DRAEM the classic noise is multiplied by sqrt(2) so its
    range is ``[-1, 1]``, which is what the usual 0.5 threshold is calibrated for. ``shape`` need not be
    a multiple of ``scale``.
    """
    (height, width), (rows, cols) = shape, scale
    if min(height, width, rows, cols) < 1:
        raise ConfigError(f"perlin noise needs positive shape and scale, got shape {shape} and scale {scale}")
    device = generator.device
    angles = 2 * math.pi * _rand(generator, rows + 1, cols + 1)
    gradients = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)  # [rows+1, cols+1, (y, x)]

    y = torch.arange(height, device=device, dtype=torch.float32) * (rows / height)
    x = torch.arange(width, device=device, dtype=torch.float32) * (cols / width)
    iy, ix = y.floor().long(), x.floor().long()
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]

    def corner(dy: int, dx: int) -> Tensor:
        # two index_selects, not one broadcast advanced index: the latter is ~1000x slower on busy CPUs
        g = gradients.index_select(0, iy + dy).index_select(1, ix + dx)
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: Tensor) -> Tensor:
        return t * t * t * (t * (t * 6 - 15) + 10)

    wy, wx = fade(fy), fade(fx)
    top = torch.lerp(corner(0, 0), corner(0, 1), wx)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), wx)
    return math.sqrt(2) * torch.lerp(top, bottom, wy)


def _rotate(field: Tensor, degrees: float) -> Tensor:
    """Rotate ``[H, W]`` about its centre (bilinear), filling the corners with 0 as imgaug's Affine does.

    Written with ``torch.take`` rather than ``grid_sample``, which is orders of magnitude slower on a
    busy multi-threaded CPU for the small fields used here.
    """
    height, width = field.shape
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    y = torch.arange(height, device=field.device, dtype=field.dtype)[:, None] - (height - 1) / 2
    x = torch.arange(width, device=field.device, dtype=field.dtype)[None, :] - (width - 1) / 2
    sx, sy = c * x + s * y + (width - 1) / 2, c * y - s * x + (height - 1) / 2
    x0, y0 = sx.floor(), sy.floor()

    def at(row: Tensor, col: Tensor) -> Tensor:
        inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
        index = (row.clamp(0, height - 1) * width + col.clamp(0, width - 1)).long()
        return torch.take(field, index) * inside

    top = torch.lerp(at(y0, x0), at(y0, x0 + 1), sx - x0)
    bottom = torch.lerp(at(y0 + 1, x0), at(y0 + 1, x0 + 1), sx - x0)
    return torch.lerp(top, bottom, sy - y0)


def perlin_mask(
    size: tuple[int, int],
    generator: torch.Generator,
    min_scale_exp: int = 0,
    max_scale_exp: int = 6,
    threshold: float = 0.5,
    rotate90: bool = True,
) -> Tensor:
    """A ``{0, 1}`` float mask ``[H, W]`` of blob-shaped regions, on the generator's device.

    The scale per axis is ``2^u`` with ``u`` drawn from ``[min_scale_exp, max_scale_exp)``; with
    ``rotate90`` the noise is first rotated by an angle drawn from ``[-90, 90]`` degrees. The mask may be
    empty: callers label such samples normal.
    """
    if not 0 <= min_scale_exp < max_scale_exp:
        raise ConfigError(f"perlin scale exponents need 0 <= min < max, got [{min_scale_exp}, {max_scale_exp})")
    exponents = torch.randint(min_scale_exp, max_scale_exp, (2,), generator=generator, device=generator.device)
    noise = perlin_noise(size, (2 ** int(exponents[0]), 2 ** int(exponents[1])), generator)
    if rotate90:
        noise = _rotate(noise, _uniform(generator, -90.0, 90.0))
    return (noise > threshold).float()


def draem_synthesize(
    image: Tensor,
    source: Tensor,
    generator: torch.Generator,
    beta_max: float = 0.8,
    foreground: Tensor | None = None,
    min_scale_exp: int = 0,
    max_scale_exp: int = 6,
) -> tuple[Tensor, Tensor, int]:
    """Paste ``source`` into ``image`` (both ``[3, H, W]`` in ``[0, 1]``) inside a Perlin mask.

    Inside the mask the result is ``beta * image + (1 - beta) * source`` with ``beta ~ U[0, beta_max)``:
    ``beta`` is the share of the original that shows through, as in DRAEM's code, so the anomaly is
    always at least ``1 - beta_max`` opaque. Outside the mask the image is returned unchanged, bit for
    bit. ``foreground`` (``[H, W]``, non-zero on the object) restricts the mask to the object.

    Returns the image, the mask ``[H, W]`` in ``{0, 1}`` on the image's device and dtype, and the label:
    1 if the mask is non-empty, else 0.
    """
    if image.dim() != 3 or image.shape != source.shape:
        raise ValueError(f"image and source must both be [3, H, W], got {tuple(image.shape)} and {tuple(source.shape)}")
    height, width = image.shape[-2:]
    mask = perlin_mask((height, width), generator, min_scale_exp, max_scale_exp).to(image.device)
    if foreground is not None:
        mask = mask * (foreground.to(image.device) != 0)
    beta = _uniform(generator, 0.0, beta_max)
    blended = beta * image + (1 - beta) * source.to(image.device, image.dtype)
    result = torch.where(mask.bool(), blended, image)
    return result, mask.to(image.dtype), int(mask.any())


def _gamma(x: Tensor, g: torch.Generator) -> Tensor:
    return x.clamp(min=0) ** _uniform(g, 0.5, 2.0)


def _brightness(x: Tensor, g: torch.Generator) -> Tensor:
    return x * _uniform(g, 0.8, 1.2) + _uniform(g, -30 / 255, 30 / 255)


def _hue_saturation(x: Tensor, g: torch.Generator) -> Tensor:
    """Rotate the chroma plane of YIQ (a hue shift) and scale it (saturation)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    angle, saturation = math.radians(_uniform(g, -50.0, 50.0)), _uniform(g, 0.5, 1.5)
    c, s = math.cos(angle) * saturation, math.sin(angle) * saturation
    chroma = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    matrix = (torch.linalg.inv(to_yiq) @ chroma @ to_yiq).to(x.device, x.dtype)
    return torch.einsum("ij,jhw->ihw", matrix, x)


def _solarize(x: Tensor, g: torch.Generator) -> Tensor:
    threshold = _uniform(g, 32 / 255, 128 / 255)
    return torch.where(x >= threshold, 1 - x, x)


def _posterize(x: Tensor, g: torch.Generator) -> Tensor:
    levels = 2 ** int(torch.randint(4, 9, (1,), generator=g, device=g.device))
    return torch.floor(x.clamp(0, 1) * (levels - 1) + 0.5) / (levels - 1)


def _invert(x: Tensor, g: torch.Generator) -> Tensor:
    return 1 - x


def _autocontrast(x: Tensor, g: torch.Generator) -> Tensor:
    low = x.amin(dim=(1, 2), keepdim=True)
    high = x.amax(dim=(1, 2), keepdim=True)
    return (x - low) / (high - low).clamp(min=1e-6)


_COLOUR_OPS: tuple[Callable[[Tensor, torch.Generator], Tensor], ...] = (
    _gamma,
    _brightness,
    _hue_saturation,
    _solarize,
    _posterize,
    _invert,
    _autocontrast,
)


def _shuffle_patches(x: Tensor, grid: int, g: torch.Generator) -> Tensor:
    """Cut the image into ``grid x grid`` patches and permute them (a remainder border stays put)."""
    channels, height, width = x.shape
    ph, pw = height // grid, width // grid
    if ph == 0 or pw == 0:
        return x
    core = x[:, : ph * grid, : pw * grid]
    patches = core.reshape(channels, grid, ph, grid, pw).permute(1, 3, 0, 2, 4).reshape(grid * grid, channels, ph, pw)
    order = torch.randperm(grid * grid, generator=g, device=g.device).to(x.device)
    shuffled = patches.index_select(0, order).reshape(grid, grid, channels, ph, pw)
    core = shuffled.permute(2, 0, 3, 1, 4).reshape(channels, grid * ph, grid * pw)
    out = x.clone()
    out[:, : ph * grid, : pw * grid] = core
    return out


def augment_source(image: Tensor, generator: torch.Generator) -> Tensor:
    """An anomaly source made from ``image`` (``[3, H, W]`` in ``[0, 1]``) when no texture images exist.

    Three distinct colour operations drawn from DRAEM's list (gamma, brightness, hue/saturation,
    solarize, posterize, invert, autocontrast), a random rotation by a multiple of 90 degrees (180 only
    for non-square images) and flips, then the image cut into 2x2, 4x4 or 8x8 patches and shuffled, so
    the source keeps the image's materials but not its structure.
    """
    x = image
    for index in torch.randperm(len(_COLOUR_OPS), generator=generator, device=generator.device)[:3].tolist():
        x = _COLOUR_OPS[index](x, generator)
    flips = _rand(generator, 3)
    turns = int(flips[0] * 4) if x.shape[1] == x.shape[2] else 2 * int(flips[0] * 2)
    x = torch.rot90(x, turns, dims=(1, 2))
    if flips[1] < 0.5:
        x = x.flip(2)
    if flips[2] < 0.5:
        x = x.flip(1)
    grid = (2, 4, 8)[int(torch.randint(0, 3, (1,), generator=generator, device=generator.device))]
    return _shuffle_patches(x, grid, generator).clamp(0, 1).to(image.dtype)


def synthesize_batch(
    images: Tensor,
    generator: torch.Generator,
    probability: float = 0.3,
    sources: Tensor | None = None,
    foregrounds: Tensor | None = None,
    beta_max: float = 0.8,
    min_scale_exp: int = 0,
    max_scale_exp: int = 6,
) -> tuple[Tensor, Tensor, Tensor]:
    """Turn each image of ``[B, 3, H, W]`` into a pseudo-anomaly with ``probability``.

    ``sources`` (``[B, 3, H, W]``) are the anomaly textures, else :func:`augment_source` of each image;
    ``foregrounds`` (``[B, H, W]``) restrict masks to objects. Returns images, masks ``[B, H, W]`` and
    labels ``[B]`` (long), all on the images' device.
    """
    out, masks, labels = images.clone(), images.new_zeros(images.shape[0], *images.shape[-2:]), []
    chosen = _rand(generator, images.shape[0]) < probability
    for i, synthesize in enumerate(chosen.tolist()):
        label = 0
        if synthesize:
            source = sources[i] if sources is not None else augment_source(images[i], generator)
            foreground = foregrounds[i] if foregrounds is not None else None
            out[i], masks[i], label = draem_synthesize(
                images[i], source, generator, beta_max, foreground, min_scale_exp, max_scale_exp
            )
        labels.append(label)
    return out, masks, torch.tensor(labels, dtype=torch.long, device=images.device)
