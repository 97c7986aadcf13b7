"""Checkpoints: safetensors for tensors, JSON for everything else; nothing is ever unpickled.

Layout of a checkpoint folder::

    config.json          {"format": "zsad-checkpoint", "format_version": 1, "zsad_version": "...",
                          "method": name, "method_version": n, "config": {...}, "epoch": n, ...}
    model.safetensors    the method's own tensors (never the frozen backbone's)
    train_state.json     optimizer/scheduler scalars and structure   (training runs only)
    train_state.safetensors  optimizer tensors                         (training runs only)

A checkpoint is written as one unit (:class:`CheckpointWriter`): every file first goes to
``<name>.pending``; then a commit marker listing them is written, and only then are they renamed into
place. Readers first finish an interrupted commit (marker present: roll forward) or discard pending
files (no marker: the previous checkpoint stands), so a crash at any moment leaves either the previous
complete checkpoint or the new one, never a mix of epochs.

``format_version`` versions this layout and ``method_version`` the method's config fields and tensor
names (:attr:`zsad.methods.base.Method.config_version`). Reading upgrades older files step by step
(:data:`FORMAT_UPGRADES`, then :meth:`~zsad.methods.base.Method.upgrade_checkpoint`) and refuses files
written by a newer zsad instead of misreading them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from zsad import __version__
from zsad.core import io
from zsad.errors import ConfigError
from zsad.inference.calibration import held_out_thresholds
from zsad.inference.inspection import Thresholds

FORMAT = "zsad-checkpoint"
FORMAT_VERSION = 2
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE_JSON = "train_state.json"
STATE_TENSORS = "train_state.safetensors"
PENDING = ".pending"
COMMIT = "checkpoint.commit"


class CheckpointWriter:
    """Collects the files of one checkpoint under ``.pending`` names; :meth:`commit` makes them current."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        recover(self.directory)
        self.names: list[str] = []

    def path(self, name: str) -> Path:
        self.names.append(name)
        return self.directory / f"{name}{PENDING}"

    def tensors(self, name: str, tensors: dict[str, Tensor]) -> None:
        save_tensors(self.path(name), tensors)

    def text(self, name: str, text: str) -> None:
        io.write_text(self.path(name), text)

    def commit(self) -> None:
        io.write_text(self.directory / COMMIT, json.dumps(self.names))
        recover(self.directory)


def recover(directory: str | Path) -> None:
    """Finish a commit whose marker exists (rename its pending files into place), then drop leftovers."""
    directory = Path(directory)
    marker = directory / COMMIT
    if marker.is_file():
        for name in json.loads(marker.read_text()):
            pending = directory / f"{name}{PENDING}"
            if pending.exists():
                os.replace(pending, directory / name)
        marker.unlink()
    if directory.is_dir():
        for leftover in directory.glob(f"*{PENDING}"):
            leftover.unlink()


def save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    with io.atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint file not found")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable safetensors file ({err})") from None


def _unversioned_to_1(data: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints written before versioning: their method configs were version 1."""
    return {**data, "method_version": data.get("method_version", 1)}


def _thresholds_with_provenance(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 stores held-out thresholds as :class:`~zsad.inference.inspection.Thresholds` (one type
    for checkpoints, exports, predict and the service), sealed by ``thresholds_sha256``; version 1 had their
    own shape."""
    old = data.get("thresholds")
    if old is not None:
        held_out, achieved = old["held_out"], old["achieved"]
        found = achieved["image_tpr"]
        calibration = {"kind": "held-out", "target_fpr": old["target_fpr"], "pixel_fpr": old["pixel_fpr"],
                       "images": held_out["images"], "normal": held_out["normal"], "defects": held_out["defective"],
                       "categories": held_out["categories"], "normal_flagged": achieved["image_fpr"],
                       "defects_found": None if found is None or math.isnan(found) else found}
        thresholds = held_out_thresholds(old["image"], old["pixel"], tuple(old["colour_range"]), calibration)
        data["thresholds"], data["thresholds_sha256"] = thresholds.to_dict(), thresholds.digest()
    return data


# FORMAT_UPGRADES[v] turns a version-v config.json into version v + 1.
FORMAT_UPGRADES = {0: _unversioned_to_1, 1: _thresholds_with_provenance}


def save_checkpoint(directory: str | Path, method_name: str, config: dict[str, Any],
                    tensors: dict[str, Tensor], method_version: int = 1, **meta: Any) -> Path:
    """Write an inference checkpoint (weights and config, one unit) into ``directory``."""
    writer = CheckpointWriter(directory)
    add_checkpoint(writer, method_name, config, tensors, method_version, **meta)
    writer.commit()
    return Path(directory)


def add_checkpoint(writer: CheckpointWriter, method_name: str, config: dict[str, Any], tensors: dict[str, Tensor],
                   method_version: int = 1, **meta: Any) -> None:
    """Weights and ``config.json`` as part of a larger unit (a training checkpoint adds its state)."""
    writer.tensors(WEIGHTS, tensors)
    writer.text(CONFIG, json.dumps({
        "format": FORMAT, "format_version": FORMAT_VERSION, "zsad_version": __version__, "method": method_name,
        "method_version": method_version, "config": config, **meta}, indent=2))


def update_config(directory: str | Path, **fields: Any) -> None:
    """Add or replace top-level fields of a checkpoint's ``config.json`` (atomically)."""
    updated = json.dumps({**read_config(directory), **fields}, indent=2)
    writer = CheckpointWriter(directory)
    writer.text(CONFIG, updated)
    writer.commit()


def read_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / CONFIG
    if not directory.is_dir():
        raise ConfigError(f"{directory}: checkpoint folder not found")
    if (directory / COMMIT).exists() or any(directory.glob(f"*{PENDING}")):
        recover(directory)
    if not path.is_file():
        raise ConfigError(f"{directory}: not a zsad checkpoint (no {CONFIG})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "method" not in data:
        raise ConfigError(f"{path}: not a zsad checkpoint config")
    version = data.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ConfigError(f"{path}: 'format_version' must be a non-negative integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ConfigError(f"{path}: checkpoint format version {version!r} was written by a newer zsad "
                          f"({data.get('zsad_version', '?')}); this is zsad {__version__}, which reads up to "
                          f"{FORMAT_VERSION}")
    while version < FORMAT_VERSION:
        data = FORMAT_UPGRADES[version](data)
        version += 1
    method_version = data.get("method_version")
    if not isinstance(method_version, int) or isinstance(method_version, bool) or method_version < 1:
        raise ConfigError(f"{path}: 'method_version' must be a positive integer, got {method_version!r}")
    if not isinstance(data.get("config"), dict) or not isinstance(data["method"], str):
        raise ConfigError(f"{path}: 'method' must be a name and 'config' an object")
    return {**data, "format_version": version}


def flatten_state(state: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Split a nested state dict into JSON-able structure and a flat tensor table (for safetensors)."""
    if isinstance(state, Tensor):
        tensors[prefix] = state
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {"__dict__": [[_key(k), flatten_state(v, f"{prefix}.{k}", tensors)] for k, v in state.items()]}
    if isinstance(state, (list, tuple)):
        return {"__list__": [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)],
                "tuple": isinstance(state, tuple)}
    return state


def unflatten_state(structure: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(structure, dict):
        if "__tensor__" in structure:
            return tensors[structure["__tensor__"]]
        if "__dict__" in structure:
            return {_unkey(k): unflatten_state(v, tensors) for k, v in structure["__dict__"]}
        if "__list__" in structure:
            items = [unflatten_state(v, tensors) for v in structure["__list__"]]
            return tuple(items) if structure.get("tuple") else items
    return structure


def _key(k: Any) -> Any:
    return {"int": k} if isinstance(k, int) else k


def _unkey(k: Any) -> Any:
    return k["int"] if isinstance(k, dict) else k


def stored_thresholds(directory: str | Path) -> Thresholds | None:
    """The decision thresholds a checkpoint carries (calibrated at training time), or None."""
    config = read_config(directory)
    if config.get("thresholds") is None:
        return None
    return Thresholds.from_sealed(config["thresholds"], config.get("thresholds_sha256"),
                                  f"{Path(directory) / CONFIG}: thresholds",
                                  f"calibrate them on held-out images: zsad calibrate --checkpoint {directory} "
                                  f"--refs NORMAL_DIR [--defects DEFECT_DIR]")
