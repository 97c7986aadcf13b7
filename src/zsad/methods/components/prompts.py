"""Text anchors: a normal and an anomalous direction in CLIP's joint space for one class name.

Each state phrase (``"flawless {}"``, ``"{} with defect"``) is put into each template (``"a photo of a
{}."``); every sentence is encoded and L2-normalised, the sentences of a state are averaged, and the mean
is normalised again (METHODS.md §2). Anchors are computed once per (text encoder, class name, prompt set,
device) and cached, because methods ask for them for every category and often for every batch.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from zsad.backbones.base import TextEncoder

State = Literal["normal", "anomalous"]
DEFAULT_CLASS_NAME = "object"
_BATCH = 128  # sentences per text-encoder call: bounds activation memory of the large towers


@dataclass(frozen=True)
class PromptSet:
    """State phrases (with ``{}`` for the class name) and sentence templates (with ``{}`` for a phrase)."""

    normal_states: tuple[str, ...]
    anomalous_states: tuple[str, ...]
    templates: tuple[str, ...]


# The WinCLIP ensemble (as used by WinCLIP and APRIL-GAN): 7 normal and 5 anomalous states in the 35
# CLIP templates, 245 + 175 sentences.
WINCLIP = PromptSet(
    normal_states=("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                   "{} without damage"),
    anomalous_states=("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage"),
    templates=(
        "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
        "a cropped photo of the {}.", "a bright photo of a {}.", "a dark photo of the {}.", "a photo of my {}.",
        "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
        "a bright photo of the {}.", "a cropped photo of a {}.", "a jpeg corrupted photo of a {}.",
        "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a photo of one {}.",
        "a close-up photo of the {}.", "a photo of a {}.", "a low resolution photo of a {}.",
        "a photo of a large {}.", "a blurry photo of a {}.", "a jpeg corrupted photo of the {}.",
        "a good photo of a {}.", "a photo of the small {}.", "a photo of the large {}.",
        "a black and white photo of a {}.", "a dark photo of a {}.", "a photo of a cool {}.",
        "a photo of a small {}.", "there is a {} in the scene.", "there is the {} in the scene.",
        "this is a {} in the scene.", "this is the {} in the scene.", "this is one {} in the scene.",
    ),
)

# WinCLIP's own ensemble, from its paper's supplementary material: the same states, and 22 templates
# written for inspection photos (the 35 above are CLIP's ImageNet templates, as APRIL-GAN's code uses).
WINCLIP_PAPER = PromptSet(
    normal_states=WINCLIP.normal_states,
    anomalous_states=WINCLIP.anomalous_states,
    templates=(
        "a cropped photo of the {}.", "a cropped photo of a {}.", "a close-up photo of a {}.",
        "a close-up photo of the {}.", "a bright photo of a {}.", "a bright photo of the {}.",
        "a dark photo of the {}.", "a dark photo of a {}.", "a jpeg corrupted photo of a {}.",
        "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.", "a blurry photo of a {}.",
        "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.", "a photo of the small {}.",
        "a photo of a large {}.", "a photo of the large {}.", "a photo of the {} for visual inspection.",
        "a photo of a {} for visual inspection.", "a photo of the {} for anomaly detection.",
        "a photo of a {} for anomaly detection.",
    ),
)

# MoECLIP's smaller set (METHODS.md §4).
MOECLIP = PromptSet(
    normal_states=("{}", "a {}", "the {}"),
    anomalous_states=("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage"),
    templates=("{}.", "a photo of {}."),
)


# The MoECLIP code's class descriptions (its ``REAL_NAMES``), used in place of the class name by
# ``class_descriptions="code"``; keyed by cleaned class name, spelt exactly as there (typos included).
MOECLIP_CODE_DESCRIPTIONS: dict[str, str] = {
    # MVTec AD
    "bottle": "dark bottle", "cable": "top view of three cables", "capsule": "black asd orange capsule",
    "carpet": "gray carpet", "grid": "metal or plastic mesh", "hazelnut": "single brown hazelnut",
    "leather": "brown leather", "metal nut": "metal nut which has four notched edges",
    "pill": "oval white pill with small red speckles and the letters 'FF' engraved", "screw": "screw",
    "tile": "speckled tile surface", "transistor": "a three-legged transistor placed vertically",
    "toothbrush": "toothbrush head", "wood": "wood surface", "zipper": "a black zipper",
    # VisA
    "candle": "candle", "pcb3": "infrared sensor pcb module", "capsules": "capsules",
    "pipe fryum": "pipe-shaped fryum", "pcb4": "battery charging pcb module",
    "macaroni2": "scattered yellow macaroni", "pcb2": "integrated circuits board", "chewinggum": "chewing gum",
    "macaroni1": "orange macaroni", "cashew": "cashew nut", "fryum": "wheel-shaped fryum snack",
    "pcb1": "dual ultrasonic distance sensor pcb module",
    # BTAD
    "01": "Bright concentric rings in neon yellow and blue tones against a dark blue background, resembling a "
          "stylized wave or energy field radiating outward.",
    "02": "vertical fabric lines in warm, dusty pink and beige tones",
    "03": "oval concentric circular rings in gradient shades of blue and white",
    # single-class medical and surface sets
    "headct": "scan", "brain": "scan", "liver": "scan", "retina": "scan", "rsdd": "metal", "endo": "polyp",
    "colon clinicdb": "colon endoscopy image", "colon colondb": "colon endoscopy image",
    "cvc-300": "colon endoscopy image", "kvasir": "colon endoscopy image",
}


def describe(class_name: str, descriptions: dict[str, str]) -> str:
    """The description of ``class_name`` in ``descriptions`` (looked up by cleaned, lower-case name), or
    the cleaned name itself for classes the table does not know."""
    name = clean_class_name(class_name)
    return descriptions.get(name.lower(), name)


def clean_class_name(class_name: str) -> str:
    """The one normaliser of class names, applied wherever a name enters a prompt, so evaluation (folder
    names) and prediction (``--class-name``) build the same sentences: underscores read as spaces
    (``metal_nut`` -> ``metal nut``, as the reference codes do), hyphens and digits stay (``pcb-1``), an
    empty name is ``object``."""
    return " ".join(class_name.replace("_", " ").split()) or DEFAULT_CLASS_NAME


def sentences(prompt_set: PromptSet, class_name: str, state: State) -> list[str]:
    """Every sentence of one state: each phrase in each template, phrases outermost."""
    phrases = {"normal": prompt_set.normal_states, "anomalous": prompt_set.anomalous_states}[state]
    name = clean_class_name(class_name)
    return [template.format(phrase.format(name)) for phrase in phrases for template in prompt_set.templates]


_cache: weakref.WeakKeyDictionary[TextEncoder, dict[tuple, Tensor]] = weakref.WeakKeyDictionary()


def text_anchors(text_encoder: TextEncoder, class_name: str, prompt_set: PromptSet = WINCLIP) -> Tensor:
    """Unit-norm anchors ``[2, D]`` (normal, anomalous) on the encoder's device, in float32, cached."""
    device = text_encoder.token_embedding.weight.device
    key = (clean_class_name(class_name), prompt_set, device)
    cached = _cache.setdefault(text_encoder, {})
    if key not in cached:
        cached[key] = _compute_anchors(text_encoder, class_name, prompt_set, device)
    return cached[key]


@torch.inference_mode(False)  # cached anchors must stay usable in training losses, even when first built
@torch.no_grad()                # during an evaluation under inference mode
def _compute_anchors(text_encoder: TextEncoder, class_name: str, prompt_set: PromptSet,
                     device: torch.device) -> Tensor:
    anchors = []
    with torch.autocast(device.type, enabled=False):  # anchors are shared state: always full precision
        for state in ("normal", "anomalous"):
            texts = sentences(prompt_set, class_name, state)
            embeddings = torch.cat([text_encoder.encode(texts[i:i + _BATCH]) for i in range(0, len(texts), _BATCH)])
            anchors.append(F.normalize(F.normalize(embeddings.float(), dim=-1).mean(dim=0), dim=-1))
    return torch.stack(anchors)
