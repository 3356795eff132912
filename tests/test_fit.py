"""Fitting (bt_laplace.fit): the evidence, the grid search, the held-out prior calibration,
progress bars and the last-layer curvature of a fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.curvature import BradleyTerryGGN, PairKronLLLaplace
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
    ("width", "hidden", "n_items", "steps", "lowered"),
    [(5, 12, 120, 0, False), (60, 16, 150, 300, True)],
    ids=["untrained-kept", "trained-lowered"],
)
def test_default_prior_gives_held_out_items_the_exact_posteriors_variance(
    width, hidden, n_items, steps, lowered
):
    """The default (no prior options) lowers the exact evidence's prior for an all-weights
    kron / diag posterior so that, fitted on the pairs without the held-out items, its mean
    log variance of pairs of held-out items equals the exact Laplace posterior's (the full
    GGN, here bt_laplace's ``full`` posterior, at its own exact-evidence prior); where the
    structure already gives them at least that variance the prior stays (factor 1)."""
    from bt_laplace.prior.calibration import held_out_split

    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, 1)).double()
    model = btl.PairwiseRewardModel(net)
    items = torch.randn(n_items, width, dtype=torch.float64)
    x = items[torch.randint(n_items, (300, 2))]
    w = torch.randn(width, dtype=torch.float64)
    y = (torch.rand(300) < torch.sigmoid(3 * (x[:, 1] - x[:, 0]) @ w / width**0.5)).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):  # an overfitted MAP model: kron too confident about new items
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    split = held_out_split(x)
    keep, query = split.keep, split.query
    rest = DataLoader(TensorDataset(x[keep], y[keep]), batch_size=64)
    exact = btl.fit_reward_posterior(model, rest, hessian_structure="full", evidence="exact")
    _, v_exact = exact.predictive.difference_moments(query)
    target = v_exact.log().mean()
    seen = []
    for structure in ("kron", "diag"):
        default = btl.fit_reward_posterior(model, loader, hessian_structure=structure)
        evidence = btl.fit_reward_posterior(
            model, loader, hessian_structure=structure, prior_precision="marglik"
        )
        ratio = default.prior_calibration
        assert ratio is not None and 0 < ratio <= 1
        torch.testing.assert_close(
            default.prior_precision, evidence.prior_precision * ratio, rtol=1e-12, atol=0
        )
        part = btl.fit_reward_posterior(
            model, rest, hessian_structure=structure,
            prior_precision=float(exact.prior_precision) * ratio,
        )  # fmt: skip
        _, v_part = part.predictive.difference_moments(query)
        gap = float(v_part.log().mean() - target)
        seen.append(ratio)
        if ratio < 1:  # lowered until matched
            assert gap == pytest.approx(0.0, abs=2e-3)
        else:  # at least the exact variance at the exact evidence's prior: kept
            assert gap >= 0
    assert (min(seen) < 1) == lowered
    # explicit choices are taken as they are: no calibration
    for kwargs in ({"prior_precision": "marglik"}, {"evidence": "exact"}, {"val_loader": loader}):
        assert btl.fit_reward_posterior(model, loader, **kwargs).prior_calibration is None
    last = btl.fit_reward_posterior(model, loader, subset_of_weights="last_layer")
    assert last.prior_calibration is None  # a one-output head's kron is exact


@pytest.mark.parametrize("n_items", [150, 2000], ids=["item-form", "pair-kernel"])
def test_calibration_reads_the_exact_evidences_kernel(monkeypatch, n_items):
    """The default's held-out calibration takes the held-out fit's exact posterior from the
    kernel the exact evidence built of all the pairs (``KernelForm.without_items``), once,
    and lands on the prior and factor its own pass over the kept pairs gives (float64):
    300 pairs of 150 items (through the items) or of about 520 (the pair kernel)."""
    import bt_laplace.prior.calibration as calibration
    import bt_laplace.prior.kernel as kernel
    from bt_laplace.prior.kernel import KernelForm

    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(60, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    model = btl.PairwiseRewardModel(net)
    items = torch.randn(n_items, 60, dtype=torch.float64)
    x = items[torch.randint(n_items, (300, 2))]
    y = (torch.rand(300) < torch.sigmoid((x[:, 1] - x[:, 0]).sum(-1) / 3)).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):  # overfitted: the calibration lowers the prior
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    calls, routes = [], []
    real = KernelForm.without_items
    monkeypatch.setattr(KernelForm, "without_items", lambda *a: calls.append(1) or real(*a))
    for route in ("_item_form", "_pair_form"):
        built = getattr(kernel, route)
        monkeypatch.setattr(
            kernel, route, lambda *a, f=built, r=route, **k: routes.append(r) or f(*a, **k)
        )
    reused = btl.fit_reward_posterior(model, loader)
    assert len(calls) == 1
    assert set(routes) == {"_item_form" if n_items == 150 else "_pair_form"}
    ratio = calibration.held_out_prior_ratio
    monkeypatch.setattr(
        "bt_laplace.prior.precision.held_out_prior_ratio",
        lambda *a: ratio(*a[:5], form=None),  # the calibration's own pass over the kept pairs
    )
    own = btl.fit_reward_posterior(model, loader)
    assert len(calls) == 1
    assert reused.prior_calibration is not None and reused.prior_calibration < 1
    assert reused.prior_calibration == pytest.approx(own.prior_calibration, rel=1e-9)
    torch.testing.assert_close(reused.prior_precision, own.prior_precision, rtol=1e-9, atol=0)
