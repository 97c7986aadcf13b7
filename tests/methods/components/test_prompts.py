"""Text anchors: the prompt ensembles, their normalisation and their cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zsad.backbones import build_text_encoder
from zsad.methods.components.prompts import MOECLIP, WINCLIP, clean_class_name, sentences, text_anchors


@pytest.fixture(scope="module")
def text():
    return build_text_encoder("clip-tiny")


def test_winclip_ensemble_sizes_and_wording():
    assert (len(WINCLIP.normal_states), len(WINCLIP.anomalous_states), len(WINCLIP.templates)) == (7, 5, 35)
    assert len(set(WINCLIP.templates)) == 35
    assert all(t.count("{}") == 1 for t in WINCLIP.templates)
    normal, anomalous = sentences(WINCLIP, "screw", "normal"), sentences(WINCLIP, "screw", "anomalous")
    assert (len(normal), len(anomalous)) == (245, 175)
    assert normal[0] == "a bad photo of a screw." and "a photo of a flawless screw." in normal
    assert "there is a screw with defect in the scene." in anomalous
    assert not set(normal) & set(anomalous)


def test_moeclip_set():
    assert sentences(MOECLIP, "pcb", "normal") == ["pcb.", "a photo of pcb.", "a pcb.", "a photo of a pcb.",
                                                   "the pcb.", "a photo of the pcb."]
    assert len(sentences(MOECLIP, "pcb", "anomalous")) == 10


@pytest.mark.parametrize("raw, clean", [("metal_nut", "metal nut"), ("  ", "object"), ("", "object"),
                                        ("pipe fryum", "pipe fryum")])
def test_class_names(raw, clean):
    assert clean_class_name(raw) == clean


def test_anchors_are_unit_norm_means_of_unit_sentences(text):
    anchors = text_anchors(text, "bottle", MOECLIP)
    assert anchors.shape == (2, text.embed_dim) and anchors.dtype == torch.float32
    assert not anchors.requires_grad
    torch.testing.assert_close(anchors.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        for row, state in zip(anchors, ("normal", "anomalous")):
            expected = F.normalize(F.normalize(text.encode(sentences(MOECLIP, "bottle", state)), dim=-1).mean(0), dim=0)
            torch.testing.assert_close(row, expected)


def test_anchors_are_cached_per_class_and_prompt_set(text, monkeypatch):
    first = text_anchors(text, "cable")
    calls = []
    encode = text.encode
    monkeypatch.setattr(text, "encode", lambda texts: calls.append(len(texts)) or encode(texts))
    assert text_anchors(text, "cable") is first
    assert text_anchors(text, "cable", WINCLIP) is first
    assert calls == []
    other = text_anchors(text, "transistor", MOECLIP)
    assert sum(calls) == 6 + 10 and not torch.allclose(other, first)
    assert text_anchors(text, "", MOECLIP) is text_anchors(text, "object", MOECLIP)


def test_anchors_are_full_precision_under_autocast(text):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        anchors = text_anchors(text, "zipper", MOECLIP)
    assert anchors.dtype == torch.float32


def test_anchors_first_built_under_inference_mode_work_in_training_losses():
    encoder = build_text_encoder("clip-tiny")
    with torch.inference_mode():
        anchors = text_anchors(encoder, "inference-first widget")
    weight = torch.nn.Parameter(torch.ones(anchors.shape[-1]))
    (anchors * weight).sum().backward()
    assert weight.grad is not None
