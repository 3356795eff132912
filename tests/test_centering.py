"""TRL's ``center_rewards_coefficient``: the posterior of the objective trained, Bradley-Terry
plus ``c (r_0 + r_1)^2`` a pair, against the brute-force GGN of that objective in float64."""

from __future__ import annotations

import pytest
import torch
from conftest import fit_bt
from test_evidence import (
    assert_exact_variances,
    brute_force_optimum,
    brute_force_spectrum,
    pair_variance_problem,
    pooled_pairs,
    theta_sq_of,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.curvature import BradleyTerryGGN
from bt_laplace.evidence import exact_ggn_eigenvalues, exact_pair_variances
from bt_laplace.testing import exact_ggn, item_jacobians, nearest_kronecker_floor, rel_err

C = 0.3


def centered(reward_model, loader, subset, structure, c=C):
    return fit_bt(
        reward_model, loader, subset, structure, backend_kwargs={"center_rewards_coefficient": c}
    )


def test_reference_adds_the_centering_ggn(pairs):
    """The reference itself: the Hessian of ``c sum (r_0 + r_1)^2`` by autograd, at a point
    where the rewards' second derivatives vanish (a linear model), is its GGN."""
    net = nn.Linear(5, 1).double()
    model = btl.PairwiseRewardModel(net)
    x = pairs[0]
    params = dict(net.named_parameters())

    def term(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        r = torch.func.functional_call(net, {"weight": w, "bias": b}, (x,)).squeeze(-1)
        return C * r.sum(1).square().sum()

    hess = torch.autograd.functional.hessian(term, (params["weight"], params["bias"]))
    dense = torch.cat(
        [torch.cat([h.reshape(5 if i == 0 else 1, -1) for h in row], 1)
         for i, row in enumerate(hess)]
    )  # fmt: skip
    torch.testing.assert_close(exact_ggn(model, x, C) - exact_ggn(model, x), dense)


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_all_weights_diag_and_full_are_the_objectives_exact_ggn(
    reward_model, pairs, pair_loader, structure
):
    la = centered(reward_model, pair_loader, "all", structure)
    exact = exact_ggn(reward_model, pairs[0], C)
    assert rel_err(la.H, exact.diagonal() if structure == "diag" else exact) < 1e-10
    plain = exact_ggn(reward_model, pairs[0])
    assert rel_err(plain, exact) > 0.1, "the centering term must change the curvature here"


@pytest.mark.parametrize("structure", ["diag", "full", "kron"])
def test_last_layer_curvature_is_exact_and_pins_the_head_bias(reward_model, pairs, structure):
    """The head bias, which cancels in ``r_1 - r_0``, gets ``2 c (1 + 1)^2`` a pair."""
    loader = DataLoader(TensorDataset(*pairs), batch_size=16)
    la = centered(reward_model, loader, "last_layer", structure)
    x = pairs[0]
    with torch.no_grad():
        phi = reward_model.net[:-1](x.reshape(-1, 5)).reshape(len(x), 2, -1)
    feats = torch.cat([phi, torch.ones(len(x), 2, 1, dtype=phi.dtype)], 2)  # weights, bias
    d, s = feats[:, 1] - feats[:, 0], feats[:, 1] + feats[:, 0]
    with torch.no_grad():
        logits = reward_model(x)
    p = torch.sigmoid(logits[:, 1] - logits[:, 0])
    want = (d * (p * (1 - p))[:, None]).T @ d + 2 * C * s.T @ s
    got = la.H
    if structure == "kron":  # a block per parameter: the weight-bias covariance is dropped
        got = la.H_facs.to_matrix()
        want[:-1, -1] = want[-1, :-1] = 0.0
    assert rel_err(got, want.diagonal() if structure == "diag" else want) < 1e-10
    bias = got[-1] if structure == "diag" else got[-1, -1]
    torch.testing.assert_close(bias, torch.tensor(8 * C * len(x), dtype=bias.dtype))


def test_kron_reaches_the_nearest_kronecker_floor_of_the_objective(reward_model, pairs):
    loader = DataLoader(TensorDataset(*pairs), batch_size=16)
    la = centered(reward_model, loader, "all", "kron")
    approx, exact = la.H_facs.to_matrix(), exact_ggn(reward_model, pairs[0], C)
    off = 0
    for name, p in reward_model.named_parameters():
        sl = slice(off, off + p.numel())
        off += p.numel()
        if p.ndim == 1 or p.shape[0] == 1:  # biases and the head: exact blocks
            assert rel_err(approx[sl, sl], exact[sl, sl]) < 1e-8, name
            continue
        floor = nearest_kronecker_floor(exact[sl, sl], *p.shape)
        err = rel_err(approx[sl, sl], exact[sl, sl])
        assert floor * (1 - 1e-6) <= err <= 1.25 * floor, name


def test_kron_recomputing_the_pair_factors_equals_keeping_them(reward_model, pairs):
    loader = DataLoader(TensorDataset(*pairs), batch_size=16)
    kept = centered(reward_model, loader, "all", "kron")
    again = fit_bt(
        reward_model, loader, "all", "kron",
        backend_kwargs={"center_rewards_coefficient": C, "kron_store_limit": 0},
    )  # fmt: skip
    assert again.backend.kron_kept_bytes == 0
    torch.testing.assert_close(again.H_facs.to_matrix(), kept.H_facs.to_matrix())


def test_loss_holds_the_centering_term(reward_model, pairs, pair_loader):
    la = centered(reward_model, pair_loader, "all", "diag")
    with torch.no_grad():
        logits = reward_model(pairs[0])
        nll = nn.functional.cross_entropy(logits, pairs[1], reduction="sum")
        want = nll + C * logits.sum(1).square().sum()
    torch.testing.assert_close(torch.as_tensor(la.loss), want)


@pytest.mark.parametrize(
    "subset, n_pairs, n_items, through",
    [
        ("all", 40, 80, False),  # 2N = 80 rows < P = 106, every item new: the pair form
        ("all", 40, 20, True),  # M = 20: S = F^T G F is 20 x 20 (L positive definite)
        ("all", 30, 55, False),  # M = 55 < 2N = 60: the pair form, forced
        ("all", 60, 120, None),  # N = 60 < P = 106 <= 2N: the P x P GGN from the backend
        ("all", 300, 12, True),  # P <= N, few items: the items' kernel, not the GGN
        ("last_layer", 3, 4, True),  # 2N = 6 < P = 8
    ],
)
def test_exact_evidence_spectrum_is_the_objectives(
    reward_model, subset, n_pairs, n_items, through, monkeypatch
):
    import bt_laplace.prior.kernel as kernel

    calls = []
    real = kernel._item_form
    monkeypatch.setattr(kernel, "_item_form", lambda *a, **k: calls.append(1) or real(*a, **k))
    if through is False:  # the pair form even where the item form would be cheaper
        monkeypatch.setattr(kernel, "_reduced_cost", lambda m: float("inf"))
    x, y = pooled_pairs(n_pairs, n_items)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    la = centered(reward_model, loader, subset, "diag")
    ggn = exact_ggn(reward_model, x, C)
    if subset == "last_layer":
        ggn = ggn[-8:, -8:]
    eigs = exact_ggn_eigenvalues(la, loader)
    if through is not None:
        assert bool(calls) == through
    want = brute_force_spectrum(ggn, min(len(eigs), ggn.shape[0])).clamp_min(0.0)
    got = eigs[-len(want) :]
    assert float((got - want).abs().max() / want.max()) < 1e-10


def test_exact_evidence_prior_is_the_objectives_determinant_optimum(reward_model):
    x, y = pooled_pairs(60, 40)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    post = btl.fit_reward_posterior(
        reward_model, loader, subset_of_weights="all", hessian_structure="full",
        evidence="exact", center_rewards_coefficient=C,
    )  # fmt: skip
    want = brute_force_optimum(exact_ggn(reward_model, x, C), theta_sq_of(post.laplace))
    assert abs(float(post.prior_precision) / want - 1) < 1e-6


@pytest.mark.parametrize("pooled", [False, True])
def test_exact_pair_variances_equal_the_full_posterior(pooled):
    model, x, loader, xq = pair_variance_problem(pooled)
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure="full",
        prior_precision=1.0, center_rewards_coefficient=C,
    )  # fmt: skip
    query = post.predictive.jacobians(xq, pairs=True)
    _, variances = exact_pair_variances(post.laplace, loader, (query[0], query[1]))
    jq = item_jacobians(model, xq.reshape(-1, 4)).reshape(7, 2, -1)
    dq = jq[:, 1] - jq[:, 0]
    ggn = exact_ggn(model, x, C)
    assert_exact_variances(post, xq, variances)
    for delta in (0.01, 0.7, 40.0):  # and the brute-force GGN of the objective's
        cov = torch.linalg.inv(ggn + delta * torch.eye(len(ggn), dtype=ggn.dtype))
        torch.testing.assert_close(variances(delta), ((dq @ cov) * dq).sum(1), rtol=1e-9, atol=0)


def test_default_fit_takes_the_coefficient_and_saves_it(reward_model, pair_loader, tmp_path):
    post = btl.fit_reward_posterior(reward_model, pair_loader, center_rewards_coefficient=C)
    assert post.laplace._backend_kwargs["center_rewards_coefficient"] == C
    plain = btl.fit_reward_posterior(reward_model, pair_loader)
    xq = torch.randn(9, 2, 5, dtype=torch.float64)
    assert not torch.allclose(post(xq[:, 0])[1], plain(xq[:, 0])[1])
    post.save(tmp_path / "post")
    back = btl.load_reward_posterior(tmp_path / "post", reward_model)
    assert back.laplace._backend_kwargs["center_rewards_coefficient"] == C
    torch.testing.assert_close(back(xq[:, 0])[1], post(xq[:, 0])[1])


@pytest.mark.parametrize("value", [-0.1, float("nan"), "0.1", True])
def test_bad_coefficient_names_itself(reward_model, pair_loader, value):
    with pytest.raises(ValueError, match="center_rewards_coefficient"):
        btl.fit_reward_posterior(reward_model, pair_loader, center_rewards_coefficient=value)
    with pytest.raises(ValueError, match="center_rewards_coefficient"):
        BradleyTerryGGN(reward_model, "classification", center_rewards_coefficient=value)


def test_coefficient_with_another_backend_or_twice_is_refused(reward_model, pair_loader):
    from laplace.curvature import CurvlinopsGGN

    with pytest.raises(ValueError, match="leave `backend` out"):
        btl.fit_reward_posterior(
            reward_model, pair_loader, center_rewards_coefficient=C, backend=CurvlinopsGGN
        )
    with pytest.raises(ValueError, match="pass it once"):
        btl.fit_reward_posterior(
            reward_model, pair_loader, center_rewards_coefficient=C,
            backend_kwargs={"center_rewards_coefficient": 2 * C},
        )  # fmt: skip


def test_zero_is_the_bradley_terry_posterior(reward_model, pairs, pair_loader):
    zero = centered(reward_model, pair_loader, "all", "full", c=0.0)
    assert rel_err(zero.H, exact_ggn(reward_model, pairs[0])) < 1e-10


@pytest.mark.parametrize("fixture", ["sequence_model_and_pairs", "scaled_model_and_pairs"])
@pytest.mark.parametrize("structure", ["diag", "full"])
def test_jacobian_paths_hold_the_centering_rows(request, fixture, structure):
    """Sequence layers (per-pair Jacobians from the taps) and a parameter outside
    nn.Linear (laplace-torch's Jacobians): the curvature and the exact evidence's rows."""
    model, x, loader = request.getfixturevalue(fixture)
    la = centered(model, loader, "all", structure)
    exact = exact_ggn(model, x, C)
    assert rel_err(la.H, exact.diagonal() if structure == "diag" else exact) < 1e-10
    eigs = exact_ggn_eigenvalues(la, loader)
    want = brute_force_spectrum(exact, min(len(eigs), exact.shape[0])).clamp_min(0.0)
    assert float((eigs[-len(want) :] - want).abs().max() / want.max()) < 1e-10


@pytest.fixture
def scaled_model_and_pairs():
    from test_curvature import _ScaledNet

    torch.manual_seed(0)
    model = btl.PairwiseRewardModel(_ScaledNet().double()).eval()
    x = torch.randn(8, 2, 4, dtype=torch.float64)  # N = 8 < P = 18: 2N = 16 Jacobian rows
    loader = DataLoader(TensorDataset(x, torch.randint(0, 2, (8,))), batch_size=3)
    return model, x, loader


@pytest.mark.parametrize("cholesky_fails", [False, True])
def test_laplacian_factor_with_centering_squares_to_both_laplacians(monkeypatch, cholesky_fails):
    """``F F^T = D^T W D + 2 c |D|^T |D|`` (the signless Laplacian of the centering rows), with
    a self pair and a zero weight: by its Cholesky factor (``M`` columns), or the
    eigendecomposition where that fails."""
    from bt_laplace.prior.kernel import laplacian_factor

    g = torch.Generator().manual_seed(0)
    chain = torch.stack([torch.arange(12), (torch.arange(12) + 1) % 12], 1)  # every item
    index = torch.cat([torch.randint(0, 12, (20, 2), generator=g), chain])
    index[1, 1] = index[1, 0]
    weight = torch.rand(len(index), generator=g, dtype=torch.float64)
    weight[0] = 0.0
    signed = torch.zeros(len(index), 12, dtype=torch.float64)
    unsigned = torch.zeros_like(signed)
    rows = torch.arange(len(index))
    signed[rows, index[:, 1]] += 1
    signed[rows, index[:, 0]] -= 1
    unsigned[rows, index[:, 1]] += 1
    unsigned[rows, index[:, 0]] += 1
    want = signed.T @ (weight[:, None] * signed) + 2 * C * unsigned.T @ unsigned
    if cholesky_fails:
        real = torch.linalg.cholesky_ex
        monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda a: (real(a)[0], torch.tensor(1)))
    factor = laplacian_factor(index, weight, 12, centering=2 * C)
    torch.testing.assert_close(factor @ factor.T, want, rtol=0, atol=1e-12 * float(want.max()))
    assert factor.shape == (12, 12)
