"""Pair math against closed forms and Monte Carlo over the joint 2x2 Gaussian (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from bt_laplace.bradley_terry import (
    bradley_terry_nll,
    bradley_terry_weight,
    mc_preference_probability,
    pair_difference_moments,
    preference_probability,
    probit_preference_probability,
    quadrature_preference_probability,
)


def test_weight_is_second_derivative_of_nll() -> None:
    f = torch.linspace(-4, 4, 9, dtype=torch.float64)
    second = torch.func.vmap(
        torch.func.grad(torch.func.grad(lambda t: -torch.nn.functional.logsigmoid(t)))
    )(f)
    torch.testing.assert_close(bradley_terry_weight(f), second)


def test_difference_moments_match_joint_gaussian_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    cov = torch.tensor([[[1.0, 0.8], [0.8, 2.0]]], dtype=torch.float64)
    m, v = pair_difference_moments(mean, cov.diagonal(dim1=1, dim2=2), cov[:, 0, 1])
    z = torch.randn(200_000, 2, generator=g, dtype=torch.float64)
    samples = mean + z @ torch.linalg.cholesky(cov[0]).T
    diff = samples[:, 1] - samples[:, 0]
    assert abs(float(m) - float(diff.mean())) < 0.01
    assert abs(float(v) - float(diff.var())) < 0.02
    assert float(v) == pytest.approx(1.0 + 2.0 - 1.6)


@pytest.mark.parametrize("mu,var", [(0.0, 0.0), (1.5, 0.5), (-2.0, 4.0), (3.0, 10.0)])
def test_probit_close_to_mc(mu: float, var: float) -> None:
    mu_t = torch.tensor([mu], dtype=torch.float64)
    var_t = torch.tensor([var], dtype=torch.float64)
    mc = mc_preference_probability(
        mu_t, var_t, n_samples=400_000, generator=torch.Generator().manual_seed(0)
    )
    # the probit approximation is accurate to about 0.02 in this range (MacKay 1992)
    assert float((probit_preference_probability(mu_t, var_t) - mc).abs()) < 0.02
    if var == 0:
        assert float(probit_preference_probability(mu_t, var_t)) == pytest.approx(
            1 / (1 + math.exp(-mu))
        )


MEANS = [0.0, 0.3, -1.0, 2.5, -6.0, 15.0]
STDS = [0.0, 1e-6, 1e-3, 0.1, 0.7, 1.5, 1.99, 2.01, 3.0, 7.0, 30.0, 300.0, 1e4]


def stratified_monte_carlo(mu: torch.Tensor, std: torch.Tensor, n: int) -> torch.Tensor:
    """``E sigmoid(mu + std z)`` from ``n`` draws of ``z``, one in each of ``n`` equiprobable
    strata of the standard normal (error far below plain Monte Carlo's ``0.5 / sqrt(n)``)."""
    g = torch.Generator().manual_seed(0)
    u = torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=g, dtype=torch.float64)
    z = torch.special.ndtri(u / n)
    return torch.stack([torch.sigmoid(m + s * z).mean() for m, s in zip(mu, std, strict=True)])


def test_quadrature_is_exact_against_a_million_draws() -> None:
    """The default pair probability is within 1e-4 of a 10^6-draw (stratified) Monte Carlo of
    ``E sigmoid(f)``, ``f ~ N(mu, std^2)``, over means and variances from zero to 1e8, on
    both sides of the switch from Gauss-Hermite to the logistic-side rule."""
    mu = torch.tensor([m for m in MEANS for _ in STDS], dtype=torch.float64)
    std = torch.tensor([s for _ in MEANS for s in STDS], dtype=torch.float64)
    want = stratified_monte_carlo(mu, std, 1_000_000)
    got = quadrature_preference_probability(mu, std.square())
    assert float((got - want).abs().max()) <= 1e-4
    torch.testing.assert_close(preference_probability(mu, std.square()), got, rtol=0, atol=0)
    # zero variance is the sigmoid of the mean; symmetric in the mean
    torch.testing.assert_close(got[std == 0], torch.sigmoid(mu[std == 0]), rtol=0, atol=1e-15)
    flipped = quadrature_preference_probability(-mu, std.square())
    torch.testing.assert_close(got + flipped, torch.ones_like(got), rtol=0, atol=1e-12)
    # the probit approximation it replaces is off by up to about 0.02
    probit = probit_preference_probability(mu, std.square())
    assert 0.005 < float((probit - want).abs().max()) < 0.03


def test_quadrature_keeps_shape_and_dtype_and_plain_monte_carlo_agrees() -> None:
    mu = torch.tensor([[0.5, -2.0], [1.0, 4.0]])
    var = torch.tensor([[0.0, 9.0], [25.0, 1.0]])
    got = quadrature_preference_probability(mu, var)
    assert got.shape == (2, 2) and got.dtype == torch.float32
    mc = mc_preference_probability(
        mu.double().flatten(), var.double().flatten(), n_samples=1_000_000,
        generator=torch.Generator().manual_seed(4),
    )  # fmt: skip
    assert float((got.double().flatten() - mc).abs().max()) < 3e-3  # 6 standard errors


def test_nll_matches_cross_entropy() -> None:
    logits = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.arange(10) % 2
    p = torch.sigmoid(logits[:, 1] - logits[:, 0])
    torch.testing.assert_close(
        bradley_terry_nll(p, y), torch.nn.functional.cross_entropy(logits, y)
    )
