"""Device, precision and seeding, decided once per run.

Methods and engines never hard-code a device: they call :func:`pick_device` once and move everything
there; tensors then stay on it.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from zsad.errors import ConfigError


def pick_device(name: str | None = None) -> torch.device:
    """The requested device, or the best one available (CUDA, then MPS, then CPU)."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as err:
            raise ConfigError(f"unknown device {name!r}: {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` in {"fp32", "bf16", "fp16"}; fp32 is a no-op."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ConfigError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
    return torch.autocast(device_type=device.type, dtype=dtypes[precision])


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for code that wants its own stream."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return torch.Generator().manual_seed(seed)
