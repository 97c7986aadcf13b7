"""Building a ready-to-use method from a name (training-free or untrained) or from a checkpoint folder.

The backbone is never stored in a checkpoint: it is rebuilt from the config's backbone name and the
user's ``--weights``, and only the method's own tensors are loaded on top.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch

from zsad.backbones import build_backbone, get_spec
from zsad.config import check_range, from_dict, with_overrides
from zsad.engine.checkpoint import WEIGHTS, load_tensors, read_config
from zsad.errors import ConfigError
from zsad.methods.base import Method, method_class


def method_config(name: str, base: dict[str, Any] | None = None, backbone: str | None = None,
                  image_size: int | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The typed config of method ``name``: defaults (or ``base``), then CLI flags, then ``key=value``s."""
    cls = method_class(name)
    config = from_dict(cls.Config, base) if base is not None else cls.Config()
    flags: dict[str, Any] = {}
    if backbone:
        flags["backbone"] = backbone
    if image_size:
        flags["image_size"] = image_size
    config = with_overrides(with_overrides(config, flags), list(overrides))
    return fit_image_size(config, explicit=bool(image_size) or any(o.startswith("image_size=") for o in overrides))


def fit_image_size(config: Any, explicit: bool) -> Any:
    """Input sides must be multiples of the backbone's patch. A default that is not (518 px on a patch-16
    backbone) becomes the nearest multiple, said in one line; a size the user gave is an error naming it."""
    check_range("image_size", config.image_size, 1)
    patch = get_spec(config.backbone).patch_size
    if config.image_size % patch == 0:
        return config
    nearest = max(patch, round(config.image_size / patch) * patch)
    if explicit:
        raise ConfigError(f"image size {config.image_size} is not a multiple of {config.backbone}'s patch size "
                          f"{patch}; the nearest valid size is {nearest}")
    _note(f"note: {config.backbone} needs multiples of {patch} px; using image size {nearest} instead of the "
          f"method's default {config.image_size}")
    return with_overrides(config, {"image_size": nearest})


@functools.cache
def _note(text: str) -> None:
    """One line on the ``zsad`` logger (stderr by default), once per process however often it applies."""
    logging.getLogger("zsad").warning(text)


def build_method(name: str | None = None, *, checkpoint: str | Path | None = None, backbone: str | None = None,
                 weights: str | None = None, image_size: int | None = None,
                 overrides: list[str] | tuple[str, ...] = (), device: torch.device | None = None,
                 partial: bool = False) -> Method:
    """A method on ``device``, from a checkpoint (its saved config, then overrides) or from defaults.

    ``partial`` loads whatever tensors the checkpoint has and leaves the rest freshly initialised: how a
    later training stage starts from an earlier one (e.g. SPG's guides from its sparse autoencoder);
    ``method.load_report`` then says which tensors kept their fresh values.
    """
    device = device or torch.device("cpu")
    saved = read_config(checkpoint) if checkpoint else None
    base, tensors = None, None
    if saved:
        if name and name != saved["method"]:
            raise ConfigError(f"{checkpoint}: checkpoint is for method {saved['method']!r}, not {name!r}")
        name = saved["method"]
        tensors = load_tensors(Path(checkpoint) / WEIGHTS, device)
        base, tensors = method_class(name).upgrade_checkpoint(saved["config"], tensors, saved["method_version"])
    if not name:
        raise ConfigError("give --method NAME or --checkpoint DIR")
    config = method_config(name, base, backbone, image_size, overrides)
    extractor = build_backbone(config.backbone, weights=weights, device=device)
    method = method_class(name)(extractor, config).to(device)
    if tensors is not None:
        try:
            method.load_report = method.load_method_state_dict(tensors, partial=partial)
        except ConfigError as err:
            raise ConfigError(f"{checkpoint}: {err}") from None
        if method.load_report.refitted and not partial:
            _note(f"note: {checkpoint}: {len(method.load_report.refitted)} training-only tensor(s) do not fit "
                  f"this config and were left fresh; inference does not read them")
    method.eval()
    return method
