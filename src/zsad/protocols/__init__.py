"""The papers' protocols and published tables, shipped as data (``<paper>.json`` beside this file).

Each file says what a paper ran — method, backbone, input size, which auxiliary dataset trains the model
for which target, shot counts, reference draws — in the flavours ``paper`` (what the paper writes) and
``code`` (what its public code ran), lists the code-only options with whether they read test-set
statistics, and holds the published numbers cell by cell with the table each comes from. Reading them
needs nothing but the standard library, so the command line can describe every paper without loading
torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from zsad.errors import ConfigError

PAPERS = ("dictas", "moeclip", "spg", "aprilgan", "anomalyclip", "winclip")
Flavour = Literal["paper", "code"]


@dataclass(frozen=True)
class Protocol:
    """One paper's protocol and published numbers, as shipped in ``protocols/<paper>.json``."""

    paper: str
    title: str
    citation: str
    method: str
    backbone: str
    image_size: int
    targets: tuple[str, ...]
    auxiliary: dict[str, str]  # target -> auxiliary dataset; "default" for the rest; empty: training-free
    shots: tuple[int, ...]
    stages: tuple[dict[str, Any], ...]  # config overrides per training stage, in order; empty: training-free
    flavours: dict[str, dict[str, Any]]
    differences: tuple[dict[str, Any], ...]
    published: tuple[dict[str, Any], ...]  # {"dataset", "shots", "source", "metrics": {key: percent}}

    @classmethod
    def load(cls, paper: str) -> Protocol:
        if paper not in PAPERS:
            raise ConfigError(f"unknown paper {paper!r}; known: {', '.join(PAPERS)}")
        data = json.loads((resources.files("zsad.protocols") / f"{paper}.json").read_text())
        return cls(data["paper"], data["title"], data["citation"], data["method"], data["backbone"],
                   data["image_size"], tuple(data["targets"]), data["auxiliary"], tuple(data["shots"]),
                   tuple(data["stages"]), data["flavours"], tuple(data["differences"]), tuple(data["published"]))

    @property
    def trains(self) -> bool:
        return bool(self.stages)

    def auxiliary_for(self, target: str) -> str | None:
        return self.auxiliary.get(target, self.auxiliary.get("default")) if self.trains else None

    def datasets(self) -> list[str]:
        """Every dataset name the protocol reads: targets, then auxiliary sets that are not targets."""
        extra = sorted(set(self.auxiliary.values()) - set(self.targets))
        return [*self.targets, *extra]

    def differences_for(self, flavour: Flavour) -> list[dict[str, Any]]:
        return [d for d in self.differences if d["flavour"] in (flavour, "both")]
