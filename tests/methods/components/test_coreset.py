"""Greedy coreset subsampling and the budgeted patch memory: covers the references, keeps layers aligned,
changes nothing without a budget, and lets a knn with a small memory still find a planted defect."""

from __future__ import annotations

import numpy as np
import torch

from zsad.engine.build import build_method
from zsad.engine.scorer import MethodModel, to_batch
from zsad.inference.scoring import REFERENCE_CHUNK
from zsad.methods.components import coreset
from zsad.methods.components.coreset import greedy_coreset
from zsad.methods.components.memory import PatchMemory, reduce_pieces


def _radius(points: torch.Tensor, chosen: torch.Tensor) -> float:
    """The coverage radius: how far the worst-covered point is from its nearest chosen one."""
    return float(torch.cdist(points, points[chosen]).min(1).values.max())


def test_greedy_picks_one_patch_of_every_cluster_and_covers_better_than_chance():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 32, generator=generator) * 10
    sizes = [400, 200, 100, 50, 20, 5]  # a rare cluster of five must survive
    points = torch.cat([c + 0.1 * torch.randn(n, 32, generator=generator) for c, n in zip(centres, sizes)])
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    chosen = greedy_coreset(points, 6)
    assert sorted(labels[chosen].tolist()) == list(range(6)) and len(set(chosen.tolist())) == 6
    # patches of real images lie near a low-dimensional set: here a 3-d one, unevenly sampled, in 256 dims
    latent = torch.randn(3000, 3, generator=generator) ** 3
    patches = latent @ torch.randn(3, 256, generator=generator) + 0.01 * torch.randn(3000, 256, generator=generator)
    greedy = _radius(patches, greedy_coreset(patches, 100))
    chance = [_radius(patches, torch.randperm(3000, generator=generator)[:100]) for _ in range(5)]
    assert greedy < 0.5 * min(chance)
    assert torch.equal(greedy_coreset(points, 10_000), torch.arange(len(points)))
    assert torch.equal(greedy_coreset(points, 7), greedy_coreset(points, 7))  # deterministic


def test_budgeted_memory_keeps_layers_aligned_and_streams_in_blocks(monkeypatch):
    monkeypatch.setattr(coreset, "BLOCK", 300)
    monkeypatch.setattr("zsad.methods.components.memory.BLOCK", 300)
    generator = torch.Generator().manual_seed(1)
    first = torch.randn(1000, 16, generator=generator)
    second = torch.cat([first * 3, first[:, :4]], dim=1)  # the same patches, another layer
    pieces = [[first[i : i + 70], second[i : i + 70]] for i in range(0, 1000, 70)]
    kept, kept_second = reduce_pieces(pieces, 1000, 120)
    assert 110 <= len(kept) <= 130 and len(kept_second) == len(kept)
    torch.testing.assert_close(kept_second, torch.cat([kept * 3, kept[:, :4]], dim=1))
    rows = {tuple(row.tolist()) for row in first}
    assert all(tuple(row.tolist()) in rows for row in kept)

    unlimited = reduce_pieces(pieces, 1000, 0)
    assert torch.equal(unlimited[0], first) and torch.equal(unlimited[1], second)
    memory = PatchMemory(budget=300)
    memory.build([first, second])
    assert 290 <= len(memory.banks[0]) <= 310
    memory.combine([[kept, kept_second], [first[:5], second[:5]]])
    assert torch.equal(memory.banks[0], torch.cat([kept, first[:5]]))


def test_chunked_preparation_is_bit_identical_and_a_budget_still_finds_the_defect():
    """MethodModel hands references over in chunks: every method's state (here knn, APRIL-GAN and DictAS, the
    memory-based ones) equals one prepared on a single tensor; a knn with 5 % of its memory finds a defect."""
    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, (64, 64, 3), dtype=np.uint8)
    references = [np.clip(base.astype(int) + rng.integers(-10, 10, base.shape), 0, 255).astype(np.uint8)
                  for _ in range(REFERENCE_CHUNK + 6)]
    probe = references[0].copy()
    probe[20:36, 28:44] = (250, 20, 20)
    for name in ("knn", "aprilgan", "dictas"):
        torch.manual_seed(0)
        method = build_method(name, backbone="clip-tiny", image_size=64)
        with torch.inference_mode():
            method.prepare("object", to_batch(references, 64, method.device))
            whole = method.predict(to_batch([probe], 64, method.device)).anomaly_map
        MethodModel(method).prepare("object", references)
        chunked = MethodModel(method).run([probe]).maps[0]
        assert np.array_equal(chunked, whole[0].numpy()), name

    torch.manual_seed(0)
    small = build_method("knn", backbone="clip-tiny", image_size=64, overrides=["memory_budget=80"])
    model = MethodModel(small)
    model.prepare("object", references)
    assert len(small.memory.banks[0]) <= 85  # of 70 x 16 patches
    anomaly_map = model.run([probe]).maps[0]
    inside, outside = anomaly_map[20:36, 28:44].max(), np.delete(anomaly_map, np.s_[16:40], axis=0).max()
    assert inside > outside


def test_leave_one_out_from_parts_equals_preparing_each_memory():
    """A composing method's leave-one-out calibration on tiled references joins each reference's part, computed
    once; without a budget the scores are those of preparing a memory on the other references each time (to
    float noise: the backbone sees batches that no longer straddle two references). Untiled references are
    still prepared k times, batched as they always were."""
    from zsad.engine.scorer import method_scorer
    from zsad.inference.calibration import score_references
    from zsad.inference.tiling import Tiling

    rng = np.random.default_rng(2)
    references = [rng.integers(0, 255, (80, 96, 3), dtype=np.uint8) for _ in range(3)]
    torch.manual_seed(0)
    method = build_method("knn", backbone="clip-tiny", image_size=32)
    assert not method_scorer(method).composes
    scorer = method_scorer(method, Tiling(32, 0.25))
    assert scorer.composes
    joined = score_references(scorer, "object", references)
    method.composes_references = False  # this instance only: prepare k times instead
    prepared = score_references(scorer, "object", references)
    del method.composes_references
    assert joined.parts is not None and len(joined.parts) == 3 and prepared.parts is None
    np.testing.assert_allclose(joined.scores, prepared.scores, rtol=1e-5)
    np.testing.assert_allclose(joined.pixels, prepared.pixels, rtol=1e-5, atol=1e-6)
