"""Sparse-projected guides: four non-negative codes in the SAE's latent space (stage 2).

The codes are ordered global-normal, global-anomaly, local-normal, local-anomaly. Each is
``ReLU(parameter)`` with the dictionary's dead atoms zeroed, so a guide ``c · D`` is a non-negative
combination of atoms the auxiliary tokens actually use, and every decision can be traced back to the
few atoms its code weights. Dead atoms are masked by multiplication: they contribute nothing and their
parameters receive exactly zero gradient.

Training updates the live parameters; inference reads an exponential moving average of them (updated
after every optimizer step, starting from the initial values), which smooths the last steps of
training at lr 1e-2. The optional straight-through top-k keeps only each code's ``topk`` largest
coefficients in the forward pass while the gradient reaches all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GUIDE_NAMES = ("global-normal", "global-anomaly", "local-normal", "local-anomaly")


def straight_through_topk(codes: Tensor, k: int) -> Tensor:
    """``codes`` with all but the ``k`` largest entries of each row zeroed in value, not in gradient."""
    values, indices = codes.topk(min(k, codes.shape[-1]), dim=-1)
    hard = torch.zeros_like(codes).scatter(-1, indices, values)
    return codes + (hard - codes).detach()


class GuideCodes(nn.Module):
    """The four guide codes ``[4, latents]``, their EMA and the dead-atom mask."""

    def __init__(self, latents: int, init: float = 0.1, init_std: float = 0.01, ema_decay: float = 0.999,
                 topk: int = 0) -> None:
        super().__init__()
        self.ema_decay = ema_decay
        self.topk = topk
        self.weight = nn.Parameter(init + init_std * torch.randn(len(GUIDE_NAMES), latents))
        self.register_buffer("ema", self.weight.detach().clone())
        self.register_buffer("dead_atoms", torch.zeros(latents, dtype=torch.bool))

    def forward(self, averaged: bool = False) -> Tensor:
        """The non-negative codes ``[4, latents]``, from the EMA when ``averaged``."""
        codes = F.relu(self.ema if averaged else self.weight) * (~self.dead_atoms).to(self.weight.dtype)
        return straight_through_topk(codes, self.topk) if self.topk else codes

    @torch.no_grad()
    def update_ema(self) -> None:
        self.ema.lerp_(self.weight, 1 - self.ema_decay)

    @torch.no_grad()
    def set_dead_atoms(self, dead: Tensor) -> None:
        self.dead_atoms.copy_(dead)
