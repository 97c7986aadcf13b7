"""Loading pretrained weights offline-first, safetensors only.

Every Hugging Face call passes ``local_files_only=True`` unless ``ZSAD_ALLOW_DOWNLOAD=1``, so a machine
without network never waits on retries: missing weights become one :class:`WeightsNotFoundError` line
saying how to supply them. Pickled checkpoints (``pytorch_model.bin``) are refused; only safetensors are
read.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from zsad.errors import ConfigError, WeightsNotFoundError

ALLOW_DOWNLOAD_ENV = "ZSAD_ALLOW_DOWNLOAD"


def downloads_allowed() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "") == "1"


def resolve_source(weights: str) -> str:
    """A local folder (returned as an absolute path) or a hub id; a path-like name that is missing fails."""
    path = Path(weights).expanduser()
    if path.is_dir():
        if not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
            raise WeightsNotFoundError(
                f"weights folder {path} holds only pickled *.bin files; zsad reads safetensors only "
                f"(re-save them with save_pretrained(..., safe_serialization=True))"
            )
        return str(path)
    if path.exists() or not _looks_like_hub_id(weights):
        raise WeightsNotFoundError(f"weights folder {weights} does not exist or is not a folder")
    return weights


def _looks_like_hub_id(text: str) -> bool:
    """``name`` or ``owner/name``: hub ids never start with a dot, slash or tilde, nor nest folders."""
    return not text.startswith((".", "/", "~")) and "\\" not in text and text.count("/") <= 1


def load_config(source: str, model_type: str, name: str) -> PretrainedConfig:
    """The config at ``source``, checked to be a ``model_type`` model."""
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=not downloads_allowed())
    except (OSError, ValueError) as err:
        raise _missing(name, source, err) from None
    if config.model_type != model_type:
        raise ConfigError(f"weights {source} hold a {config.model_type!r} model but {name} needs {model_type!r}")
    return config


def load_model(model_class: type[PreTrainedModel], source: str, name: str,
               config: PretrainedConfig | None = None) -> PreTrainedModel:
    """``model_class`` from ``source`` in float32 (autocast decides precision later), in eval mode."""
    try:
        model, info = model_class.from_pretrained(source, config=config, dtype=torch.float32, use_safetensors=True,
                                                  local_files_only=not downloads_allowed(), output_loading_info=True)
    except OSError as err:
        raise _missing(name, source, err) from None
    except (ValueError, RuntimeError) as err:
        raise WeightsNotFoundError(f"weights {source} for {name} could not be loaded: {_first_line(err)}") from None
    if info["missing_keys"]:  # transformers would silently leave these randomly initialised
        missing = sorted(info["missing_keys"])
        raise WeightsNotFoundError(f"weights {source} for {name} lack {len(missing)} tensors, e.g. {missing[0]}")
    return model.eval()


def load_tokenizer(source: str, name: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=not downloads_allowed())
    except (OSError, ValueError) as err:
        raise _missing(name, source, err, what="tokenizer") from None


def _missing(name: str, source: str, err: Exception, what: str = "weights") -> WeightsNotFoundError:
    if Path(source).is_dir():
        return WeightsNotFoundError(f"{what} for {name} not found in folder {source}: {_first_line(err)}")
    if downloads_allowed():
        return WeightsNotFoundError(f"{what} for {name} could not be downloaded from {source}: {_first_line(err)}")
    return WeightsNotFoundError(
        f"{what} for {name} ({source}) are not on this machine: pass --weights /path/to/folder (a "
        f"save_pretrained folder), run `hf download {source}` on a machine with network, "
        f"or set {ALLOW_DOWNLOAD_ENV}=1 to download"
    )


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
