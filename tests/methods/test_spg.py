"""SPG: guide codes, dead-atom masking, inference options, explanations, and both training stages end to end."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from zsad.cli import main
from zsad.data import open_dataset
from zsad.data.types import Batch
from zsad.engine.assembly import stages_of
from zsad.engine.build import build_method, method_config
from zsad.engine.evaluate import EvalConfig, evaluate
from zsad.engine.train import Trainer, train_config_for, training_records
from zsad.errors import ConfigError
from zsad.methods.components.losses import anchor_logits
from zsad.methods.spg import SPG, GuideCodes
from zsad.methods.spg.explain import DecisionAttribution, atom_contributions, atom_weights, top_atoms

SIZE = 128  # 8 x 8 patches of dino-tiny: enough room for the synthetic defects
QUICK = ["topk=8", "auxk=64", "dead_tokens=2000", "ema_decay=0.9"]  # short runs: small k, fast EMA


def _spg(*overrides: str, backbone: str = "dino-tiny") -> SPG:
    torch.manual_seed(0)
    return build_method("spg", backbone=backbone, image_size=SIZE, overrides=[*QUICK, *overrides])


def _batch(images: torch.Tensor, masks: torch.Tensor, labels: list[int]) -> Batch:
    n = len(labels)
    return Batch(images, masks, torch.tensor(labels), ["c"] * n, ["d"] * n, [""] * n)


def test_guide_codes_stay_non_negative_under_training():
    torch.manual_seed(0)
    codes = GuideCodes(latents=64, ema_decay=0.5)
    optimizer = torch.optim.Adam(codes.parameters(), lr=0.5)
    target = torch.randn(4, 64)
    for _ in range(20):
        loss = ((codes() - target) ** 2).sum() + codes().sum()  # pulls many coefficients below zero
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        codes.update_ema()
    assert (codes.weight < 0).any()
    assert (codes() >= 0).all() and (codes(averaged=True) >= 0).all()


def test_dead_atoms_contribute_nothing_and_get_no_gradient():
    torch.manual_seed(0)
    codes = GuideCodes(latents=16, topk=0)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[1, 5, 9]] = True
    codes.set_dead_atoms(dead)
    dictionary = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    guides = codes() @ dictionary
    (guides**2).sum().backward()
    assert (codes()[:, dead] == 0).all()
    assert (codes.weight.grad[:, dead] == 0).all() and (codes.weight.grad[:, ~dead] != 0).all()
    with torch.no_grad():
        codes.weight[:, dead] += 5.0
    assert torch.equal(codes() @ dictionary, guides.detach())


def test_straight_through_topk_keeps_k_values_and_every_gradient():
    torch.manual_seed(0)
    codes = GuideCodes(latents=32, topk=3)
    values = codes()
    assert ((values > 0).sum(-1) == 3).all()
    values.sum().backward()
    assert (codes.weight.grad != 0).all()  # ReLU is open everywhere at init (0.1 + 0.01 N(0, 1))


def test_stage_training_defaults():
    sae = train_config_for(SPG, {}, method_config("spg", overrides=["stage=sae"]))
    guides = train_config_for(SPG, {"epochs": 2}, method_config("spg", overrides=["stage=guides"]))
    assert (sae.epochs, sae.batch_size, sae.lr, sae.split) == (50, 16, 1e-3, "test")
    assert (guides.epochs, guides.batch_size, guides.lr, guides.betas) == (2, 8, 1e-2, (0.5, 0.999))


def test_only_the_stage_parameters_train_and_layers_default_to_the_last_block():
    sae_stage, guide_stage = _spg("stage=sae"), _spg("stage=guides")
    assert sae_stage.layers == (sae_stage.backbone.num_layers,)
    assert {n for n, p in sae_stage.named_parameters() if p.requires_grad} == {"sae.atoms", "sae.encoder.weight"}
    assert {n for n, p in guide_stage.named_parameters() if p.requires_grad} == {"codes.weight"}
    with pytest.raises(ConfigError):
        _spg("layers=[2,4]")
    with pytest.raises(ConfigError):
        _spg("token_space=projected")  # DINO has no joint space


def test_clip_variant_compares_projected_tokens():
    method = _spg(backbone="clip-tiny")
    features = method.frozen_features(torch.rand(2, 3, SIZE, SIZE))
    assert method.projected and method.frozen_features_key() == "projected"
    assert features["tokens"].shape[-1] == method.backbone.embed_dim == method.sae.atoms.shape[1]
    assert features["cls"].shape == (2, method.backbone.embed_dim)


def test_before_training_masks_exactly_the_atoms_that_never_fire():
    method = _spg("stage=guides", "latents=2048")
    images = torch.rand(4, 3, SIZE, SIZE)
    data = [(_batch(images[:2], torch.zeros(2, SIZE, SIZE), [0] * 2), None),
            (_batch(images[2:], torch.zeros(2, SIZE, SIZE), [0] * 2), None)]
    method.before_training(data)
    with torch.no_grad():
        tokens = method.frozen_features(images)["tokens"].flatten(0, 1)
        fired = (method.sae.encode(tokens) > 0).any(0)
    assert 0 < int(method.codes.dead_atoms.sum()) < 2048
    assert torch.equal(method.codes.dead_atoms, ~fired)
    assert (method.codes()[:, ~fired] == 0).all()
    stage1 = _spg("stage=sae", "latents=2048")
    stage1.before_training(data)  # stage 1 masks nothing
    assert not stage1.codes.dead_atoms.any()


@pytest.mark.parametrize("score", ["max", "cls", "top_mean", "logsumexp", "hybrid"])
def test_image_scores(score):
    images = torch.rand(3, 3, SIZE, SIZE)
    method = _spg(f"score={score}")
    prediction = method.predict(images)
    reference = _spg("score=max").predict(images)
    assert prediction.anomaly_map.shape == (3, SIZE, SIZE) and torch.isfinite(prediction.score).all()
    assert torch.equal(prediction.anomaly_map, reference.anomaly_map)
    flat = reference.anomaly_map.flatten(1)
    if score in ("top_mean", "logsumexp"):  # pooled scores lie between the map's mean and its max
        assert (prediction.score <= flat.amax(1) + 1e-6).all() and (prediction.score >= flat.mean(1) - 1e-6).all()
    if score == "hybrid":
        cls = _spg("score=cls").predict(images).score
        assert torch.allclose(prediction.score, 0.5 * cls + 0.5 * flat.amax(1))


def test_explanation_is_consistent_with_the_codes():
    method = _spg("latents=128")
    with torch.no_grad():
        method.codes.ema.copy_(torch.rand(4, 128) - 0.5)  # a sparse, non-trivial code set
    codes = method.codes(averaged=True)
    rows = top_atoms(codes, 5)
    for g, name in enumerate(("global-normal", "global-anomaly", "local-normal", "local-anomaly")):
        listed = [r for r in rows if r.guide == name]
        assert [r.atom for r in listed] == codes[g].topk(5).indices.tolist()
        assert [r.rank for r in listed] == [1, 2, 3, 4, 5]
        assert all(r.coefficient == pytest.approx(float(codes[g, r.atom])) for r in listed)

    dictionary = method.sae.dictionary.detach()
    tokens = torch.randn(2, 16, dictionary.shape[1])
    contributions = atom_contributions(tokens, dictionary, atom_weights(codes[2:], dictionary, 0.07))
    logits = anchor_logits(tokens, codes[2:] @ dictionary, scale=1 / 0.07)
    assert torch.allclose(contributions.sum(-1), logits[..., 1] - logits[..., 0], atol=1e-4)


def test_decision_attribution_finds_shared_and_specific_atoms():
    """Anomalous patches point along atom 3 in every category and along a category's own atom too."""
    latents, dim = 12, 12
    dictionary = torch.eye(latents, dim)
    codes = torch.zeros(4, latents)
    codes[2, [0, 1]] = 1.0  # local-normal
    codes[3, [3, 7, 8, 9]] = 1.0  # local-anomaly
    attribution = DecisionAttribution(codes, dictionary, temperature=0.07)
    normal = dictionary[0] + dictionary[1]
    for category, own in (("a", 7), ("b", 8), ("c", 9)):
        # Equal norms, so the normal atoms weigh the same on every patch (atom 10 is in no code).
        tokens = (normal + 5**0.5 * dictionary[10]).repeat(1, 4, 1)
        tokens[0, 0] = normal + 2 * dictionary[3] + dictionary[own]
        attribution.add(category, tokens, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    drivers = attribution.drivers(top=2, shared_fraction=0.5)
    by_category = {c: [(d.atom, d.kind) for d in drivers if d.category == c] for c in "abc"}
    assert by_category == {"a": [(3, "shared"), (7, "specific")], "b": [(3, "shared"), (8, "specific")],
                           "c": [(3, "shared"), (9, "specific")]}
    anomalous, normal_mean = attribution.means("a")
    assert all(d.separation == pytest.approx(float(anomalous[d.atom] - normal_mean[d.atom])) for d in drivers
               if d.category == "a")


@pytest.fixture(scope="module")
def two_stages(synthetic_root, unseen_synthetic_root, tmp_path_factory):
    """Stage 1 then stage 2 with the trainer (one shared feature cache), and AUROCs before and after."""
    out = tmp_path_factory.mktemp("spg")
    seen, unseen = open_dataset(f"mvtec:{synthetic_root}"), open_dataset(f"mvtec:{unseen_synthetic_root}")

    def pixel_auroc(method, dataset):
        return evaluate(method, dataset, EvalConfig(shots=(0,), batch_size=16))["summary"]["0"]["mean"]["pixel_auroc"]

    sae = _spg("stage=sae")
    untrained = {"seen": pixel_auroc(sae, seen), "unseen": pixel_auroc(sae, unseen)}
    overrides = {"epochs": 20, "batch_size": 8, "feature_cache": str(out / "cache")}
    config = train_config_for(SPG, overrides, sae.config)
    records = training_records([seen], config)
    sae_log = Trainer(sae, records, config, out / "sae").fit()
    guides = _spg("stage=guides")
    guides.load_method_state_dict(sae.method_state_dict(), partial=True)
    guide_log = Trainer(guides, records, train_config_for(SPG, overrides, guides.config), out / "guides").fit()
    trained = {"seen": pixel_auroc(guides, seen), "unseen": pixel_auroc(guides, unseen)}
    print(f"spg dino-tiny pixel AUROC untrained {untrained}, trained {trained}")
    return {"untrained": untrained, "trained": trained, "sae_log": sae_log, "guide_log": guide_log,
            "method": guides, "caches": list((out / "cache").iterdir())}


def test_both_stages_learn_from_one_feature_cache(two_stages):
    sae_log, guide_log = two_stages["sae_log"], two_stages["guide_log"]
    assert len(two_stages["caches"]) == 1  # stage 2 read the features stage 1 cached
    assert sae_log[-1]["reconstruction"] < 0.5 * sae_log[0]["reconstruction"]
    assert all(row["active_latents"] <= 8 for row in sae_log)
    assert 0 <= sae_log[-1]["dead_fraction"] < 1
    assert guide_log[-1]["loss"] < guide_log[0]["loss"]
    assert {"ce", "focal", "dice_anomaly", "dice_normal", "l1"} <= set(guide_log[0])
    method = two_stages["method"]
    assert method.codes.dead_atoms.any() and (method.codes(averaged=True) >= 0).all()


def test_training_improves_segmentation_of_the_auxiliary_categories(two_stages):
    assert two_stages["trained"]["seen"] > two_stages["untrained"]["seen"] + 0.05


@pytest.mark.xfail(strict=False, reason="measured: guides fitted on 3 synthetic categories of random-init dino-tiny "
                   "features do not transfer to unseen categories (pixel AUROC 0.43 -> 0.33)")
def test_training_improves_segmentation_of_unseen_categories(two_stages):
    assert two_stages["trained"]["unseen"] > two_stages["untrained"]["unseen"]


def test_cli_two_stages_eval_and_explain(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("ZSAD_CACHE", str(tmp_path / "cache"))
    data = f"mvtec:{synthetic_root}"
    common = ["--method", "spg", "--backbone", "dino-tiny", "--image-size", "64", "--data", data, "--epochs", "1",
              "--batch-size", "8", "--max-steps-per-epoch", "2", *(f"--set={o}" for o in QUICK)]
    assert main(["train", *common, "--stage", "sae", "--out", str(tmp_path / "sae")]) == 0
    assert main(["train", *common, "--stage", "guides", "--checkpoint", str(tmp_path / "sae"),
                 "--out", str(tmp_path / "guides")]) == 0
    sae_row = json.loads((tmp_path / "sae" / "train_log.jsonl").read_text().splitlines()[0])
    assert {"reconstruction", "auxk", "dead_fraction", "active_latents"} <= set(sae_row)
    saved = json.loads((tmp_path / "guides" / "config.json").read_text())
    assert saved["config"]["stage"] == "guides" and saved["train"]["lr"] == 1e-2
    assert main(["eval", "--checkpoint", str(tmp_path / "guides"), "--data", data, "--shots", "0",
                 "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "results.json").is_file()
    out = tmp_path / "explain"
    assert main(["explain", "--checkpoint", str(tmp_path / "guides"), "--data", data, "--top", "4",
                 "--out", str(out)]) == 0
    for name in ("guides.md", "guides.csv", "drivers.md", "drivers.csv", "explain.png"):
        assert (out / name).stat().st_size > 0
    method = build_method(checkpoint=tmp_path / "guides")
    codes = method.codes(averaged=True)
    with open(out / "guides.csv") as f:
        rows = list(csv.DictReader(f))
    local_anomaly = [int(r["atom"]) for r in rows if r["guide"] == "local-anomaly"]
    assert local_anomaly == codes[3].topk(4).indices.tolist()
    with open(out / "drivers.csv") as f:
        assert {r["kind"] for r in csv.DictReader(f)} <= {"shared", "specific"}


def test_cli_without_a_stage_trains_every_stage_in_order(synthetic_root, tmp_path, monkeypatch):
    """The training assembly chains the stages SPG declares: the autoencoder, then the guides initialised
    from it, each in its own folder under --out; zero-shot thresholds are calibrated after the last."""
    monkeypatch.setenv("ZSAD_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--method", "spg", "--backbone", "dino-tiny", "--image-size", "64", "--data",
                 f"mvtec:{synthetic_root}", "--epochs", "1", "--batch-size", "8", "--max-steps-per-epoch", "2",
                 *(f"--set={o}" for o in QUICK), "--out", str(tmp_path / "run")]) == 0
    sae = json.loads((tmp_path / "run" / "sae" / "config.json").read_text())
    guides = json.loads((tmp_path / "run" / "guides" / "config.json").read_text())
    assert (sae["config"]["stage"], guides["config"]["stage"]) == ("sae", "guides")
    assert "thresholds" not in sae and guides["thresholds"]["calibration"]["kind"] == "held-out"
    stage_one = build_method(checkpoint=tmp_path / "run" / "sae")
    stage_two = build_method(checkpoint=tmp_path / "run" / "guides")
    torch.testing.assert_close(stage_two.sae.state_dict(), stage_one.sae.state_dict())  # frozen in stage two
    with pytest.raises(ConfigError, match="has no training stage decoder; its stages: sae, guides"):
        stages_of("spg", ("decoder",))
