"""TopK sparse autoencoder over frozen patch tokens: SPG's dictionary of atoms (stage 1).

``z = scatter(topk(W_enc x, k)).clamp(min=0)``, ``x̂ = z · D``. Encoder and decoder have no bias, so a
guide code ``c`` maps to a guide vector ``c · D`` with no offset shared by every guide. The rows of D
(the atoms) have unit norm in every forward pass and are renormalised in place after every optimizer
step, so a latent's size is measured by its activation alone; the encoder starts as a copy of D.

Latents that have not fired (activation above ``active_threshold``) for ``dead_tokens`` training tokens
are *dead*; AuxK (Gao et al., "Scaling and evaluating sparse autoencoders") revives them by asking the
top ``auxk`` pre-activations of the dead latents alone to reconstruct the main reconstruction's detached
residual. The inactivity counter is a buffer, so a resumed run continues it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def topk_activation(pre: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest pre-activations of each row, clamped at zero; everything else is zero."""
    values, indices = pre.topk(min(k, pre.shape[-1]), dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values.clamp(min=0))


@dataclass
class SAELosses:
    """One batch's objective and what stage 1 reports about it."""

    loss: Tensor  # reconstruction MSE + auxk_coef * AuxK
    reconstruction: Tensor  # MSE between tokens and reconstructions
    auxk: Tensor  # AuxK residual MSE (zero while no latent is dead)
    dead_fraction: Tensor  # latents inactive for at least ``dead_tokens`` tokens
    active_latents: Tensor  # mean number of positive latents per token (at most k)


class TopKSAE(nn.Module):
    """Bias-free TopK sparse autoencoder with a unit-norm dictionary ``[latents, dim]``."""

    def __init__(self, dim: int, latents: int, k: int, auxk: int = 512, auxk_coef: float = 1 / 32,
                 dead_tokens: int = 10_000_000, active_threshold: float = 1e-3) -> None:
        super().__init__()
        self.k = k
        self.auxk = auxk
        self.auxk_coef = auxk_coef
        self.dead_tokens = dead_tokens
        self.active_threshold = active_threshold
        self.atoms = nn.Parameter(F.normalize(torch.randn(latents, dim) / latents**0.5, dim=-1))
        self.encoder = nn.Linear(dim, latents, bias=False)
        with torch.no_grad():
            self.encoder.weight.copy_(self.atoms)
        self.register_buffer("tokens_since_active", torch.zeros(latents, dtype=torch.long))

    @property
    def latents(self) -> int:
        return self.atoms.shape[0]

    @property
    def dictionary(self) -> Tensor:
        """The atoms with unit-norm rows ``[latents, dim]`` (differentiable)."""
        return F.normalize(self.atoms, dim=-1)

    def encode(self, tokens: Tensor) -> Tensor:
        """Sparse non-negative codes ``[..., latents]``: at most ``k`` positive entries per token."""
        return topk_activation(self.encoder(tokens), self.k)

    def decode(self, codes: Tensor) -> Tensor:
        return codes @ self.dictionary

    @torch.no_grad()
    def renormalise(self) -> None:
        """Put the stored atoms back on the unit sphere (after every optimizer step)."""
        self.atoms.copy_(F.normalize(self.atoms, dim=-1))

    def dead_latents(self) -> Tensor:
        """Boolean ``[latents]``: inactive for at least ``dead_tokens`` training tokens."""
        return self.tokens_since_active >= self.dead_tokens

    def losses(self, tokens: Tensor) -> SAELosses:
        """Stage-1 objective on tokens ``[T, dim]``; updates the inactivity counters (call once per step)."""
        pre = self.encoder(tokens)
        codes = topk_activation(pre, self.k)
        reconstruction = self.decode(codes)
        mse = F.mse_loss(reconstruction, tokens)
        with torch.no_grad():
            fired = (codes > self.active_threshold).any(0)
            self.tokens_since_active.add_(tokens.shape[0]).masked_fill_(fired, 0)
        dead = self.dead_latents()
        auxk = self._auxk(pre, dead, tokens - reconstruction.detach())
        return SAELosses(
            loss=mse + self.auxk_coef * auxk,
            reconstruction=mse,
            auxk=auxk,
            dead_fraction=dead.float().mean(),
            active_latents=(codes > 0).sum(-1).float().mean(),
        )

    def _auxk(self, pre: Tensor, dead: Tensor, residual: Tensor) -> Tensor:
        """MSE of reconstructing ``residual`` from the top ``auxk`` pre-activations of dead latents only."""
        count = min(self.auxk, int(dead.sum()))
        if count == 0:
            return pre.new_zeros(())
        codes = topk_activation(pre.masked_fill(~dead, float("-inf")), count)
        return F.mse_loss(self.decode(codes), residual)
