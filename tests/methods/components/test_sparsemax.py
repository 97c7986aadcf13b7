"""Sparsemax is the Euclidean projection onto the simplex, with the exact Jacobian in its backward pass."""

from __future__ import annotations

import pytest
import torch

from zsad.methods.components.sparsemax import sparsemax


def simplex_projection(z: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """Reference without sorting: bisection on ``tau`` until ``sum(max(z - tau, 0)) == 1`` (float64)."""
    lo = z.amax(-1, keepdim=True) - 1  # sum >= 1 here
    hi = z.amax(-1, keepdim=True)  # sum == 0 here
    for _ in range(iterations):
        mid = (lo + hi) / 2
        too_low = (z - mid).clamp_min(0).sum(-1, keepdim=True) > 1
        lo = torch.where(too_low, mid, lo)
        hi = torch.where(too_low, hi, mid)
    return (z - (lo + hi) / 2).clamp_min(0)


def test_matches_bisection_projection() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 37, generator=g, dtype=torch.float64) * torch.logspace(-2, 1, 64, dtype=torch.float64)[:, None]
    p = sparsemax(z)
    torch.testing.assert_close(p, simplex_projection(z), atol=1e-10, rtol=0)
    assert torch.all(p >= 0)
    torch.testing.assert_close(p.sum(-1), torch.ones(64, dtype=torch.float64))
    assert (p == 0).any(), "large-scale scores must give exact zeros"


def test_is_the_closest_point_of_the_simplex() -> None:
    """No random point of the simplex is closer to z than sparsemax(z)."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 5, generator=g, dtype=torch.float64)
    p = sparsemax(z)
    others = torch.distributions.Dirichlet(torch.ones(5, dtype=torch.float64)).sample((2000,))
    best = (p - z).norm(dim=-1)
    assert torch.all((others[:, None, :] - z[None]).norm(dim=-1) >= best[None] - 1e-12)


def test_other_dimension_shift_invariance_and_limits() -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 10, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sparsemax(z, dim=1), sparsemax(z.transpose(1, 2)).transpose(1, 2))
    torch.testing.assert_close(sparsemax(z + 7.5), sparsemax(z))
    # Far-apart scores select the maximum; equal scores give the uniform distribution.
    spread = sparsemax(torch.tensor([[0.0, 5.0, 1.0]]))
    assert spread.tolist() == [[0.0, 1.0, 0.0]]
    torch.testing.assert_close(sparsemax(torch.zeros(1, 4)), torch.full((1, 4), 0.25))


@pytest.mark.parametrize("dim", [-1, 0])
def test_gradient_matches_finite_differences(dim: int) -> None:
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(6, 9, generator=g, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sparsemax(x, dim), (z,), eps=1e-6, atol=1e-6)


def test_gradient_is_the_jacobian_of_the_projection() -> None:
    """``J = diag(s) - s sᵀ/|S|`` on the support: rows of J sum to zero and vanish off the support."""
    z = torch.tensor([[1.2, 1.0, -3.0, 0.9]], dtype=torch.float64, requires_grad=True)
    p = sparsemax(z)
    jacobian = torch.stack([torch.autograd.grad(p[0, i], z, retain_graph=True)[0][0] for i in range(4)])
    support = (p[0] > 0).double()
    expected = torch.diag(support) - support[:, None] * support[None, :] / support.sum()
    torch.testing.assert_close(jacobian, expected)


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])  # wide supports need the fallback, narrow ones do not
def test_candidate_search_is_exact(scale: float) -> None:
    g = torch.Generator().manual_seed(4)
    z = torch.randn(5, 7, 300, generator=g, dtype=torch.float64) * scale
    full = sparsemax(z)
    for candidates in (1, 4, 64, 1000):
        torch.testing.assert_close(sparsemax(z, candidates=candidates), full, atol=1e-12, rtol=0)
    torch.testing.assert_close(sparsemax(z, dim=1, candidates=2), sparsemax(z, dim=1), atol=1e-12, rtol=0)
