"""The reference codes' protocol options, each pinned to the code's formula written out here.

Defaults are untouched by every option (the maps of every method stay bit-identical; see the contract
suite); these tests check that each option, switched on, computes what the public code computes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from zsad.config import to_dict
from zsad.data.types import Batch
from zsad.engine.build import build_method
from zsad.engine.checkpoint import save_checkpoint
from zsad.errors import ConfigError
from zsad.methods.dictas.method import rotate
from zsad.methods.components.maps import gaussian_blur, upsample
from zsad.methods.components.mosaic import mosaic_batch
from zsad.methods.components.prompts import MOECLIP_CODE_DESCRIPTIONS


def tiny(name: str, size: int = 64, backbone: str = "clip-tiny", **overrides: object):
    torch.manual_seed(0)
    return build_method(name, backbone=backbone, image_size=size,
                        overrides=[f"{k}={v}" for k, v in overrides.items()])


# --- shared maps ----------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(h=st.integers(3, 20), w=st.integers(3, 20), sigma=st.floats(0.5, 6.0), seed=st.integers(0, 99))
def test_blur_borders_are_scipys_mirror_and_reflect(h, w, sigma, seed):
    maps = np.random.default_rng(seed).random((1, h, w)).astype(np.float32)
    for mode in ("mirror", "reflect"):
        ours = gaussian_blur(torch.from_numpy(maps), sigma, mode=mode).numpy()[0]
        radius = min(int(4 * sigma + 0.5), h - 1 if mode == "mirror" else h, w - 1 if mode == "mirror" else w)
        # scipy with the same (possibly clipped) kernel radius: truncate = radius / sigma
        reference = ndimage.gaussian_filter(maps[0].astype(np.float64), sigma, mode=mode, truncate=radius / sigma)
        np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_upsampling_with_align_corners_puts_corner_patches_on_the_image_corners():
    patches = torch.arange(12, dtype=torch.float32).view(1, 3, 4)
    out = upsample(patches, (7, 10), align_corners=True)[0]
    # the code's formula: output pixel i samples the patch grid at i * (h - 1) / (H - 1)
    rows, cols = np.arange(7) * 2 / 6, np.arange(10) * 3 / 9
    grid = patches[0].numpy()
    along_rows = np.stack([np.interp(rows, np.arange(3), grid[:, j]) for j in range(4)], 1)  # [7, 4]
    expected = np.stack([np.interp(cols, np.arange(4), along_rows[i]) for i in range(7)])  # [7, 10]
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    assert not torch.allclose(out, upsample(patches, (7, 10)))  # the default treats patches as areas


def test_map_options_reach_every_methods_maps():
    image = torch.rand(1, 3, 64, 64)
    for name in ("knn", "dictas"):
        default, code = tiny(name), tiny(name, align_corners=True, blur_mode="reflect")
        code.load_state_dict(default.state_dict())
        references = torch.rand(2, 3, 64, 64)
        for method in (default, code):
            method.prepare("texture", references)
        assert not torch.allclose(default.predict(image).anomaly_map, code.predict(image).anomaly_map)


# --- DictAS ---------------------------------------------------------------------------------------------
def test_bilinear_pseudo_labels_are_the_codes_rule():
    method = tiny("dictas", patch_labels="bilinear")
    masks = torch.zeros(2, 64, 64)
    masks[0, 10:30, 5:50] = 1
    masks[1, 40:64, 40:64] = 1
    labels = method._patch_labels(masks, (4, 4))
    # the code: F.interpolate(mask, (H, H), bilinear, align_corners=True) > 0.5, i.e. the mask sampled at
    # pixel i * (64 - 1) / (4 - 1) (interpolated between its neighbours)
    positions = np.arange(4) * 63 / 3
    for b in range(2):
        m = masks[b].numpy()
        sampled = np.array([[ndimage.map_coordinates(m, [[r], [c]], order=1)[0] for c in positions]
                            for r in positions])
        assert np.array_equal(labels[b].view(4, 4).numpy(), sampled > 0.5)
    area = tiny("dictas")._patch_labels(masks, (4, 4))
    assert not torch.equal(area, labels)  # the default reads patch areas


def test_a_dictas_checkpoint_evaluates_with_other_layers(tmp_path):
    trained = tiny("dictas")  # default layers of clip-tiny: all four blocks
    save_checkpoint(tmp_path, "dictas", to_dict(trained.config), trained.method_state_dict())
    method = build_method(checkpoint=tmp_path, overrides=["layers=2,4"])
    assert method.layers == (2, 4)
    assert method.load_report.refitted and all(k.startswith("alignment.") for k in method.load_report.refitted)
    saved = trained.generators.state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in method.generators.state_dict().items())
    method.prepare("texture", torch.rand(2, 3, 64, 64))
    assert method.predict(torch.rand(1, 3, 64, 64)).anomaly_map.shape == (1, 64, 64)


def test_query_feature_value_needs_a_trained_value_generator(tmp_path):
    fresh = tiny("dictas", query_feature="value")
    with pytest.raises(ConfigError, match="Value generator was never trained"):
        fresh.prepare("texture", torch.rand(1, 3, 64, 64))
    with pytest.raises(ConfigError, match="Value generator was never trained"):
        fresh.before_training([])
    trained = tiny("dictas")
    save_checkpoint(tmp_path, "dictas", to_dict(trained.config), trained.method_state_dict())
    method = build_method(checkpoint=tmp_path, overrides=["query_feature=value"])
    method.prepare("texture", torch.rand(1, 3, 64, 64))  # accepted: the checkpoint trained its Value generator


def test_per_class_alpha_weights_the_text_score_of_that_class():
    method = tiny("dictas", score_alpha=0.5, score_alpha_per_class="metal_nut:0,screw:1")
    references, image = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    for name, alpha in (("metal nut", 0.0), ("screw", 1.0), ("bottle", 0.5)):
        method.prepare(name, references)
        prediction = method.predict(image)
        parts = prediction.score_parts
        assert torch.allclose(prediction.score, alpha * parts["text"] + (1 - alpha) * parts["map"])


def test_rotated_references_join_the_dictionary_of_the_chosen_classes():
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(rotate(x, 0), x)
    assert torch.allclose(rotate(x, 90), torch.rot90(x, 1, (-2, -1)), atol=1e-6)  # counter-clockwise
    assert torch.allclose(rotate(x, 180), x.flip(-1).flip(-2), atol=1e-6)
    method = tiny("dictas", reference_rotations="90,180", rotate_references_for="screw")
    references = torch.rand(2, 3, 64, 64)
    expanded = method._with_rotations("screw", references)
    assert expanded.shape[0] == 6 and torch.equal(expanded[0], references[0])
    assert torch.allclose(expanded[1], torch.rot90(references[0], 1, (-2, -1)), atol=1e-5)
    assert method._with_rotations("bottle", references) is references
    method.prepare("screw", references)
    assert method._dictionary[0][0][0].shape[1] == 6 * 16  # six images' 4 x 4 tokens in one dictionary


# --- MoECLIP --------------------------------------------------------------------------------------------
def test_moeclip_code_fusion_is_the_codes_metrics_eval():
    method = tiny("moeclip", score_normalization="code")
    method.prepare("bottle", None)
    images = torch.rand(5, 3, 64, 64)
    prediction = method.predict(images)
    fused = method.category_scores(prediction.score, prediction.score_parts).numpy()
    # the code: pixel maps min-max normalised over all pixels of the category when they leave [0, 1];
    # image score = 0.5 * max(normalised map) + 0.5 * global term
    maps = prediction.anomaly_map.numpy()
    if maps.max() > 1 or maps.min() < 0:
        maps = (maps - maps.min()) / (maps.max() - maps.min())
    expected = 0.5 * maps.max(axis=(1, 2)) + 0.5 * prediction.score_parts["global"].numpy()
    np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-6)


def test_moeclip_max_score_is_the_maps_maximum_and_descriptions_change_the_prompts():
    method = tiny("moeclip", score_normalization="max")
    method.prepare("bottle", None)
    prediction = method.predict(torch.rand(3, 3, 64, 64))
    assert torch.equal(prediction.score, prediction.anomaly_map.flatten(1).amax(1))
    described = tiny("moeclip", class_descriptions="code")
    assert MOECLIP_CODE_DESCRIPTIONS["metal nut"] == "metal nut which has four notched edges"
    assert not torch.allclose(described.class_anchors("metal_nut"), method.class_anchors("metal_nut"))
    assert torch.allclose(described.class_anchors("unlisted thing"), method.class_anchors("unlisted thing"))


# --- SPG ------------------------------------------------------------------------------------------------
def test_spg_final_norm_tokens_are_the_backbones_normalised_tokens():
    raw = tiny("spg", backbone="dino-tiny", token_space="raw")
    normed = tiny("spg", backbone="dino-tiny", token_space="final_norm")
    images = torch.rand(2, 3, 64, 64)
    a, b = raw.frozen_features(images), normed.frozen_features(images)
    assert torch.allclose(b["tokens"], raw.backbone.final_norm(a["tokens"]))
    assert torch.allclose(b["cls"], raw.backbone.final_norm(a["cls"]))
    assert raw.frozen_features_key() != normed.frozen_features_key()  # cached features never mix


# --- APRIL-GAN mosaics ----------------------------------------------------------------------------------
def test_mosaics_tile_four_same_class_images_at_half_size():
    images = torch.rand(4, 3, 32, 32)
    masks = (torch.rand(4, 32, 32) > 0.7).float()
    categories = ["a", "b", "a", "b"]
    out, out_masks = mosaic_batch(images, masks, categories, 1.0, torch.Generator().manual_seed(0))
    halves = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    half_masks = F.interpolate(masks[:, None], size=(16, 16), mode="nearest")[:, 0]
    for i, category in enumerate(categories):
        same = [j for j, c in enumerate(categories) if c == category]
        for rows, cols in ((slice(0, 16), slice(0, 16)), (slice(0, 16), slice(16, 32)),
                           (slice(16, 32), slice(0, 16)), (slice(16, 32), slice(16, 32))):
            tile = out[i, :, rows, cols]
            match = [j for j in same if torch.allclose(tile, halves[j], atol=1e-6)]
            assert match, "every tile is a same-class image at half size"
            assert torch.equal(out_masks[i, rows, cols], half_masks[match[0]])
    untouched, _ = mosaic_batch(images, masks, categories, 0.0, torch.Generator())
    assert untouched is images


def test_aprilgan_with_mosaics_trains_on_live_images():
    method = tiny("aprilgan", mosaic_prob=0.5)
    assert not method.trains_on_frozen_features  # no feature cache: the mosaics change the images
    assert method.frozen_features(torch.rand(1, 3, 64, 64)) is None
    batch = Batch(torch.rand(4, 3, 64, 64), (torch.rand(4, 64, 64) > 0.8).float(), torch.ones(4, dtype=torch.long),
                  ["a", "a", "b", "b"], ["x"] * 4, [""] * 4)
    losses = method.training_loss(batch)
    losses["loss"].backward()
    assert all(p.grad is not None for p in method.heads.parameters())


# --- WinCLIP --------------------------------------------------------------------------------------------
def test_winclip_paper_prompts_are_its_22_inspection_templates():
    from zsad.methods.components.prompts import WINCLIP, WINCLIP_PAPER, sentences

    assert len(WINCLIP_PAPER.templates) == 22 and len(set(WINCLIP_PAPER.templates)) == 22
    assert "a photo of a {} for anomaly detection." in WINCLIP_PAPER.templates
    assert len(sentences(WINCLIP_PAPER, "screw", "anomalous")) == 5 * 22
    default, paper = tiny("winclip"), tiny("winclip", prompts="paper")
    default.prepare("screw", None)
    paper.prepare("screw", None)
    assert not torch.allclose(default.anchors, paper.anchors) and WINCLIP.templates != WINCLIP_PAPER.templates


def test_zsad_eval_reads_a_dictas_checkpoint_at_other_layers(tmp_path, synthetic_root):
    from zsad.cli import main

    trained = tiny("dictas")
    save_checkpoint(tmp_path / "checkpoint", "dictas", to_dict(trained.config), trained.method_state_dict())
    assert main(["eval", "--checkpoint", str(tmp_path / "checkpoint"), "--set", "layers=2,4", "--data",
                 f"mvtec:{synthetic_root}", "--shots", "1", "--seeds", "1", "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "results.json").is_file()


@pytest.mark.parametrize("name", ["anomalyclip", "dictas", "dual-anchor", "spg", "knn", "aprilgan"])
def test_smoothing_scales_sigma_by_the_maps_width_for_every_method(name):
    """One sigma rule: the paper's sigma, stated at ``sigma_reference_size`` pixels of input width, scales
    with the width of the maps (SPG scaled by the height before, which differs on non-square inputs);
    without a reference size sigma is in pixels of the map."""
    method = build_method(name, backbone="clip-tiny", image_size=64)
    maps = torch.rand(2, 48, 80, generator=torch.Generator().manual_seed(0))
    reference = type(method).sigma_reference_size
    expected_sigma = 4.0 * 80 / reference if reference else 4.0
    torch.testing.assert_close(method.smooth(maps, 4.0), gaussian_blur(maps, expected_sigma, 4.0, "mirror"),
                               rtol=0, atol=0)
