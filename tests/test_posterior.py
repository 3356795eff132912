"""fit_reward_posterior and RewardPosterior: options, prior selection, queries and errors."""

from __future__ import annotations

import pytest
import torch
from conftest import D_IN
from laplace.baselaplace import DiagLaplace, FullLaplace
from laplace.lllaplace import DiagLLLaplace
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.curvature import BradleyTerryGGN, PairKronLaplace, PairKronLLLaplace
from bt_laplace.testing import exact_ggn


def test_last_layer_kron_with_marglik(reward_model, pair_loader):
    post = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights="last_layer", evidence="posterior"
    )
    assert isinstance(post, btl.RewardPosterior)
    assert isinstance(post.laplace, PairKronLLLaplace)
    assert isinstance(post.laplace.backend, BradleyTerryGGN)
    # marglik moved the prior away from its initial value of 1 and is a (local) optimum
    prior = float(post.prior_precision)
    assert prior != pytest.approx(1.0)
    lml = post.log_marginal_likelihood()
    for factor in (0.8, 1.25):
        post.laplace.prior_precision = prior * factor
        assert post.log_marginal_likelihood() < lml
    post.laplace.prior_precision = prior


def test_default_is_all_weights_kron_with_the_exact_evidence_for_an_mlp(reward_model, pair_loader):
    post = btl.fit_reward_posterior(reward_model, pair_loader)
    assert isinstance(post.laplace, PairKronLaplace)
    exact = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights="all", evidence="exact"
    )
    calibration = 1.0 if post.prior_calibration is None else post.prior_calibration
    torch.testing.assert_close(
        post.prior_precision, exact.prior_precision * calibration, rtol=1e-12, atol=0
    )


def test_default_takes_the_last_layer_when_not_every_weight_is_linear(pair_loader):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D_IN, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 1))
    post = btl.fit_reward_posterior(btl.PairwiseRewardModel(net.double()).eval(), pair_loader)
    assert isinstance(post.laplace, PairKronLLLaplace)
    net[1].requires_grad_(False)  # frozen: every trainable weight is linear again
    post = btl.fit_reward_posterior(btl.PairwiseRewardModel(net.double()).eval(), pair_loader)
    assert isinstance(post.laplace, PairKronLaplace)


def test_default_prior_is_the_grid_search_when_validation_pairs_are_given(
    reward_model, pair_loader
):
    auto = btl.fit_reward_posterior(reward_model, pair_loader, val_loader=pair_loader)
    grid = btl.fit_reward_posterior(
        reward_model, pair_loader, prior_precision="gridsearch", val_loader=pair_loader
    )
    assert torch.equal(auto.prior_precision, grid.prior_precision)


@pytest.mark.parametrize(
    "subset,structure,cls",
    [
        ("all", "diag", DiagLaplace),
        ("all", "full", FullLaplace),
        ("all", "kron", PairKronLaplace),
        ("last_layer", "diag", DiagLLLaplace),
    ],
    ids=["all-diag", "all-full", "all-kron", "ll-diag"],
)
def test_laplace_torch_classes_are_used(reward_model, pair_loader, subset, structure, cls):
    post = btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights=subset,
        hessian_structure=structure,
        prior_precision=2.0,
    )
    assert type(post.laplace) is cls
    assert float(post.prior_precision) == 2.0
    assert post.laplace.likelihood == "reward_modeling"


def test_laplace_kwargs_are_forwarded_under_laplace_names(reward_model, pair_loader):
    post = btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights="all",
        hessian_structure="diag",
        temperature=0.5,
        n_steps=5,
        prior_structure="layerwise",
    )
    assert post.laplace.temperature == 0.5
    assert post.prior_precision.shape == (6,)  # one per parameter tensor


def test_gridsearch_minimizes_validation_nll_of_pair_probabilities(reward_model, pairs):
    x, y = pairs
    train = DataLoader(TensorDataset(x[:40], y[:40]), batch_size=16)
    val = DataLoader(TensorDataset(x[40:], y[40:]), batch_size=16)
    post = btl.fit_reward_posterior(
        reward_model,
        train,
        subset_of_weights="all",
        hessian_structure="kron",
        prior_precision="gridsearch",
        val_loader=val,
        grid_size=9,
    )
    chosen = float(post.prior_precision)
    grid = torch.logspace(-4, 4, 9).tolist()
    assert chosen == pytest.approx(min(grid, key=lambda g: abs(g - chosen)))
    nll = post.validation_nll(val)
    for g in grid:
        post.laplace.prior_precision = g
        assert post.validation_nll(val) >= nll - 1e-12


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


def test_fit_errors_name_the_argument(reward_model, pair_loader):
    fit = btl.fit_reward_posterior
    with pytest.raises(TypeError, match="`model` must be a bt_laplace.PairwiseRewardModel"):
        fit(reward_model.net, pair_loader)
    with pytest.raises(TypeError, match="`train_loader` must be a torch DataLoader"):
        fit(reward_model, iter([(torch.zeros(1, 2, D_IN), torch.zeros(1))]))  # one pass only
    with pytest.raises(ValueError, match="`subset_of_weights` must be one of.*'subnetwork'"):
        fit(reward_model, pair_loader, subset_of_weights="subnetwork")
    with pytest.raises(ValueError, match="`hessian_structure` must be one of.*'lowrank'"):
        fit(reward_model, pair_loader, hessian_structure="lowrank")
    with pytest.raises(ValueError, match="gridsearch.*needs `val_loader`"):
        fit(reward_model, pair_loader, prior_precision="gridsearch")
    with pytest.raises(ValueError, match="`prior_precision` must be.*got -1"):
        fit(reward_model, pair_loader, prior_precision=-1)
    with pytest.raises(ValueError, match="`likelihood` is always 'reward_modeling'"):
        fit(reward_model, pair_loader, likelihood="classification")


def test_val_loader_with_marglik_warns(reward_model, pair_loader):
    with pytest.warns(btl.BTLaplaceWarning, match="`val_loader` is only used"):
        btl.fit_reward_posterior(
            reward_model,
            pair_loader,
            hessian_structure="diag",
            prior_precision="marglik",
            val_loader=pair_loader,
        )


def test_full_is_refused_with_the_memory_it_would_need(pair_loader):
    wide = btl.PairwiseRewardModel(
        nn.Sequential(nn.Linear(D_IN, 40_000), nn.Linear(40_000, 1)).double()
    )
    with pytest.raises(ValueError, match=r"all 280,001 parameters.*GiB.*'kron' or 'diag'"):
        btl.fit_reward_posterior(
            wide, pair_loader, subset_of_weights="all", hessian_structure="full"
        )
    # the last layer alone: 40,001 parameters, 11.9 GiB in float64
    msg = r"40,001 parameters of the last layer 'net.1'.*11.9 GiB"
    with pytest.raises(ValueError, match=msg):
        btl.fit_reward_posterior(
            wide, pair_loader, subset_of_weights="last_layer", hessian_structure="full"
        )
    with pytest.raises(ValueError, match=r"`last_layer_name`='head' is not a module"):
        btl.fit_reward_posterior(
            wide, pair_loader, subset_of_weights="last_layer", hessian_structure="full",
            last_layer_name="head",
        )  # fmt: skip


def test_fit_refuses_inputs_of_another_dtype(reward_model, pairs):
    x, y = pairs
    loader = DataLoader(TensorDataset(x.float(), y), batch_size=16)
    with pytest.raises(ValueError, match=r"x of dtype torch.float32 but .* torch.float64"):
        btl.fit_reward_posterior(reward_model, loader)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prior_precision": 1.0, "n_steps": 3}, r"`n_steps` not used with a fixed"),
        ({"grid_size": 3}, r"`grid_size` not used with prior_precision='marglik'"),
        ({"prior_precision": "gridsearch", "lr": 0.1}, r"`lr` not used with .*'gridsearch'"),
        (
            {"prior_precision": "gridsearch", "prior_structure": "layerwise"},
            r"`prior_structure='layerwise'` needs prior_precision='marglik'",
        ),
    ],
)
def test_prior_settings_the_method_does_not_use_are_refused(
    reward_model, pair_loader, kwargs, match
):
    if kwargs.get("prior_precision") == "gridsearch":
        kwargs["val_loader"] = pair_loader
    with pytest.raises(ValueError, match=match):
        btl.fit_reward_posterior(reward_model, pair_loader, **kwargs)


def test_val_loader_with_a_fixed_prior_warns(reward_model, pair_loader):
    with pytest.warns(btl.BTLaplaceWarning, match="`val_loader` is only used"):
        btl.fit_reward_posterior(
            reward_model, pair_loader, prior_precision=1.0, val_loader=pair_loader
        )


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


def test_training_mode_with_dropout_warns_and_switches_to_eval(pair_loader):
    net = nn.Sequential(nn.Linear(D_IN, 7), nn.Dropout(0.5), nn.Linear(7, 1)).double()
    model = btl.PairwiseRewardModel(net).train()
    with pytest.warns(btl.BTLaplaceWarning, match=r"training mode with \['Dropout'\]"):
        btl.fit_reward_posterior(model, pair_loader, hessian_structure="diag")
    assert not model.training


@pytest.mark.parametrize(
    "kwargs, bars",
    [
        ({"prior_precision": "marglik", "evidence": "posterior"}, ["Optimizing marglik"]),
        ({"prior_precision": "marglik", "evidence": "exact"}, ["Exact evidence"]),
        ({"prior_precision": "gridsearch", "grid_size": 5}, ["Grid search"]),
    ],
)
def test_progress_bars_on_request_only(reward_model, pair_loader, capsys, kwargs, bars):
    if kwargs["prior_precision"] == "gridsearch":
        kwargs["val_loader"] = pair_loader
    btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights="all", hessian_structure="diag", **kwargs
    )
    assert capsys.readouterr().err == ""
    btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights="all", hessian_structure="diag",
        progress_bar=True, **kwargs,
    )  # fmt: skip
    err = capsys.readouterr().err
    for bar in ["Computing Hessian", *bars]:  # laplace-torch's own bar over the fit, then ours
        assert bar in err


def test_last_layer_full_check_runs_in_eval_mode(pair_loader):
    """Finding the last layer for the memory check must not update batch-norm statistics of a
    model left in training mode (it is switched to eval mode first, with a warning)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D_IN, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 1))
    model = btl.PairwiseRewardModel(net.double())  # training mode
    before = net[1].running_mean.clone()
    with pytest.warns(btl.BTLaplaceWarning, match="BatchNorm1d"):
        btl.fit_reward_posterior(
            model, pair_loader, subset_of_weights="last_layer", hessian_structure="full",
            prior_precision=1.0,
        )  # fmt: skip
    assert torch.equal(net[1].running_mean, before)


def test_last_layer_is_found_as_laplace_torch_finds_it(pair_loader):
    """A shared activation called again after the head keeps its first place, so the head is
    the last layer (and the memory check counts its parameters)."""
    act = nn.Tanh()
    model = btl.PairwiseRewardModel(
        nn.Sequential(nn.Linear(D_IN, 40_000), act, nn.Linear(40_000, 1), act).double()
    )
    with pytest.raises(ValueError, match=r"40,001 parameters of the last layer 'net.2'"):
        btl.fit_reward_posterior(
            model, pair_loader, subset_of_weights="last_layer", hessian_structure="full"
        )


WORKS = {
    ("all", "kron"): ("scalar", "layerwise"),
    ("all", "diag"): ("scalar", "layerwise", "diag"),
    ("all", "full"): ("scalar", "layerwise", "diag"),
    ("last_layer", "kron"): ("scalar",),
    ("last_layer", "diag"): ("scalar", "diag"),
    ("last_layer", "full"): ("scalar", "diag"),
}


@pytest.mark.parametrize("subset, structure", list(WORKS))
@pytest.mark.parametrize("prior_structure", ["scalar", "layerwise", "diag"])
def test_every_prior_structure_works_or_is_refused_up_front(
    reward_model, pair_loader, pairs, subset, structure, prior_structure
):
    kwargs = {
        "subset_of_weights": subset,
        "hessian_structure": structure,
        "prior_structure": prior_structure,
    }
    if prior_structure in WORKS[(subset, structure)]:
        post = btl.fit_reward_posterior(reward_model, pair_loader, **kwargs)
        n = {"scalar": 1, "layerwise": 6, "diag": post.laplace.n_params}[prior_structure]
        assert post.prior_precision.shape == (n,)
        assert bool((post(pairs[0][:3, 0]).variance > 0).all())
    else:
        with pytest.raises(ValueError, match=rf"`prior_structure='{prior_structure}'` is not"):
            btl.fit_reward_posterior(reward_model, pair_loader, **kwargs)


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_last_layer_applied_to_sequences_is_exact(sequence_model_and_pairs, structure):
    """The head runs on every position and the rewards are averaged: its Jacobian is the
    sum over positions, exact from the taps (no feature_reduction needed)."""
    model, x, loader = sequence_model_and_pairs
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="last_layer", hessian_structure=structure
    )
    exact = exact_ggn(model, x)[-5:, -5:]  # the head's 4 weights and its bias
    got = post.laplace.H_facs.to_matrix() if structure == "kron" else post.laplace.H
    want = exact.diagonal() if structure == "diag" else exact
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_last_layer_called_twice_says_what_to_do():
    class TwiceHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(3, 4), nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.body(x))
            return self.head(h) + self.head(2 * h)

    model = btl.PairwiseRewardModel(TwiceHead().double()).eval()
    loader = DataLoader(
        TensorDataset(torch.randn(6, 2, 3, dtype=torch.float64), torch.ones(6).long()),
        batch_size=3,
    )
    with pytest.raises(NotImplementedError, match=r"last-layer posterior .*called 2 times"):
        btl.fit_reward_posterior(model, loader, hessian_structure="diag")


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


def test_auto_subset_takes_the_last_layer_above_the_parameter_limit(
    reward_model, pair_loader, monkeypatch
):
    from bt_laplace import options

    n = sum(p.numel() for p in reward_model.parameters())
    monkeypatch.setattr(options, "AUTO_ALL_WEIGHTS_LIMIT", n)
    at = btl.fit_reward_posterior(reward_model, pair_loader, prior_precision=1.0)
    assert isinstance(at.laplace, PairKronLaplace)
    monkeypatch.setattr(options, "AUTO_ALL_WEIGHTS_LIMIT", n - 1)
    above = btl.fit_reward_posterior(reward_model, pair_loader, prior_precision=1.0)
    assert isinstance(above.laplace, PairKronLLLaplace)


def test_default_prior_gives_held_out_items_the_exact_posteriors_variance():
    """The default (no prior options) scales the exact evidence's prior for an all-weights
    kron / diag posterior so that, fitted on the pairs without the held-out items, its mean
    log variance of pairs of held-out items equals the exact Laplace posterior's (the full
    GGN, here bt_laplace's ``full`` posterior, at its own exact-evidence prior)."""
    from bt_laplace.prior.calibration import held_out_items

    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 1)).double()
    model = btl.PairwiseRewardModel(net)
    items = torch.randn(120, 5, dtype=torch.float64)
    x = items[torch.randint(120, (300, 2))]
    y = torch.randint(0, 2, (300,))
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    keep, query = held_out_items(x)
    rest = DataLoader(TensorDataset(x[keep], y[keep]), batch_size=64)
    exact = btl.fit_reward_posterior(model, rest, hessian_structure="full", evidence="exact")
    _, v_exact = exact.predictive.difference_moments(query)
    target = v_exact.log().mean()
    for structure in ("kron", "diag"):
        default = btl.fit_reward_posterior(model, loader, hessian_structure=structure)
        evidence = btl.fit_reward_posterior(
            model, loader, hessian_structure=structure, prior_precision="marglik"
        )
        ratio = default.prior_calibration
        assert ratio is not None and ratio != pytest.approx(1.0, rel=1e-2)
        torch.testing.assert_close(
            default.prior_precision, evidence.prior_precision * ratio, rtol=1e-12, atol=0
        )
        part = btl.fit_reward_posterior(
            model, rest, hessian_structure=structure,
            prior_precision=float(exact.prior_precision) * ratio,
        )  # fmt: skip
        _, v_part = part.predictive.difference_moments(query)
        assert float(v_part.log().mean() - target) == pytest.approx(0.0, abs=2e-3)
    # explicit choices are taken as they are: no calibration
    for kwargs in ({"prior_precision": "marglik"}, {"evidence": "exact"}, {"val_loader": loader}):
        assert btl.fit_reward_posterior(model, loader, **kwargs).prior_calibration is None
    last = btl.fit_reward_posterior(model, loader, subset_of_weights="last_layer")
    assert last.prior_calibration is None  # a one-output head's kron is exact
