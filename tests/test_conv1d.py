"""GPT-2's ``Conv1D`` (weight stored ``(in, out)``, ``z = a W + b``) on the fast path, exact in
laplace-torch's parameter order: curvature, Kronecker factors and predictive against
``torch.func.jacrev`` references in float64, on a Conv1D MLP (the conftest MLP with its weights
transposed) and on a tiny GPT-2 with token-dict pairs. "Fast path" means no per-item Jacobian
from laplace-torch: ``backend_jacobians`` raises if anything calls it."""

from __future__ import annotations

import pytest
import torch
from conftest import fit_bt, make_net
from torch import nn
from torch.func import functional_call, jacrev
from torch.utils.data import DataLoader

import bt_laplace as btl
from bt_laplace import curvature, predictive
from bt_laplace.testing import (
    exact_ggn,
    exact_last_layer_ggn,
    item_jacobians,
    nearest_kronecker_floor,
    rel_err,
)

tf = pytest.importorskip("transformers")
Conv1D = tf.pytorch_utils.Conv1D

CASES = [(s, h) for s in ("all", "head") for h in ("diag", "kron", "full")]
IDS = [f"{s}-{h}" for s, h in CASES]


@pytest.fixture
def no_jacobians(monkeypatch):
    """Make laplace-torch's per-item Jacobians (the slow path) fail wherever they are asked."""

    def refuse(*args, **kwargs):
        raise AssertionError("per-item Jacobians were asked for: the fast path was not taken")

    monkeypatch.setattr(curvature, "backend_jacobians", refuse)
    monkeypatch.setattr(predictive, "backend_jacobians", refuse)


def _conv1d_twin(linear: nn.Sequential) -> nn.Sequential:
    """``linear`` with each ``nn.Linear`` replaced by the ``Conv1D`` computing the same
    function (weight transposed to ``(in, out)``)."""
    layers: list[nn.Module] = []
    for m in linear:
        if isinstance(m, nn.Linear):
            conv = Conv1D(m.out_features, m.in_features).double()
            with torch.no_grad():
                conv.weight.copy_(m.weight.T)
                conv.bias.copy_(m.bias)
            m = conv
        layers.append(m)
    return nn.Sequential(*layers)


@pytest.fixture
def conv1d_model() -> btl.PairwiseRewardModel:
    """The conftest 5-7-7-1 tanh MLP built of Conv1D layers, float64, eval mode."""
    return btl.PairwiseRewardModel(_conv1d_twin(make_net())).eval()


def _freeze_body(model: btl.PairwiseRewardModel) -> None:
    """Leave only the head ``net.4`` of the MLP trainable."""
    for p in model.net[:4].parameters():
        p.requires_grad_(False)


def _covariance(la) -> torch.Tensor:
    """``Sigma`` ``(P, P)`` as laplace-torch holds it, in its parameter order."""
    if hasattr(la, "posterior_covariance"):
        return la.posterior_covariance
    if hasattr(la, "posterior_variance"):
        return torch.diag(la.posterior_variance)
    return la.posterior_precision.to_matrix(exponent=-1)


def _blocks(params: list[torch.Tensor]):
    """(parameter, slice) of each posterior parameter tensor in laplace-torch's order."""
    off = 0
    for p in params:
        yield p, slice(off, off + p.numel())
        off += p.numel()


def _check_kron_blocks(la, exact: torch.Tensor, params: list[torch.Tensor], slack: float) -> int:
    """Each weight's Kronecker block is within ``slack`` of the nearest-Kronecker floor of its
    exact block, with rows and columns as the tensor is stored; biases are exact. Returns the
    number of weights that are not Kronecker products."""
    approx = la.H_facs.to_matrix()
    hard = 0
    for p, sl in _blocks(params):
        blk, got = exact[sl, sl], approx[sl, sl]
        if p.ndim == 1 or 1 in p.shape:  # biases dense, a one-output head a Kronecker product
            assert rel_err(got, blk) < 1e-9
            continue
        floor, err = nearest_kronecker_floor(blk, *p.shape), rel_err(got, blk)
        assert floor > 1e-3, "the test needs a block that is not a Kronecker product"
        assert floor * (1 - 1e-6) <= err <= slack * floor
        hard += 1
    return hard


# ---------------------------------------------------------------------- a Conv1D MLP
def test_conv1d_twin_computes_the_same_rewards(reward_model, conv1d_model, pairs):
    with torch.no_grad():
        torch.testing.assert_close(conv1d_model(pairs[0]), reward_model(pairs[0]))


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_all_weights_diag_and_full_are_the_exact_ggn(
    conv1d_model, pairs, pair_loader, no_jacobians, structure
):
    la = fit_bt(conv1d_model, pair_loader, "all", structure)
    assert la.backend.layer_io.supported
    assert [s.transposed for s in la.backend.layer_io.slots] == [True, False] * 3
    exact = exact_ggn(conv1d_model, pairs[0])
    assert rel_err(la.H, exact.diagonal() if structure == "diag" else exact) < 1e-10


def test_kron_is_the_linear_twins_kron_with_the_factors_swapped(
    reward_model, conv1d_model, pairs, pair_loader, no_jacobians
):
    """Same function, weights transposed: the same Kronecker product, its factors in the
    order of the Conv1D weight's flattened parameters; and that is the nearest Kronecker
    product of the exact block as the Conv1D weight stores it."""
    la = fit_bt(conv1d_model, pair_loader, "all", "kron")
    twin = fit_bt(reward_model, pair_loader, "all", "kron")
    factors = zip(la.H_facs.kfacs, twin.H_facs.kfacs, conv1d_model.parameters(), strict=True)
    for conv, lin, p in factors:
        expected = lin[::-1] if p.ndim == 2 else lin
        assert [tuple(f.shape) for f in conv] == [(n, n) for n in p.shape]
        for f, e in zip(conv, expected, strict=True):
            torch.testing.assert_close(f, e, rtol=1e-10, atol=1e-12)
    params = list(conv1d_model.parameters())
    assert _check_kron_blocks(la, exact_ggn(conv1d_model, pairs[0]), params, 1.25) == 2


def test_last_layer_of_a_conv1d_head_is_refused_with_the_fix(conv1d_model, pair_loader):
    """laplace-torch's last-layer Laplace takes an nn.Linear head only."""
    match = r"'net.4', is a Conv1D; .*nn.Linear head only.*freeze.*subset_of_weights='all'"
    with pytest.raises(ValueError, match=match):
        btl.fit_reward_posterior(conv1d_model, pair_loader, subset_of_weights="last_layer")


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_conv1d_head_alone_is_exact(conv1d_model, pairs, pair_loader, no_jacobians, structure):
    """The fix the refusal names: the rest frozen, all weights, the exact last-layer GGN."""
    _freeze_body(conv1d_model)
    la = fit_bt(conv1d_model, pair_loader, "all", structure)
    got = la.H_facs.to_matrix() if structure == "kron" else la.H
    exact = exact_last_layer_ggn(conv1d_model, pairs[0])
    assert rel_err(got, exact.diagonal() if structure == "diag" else exact) < 1e-10


@pytest.mark.parametrize(("subset", "structure"), CASES, ids=IDS)
def test_predictive_is_jacrev_with_laplace_torchs_covariance(
    conv1d_model, pairs, pair_loader, no_jacobians, subset, structure
):
    """Item variances, the variance of pair differences, rewards relative to reference items
    and joint samples, from layer I/O, against jacrev Jacobians and laplace-torch's Sigma (its
    parameter order), float64."""
    if subset == "head":
        _freeze_body(conv1d_model)
    post = btl.fit_reward_posterior(
        conv1d_model,
        pair_loader,
        subset_of_weights="all",
        hessian_structure=structure,
        prior_precision=0.7,
    )
    la = post.laplace
    sigma = _covariance(la)
    x, ref = pairs[0][:12], pairs[0][12:20, 1]
    jac = item_jacobians(conv1d_model, torch.cat([x.flatten(0, 1), ref]))  # named_parameters
    jac = jac[:, -sigma.shape[0] :]  # order; the posterior's (all, or the head's) at the end
    jac, jac_ref = jac[:24].reshape(12, 2, -1), jac[24:]
    item_var = ((jac[:, 0] @ sigma) * jac[:, 0]).sum(-1)
    torch.testing.assert_close(post(x[:, 0]).variance, item_var, rtol=1e-9, atol=1e-12)
    d = jac[:, 1] - jac[:, 0]
    _, diff_var = post.difference_moments(x)
    torch.testing.assert_close(diff_var, ((d @ sigma) * d).sum(-1), rtol=1e-9, atol=1e-12)
    d = jac[:, 0] - jac_ref.mean(0)  # r(x) - mean r(ref): the mean Jacobian in each layout
    rel_var = post.relative_reward(x[:, 0], reference=ref).variance
    torch.testing.assert_close(rel_var, ((d @ sigma) * d).sum(-1), rtol=1e-9, atol=1e-12)
    draws = post.sample(x[:, 0], 5, generator=torch.Generator().manual_seed(3))
    theta = la.sample(5, generator=torch.Generator().manual_seed(3)) - la.mean
    with torch.no_grad():
        rewards = conv1d_model(x[:, 0]).reshape(-1)
    torch.testing.assert_close(draws, rewards + theta @ jac[:, 0].T, rtol=1e-9, atol=1e-12)


def test_auto_takes_all_weights_of_a_conv1d_network(conv1d_model, pair_loader):
    post = btl.fit_reward_posterior(
        conv1d_model, pair_loader, hessian_structure="diag", prior_precision=1.0
    )
    assert post.laplace.n_params == sum(p.numel() for p in conv1d_model.parameters())


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_saved_conv1d_posterior_loads_identically(
    conv1d_model, pairs, pair_loader, tmp_path, structure
):
    post = btl.fit_reward_posterior(
        conv1d_model, pair_loader, hessian_structure=structure, prior_precision=0.7
    )
    post.save(tmp_path)
    again = btl.load_reward_posterior(tmp_path, conv1d_model)
    x = pairs[0][:9, 1]
    torch.testing.assert_close(again(x).variance, post(x).variance, rtol=0, atol=0)


# ---------------------------------------------------------------------- a tiny GPT-2
N_PAIRS, LENGTH = 6, 6


@pytest.fixture(scope="module")
def gpt2():
    """A 1-layer GPT-2 (n_embd 8) reward model in float64 with only its linear layers
    trainable (4 Conv1D and the nn.Linear score head, 848 parameters); 6 token-dict pairs of
    2-6 tokens, right-padded, in batches of 4; and the exact GGN and per-item Jacobians
    ``(6, 2, P)`` of the trainable parameters, by jacrev."""
    config = tf.GPT2Config(
        n_layer=1,
        n_embd=8,
        n_head=2,
        vocab_size=50,
        n_positions=32,
        num_labels=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    net = tf.GPT2ForSequenceClassification(config).double().eval()
    model = btl.PairwiseRewardModel(net).eval()
    for name, p in model.named_parameters():
        if any(k in name for k in ("wte", "wpe", "ln_")):
            p.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(2, LENGTH + 1, (N_PAIRS, 2), generator=g)
    mask = (torch.arange(LENGTH) < lengths[..., None]).long()
    x = {"input_ids": torch.randint(2, 50, (N_PAIRS, 2, LENGTH), generator=g) * mask}
    x["attention_mask"] = mask
    y = torch.randint(0, 2, (N_PAIRS,), generator=g)
    rows = [({k: v[i] for k, v in x.items()}, y[i]) for i in range(N_PAIRS)]
    loader = DataLoader(rows, batch_size=4)

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    items = {k: v.flatten(0, 1) for k, v in x.items()}  # (12, L), pair by pair
    jac = jacrev(lambda ps: functional_call(model, ps, (items,)).reshape(-1))(params)
    jac = torch.cat([jac[n].reshape(2 * N_PAIRS, -1) for n in params], 1)
    jac = jac.reshape(N_PAIRS, 2, -1)
    with torch.no_grad():
        logits = model(x)
    p = torch.sigmoid(logits[:, 1] - logits[:, 0])
    d = jac[:, 1] - jac[:, 0]
    exact = (d * (p * (1 - p))[:, None]).T @ d
    return model, x, loader, jac, exact


def test_gpt2_layers_are_conv1d_on_the_fast_path(gpt2, no_jacobians):
    model, _, loader, jac, _ = gpt2
    post = btl.fit_reward_posterior(model, loader, hessian_structure="diag", prior_precision=1.0)
    recorder = post.laplace.backend.layer_io
    assert recorder.supported and post.laplace.n_params == jac.shape[-1] == 848  # auto: all
    assert sum(isinstance(m, Conv1D) for m in recorder.layers) == 4
    assert sum(s.transposed for s in recorder.slots) == 4


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_gpt2_diag_and_full_are_the_exact_ggn(gpt2, no_jacobians, structure):
    model, _, loader, _, exact = gpt2
    la = btl.fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure=structure, prior_precision=1.0
    ).laplace
    assert rel_err(la.H, exact.diagonal() if structure == "diag" else exact) < 1e-10


@pytest.mark.parametrize("iterations", [2, 8])
def test_gpt2_kron_reaches_the_nearest_kronecker_floor(gpt2, no_jacobians, iterations):
    """Per Conv1D weight (in, out) the nearest Kronecker product of its exact block in the
    stored layout (the floor checked with (out, in) instead is up to twice as high here)."""
    model, _, loader, _, exact = gpt2
    la = btl.fit_reward_posterior(
        model,
        loader,
        subset_of_weights="all",
        hessian_structure="kron",
        prior_precision=1.0,
        backend_kwargs={"kron_iterations": iterations},
    ).laplace
    params = [p for p in model.parameters() if p.requires_grad]
    assert _check_kron_blocks(la, exact, params, 1.25 if iterations == 2 else 1.001) == 4


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_gpt2_predictive_is_jacrev_with_laplace_torchs_covariance(gpt2, no_jacobians, structure):
    model, x, loader, jac, _ = gpt2
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure=structure, prior_precision=0.5
    )
    sigma = _covariance(post.laplace)
    chosen = {k: v[:, 1] for k, v in x.items()}
    variance = post(chosen).variance
    torch.testing.assert_close(
        variance, ((jac[:, 1] @ sigma) * jac[:, 1]).sum(-1), rtol=1e-9, atol=0
    )
    d = jac[:, 1] - jac[:, 0]
    _, diff_var = post.difference_moments(x)
    torch.testing.assert_close(diff_var, ((d @ sigma) * d).sum(-1), rtol=1e-9, atol=1e-12)
    la = post.laplace
    draws = post.sample(chosen, 4, generator=torch.Generator().manual_seed(5))
    theta = la.sample(4, generator=torch.Generator().manual_seed(5)) - la.mean
    with torch.no_grad():
        rewards = model(chosen).reshape(-1)
    torch.testing.assert_close(draws, rewards + theta @ jac[:, 1].T, rtol=1e-9, atol=1e-12)


def test_gpt2_last_layer_is_the_score_head(gpt2, no_jacobians):
    """The score head (nn.Linear, no bias) on features of every position: exact."""
    model, _, loader, jac, exact = gpt2
    la = btl.fit_reward_posterior(
        model, loader, subset_of_weights="last_layer", hessian_structure="full", prior_precision=1.0
    ).laplace
    assert rel_err(la.H, exact[-8:, -8:]) < 1e-10
