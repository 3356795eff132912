"""fit_reward_posterior's options (bt_laplace.options): defaults and auto choices, the
laplace-torch classes and keywords, and every option or model the fit refuses up front."""

from __future__ import annotations

import pytest
import torch
from conftest import D_IN, make_net
from laplace.baselaplace import DiagLaplace, FullLaplace, KronLaplace
from laplace.lllaplace import DiagLLLaplace, FullLLLaplace, KronLLLaplace
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.curvature import PairKronLaplace, PairKronLLLaplace
from bt_laplace.structures.inplace import (
    BTDiagLaplace,
    BTDiagLLLaplace,
    BTFullLaplace,
    BTFullLLLaplace,
)


def _loader(x, y, batch_size=16, shuffle=False):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=g)


def _model(dtype=torch.float64):
    return btl.PairwiseRewardModel(make_net()).to(dtype).eval()


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
    "subset,structure,cls,base",
    [
        ("all", "diag", BTDiagLaplace, DiagLaplace),
        ("all", "full", BTFullLaplace, FullLaplace),
        ("all", "kron", PairKronLaplace, KronLaplace),
        ("last_layer", "diag", BTDiagLLLaplace, DiagLLLaplace),
        ("last_layer", "full", BTFullLLLaplace, FullLLLaplace),
        ("last_layer", "kron", PairKronLLLaplace, KronLLLaplace),
    ],
    ids=["all-diag", "all-full", "all-kron", "ll-diag", "ll-full", "ll-kron"],
)
def test_laplace_torch_classes_are_used(reward_model, pair_loader, subset, structure, cls, base):
    """laplace-torch's classes, extended only to read the model in place and in float32."""
    post = btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights=subset,
        hessian_structure=structure,
        prior_precision=2.0,
    )
    assert type(post.laplace) is cls and isinstance(post.laplace, base)
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


def test_training_mode_with_dropout_warns_and_switches_to_eval(pair_loader):
    net = nn.Sequential(nn.Linear(D_IN, 7), nn.Dropout(0.5), nn.Linear(7, 1)).double()
    model = btl.PairwiseRewardModel(net).train()
    with pytest.warns(btl.BTLaplaceWarning, match=r"training mode with \['Dropout'\]"):
        btl.fit_reward_posterior(model, pair_loader, hessian_structure="diag")
    assert not model.training


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


def test_auto_subset_takes_the_last_layer_above_the_state_limit(
    reward_model, pair_loader, monkeypatch
):
    """The line is the posterior's state, as a fit of all weights then holds it."""
    from bt_laplace import options

    post = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights="all", prior_precision=1.0
    )
    config, tensors = post.state()
    kept = sum(t.numel() for k, t in tensors.items() if k.startswith(("curvature.", "eig.")))
    n = kept * 8  # float64
    monkeypatch.setattr(options, "AUTO_STATE_LIMIT", n)
    at = btl.fit_reward_posterior(reward_model, pair_loader, prior_precision=1.0)
    assert isinstance(at.laplace, PairKronLaplace)
    monkeypatch.setattr(options, "AUTO_STATE_LIMIT", n - 1)
    above = btl.fit_reward_posterior(reward_model, pair_loader, prior_precision=1.0)
    assert isinstance(above.laplace, PairKronLLLaplace)


# ---------------------------------------------------------------- from test_bad_input.py
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_with_laplace_torch_backend_is_refused_with_the_fix(pairs, dtype):
    """laplace-torch's backends sum the curvature in the model's dtype: refused, naming the
    fix; bt_laplace's own backend fits the model as it is (tests/test_half_precision.py)."""
    from laplace.curvature import CurvlinopsGGN

    x, y = pairs
    with pytest.raises(ValueError, match=rf"{dtype}.*backend=CurvlinopsGGN.*leave `backend` out"):
        btl.fit_reward_posterior(_model(dtype), _loader(x.to(dtype), y), backend=CurvlinopsGGN)


def test_nan_weights_are_refused(pair_loader):
    model = _model()
    with torch.no_grad():
        model.net[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"parameter 'net.2.weight' holds NaN"):
        btl.fit_reward_posterior(model, pair_loader)


class _ConvHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(D_IN, 6)
        self.conv = nn.Conv1d(1, 1, 6)

    def forward(self, x):
        return self.conv(torch.tanh(self.body(x)).unsqueeze(1)).reshape(-1, 1)


def test_last_layer_problems_are_named(pair_loader):
    conv = btl.PairwiseRewardModel(_ConvHead().double()).eval()
    with pytest.raises(ValueError, match=r"'net.conv', is a Conv1d; .*nn.Linear reward head"):
        btl.fit_reward_posterior(conv, pair_loader, subset_of_weights="last_layer")
    frozen = _model()
    frozen.net[4].requires_grad_(False)
    with pytest.raises(ValueError, match=r"'net.4', is frozen.*requires_grad_\(True\)"):
        btl.fit_reward_posterior(frozen, pair_loader, subset_of_weights="last_layer")
    with pytest.raises(ValueError, match=r"`last_layer_name`='net.9' is not a module"):
        btl.fit_reward_posterior(_model(), pair_loader, last_layer_name="net.9")
    nothing = _model().requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter of `model` is frozen"):
        btl.fit_reward_posterior(nothing, pair_loader, subset_of_weights="all")
