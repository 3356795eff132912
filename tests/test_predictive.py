"""Jacobian-free predictive against brute-force J Sigma J^T and Monte Carlo (float64)."""

from __future__ import annotations

import pytest
import torch
from conftest import D_IN
from laplace import Laplace
from laplace.curvature import CurvlinopsGGN

import bt_laplace as btl
from bt_laplace._layer_io import posterior_parameters
from bt_laplace.testing import item_jacobians

CONFIGS = [
    ("all", "diag"),
    ("all", "kron"),
    ("all", "full"),
    ("last_layer", "diag"),
    ("last_layer", "kron"),
    ("last_layer", "full"),
]
IDS = [f"{s}-{h}" for s, h in CONFIGS]


def _covariance(la) -> torch.Tensor:
    """Dense posterior covariance of any fitted laplace-torch posterior."""
    if hasattr(la, "posterior_covariance"):
        return la.posterior_covariance
    if hasattr(la, "posterior_variance"):
        return torch.diag(la.posterior_variance)
    return la.posterior_precision.to_matrix(exponent=-1)


def _reference_jacobian(post, items: torch.Tensor) -> torch.Tensor:
    """Brute-force Jacobian of the reward w.r.t. the posterior's parameters ``(N, P)``."""
    model = post.model
    if post.laplace.n_params == sum(p.numel() for p in model.parameters()):
        return item_jacobians(model, items)
    with torch.no_grad():
        phi = model.net[:-1](items)
    return torch.cat([phi, torch.ones(len(items), 1, dtype=items.dtype)], 1)


@pytest.fixture(params=CONFIGS, ids=IDS)
def posterior(request, reward_model, pair_loader):
    subset, structure = request.param
    # a small prior precision keeps the predictive variance large: a harder test
    return btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights=subset,
        hessian_structure=structure,
        prior_precision=0.3,
    )


def test_item_moments_equal_brute_force(posterior):
    x = torch.randn(11, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    mean, var = posterior(x)
    jac = _reference_jacobian(posterior, x)
    want = ((jac @ _covariance(posterior.laplace)) * jac).sum(1)
    torch.testing.assert_close(var, want, rtol=1e-10, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(mean, posterior.model(x).squeeze(1))
    assert mean.shape == var.shape == (11,)


def test_pair_covariance_equals_brute_force(posterior):
    x = torch.randn(6, 2, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    mean, var, cov = posterior.pair_moments(x)
    jac = _reference_jacobian(posterior, x.reshape(12, D_IN))
    full = jac @ _covariance(posterior.laplace) @ jac.T
    torch.testing.assert_close(var.reshape(12), full.diagonal(), rtol=1e-10, atol=0)
    torch.testing.assert_close(cov, full.diagonal(1)[0::2], rtol=1e-10, atol=1e-14)
    assert mean.shape == (6, 2)


def test_prediction_equals_raw_laplace_torch(posterior):
    """For the same fitted posterior, bt_laplace adds no error to laplace-torch's GLM predictive."""
    x = torch.randn(9, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    mean, var = posterior(x)
    ref_mean, ref_var = posterior.laplace(x)
    torch.testing.assert_close(mean, ref_mean.reshape(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, ref_var.reshape(-1), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_same_configuration_as_raw_laplace_torch_gives_same_answer(
    reward_model, pair_loader, structure
):
    """Whole pipeline with laplace-torch's own backend: identical to raw laplace-torch."""
    post = btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights="all",
        hessian_structure=structure,
        backend=CurvlinopsGGN,
    )
    la = Laplace(
        reward_model,
        "reward_modeling",
        subset_of_weights="all",
        hessian_structure=structure,
        backend=CurvlinopsGGN,
    )
    la.fit(pair_loader)
    la.optimize_prior_precision(method="marglik")
    torch.testing.assert_close(post.prior_precision, la.prior_precision, rtol=1e-10, atol=0)
    x = torch.randn(9, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    mean, var = post(x)
    ref_mean, ref_var = la(x)
    torch.testing.assert_close(mean, ref_mean.reshape(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, ref_var.reshape(-1), rtol=1e-10, atol=1e-14)


def test_joint_samples_have_the_linearized_covariance(posterior):
    x = torch.randn(5, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    s = posterior.sample(x, 40_000, generator=torch.Generator().manual_seed(0))
    assert s.shape == (40_000, 5)
    jac = _reference_jacobian(posterior, x)
    cov = jac @ _covariance(posterior.laplace) @ jac.T
    mean, _ = posterior(x)
    scale = float(cov.diagonal().max())
    # standard error of a sample covariance with 40k draws is about 0.7% of the scale
    assert float((torch.cov(s.T) - cov).abs().max()) < 0.03 * scale
    assert float((s.mean(0) - mean).abs().max()) < 0.03 * scale**0.5


@pytest.mark.parametrize("subset,structure", CONFIGS, ids=IDS)
@pytest.mark.parametrize("kind", ["random", "near-duplicate"])
def test_preference_probability_matches_joint_monte_carlo(
    reward_model, pair_loader, subset, structure, kind
):
    with torch.no_grad():  # a sharper head: reward gaps and variances large enough to matter
        reward_model.net[-1].weight.mul_(8.0)
    post = btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights=subset,
        hessian_structure=structure,
        prior_precision=0.3,
    )
    g = torch.Generator().manual_seed(10)
    x0 = torch.randn(200, D_IN, dtype=torch.float64, generator=g) * 2
    noise = torch.randn(200, D_IN, dtype=torch.float64, generator=g)
    x1 = x0 + 0.3 * noise if kind == "near-duplicate" else 2 * noise
    x = torch.stack([x0, x1], 1)
    mean, var, cov = post.pair_moments(x)
    sigma = torch.stack([torch.stack([var[:, 0], cov], -1), torch.stack([cov, var[:, 1]], -1)], 1)
    sigma = sigma + 1e-12 * torch.eye(2, dtype=sigma.dtype)
    z = torch.randn(20_000, 200, 2, dtype=torch.float64, generator=g)
    r = mean + torch.einsum("bij,sbj->sbi", torch.linalg.cholesky(sigma), z)
    mc = torch.sigmoid(r[..., 1] - r[..., 0]).mean(0)  # Monte Carlo over the joint Gaussian

    err = (post.preference_probability(x, link_approx="probit") - mc).abs()
    assert float(err.mean()) <= 0.01 and float(err.max()) <= 0.03
    sampled = post.preference_probability(
        x, link_approx="mc", n_samples=20_000, generator=torch.Generator().manual_seed(1)
    )
    assert float((sampled - mc).abs().max()) < 0.015
    if kind == "near-duplicate":
        # the test can fail: laplace-torch's per-item probit (no covariance) misses the goal
        scale = 1 / torch.sqrt(1 + torch.pi / 8 * var)
        per_item = torch.softmax(scale * mean, -1)[:, 1]
        assert float((per_item - mc).abs().max()) > 0.03


def test_posterior_parameters_for_last_layer_are_the_head(reward_model, pair_loader):
    post = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights="last_layer", hessian_structure="diag"
    )
    params = posterior_parameters(post.laplace)
    assert [tuple(p.shape) for p in params] == [(1, 7), (1,)]


@pytest.mark.parametrize("structure", ["diag", "full"])
@pytest.mark.parametrize("fixture", ["sequence_model_and_pairs", "reused_model_and_pairs"])
def test_sequence_inputs_predict_exactly(request, fixture, structure):
    """Sequences on the fast path (per-item Jacobian blocks) and through the fallback."""
    model, x, loader = request.getfixturevalue(fixture)
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure=structure, prior_precision=0.5
    )
    jac = item_jacobians(model, x.reshape(24, 5, 3))
    full = jac @ _covariance(post.laplace) @ jac.T
    mean, var = post(x.reshape(24, 5, 3))
    torch.testing.assert_close(var, full.diagonal(), rtol=1e-10, atol=0)
    _, pvar, cov = post.pair_moments(x)
    torch.testing.assert_close(cov, full.diagonal(1)[0::2], rtol=1e-10, atol=1e-14)
    s = post.sample(x[:3, 0], 30_000, generator=torch.Generator().manual_seed(0))
    cov3 = full[0:6:2, 0:6:2]
    assert float((torch.cov(s.T) - cov3).abs().max()) < 0.03 * float(cov3.diagonal().max())
