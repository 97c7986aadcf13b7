"""The method protocol and registry.

A method owns its math: given a frozen :class:`~zsad.backbones.base.FeatureExtractor` and a typed
config it builds its (possibly empty) set of trainable parameters, computes its training losses, builds
per-category state (text anchors, reference dictionaries) once in :meth:`Method.prepare`, and predicts
anomaly maps at input resolution. The engine owns loops, devices, seeds, precision and checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from zsad.backbones.base import FeatureExtractor
from zsad.data.types import Batch
from zsad.errors import ConfigError
from zsad.methods.components.maps import BorderMode, anchor_probabilities, gaussian_blur, sigma_for, upsample


@dataclass
class MethodConfig:
    """Fields every method has; subclasses add their hyperparameters."""

    backbone: str = "clip-vit-l14-336"
    image_size: int = 336
    layers: tuple[int, ...] | None = None  # None: the method's default blocks (Method.default_layers)
    # How patch maps become pixel maps (protocol options; the reference codes use True and "reflect")
    align_corners: bool = False  # bilinear upsampling with corner patches on the image corners
    blur_mode: BorderMode = "mirror"  # Gaussian border, named as scipy names it (see maps.gaussian_blur)


@dataclass
class Prediction:
    """Per image: anomaly map ``[B, H, W]`` at input resolution and image score ``[B]``; ``score_parts`` are
    optional per-image score components ``[B]`` for :meth:`Method.category_scores`."""

    anomaly_map: Tensor
    score: Tensor
    score_parts: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadReport:
    """What a (partial) checkpoint load did: tensors left at their fresh initial values, and checkpoint
    tensors the method has no place for."""

    loaded: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    refitted: tuple[str, ...] = ()  # training-only tensors whose saved shape no longer fits the config

    def __str__(self) -> str:
        text = f"{self.loaded} tensors loaded"
        if self.refitted:
            text += (f"; {len(self.refitted)} training-only tensor(s) sized for another config, freshly "
                     f"initialised (inference does not read them): {_names(self.refitted)}")
        if self.missing:
            text += f"; {len(self.missing)} not in the checkpoint, freshly initialised: {_names(self.missing)}"
        if self.unexpected:
            text += f"; {len(self.unexpected)} in the checkpoint but unused: {_names(self.unexpected)}"
        return text


def _names(keys: tuple[str, ...], shown: int = 5) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


class Method(nn.Module):
    """Base class of every anomaly detection method."""

    name: ClassVar[str]
    zero_shot: ClassVar[bool] = False
    few_shot: ClassVar[bool] = False
    trainable: ClassVar[bool] = False
    needs_text: ClassVar[bool] = False  # compares images with CLIP text: refuses backbones without a text tower
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    summary: ClassVar[str] = ""
    # Training defaults from the method's paper (fields of zsad.engine.train.TrainConfig); read them
    # through train_defaults_for(config), the one path that knows about stages.
    train_defaults: ClassVar[dict[str, object]] = {}
    # Prefixes of tensors that only training_loss reads (heads of auxiliary losses): a checkpoint whose copies
    # no longer fit the config (other layers, say) still loads for inference, with those left fresh.
    training_only: ClassVar[tuple[str, ...]] = ()
    # Training stages in order, each a value of the config's ``stage`` field (SPG: its autoencoder, then its
    # guides); empty for a method that trains in one stage. The training assembly chains them.
    stages: ClassVar[tuple[str, ...]] = ()
    # The input width in pixels at which the paper states its smoothing sigma; maps of another width scale it
    # in proportion (see smooth). None: sigma is in pixels of the map itself.
    sigma_reference_size: ClassVar[int | None] = None
    # Version of the config fields and tensor names in checkpoints; bump it with an upgrade_checkpoint step.
    config_version: ClassVar[int] = 1
    load_report: LoadReport | None = None  # set when built from a checkpoint (zsad.engine.build)

    def __init__(self, backbone: FeatureExtractor, config: MethodConfig) -> None:
        super().__init__()
        if self.needs_text and backbone.text is None:
            raise ConfigError(f"{self.name} compares images with text and needs a CLIP backbone; {backbone.name!r} "
                              f"has no text tower")
        self.backbone = backbone
        self.config = config
        for p in backbone.parameters():
            p.requires_grad_(False)

    @classmethod
    def train_defaults_for(cls, config: MethodConfig) -> dict[str, object]:
        """Training defaults for ``config``: :attr:`train_defaults`, unless a method's stages train differently."""
        return cls.train_defaults

    @property
    def default_layers(self) -> tuple[int, ...]:
        """The blocks read when ``config.layers`` is None: the backbone's four evenly spaced ones, unless
        a method's paper reads others (the last block alone, say)."""
        return self.backbone.default_layers

    @property
    def layers(self) -> tuple[int, ...]:
        """The blocks this method reads: ``config.layers``, or :attr:`default_layers` when it is None."""
        return tuple(self.config.layers) if self.config.layers else self.default_layers

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def training_loss(self, batch: Batch, features: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """``{"loss": total, <part>: value, ...}`` for one batch; trainable methods only.

        ``features`` is what :meth:`frozen_features` returned for these images, read from the feature cache;
        when None, the method computes them from ``batch.images``.
        """
        raise ConfigError(f"method {self.name!r} has nothing to train")

    def frozen_features(self, images: Tensor) -> dict[str, Tensor] | None:
        """Backbone outputs that training never changes, ``{name: [B, ...]}``, so the trainer may cache them.

        Return None (the default) when training needs live images: augmentation, synthesis, or trainable
        parts inside the vision tower.
        """
        return None

    @property
    def trains_on_frozen_features(self) -> bool:
        """Whether training reads only :meth:`frozen_features`, so the trainer may cache them."""
        return type(self).frozen_features is not Method.frozen_features

    def frozen_features_key(self) -> str:
        """Anything besides backbone, weights, size and layers that changes :meth:`frozen_features`."""
        return ""

    def before_training(self, data: Iterable[tuple[Batch, dict[str, Tensor] | None]]) -> None:
        """Called once before the first epoch with one pass over the training data, ``(batch, cached
        frozen features or None)``, for statistics a stage needs from the start (SPG's dead-atom mask).
        The default reads nothing."""

    def after_optimizer_step(self) -> None:
        """Called after every optimizer step (e.g. to renormalise a dictionary or update an EMA)."""

    def prepare(self, class_name: str, references: Tensor | None) -> None:
        """Build per-category state; ``references`` are k normal images ``[k, 3, H, W]`` in [0, 1] or None."""
        raise NotImplementedError

    def prepare_in_batches(self, class_name: str, batches: Iterable[Tensor], count: int) -> None:
        """:meth:`prepare` for references too many to hold as one float tensor (the tiles of large images),
        arriving as ``batches`` in order, ``count`` in all. Methods whose state grows reference by reference
        (a patch memory) override it to keep only what they need; the default gathers them."""
        gathered = list(batches)
        self.prepare(class_name, (gathered[0] if len(gathered) == 1 else torch.cat(gathered)) if gathered else None)

    # Methods whose per-category state is a join of what each reference contributes (a patch memory) set
    # ``composes_references``: leave-one-out calibration then computes each reference's part once and joins
    # the others' parts per left-out reference, instead of preparing k times on k - 1 references.
    composes_references: ClassVar[bool] = False

    def reference_part(self, batches: Iterable[Tensor], count: int, share: float) -> Any:
        """What one reference (``count`` pieces arriving as ``batches``) contributes, holding ``share`` of any
        memory budget."""
        raise NotImplementedError

    def prepare_from_parts(self, class_name: str, parts: list[Any]) -> None:
        """:meth:`prepare` from the parts of the references to use (none: zero-shot where supported)."""
        raise NotImplementedError

    def predict(self, images: Tensor) -> Prediction:
        raise NotImplementedError

    def category_scores(self, scores: Tensor, parts: dict[str, Tensor]) -> Tensor:
        """Final image scores of one category's whole test set from its per-image ``scores`` and
        ``Prediction.score_parts``. Identity unless a method offers a benchmark-mode (transductive)
        normalisation over the test set, which must be a named, non-default option."""
        return scores

    @classmethod
    def upgrade_checkpoint(cls, config: dict[str, Any], tensors: dict[str, Tensor],
                           version: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """A checkpoint's config fields and tensors written at ``version`` in today's form. Methods that
        rename or resize something bump :attr:`config_version` and convert older versions here."""
        if version > cls.config_version:
            raise ConfigError(f"checkpoint of {cls.name!r} has config version {version}, newer than this zsad's "
                              f"{cls.config_version}: upgrade zsad to read it")
        return config, tensors

    def method_state_dict(self) -> dict[str, Tensor]:
        """The method's own tensors (parameters and buffers), without the frozen backbone's."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_method_state_dict(self, state: dict[str, Tensor], partial: bool = False) -> LoadReport:
        """Load the method's tensors; ``partial`` allows a subset (initialising from an earlier stage) and
        the returned report says which tensors kept their fresh values. Shapes must match exactly."""
        own = self.method_state_dict()
        refitted = tuple(sorted(k for k in set(own) & set(state)
                                if own[k].shape != state[k].shape and k.startswith(self.training_only or ("\0",))))
        state = {k: v for k, v in state.items() if k not in refitted}
        missing = tuple(sorted(set(own) - set(state) - set(refitted)))
        unexpected = tuple(sorted(set(state) - set(own)))
        for key in sorted(set(own) & set(state)):
            if own[key].shape != state[key].shape:
                raise ConfigError(self._shape_mismatch(key, tuple(state[key].shape), tuple(own[key].shape)))
        fits = not missing and not unexpected
        if not fits and not (partial and not unexpected and len(missing) < len(own)):
            raise ConfigError(f"checkpoint does not fit method {self.name!r}: missing {_names(missing) or 'none'}; "
                              f"unexpected {_names(unexpected) or 'none'}")
        self.load_state_dict(state, strict=False)
        return LoadReport(len(own) - len(missing) - len(refitted), missing, unexpected, refitted)

    def _shape_mismatch(self, key: str, saved: tuple[int, ...], built: tuple[int, ...]) -> str:
        """One line naming the tensor, both shapes and the config fields whose values size it."""
        sizes = set(built) - set(saved)
        suspects = [f"{f.name}={getattr(self.config, f.name)}" for f in fields(self.config)
                    if isinstance(getattr(self.config, f.name), int) and getattr(self.config, f.name) in sizes]
        hint = f"; likely changed: {', '.join(suspects)}" if suspects else "; a size field of the config changed"
        return (f"checkpoint tensor {key!r} has shape {list(saved)} but method {self.name!r} with this config "
                f"builds {list(built)}{hint}")

    def upsample(self, maps: Tensor, size: tuple[int, int] | int) -> Tensor:
        """:func:`~zsad.methods.components.maps.upsample` with the config's ``align_corners``."""
        return upsample(maps, size, self.config.align_corners)

    def anchor_probabilities(self, tokens: Tensor, anchors: Tensor, grid: tuple[int, int],
                             size: tuple[int, int] | int, scale: float = 100.0, softmax_first: bool = False) -> Tensor:
        """:func:`~zsad.methods.components.maps.anchor_probabilities` with the config's ``align_corners``."""
        return anchor_probabilities(tokens, anchors, grid, size, scale, softmax_first, self.config.align_corners)

    def blur(self, maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
        """:func:`~zsad.methods.components.maps.gaussian_blur` with the config's ``blur_mode``."""
        return gaussian_blur(maps, sigma, truncate, self.config.blur_mode)

    def smooth(self, maps: Tensor, sigma: float) -> Tensor:
        """Gaussian smoothing of maps ``[B, H, W]`` with the paper's ``sigma``, scaled from
        :attr:`sigma_reference_size` to these maps' width: one rule for every method and input shape."""
        if self.sigma_reference_size is not None:
            sigma = sigma_for(maps.shape[-1], sigma, self.sigma_reference_size)
        return self.blur(maps, sigma)

    def train(self, mode: bool = True) -> Method:
        """Train mode never reaches the frozen backbone (its dropout/norm statistics stay fixed)."""
        super().train(mode)
        self.backbone.eval()
        return self


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"method name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    from zsad import methods  # noqa: F401  (importing the package registers every method)

    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def available_methods() -> dict[str, type[Method]]:
    from zsad import methods  # noqa: F401

    return dict(sorted(_REGISTRY.items()))
