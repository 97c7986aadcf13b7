"""Every trainable method learns in our trainer, and what it learns transfers to unseen categories.

The task (:mod:`zsad.data.synthetic.planted`) is learnable by construction: the defect look is shared by
all categories, the backgrounds are not. Each method trains about 60 optimiser steps on three categories
of seed 0 (clip-tiny, 64 px) and is evaluated on two categories of seed 1 before and after. Thresholds
sit below what ``benchmarks/learning.py`` measured (numbers beside each); loss parts that do not fall
are named with their measured values and why.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from zsad.data import open_dataset
from zsad.data.synthetic.planted import write_planted
from zsad.engine.build import build_method
from zsad.engine.evaluate import EvalConfig, evaluate
from zsad.engine.train import Trainer, train_config_for, training_records

SIZE = 64
STEPS = 60

# method[:stage] -> (unseen metric, required gain, {loss part: required fractional fall}); measured in comments.
CHECKS = {
    # unseen pixel AUROC 0.654 -> 0.987; focal 0.281 -> 0.131 (-53 %), dice 3.68 -> 2.00 (-46 %)
    "aprilgan": ("pixel_auroc", 0.2, {"focal": 0.3, "dice": 0.3}),
    # 0.459 -> 0.958; segmentation 1.22 -> 0.844 (-31 %), image 0.810 -> 0.745 (-8 %)
    "anomalyclip": ("pixel_auroc", 0.3, {"segmentation": 0.2, "image": 0.04}),
    # 2-shot unseen pixel AP 0.613 -> 0.628 (AUROC is 0.983 already untrained: the lookup starts as kNN);
    # query 3.57 -> 2.04 (-43 %), tac 1.19 -> 0.404 (-66 %). cqc is a hinge that is 0 until normal patches are
    # retrieved better than anomalous ones; it rises from 0 to 0.017 as the query loss falls.
    "dictas": ("pixel_ap", 0.005, {"query": 0.3, "tac": 0.5}),
    # 0.374 -> 0.826; segmentation 15.1 -> 12.5 (-17 %), etf 1.29 -> 1.09 (-15 %). The image cross-entropy stays
    # at ln 2 (0.692 -> 0.691): the code's temperature 1 on cosines keeps its logits within +-1; balance is ~1e-3.
    "moeclip": ("pixel_auroc", 0.3, {"segmentation": 0.1, "etf": 0.1}),
    # reconstruction 0.718 -> 0.077 (-89 %); the sparse autoencoder alone does not segment (0.594 -> 0.544).
    "spg:sae": (None, 0.0, {"reconstruction": 0.8}),
    # 0.544 -> 0.980; focal -42 %, dice_anomaly -39 %, dice_normal -85 %, l1 -34 %, ce 0.683 -> 0.666 (-2.5 %)
    "spg:guides": ("pixel_auroc", 0.3, {"focal": 0.3, "dice_anomaly": 0.3, "dice_normal": 0.5, "l1": 0.2,
                                        "ce": 0.01}),
    # 0.720 -> 0.955; image -84 %, dice -35 %, orthogonality -59 %, alignment -42 %. Focal rises 0.672 -> 0.781
    # while Dice falls: the maps sharpen towards the masks, and confident mistakes weigh more in focal loss.
    "dual-anchor": ("pixel_auroc", 0.15, {"image": 0.5, "dice": 0.2, "orthogonality": 0.4, "alignment": 0.3}),
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("planted")
    write_planted(root / "seen", categories=3, seed=0, size=SIZE)
    write_planted(root / "unseen", categories=2, seed=1, size=SIZE)
    return root / "seen", root / "unseen"


@pytest.fixture(scope="module")
def sae_checkpoint() -> dict[str, Path]:
    """Stage 1 of SPG, kept for stage 2."""
    return {}


def _metric(method, dataset, name: str) -> float:
    shots = (2,) if method.few_shot and not method.zero_shot else (0,)
    return evaluate(method, dataset, EvalConfig(shots=shots, seeds=1))["summary"][str(shots[0])]["mean"][name]


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(CHECKS))
def test_training_lowers_each_loss_part_and_transfers(entry, planted, sae_checkpoint, tmp_path):
    seen, unseen = planted
    name, _, stage = entry.partition(":")
    metric, gain, falls = CHECKS[entry]
    start = sae_checkpoint.get("spg") if stage == "guides" else None
    if stage == "guides" and start is None:  # stage 2 starts from stage 1, trained here if not yet
        start = _train("spg", "sae", seen, tmp_path / "sae", None)[1].out
    torch.manual_seed(0)
    method, trainer = _train(name, stage or None, seen, tmp_path / "run", start)
    unseen_data = open_dataset(f"mvtec:{unseen}")
    before = _metric(method, unseen_data, metric) if metric else None
    rows = trainer.fit()
    if stage == "sae":
        sae_checkpoint["spg"] = trainer.out
    for part, fraction in falls.items():
        first, last = rows[0][part], rows[-1][part]
        assert last <= (1 - fraction) * first, (part, first, last)
    if metric:
        after = _metric(method, unseen_data, metric)
        assert after >= before + gain, (metric, before, after)


def _train(name: str, stage: str | None, data: Path, out: Path, start: Path | None):
    torch.manual_seed(0)
    method = build_method(name, backbone="clip-tiny", image_size=SIZE, checkpoint=start, partial=start is not None,
                          overrides=[f"stage={stage}"] if stage else [])
    config = train_config_for(type(method), {}, method.config)
    records = training_records([open_dataset(f"mvtec:{data}")], config)
    batch = min(config.batch_size, 8)
    config = replace(config, batch_size=batch, epochs=max(2, math.ceil(STEPS / (len(records) // batch))),
                     feature_cache="off")
    return method, Trainer(method, records, config, out)
