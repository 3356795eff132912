"""RewardPosterior: queries, penalized rewards, re-optimizing the prior, laplace state, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import D_IN
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.curvature import BradleyTerryGGN


def test_penalized_reward_is_mean_minus_k_std(reward_model, pair_loader):
    post = btl.fit_reward_posterior(reward_model, pair_loader, hessian_structure="diag")
    x = torch.randn(7, D_IN, dtype=torch.float64)
    mean, var = post(x)
    torch.testing.assert_close(post.penalized_reward(x, k=2.0), mean - 2.0 * var.sqrt())
    torch.testing.assert_close(post.penalized_reward(x, k=0), mean)
    with pytest.raises(ValueError, match="`k` must be a finite number"):
        post.penalized_reward(x, k=float("nan"))


def test_prediction_is_batched_without_changing_results(reward_model, pair_loader):
    post = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights="all", hessian_structure="kron", batch_size=3
    )
    x = torch.randn(10, D_IN, dtype=torch.float64)
    small = post(x)
    post.batch_size = 4096
    big = post(x)
    torch.testing.assert_close(small.mean, big.mean)
    torch.testing.assert_close(small.variance, big.variance)
    assert small.mean is small[0]  # a NamedTuple: unpacks as (mean, variance)


def test_query_errors_name_the_argument(reward_model, pair_loader):
    post = btl.fit_reward_posterior(reward_model, pair_loader, hessian_structure="diag")
    with pytest.raises(ValueError, match=r"`x` must be items.*got pairs \(3, 2, 5\)"):
        post(torch.randn(3, 2, D_IN, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"`x` must be pairs.*got \(3, 5\)"):
        post.preference_probability(torch.randn(3, D_IN, dtype=torch.float64))
    with pytest.raises(ValueError, match="`link_approx` must be one of"):
        post.preference_probability(
            torch.randn(3, 2, D_IN, dtype=torch.float64), link_approx="bridge"
        )
    with pytest.raises(TypeError, match="`x` must be a torch.Tensor"):
        post([[0.0] * D_IN])
    with pytest.raises(ValueError, match=r"`x` has dtype torch.float32 but .* torch.float64"):
        post(torch.randn(3, D_IN))
    with pytest.raises(ValueError, match="`n_samples` must be a positive int"):
        post.sample(torch.randn(3, D_IN, dtype=torch.float64), 0)


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_queries_work_inside_inference_mode(reward_model, pair_loader, pairs, structure):
    """Scoring loops often run under torch.inference_mode(); the variances need one backward
    pass, so queries step out of it, and the answers do not change."""
    post = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights="all", hessian_structure=structure
    )
    x = pairs[0]
    want = (post(x[:, 0]), post.preference_probability(x), post.relative_reward(x[:, 1]))
    with torch.inference_mode():
        items, xi = x[:, 0].clone(), x.clone()  # inference tensors
        got = (post(items), post.preference_probability(xi), post.relative_reward(xi[:, 1]))
        samples = post.sample(items, n_samples=3)
        penalized = post.penalized_reward(items, k=1.0, reference="group")
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    assert samples.shape == (3, x.shape[0]) and penalized.shape == (x.shape[0],)


@pytest.mark.parametrize(
    "subset,structure",
    [("all", "kron"), ("all", "diag"), ("last_layer", "kron"), ("last_layer", "full")],
    ids=["all-kron", "all-diag", "ll-kron", "ll-full"],
)
def test_laplace_state_dict_round_trip(reward_model, pair_loader, subset, structure):
    """laplace-torch's state_dict keeps working with the pair curvature."""
    post = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights=subset, hessian_structure=structure
    )
    state = post.laplace.state_dict()
    fresh = type(post.laplace)(reward_model, "reward_modeling", backend=BradleyTerryGGN)
    fresh.load_state_dict(state)
    again = btl.RewardPosterior(fresh, reward_model)
    x = torch.randn(6, D_IN, dtype=torch.float64)
    torch.testing.assert_close(again(x).variance, post(x).variance)
    torch.testing.assert_close(again.prior_precision, post.prior_precision)


@pytest.mark.parametrize(
    "subset,structure", [("all", "kron"), ("all", "diag"), ("last_layer", "kron")]
)
def test_optimize_prior_precision_after_the_fit_equals_the_fit_with_it(
    reward_model, pairs, subset, structure
):
    x, y = pairs
    train = DataLoader(TensorDataset(x[:40], y[:40]), batch_size=16)
    val = DataLoader(TensorDataset(x[40:], y[40:]), batch_size=16)
    kw = {"subset_of_weights": subset, "hessian_structure": structure}
    post = btl.fit_reward_posterior(reward_model, train, prior_precision=1.0, **kw)
    grid = btl.fit_reward_posterior(reward_model, train, val_loader=val, grid_size=17, **kw)
    got = post.optimize_prior_precision(val_loader=val, grid_size=17)
    assert torch.equal(got, grid.prior_precision)
    assert torch.equal(post.prior_precision, grid.prior_precision)
    exact = btl.fit_reward_posterior(reward_model, train, evidence="exact", **kw)
    got = post.optimize_prior_precision("marglik", train_loader=train)
    torch.testing.assert_close(got, exact.prior_precision, rtol=1e-10, atol=0)
    own = btl.fit_reward_posterior(reward_model, train, evidence="posterior", **kw)
    got = post.optimize_prior_precision("marglik")
    torch.testing.assert_close(got, own.prior_precision, rtol=1e-6, atol=0)
    assert post.prior_calibration is None


def test_optimize_prior_precision_on_a_loaded_posterior(reward_model, pairs, tmp_path):
    x, y = pairs
    train = DataLoader(TensorDataset(x[:40], y[:40]), batch_size=16)
    val = DataLoader(TensorDataset(x[40:], y[40:]), batch_size=16)
    post = btl.fit_reward_posterior(reward_model, train)
    loaded = btl.load_reward_posterior(post.save(tmp_path / "post"), reward_model)
    tuned = loaded.optimize_prior_precision(val_loader=val, grid_size=9)
    assert torch.equal(tuned, post.optimize_prior_precision(val_loader=val, grid_size=9))
    assert post.prior_calibration is None and loaded.prior_calibration is None
    assert loaded.validation_nll(val) == post.validation_nll(val)


def test_optimize_prior_precision_errors(reward_model, pair_loader):
    post = btl.fit_reward_posterior(reward_model, pair_loader, hessian_structure="diag")
    with pytest.raises(ValueError, match="`method` must be 'gridsearch' or 'marglik', got 'cv'"):
        post.optimize_prior_precision("cv")
    with pytest.raises(ValueError, match="gridsearch.*needs `val_loader`"):
        post.optimize_prior_precision()
    with pytest.raises(ValueError, match="`val_loader` is only used by method='gridsearch'"):
        post.optimize_prior_precision("marglik", val_loader=pair_loader)
    with pytest.raises(ValueError, match="`train_loader` is only used by method='marglik'"):
        post.optimize_prior_precision(val_loader=pair_loader, train_loader=pair_loader)
    with pytest.raises(ValueError, match="grid_sise"):
        post.optimize_prior_precision(val_loader=pair_loader, grid_sise=3)
