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
    probit_preference_probability,
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


def test_nll_matches_cross_entropy() -> None:
    logits = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.arange(10) % 2
    p = torch.sigmoid(logits[:, 1] - logits[:, 0])
    torch.testing.assert_close(
        bradley_terry_nll(p, y), torch.nn.functional.cross_entropy(logits, y)
    )
