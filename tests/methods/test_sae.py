"""The TopK sparse autoencoder of SPG's stage 1."""

from __future__ import annotations

import torch

from zsad.methods.spg.sae import TopKSAE, topk_activation


def _sparse_tokens(count: int, dim: int = 24, atoms: int = 48, active: int = 3, seed: int = 0) -> torch.Tensor:
    """Tokens that are non-negative mixtures of a few of ``atoms`` hidden directions: what an SAE can learn."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(atoms, dim, generator=generator), dim=-1)
    chosen = torch.rand(count, atoms, generator=generator).argsort(1)[:, :active]
    codes = torch.zeros(count, atoms).scatter(1, chosen, 1 + torch.rand(count, active, generator=generator))
    return codes @ directions


def test_topk_selects_exactly_k_then_clamps():
    pre = torch.randn(50, 40, generator=torch.Generator().manual_seed(1))
    shifted = topk_activation(pre + 10, 6)  # every pre-activation positive: the clamp changes nothing
    assert ((shifted > 0).sum(1) == 6).all()
    expected = pre + 10
    assert torch.equal(shifted.gather(1, expected.topk(6, dim=1).indices), expected.topk(6, dim=1).values)
    codes = topk_activation(pre, 6)
    assert ((codes > 0).sum(1) <= 6).all() and (codes >= 0).all()
    selected = torch.zeros_like(pre, dtype=torch.bool).scatter(1, pre.topk(6, dim=1).indices, True)
    assert torch.equal(codes, torch.where(selected, pre.clamp(min=0), torch.zeros_like(pre)))


def test_reconstruction_improves_and_dictionary_stays_unit_norm():
    torch.manual_seed(0)
    tokens = _sparse_tokens(512)
    sae = TopKSAE(dim=24, latents=96, k=4, auxk=16, dead_tokens=2048)
    assert torch.allclose(sae.encoder.weight, sae.dictionary, atol=1e-6)  # the encoder starts as a copy of D
    before = sae.losses(tokens).reconstruction
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2, betas=(0.5, 0.999))
    for step in range(150):
        batch = tokens[(step * 64) % 512:][:64]
        parts = sae.losses(batch)
        optimizer.zero_grad()
        parts.loss.backward()
        optimizer.step()
        sae.renormalise()
        assert torch.allclose(sae.atoms.norm(dim=-1), torch.ones(96), atol=1e-5)
    after = sae.losses(tokens)
    assert after.reconstruction < 0.3 * before
    assert after.active_latents <= 4
    assert ((sae.encode(tokens) > 0).sum(-1) <= 4).all()


def test_inactivity_counter_and_auxk_reach_only_dead_latents():
    torch.manual_seed(0)
    sae = TopKSAE(dim=8, latents=32, k=2, auxk=4, dead_tokens=100)
    tokens = torch.randn(10, 8)
    parts = sae.losses(tokens)
    fired = (sae.encode(tokens) > sae.active_threshold).any(0)
    assert torch.equal(sae.tokens_since_active, torch.where(fired, 0, 10))
    assert parts.auxk == 0 and parts.dead_fraction == 0  # nobody has been idle for 100 tokens yet

    sae.tokens_since_active.fill_(0)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[20:] = True
    sae.tokens_since_active[dead] = 1000
    parts = sae.losses(tokens)
    still_dead = sae.dead_latents()  # those of 20..31 that did not fire on this batch
    assert still_dead.any() and not still_dead[:20].any()
    assert parts.auxk > 0 and parts.dead_fraction == still_dead.float().mean()
    sae.zero_grad()
    (sae.auxk_coef * parts.auxk).backward()
    rows_with_gradient = sae.encoder.weight.grad.abs().sum(1) > 0
    assert rows_with_gradient.any() and not (rows_with_gradient & ~still_dead).any()
