"""Checkpoints: safetensors for tensors, JSON for everything else; nothing is ever unpickled.

Layout of a checkpoint folder::

    config.json          {"format": "zsad-checkpoint", "method": name, "config": {...}, "epoch": n, ...}
    model.safetensors    the method's own tensors (never the frozen backbone's)
    train_state.json     optimizer/scheduler scalars and structure   (training runs only)
    train_state.safetensors  optimizer tensors                         (training runs only)

Every file is written to a temporary name and renamed into place, and ``config.json`` is written last,
so a crash leaves either the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from zsad import io
from zsad.errors import ConfigError

FORMAT = "zsad-checkpoint"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE_JSON = "train_state.json"
STATE_TENSORS = "train_state.safetensors"


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


def save_checkpoint(directory: str | Path, method_name: str, config: dict[str, Any],
                    tensors: dict[str, Tensor], **meta: Any) -> Path:
    """Write an inference checkpoint (weights, then config) into ``directory``."""
    directory = Path(directory)
    save_tensors(directory / WEIGHTS, tensors)
    io.write_text(directory / CONFIG, json.dumps({"format": FORMAT, "method": method_name, "config": config,
                                                 **meta}, indent=2))
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / CONFIG
    if not directory.is_dir():
        raise ConfigError(f"{directory}: checkpoint folder not found")
    if not path.is_file():
        raise ConfigError(f"{directory}: not a zsad checkpoint (no {CONFIG})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if data.get("format") != FORMAT or "method" not in data:
        raise ConfigError(f"{path}: not a zsad checkpoint config")
    return data


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
