"""The top of a pair kernel's spectrum: the exact evidence's prior and the held-out variances
from it equal those of the full eigendecomposition (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.evidence import exact_evidence_prior_precision, exact_ggn_eigenvalues
from bt_laplace.prior.spectrum import settled_spectrum


def kernel_with_spectrum(values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    n = len(values)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (q * values) @ q.T


def prior_of(theta_sq: float):
    return lambda e: exact_evidence_prior_precision(e, theta_sq)


@pytest.mark.parametrize("theta_sq", [0.5, 20.0], ids=["weak-prior", "strong-prior"])
def test_settled_prior_equals_the_full_decomposition_on_a_falling_spectrum(theta_sq):
    values = 1e3 * 0.8 ** torch.arange(300, dtype=torch.float64)
    mat = kernel_with_spectrum(values)
    exact = exact_evidence_prior_precision(torch.linalg.eigvalsh(mat), theta_sq)
    spectrum = settled_spectrum(mat, prior_of(theta_sq), rank=64, vectors=True)
    unsettled = settled_spectrum(mat, prior_of(theta_sq), rank=8)  # too few: the full one
    assert len(unsettled.values) == 300
    assert len(spectrum.values) < 100  # settled on the top, not the full decomposition
    assert float(spectrum.values[0]) <= 1e-3 * exact * 1.01
    k = len(spectrum.values)
    torch.testing.assert_close(spectrum.values, values[:k].flip(0), rtol=1e-8, atol=1e-10)
    assert spectrum.tail == pytest.approx(float(values[k:].sum()), rel=1e-6, abs=1e-9)
    settled = exact_evidence_prior_precision(spectrum.eigenvalues(), theta_sq)
    assert settled == pytest.approx(exact, rel=1e-5)
    # c^T (M + delta I)^-1 c near that prior, against a dense solve
    cross = torch.randn(300, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for delta in (exact / 3, exact, 3 * exact):
        dense = (cross * torch.linalg.solve(mat + delta * torch.eye(300), cross)).sum(0)
        torch.testing.assert_close(spectrum.project(cross, delta), dense, rtol=1e-4, atol=0)


def test_flat_spectrum_takes_the_full_decomposition():
    values = torch.linspace(1.0, 2.0, 60, dtype=torch.float64)
    mat = kernel_with_spectrum(values)
    spectrum = settled_spectrum(mat, prior_of(1e-3), rank=8)
    assert len(spectrum.values) == 60 and spectrum.tail == 0.0
    torch.testing.assert_close(spectrum.eigenvalues(), values, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_exact_evidence_prior_of_an_mlp_is_settled_from_the_top_of_its_pair_kernel():
    """800 pairs of an MLP with 1,409 parameters (the N x N kernel path): the prior from the
    settled spectrum equals the prior from every eigenvalue."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 1)).double()
    model = btl.PairwiseRewardModel(net)
    x = torch.randn(800, 2, 20, dtype=torch.float64)
    y = (torch.rand(800) < torch.sigmoid(x[:, 1, :3].sum(1) - x[:, 0, :3].sum(1))).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=200)
    post = btl.fit_reward_posterior(model, loader, evidence="exact")
    la = post.laplace
    theta_sq = float((la.mean - la.prior_mean).square().sum())
    full = exact_evidence_prior_precision(exact_ggn_eigenvalues(la, loader), theta_sq)
    settled = exact_ggn_eigenvalues(la, loader, theta_sq=theta_sq)
    assert settled.shape == (800,)
    assert exact_evidence_prior_precision(settled, theta_sq) == pytest.approx(full, rel=1e-5)
    assert float(post.prior_precision) == pytest.approx(full, rel=1e-5)


@pytest.mark.parametrize("cholesky_fails", [False, True])
def test_projection_of_the_whole_spectrum_solves_exactly(monkeypatch, cholesky_fails):
    """Where every eigenvalue is needed, the projection solves with a Cholesky factor, or
    where the shifted matrix is not numerically positive definite with the
    eigendecomposition; both equal the explicit solve."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 5, generator=g, dtype=torch.float64)
    mat = a @ a.T
    cross = torch.randn(40, 3, generator=g, dtype=torch.float64)
    spectrum = settled_spectrum(mat, lambda e: 1.0, vectors=True, rank=40)
    assert spectrum.vectors is None and spectrum.matrix is mat
    if cholesky_fails:
        real = torch.linalg.cholesky_ex
        monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda m: (real(m)[0], torch.tensor(1)))
    shifted = mat + 0.3 * torch.eye(40, dtype=mat.dtype)
    want = (cross * torch.linalg.solve(shifted, cross)).sum(0)
    torch.testing.assert_close(spectrum.project(cross, 0.3), want, rtol=1e-10, atol=0)
