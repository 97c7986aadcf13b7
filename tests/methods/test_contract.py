"""The contract every registered method keeps, checked the same way for all of them.

Like scikit-learn's ``check_estimator`` or timm's tests over all models: each ``check_*`` function states
one promise of the :class:`~zsad.methods.base.Method` protocol and fails with an ``AssertionError`` when a
method breaks it. The parametrised tests run every check over :func:`available_methods`, so a new method
gets them for free; :func:`test_the_suite_catches_broken_methods` shows that each check can fail.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import Tensor

from zsad.config import from_dict, to_dict
from zsad.data.types import Batch
from zsad.engine.build import build_method
from zsad.engine.checkpoint import WEIGHTS, load_tensors, save_checkpoint
from zsad.engine.train import TrainConfig, train_config_for
from zsad.errors import ConfigError
from zsad.methods import Method, Prediction, available_methods
from zsad.methods.knn import PatchKnn

BACKBONE = "clip-tiny"
SIZE = 64  # the configured (square) input size
HEIGHT, WIDTH = 48, 64  # the non-square size the checks predict at
METHODS = sorted(available_methods())
TRAINABLE = [name for name in METHODS if available_methods()[name].trainable]


def stages(name: str) -> tuple[str | None, ...]:
    """The training stages a method declares (``Method.stages``), or one unnamed stage."""
    return available_methods()[name].stages or (None,)


def build(name: str, stage: str | None = None) -> Method:
    torch.manual_seed(0)
    return build_method(name, backbone=BACKBONE, image_size=SIZE, overrides=[f"stage={stage}"] if stage else [])


def images(count: int, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> Tensor:
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


def references_for(method: Method, count: int = 2, height: int = HEIGHT, width: int = WIDTH) -> Tensor | None:
    return images(count, height, width, seed=1) if method.few_shot else None


def predict(method: Method, batch: Tensor) -> Prediction:
    with torch.inference_mode():
        return method.predict(batch)


def perturb(method: Method, seed: int = 3) -> None:
    """Move every float parameter and saved tensor of the method off its initial value, as training would."""
    generator = torch.Generator().manual_seed(seed)
    own = [p for name, p in method.named_parameters() if not name.startswith("backbone.")]
    with torch.no_grad():
        for tensor in own + list(method.method_state_dict().values()):
            if tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn(tensor.shape, generator=generator).to(tensor.dtype))


def training_batch(size: int = SIZE, seed: int = 0) -> Batch:
    """Two images, one with a square defect in its mask, one normal."""
    masks = torch.zeros(2, size, size)
    masks[0, size // 4 : size // 2, size // 4 : size // 2] = 1
    return Batch(images(2, size, size, seed), masks, torch.tensor([1, 0]), ["metal_nut", "pcb-1"],
                 ["scratch", "good"], ["a.png", "b.png"])


# --- the checks -----------------------------------------------------------------------------------------
def check_shapes(method: Method) -> None:
    """prepare + predict at a non-square size: a finite map at input resolution and one score per image."""
    method.prepare("pcb-1", references_for(method))
    prediction = predict(method, images(3))
    assert tuple(prediction.anomaly_map.shape) == (3, HEIGHT, WIDTH), prediction.anomaly_map.shape
    assert tuple(prediction.score.shape) == (3,), prediction.score.shape
    assert torch.isfinite(prediction.anomaly_map).all() and torch.isfinite(prediction.score).all()
    for name, part in prediction.score_parts.items():
        assert tuple(part.shape) == (3,), (name, part.shape)


def check_batch_independence(method: Method) -> None:
    """Predicting a subset of a batch equals the same images' rows of predicting the whole batch."""
    method.prepare("pcb-1", references_for(method))
    batch = images(3)
    whole, part = predict(method, batch), predict(method, batch[1:])
    torch.testing.assert_close(part.anomaly_map, whole.anomaly_map[1:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(part.score, whole.score[1:], atol=1e-5, rtol=1e-4)


def check_score_follows_the_documented_rule(method: Method) -> None:
    """The default config never normalises over a test set (``category_scores`` is the identity), and a
    ``"map"`` score part is the map's maximum."""
    method.prepare("pcb-1", references_for(method))
    prediction = predict(method, images(3))
    assert torch.equal(method.category_scores(prediction.score, prediction.score_parts), prediction.score)
    if "map" in prediction.score_parts:
        torch.testing.assert_close(prediction.score_parts["map"], prediction.anomaly_map.flatten(1).amax(1))


def check_checkpoint_round_trip(method: Method, tmp_path) -> None:
    """Saved and loaded through a checkpoint folder (safetensors + config.json), the method predicts the same."""
    perturb(method)
    save_checkpoint(tmp_path, method.name, to_dict(method.config), method.method_state_dict(),
                    method.config_version)
    config = from_dict(type(method).Config, json.loads((tmp_path / "config.json").read_text())["config"])
    reloaded = type(method)(method.backbone, config)
    report = reloaded.load_method_state_dict(load_tensors(tmp_path / WEIGHTS))
    assert not report.missing and not report.unexpected
    refs, batch = references_for(method), images(2)
    method.eval().prepare("pcb-1", refs)
    reloaded.eval().prepare("pcb-1", refs)
    before, after = predict(method, batch), predict(reloaded, batch)
    torch.testing.assert_close(after.anomaly_map, before.anomaly_map, atol=1e-6, rtol=0)
    torch.testing.assert_close(after.score, before.score, atol=1e-6, rtol=0)


def check_config_round_trip(method: Method) -> None:
    """A config survives JSON unchanged, and so does every default of its class."""
    config = method.config
    assert from_dict(type(config), json.loads(json.dumps(to_dict(config)))) == config
    assert from_dict(type(config), to_dict(type(config)())) == type(config)()


def check_training_defaults(method: Method) -> None:
    """Each stage's training defaults are TrainConfig fields and build a valid TrainConfig."""
    defaults = type(method).train_defaults_for(method.config)
    assert set(defaults) <= {f.name for f in dataclasses.fields(TrainConfig)}, set(defaults)
    assert isinstance(train_config_for(type(method), {}, method.config), TrainConfig)
    if not method.trainable:
        with pytest.raises(ConfigError):
            method.training_loss(training_batch())


def check_gradients_stay_inside_the_method(method: Method) -> None:
    """One training step's gradients reach the method's own parameters and never the frozen backbone."""
    method.train()
    losses = method.training_loss(training_batch())
    assert losses["loss"].requires_grad and torch.isfinite(losses["loss"])
    assert all(torch.isfinite(v).all() for v in losses.values())
    losses["loss"].backward()
    assert all(p.grad is None for p in method.backbone.parameters()), "gradient reached the backbone"
    own = {f"{name}": p for name, p in method.named_parameters() if not name.startswith("backbone.")}
    reached = [name for name, p in own.items() if p.grad is not None and p.grad.abs().sum() > 0]
    assert reached, "no gradient reached the method's parameters"
    saved = set(method.method_state_dict())
    assert set(reached) <= saved, f"trained tensors missing from the checkpoint: {sorted(set(reached) - saved)}"
    method.eval()


def planted(count: int, size: int = SIZE, defect: bool = True, seed: int = 0) -> Tensor:
    """Smooth two-tone images; with ``defect``, a bright square of side size/4 at rows/cols 16..32."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.tensor([0.35, 0.45, 0.55]).view(1, 3, 1, 1)
    ramp = torch.linspace(0, 0.1, size).view(1, 1, 1, size)
    batch = (base + ramp + 0.02 * torch.randn(count, 3, size, size, generator=generator)).clamp(0, 1)
    if defect:
        batch[:, :, 16:32, 16:32] = torch.tensor([0.95, 0.1, 0.1]).view(1, 3, 1, 1)
    return batch


def check_planted_defect_raises_the_map(method: Method) -> None:
    """With normal references, a planted defect scores higher inside its square than outside it."""
    method.prepare("pcb-1", planted(2, defect=False, seed=1))
    anomaly_map = predict(method, planted(1, seed=2)).anomaly_map[0]
    inside = torch.zeros_like(anomaly_map, dtype=torch.bool)
    inside[16:32, 16:32] = True
    assert anomaly_map[inside].mean() > anomaly_map[~inside].mean(), "the defect is not where the map is high"


# --- the suite over every registered method ---------------------------------------------------------------
@pytest.fixture(scope="module")
def built() -> dict[tuple[str, str | None], Method]:
    return {}


def method_for(built, name: str, stage: str | None = None) -> Method:
    if (name, stage) not in built:
        built[(name, stage)] = build(name, stage)
    return built[(name, stage)]


@pytest.mark.parametrize("name", METHODS)
def test_shapes_at_a_non_square_size(built, name):
    check_shapes(method_for(built, name))


@pytest.mark.parametrize("name", METHODS)
def test_batch_independence(built, name):
    check_batch_independence(method_for(built, name))


@pytest.mark.parametrize("name", METHODS)
def test_score_follows_the_documented_rule(built, name):
    check_score_follows_the_documented_rule(method_for(built, name))


@pytest.mark.parametrize("name", METHODS)
def test_checkpoint_round_trip(name, tmp_path):
    check_checkpoint_round_trip(build(name, stages(name)[-1]), tmp_path)


@pytest.mark.parametrize("name", METHODS)
def test_config_round_trip(built, name):
    check_config_round_trip(method_for(built, name))


@pytest.mark.parametrize("name, stage", [(n, s) for n in METHODS for s in stages(n)])
def test_training_defaults_per_stage(built, name, stage):
    check_training_defaults(method_for(built, name, stage))


@pytest.mark.parametrize("name, stage", [(n, s) for n in TRAINABLE for s in stages(n)])
def test_gradients_stay_inside_the_method(name, stage):
    check_gradients_stay_inside_the_method(build(name, stage))


@pytest.mark.parametrize("name", [n for n in METHODS if available_methods()[n].few_shot])
def test_planted_defect_raises_the_map_with_references(built, name):
    check_planted_defect_raises_the_map(method_for(built, name))


# --- the suite can fail -------------------------------------------------------------------------------------
class BatchDependent(PatchKnn):
    """Breaks batch independence: the map is centred on the batch's mean."""

    def predict(self, images: Tensor) -> Prediction:
        prediction = super().predict(images)
        return Prediction(prediction.anomaly_map - prediction.anomaly_map.mean(), prediction.score)


class PatchGridMap(PatchKnn):
    """Breaks the shape contract: returns the map at the configured square size, not the input's."""

    def predict(self, images: Tensor) -> Prediction:
        prediction = super().predict(images)
        square = torch.nn.functional.interpolate(prediction.anomaly_map[:, None], size=(SIZE, SIZE))[:, 0]
        return Prediction(square, prediction.score)


class TransductiveByDefault(PatchKnn):
    """Breaks the score rule: normalises over the test set without a named option, and its "map" part
    is not the map's maximum."""

    def predict(self, images: Tensor) -> Prediction:
        prediction = super().predict(images)
        return Prediction(prediction.anomaly_map, prediction.score, {"map": prediction.score + 1})

    def category_scores(self, scores: Tensor, parts: dict[str, Tensor]) -> Tensor:
        return scores - scores.min()


class ForgetsItsState(PatchKnn):
    """Breaks the checkpoint round trip: a learned offset that is not a registered tensor."""

    def __init__(self, backbone, config) -> None:
        super().__init__(backbone, config)
        self.offset = torch.nn.Parameter(torch.zeros(()))

    def method_state_dict(self) -> dict[str, Tensor]:
        return {}

    def predict(self, images: Tensor) -> Prediction:
        prediction = super().predict(images)
        return Prediction(prediction.anomaly_map + self.offset, prediction.score + self.offset)


class LeaksIntoTheBackbone(PatchKnn):
    """Breaks gradient isolation: its loss trains the backbone."""

    trainable = True

    def training_loss(self, batch: Batch, features=None) -> dict[str, Tensor]:
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        loss = self.backbone(batch.images, self.layers).patch_tokens[0].square().mean()
        return {"loss": loss}


class Blind(PatchKnn):
    """Breaks the planted-defect check: a constant map."""

    def predict(self, images: Tensor) -> Prediction:
        prediction = super().predict(images)
        return Prediction(torch.zeros_like(prediction.anomaly_map), prediction.score)


@pytest.mark.parametrize("broken, check", [
    (BatchDependent, check_batch_independence),
    (PatchGridMap, check_shapes),
    (TransductiveByDefault, check_score_follows_the_documented_rule),
    (ForgetsItsState, check_checkpoint_round_trip),
    (LeaksIntoTheBackbone, check_gradients_stay_inside_the_method),
    (Blind, check_planted_defect_raises_the_map),
], ids=lambda x: x.__name__)
def test_the_suite_catches_broken_methods(broken, check, tmp_path):
    healthy = build("knn")
    method = broken(healthy.backbone, healthy.config)
    arguments = (method, tmp_path) if check is check_checkpoint_round_trip else (method,)
    with pytest.raises(AssertionError):
        check(*arguments)
