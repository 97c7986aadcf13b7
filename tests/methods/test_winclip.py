"""WinCLIP: window geometry, the masked forward, aggregation, and end-to-end behaviour on clip-tiny."""

from __future__ import annotations

import pytest
import torch

from zsad.backbones import build_backbone
from zsad.data import open_dataset
from zsad.engine.build import build_method
from zsad.engine.evaluate import EvalConfig, evaluate
from zsad.errors import ConfigError, DataError
from zsad.methods.winclip import WinClip, WinClipConfig, harmonic_aggregation, sliding_windows


@pytest.fixture(scope="module")
def winclip() -> WinClip:
    return build_method("winclip", backbone="clip-tiny", image_size=64)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("grid", [(4, 4), (5, 7)])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_sliding_windows_are_blocks_that_cover_every_patch(grid, size):
    h, w = grid
    windows = sliding_windows(grid, size)
    assert windows.shape == ((h - size + 1) * (w - size + 1), size * size)
    rows, cols = windows // w, windows % w
    # Every window is a contiguous size x size block, listed row-major by its top-left corner.
    assert torch.equal(rows - rows[:, :1], torch.arange(size).repeat_interleave(size).expand_as(rows))
    assert torch.equal(cols - cols[:, :1], torch.arange(size).repeat(size).expand_as(cols))
    corners = rows[:, 0] * w + cols[:, 0]
    assert torch.equal(corners, corners.sort().values) and len(set(corners.tolist())) == len(windows)
    coverage = torch.bincount(windows.flatten(), minlength=h * w).view(h, w)
    starts_over = [torch.tensor([min(i, n - size) - max(0, i - size + 1) + 1 for i in range(n)]) for n in grid]
    assert coverage.min() >= 1 and torch.equal(coverage, starts_over[0][:, None] * starts_over[1])


def test_window_must_fit_the_grid():
    with pytest.raises(ConfigError, match="does not fit"):
        sliding_windows((2, 5), 3)


def test_harmonic_aggregation_matches_per_patch_loop():
    grid, size = (4, 5), 2
    windows = sliding_windows(grid, size)
    scores = torch.rand(2, len(windows), generator=torch.Generator().manual_seed(1)) + 0.01
    aggregated = harmonic_aggregation(scores, windows, grid[0] * grid[1])
    for patch in range(grid[0] * grid[1]):
        covering = (windows == patch).any(1)
        expected = covering.sum() / (1 / scores[:, covering]).sum(1)
        torch.testing.assert_close(aggregated[:, patch], expected)


def test_masked_forward_equals_tower_on_the_cropped_tokens(winclip, images):
    """Batched, chunked window embeddings = a slow per-window loop of the HF encoder on the kept tokens,
    and = the full sequence with attention restricted to the window (the "mask" in masked forward)."""
    backbone = winclip.backbone
    grid = winclip.patch_grid(images)
    windows = sliding_windows(grid, 3)
    with torch.inference_mode():
        hidden = backbone.embed(images)
        batched = winclip.window_embeddings(hidden, windows)
        for b in range(len(images)):
            for w, patches in enumerate(windows):
                kept = torch.cat([torch.zeros(1, dtype=torch.long), patches + 1])
                cropped = backbone.vision.encoder(inputs_embeds=hidden[b : b + 1, kept]).last_hidden_state
                torch.testing.assert_close(batched[b, w], backbone.project(cropped[0, 0]), atol=1e-5, rtol=1e-4)
        mask = torch.full((hidden.shape[1],) * 2, float("-inf"))
        kept = torch.cat([torch.zeros(1, dtype=torch.long), windows[-1] + 1])
        mask[kept[:, None], kept] = 0
        masked = backbone.vision.encoder(inputs_embeds=hidden, attention_mask=mask[None, None]).last_hidden_state
        torch.testing.assert_close(batched[:, -1], backbone.project(masked[:, 0]), atol=1e-5, rtol=1e-4)


def test_outputs_have_input_resolution(winclip, images):
    with torch.inference_mode():
        winclip.prepare("object", None)
        zero_shot = winclip.predict(images)
        winclip.prepare("object", images[:1])
        few_shot = winclip.predict(torch.rand(2, 3, 64, 96))
    assert zero_shot.anomaly_map.shape == (3, 64, 64) and zero_shot.score.shape == (3,)
    assert few_shot.anomaly_map.shape == (2, 64, 96) and few_shot.score.shape == (2,)
    for prediction in (zero_shot, few_shot):
        assert torch.isfinite(prediction.anomaly_map).all()
        assert (prediction.anomaly_map >= 0).all() and (prediction.anomaly_map <= 1).all()


def test_zero_shot_without_windows_is_the_image_probability(images):
    method = build_method("winclip", backbone="clip-tiny", image_size=64, overrides=["window_sizes=[]"])
    with torch.inference_mode():
        method.prepare("bottle", None)
        prediction = method.predict(images)
    expected = prediction.score.view(-1, 1, 1).expand_as(prediction.anomaly_map)
    torch.testing.assert_close(prediction.anomaly_map, expected)


@pytest.mark.parametrize("references", [None, 2])
def test_predictions_do_not_depend_on_batch_size_or_chunking(winclip, images, references):
    chunked = build_method("winclip", backbone="clip-tiny", image_size=64, overrides=["windows_per_pass=5"])
    refs = None if references is None else torch.rand(references, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        winclip.prepare("object", refs)
        together = winclip.predict(images)
        chunked.prepare("object", refs)
        alone = [chunked.predict(image[None]) for image in images]
    torch.testing.assert_close(together.anomaly_map, torch.cat([p.anomaly_map for p in alone]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.score, torch.cat([p.score for p in alone]), atol=1e-5, rtol=1e-4)


def test_few_shot_map_vanishes_on_a_reference(winclip, images):
    references, other = images[:2], images[2:]
    with torch.inference_mode():
        winclip.prepare("object", references)
        grid = winclip.patch_grid(images)
        own = winclip.few_shot_map(winclip.encode(references), grid)
        unseen = winclip.few_shot_map(winclip.encode(other), grid)
    assert own.abs().max() < 1e-4
    assert unseen.min() > 1e-3


def test_needs_a_clip_backbone():
    with pytest.raises(ConfigError, match="CLIP"):
        WinClip(build_backbone("dino-tiny"), WinClipConfig(backbone="dino-tiny", image_size=64))


def test_few_shot_finds_planted_defects(synthetic_root, winclip):
    dataset = open_dataset(f"mvtec:{synthetic_root}")
    document = evaluate(winclip, dataset, EvalConfig(shots=(4,), seeds=1, batch_size=8))
    assert document["summary"]["4"]["mean"]["pixel_auroc"] > 0.6


def test_more_shots_than_train_images_is_a_clear_error(synthetic_root, winclip):
    dataset = open_dataset(f"mvtec:{synthetic_root}")
    category = dataset.categories()[0]
    shots = len(dataset.records(category, "train")) + 1
    with pytest.raises(DataError, match="fewer than k"):
        evaluate(winclip, dataset, EvalConfig(shots=(shots,), seeds=1, categories=(category,)))
