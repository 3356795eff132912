"""Marglik on precomputed eigenvalues equals laplace-torch's own optimize_prior_precision."""

from __future__ import annotations

import pytest
import torch

import bt_laplace as btl
from bt_laplace.prior import curvature_eigenvalues, optimize_marglik

CONFIGS = [
    ("all", "diag", "scalar"),
    ("all", "diag", "layerwise"),
    ("all", "kron", "scalar"),
    ("all", "kron", "layerwise"),
    ("all", "full", "scalar"),
    ("last_layer", "diag", "scalar"),
    ("last_layer", "kron", "scalar"),
    ("last_layer", "full", "scalar"),
]


@pytest.mark.parametrize("subset,structure,prior", CONFIGS, ids=["-".join(c) for c in CONFIGS])
def test_fast_marglik_equals_laplace_torch(reward_model, pair_loader, subset, structure, prior):
    post = btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights=subset,
        hessian_structure=structure,
        prior_precision=1.0,
        temperature=0.7,
    )
    la = post.laplace
    assert curvature_eigenvalues(la) is not None  # the fast path is taken
    optimize_marglik(la, prior_structure=prior)
    fast = la.prior_precision.clone()
    la.optimize_prior_precision(method="marglik", prior_structure=prior)
    torch.testing.assert_close(fast, la.prior_precision, rtol=1e-8, atol=0)
    assert fast.shape == ((1,) if prior == "scalar" else (la.n_layers,))


def test_eigenvalues_reproduce_the_log_determinant(reward_model, pair_loader):
    post = btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights="all",
        hessian_structure="kron",
        prior_precision=0.5,
    )
    eig = torch.cat(curvature_eigenvalues(post.laplace))
    torch.testing.assert_close(torch.log(eig + 0.5).sum(), post.laplace.log_det_posterior_precision)


def test_diagonal_prior_structure_falls_back_to_laplace_torch(reward_model, pair_loader):
    post = btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights="all",
        hessian_structure="diag",
        prior_precision=1.0,
    )
    optimize_marglik(post.laplace, prior_structure="diag", n_steps=3)
    assert post.prior_precision.shape == (post.laplace.n_params,)
