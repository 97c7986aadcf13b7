"""Multi-process training and evaluation on ``torch.distributed``, launched with ``torchrun``.

``torchrun --nproc-per-node N -m zsad train|eval ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init_from_env` then joins the process group (NCCL on GPUs, gloo on CPUs) and gives each process
its own device. Nothing here runs — and nothing changes — in a plain single-process launch.

* Training: every rank draws the same seeded permutation per epoch and takes its slice of each global
  batch (``batch_size / world_size`` images), and DistributedDataParallel averages gradients, so one
  step equals a single-process step on the whole batch up to floating-point reduction order. Only rank
  0 writes checkpoints and logs; every rank reads them on ``--resume``.
* Evaluation: the independent (category, k, seed) runs are dealt round-robin to the ranks and the
  results gathered on rank 0, which summarises and writes them: identical to a single process.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from zsad.errors import ConfigError

T = TypeVar("T")


def launched() -> bool:
    """True inside a multi-process launch (torchrun or a compatible launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_name: str | None = None) -> torch.device | None:
    """Join the process group of a torchrun launch and return this rank's device (None if not launched)."""
    if not launched():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name:
        device = torch.device(device_name)
    else:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(items: list[T]) -> list[T]:
    """This rank's round-robin share of ``items``."""
    return items[rank() :: world_size()]


def gather(items: list[Any]) -> list[Any]:
    """Every rank's ``items`` concatenated on every rank (rank order), as Python objects."""
    if not dist.is_initialized():
        return items
    everyone: list[list[Any]] = [[] for _ in range(world_size())]
    dist.all_gather_object(everyone, items)
    return [item for part in everyone for item in part]


def local_batch_size(batch_size: int) -> int:
    """This rank's share of a global batch; the global batch must split evenly."""
    n = world_size()
    if batch_size % n:
        raise ConfigError(f"batch size {batch_size} does not split evenly over {n} processes")
    return batch_size // n


class _TrainingLoss(nn.Module):
    """Lets DistributedDataParallel drive ``method.training_loss`` as if it were ``forward``."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Any, features: Any) -> dict[str, Tensor]:
        return self.method.training_loss(batch, features)


def data_parallel(method: nn.Module) -> DistributedDataParallel:
    """``method.training_loss`` wrapped in DDP: gradients of the trainable parameters are averaged over
    ranks during backward. Unused-parameter detection is on because routed experts or switched-off
    branches may receive no gradient in a step."""
    device = next(method.parameters()).device
    return DistributedDataParallel(_TrainingLoss(method), device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Per-key mean over ranks, so logs and plateau schedules see the same numbers everywhere."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / world_size()).tolist()))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
