"""Exact-GGN evidence: spectrum against brute-force Jacobians, optimum against the determinant."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import fit_bt
from laplace import Laplace
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.evidence import exact_evidence_prior_precision, exact_ggn_eigenvalues
from bt_laplace.testing import exact_ggn


def brute_force_spectrum(ggn: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest eigenvalues of the exact GGN, ascending."""
    return torch.linalg.eigvalsh(ggn)[-k:]


def brute_force_optimum(ggn: torch.Tensor, theta_sq: float) -> float:
    """Maximize ``-0.5 (logdet(H + d I) - P log d + d ||theta||^2)`` with determinants only:
    a log grid, then golden-section search."""
    eye = torch.eye(ggn.shape[0], dtype=ggn.dtype)

    def neg(log_d: float) -> float:
        d = math.exp(log_d)
        return float(torch.logdet(ggn + d * eye)) - ggn.shape[0] * log_d + d * theta_sq

    grid = [i / 20 for i in range(-200, 200)]
    best = min(grid, key=neg)
    lo, hi = best - 0.05, best + 0.05
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if neg(a) < neg(b):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


def theta_sq_of(la) -> float:
    return float((la.mean - la.prior_mean).square().sum())


def random_pairs(n: int, d: int = 5, seed: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, d, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize(
    "subset, n_pairs",
    [
        ("all", 60),  # N = 60 < P = 106: pair kernel from activations and output gradients
        ("all", 150),  # P = 106 <= N: the P x P GGN
        ("last_layer", 6),  # N = 6 < P = 8: pair kernel on the last layer
        ("last_layer", 60),  # P = 8 <= N
    ],
)
def test_spectrum_equals_brute_force_ggn(reward_model, subset, n_pairs):
    x, y = random_pairs(n_pairs)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    la = fit_bt(reward_model, loader, subset, "diag")
    ggn = exact_ggn(reward_model, x)
    if subset == "last_layer":
        ggn = ggn[-8:, -8:]  # the head's 7 weights and its bias
    eigs = exact_ggn_eigenvalues(la, loader)
    assert eigs.shape == (min(n_pairs, ggn.shape[0]),)
    want = brute_force_spectrum(ggn, eigs.numel()).clamp_min(0.0)
    assert float((eigs - want).abs().max() / want.max()) < 1e-10


@pytest.mark.parametrize("fixture", ["sequence_model_and_pairs", "reused_model_and_pairs"])
def test_spectrum_of_sequence_models(request, fixture):
    """Per-pair Jacobian rows (from the taps' sequence blocks, or from laplace-torch)."""
    model, x, loader = request.getfixturevalue(fixture)
    la = fit_bt(model, loader, "all", "diag")
    eigs = exact_ggn_eigenvalues(la, loader)  # N = 12 < P = 21 or 16
    want = brute_force_spectrum(exact_ggn(model, x), 12).clamp_min(0.0)
    assert float((eigs - want).abs().max() / want.max()) < 1e-10


def test_spectrum_is_tempered_and_independent_of_the_fit_backend(reward_model, pair_loader):
    from laplace.curvature import CurvlinopsGGN

    la = fit_bt(reward_model, pair_loader, "all", "kron", temperature=2.0)
    other = Laplace(
        reward_model, "reward_modeling", subset_of_weights="all", hessian_structure="diag",
        backend=CurvlinopsGGN,
    )  # fmt: skip
    other.fit(pair_loader)
    half = exact_ggn_eigenvalues(la, pair_loader)
    full = exact_ggn_eigenvalues(other, pair_loader)
    torch.testing.assert_close(half, full / 2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_exact_evidence_prior_is_the_determinant_optimum(
    reward_model, pairs, pair_loader, subset, structure
):
    x, _ = pairs
    post = btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights=subset,
        hessian_structure=structure,
        evidence="exact",
    )
    ggn = exact_ggn(reward_model, x)
    if subset == "last_layer":
        ggn = ggn[-8:, -8:]
    want = brute_force_optimum(ggn, theta_sq_of(post.laplace))
    assert abs(float(post.prior_precision) / want - 1) < 1e-6


def test_full_posterior_evidence_agrees_with_laplace_torch(reward_model, pair_loader):
    """For ``full`` the posterior is the exact GGN: laplace-torch's own optimizer, run to
    convergence on its own log marginal likelihood, lands on the same prior."""
    post = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights="all", hessian_structure="full",
        evidence="exact",
    )  # fmt: skip
    la = fit_bt(reward_model, pair_loader, "all", "full")
    la.optimize_prior_precision(method="marglik", n_steps=2000, lr=0.05)
    assert abs(float(post.prior_precision) / float(la.prior_precision) - 1) < 1e-4
    # and its evidence at that prior is no lower than at laplace-torch's
    lml = post.laplace.log_marginal_likelihood()
    assert float(lml) >= float(la.log_marginal_likelihood()) - 1e-9


def test_kron_posterior_evidence_differs_from_exact(reward_model, pair_loader):
    """Guard that the test above can fail: a block-diagonal posterior's own evidence optimum
    is not the exact one."""
    kw = {"subset_of_weights": "all", "hessian_structure": "diag"}
    own = btl.fit_reward_posterior(reward_model, pair_loader, **kw, n_steps=2000)
    exact = btl.fit_reward_posterior(reward_model, pair_loader, **kw, evidence="exact")
    assert abs(float(own.prior_precision) / float(exact.prior_precision) - 1) > 0.02


def test_root_solver_matches_stationarity():
    kappa = torch.tensor([0.0, 1e-3, 0.5, 3.0, 40.0], dtype=torch.float64)
    delta = exact_evidence_prior_precision(kappa, theta_sq=0.7)
    gamma = float((kappa / (kappa + delta)).sum())
    assert abs(gamma - delta * 0.7) < 1e-10


@pytest.mark.parametrize(
    "kappa, theta_sq, match",
    [
        (torch.zeros(4), 1.0, "GGN is zero"),
        (torch.ones(4), 0.0, "prior_mean"),
    ],
)
def test_root_solver_refuses_degenerate_evidence(kappa, theta_sq, match):
    with pytest.raises(ValueError, match=match):
        exact_evidence_prior_precision(kappa, theta_sq)


def test_bad_arguments_name_themselves(reward_model, pair_loader):
    with pytest.raises(ValueError, match="evidence"):
        btl.fit_reward_posterior(reward_model, pair_loader, evidence="kron")
    with pytest.raises(ValueError, match="prior_precision=1.0"):
        btl.fit_reward_posterior(reward_model, pair_loader, prior_precision=1.0, evidence="exact")
    with pytest.raises(ValueError, match="`n_steps`"):
        btl.fit_reward_posterior(reward_model, pair_loader, evidence="exact", n_steps=10)
    with pytest.raises(ValueError, match="prior_structure"):
        btl.fit_reward_posterior(
            reward_model, pair_loader, evidence="exact", prior_structure="layerwise"
        )


def test_memory_limit_names_the_size(reward_model, pair_loader):
    la = fit_bt(reward_model, pair_loader, "all", "diag")
    msg = r"pair kernel, 60 x 60 in float64 .* above the 0 GiB limit; use evidence='posterior'"
    with pytest.raises(ValueError, match=msg):
        exact_ggn_eigenvalues(la, pair_loader, memory_limit=1000)


def test_memory_limit_of_the_jacobian_route(reused_model_and_pairs):
    """Outside the Gram-matrix shortcut the 12 x 16 pair Jacobian (1,536 bytes) must fit."""
    model, _, loader = reused_model_and_pairs
    la = fit_bt(model, loader, "all", "diag")
    with pytest.raises(ValueError, match=r"pair Jacobian .*, 12 x 16 in float64"):
        exact_ggn_eigenvalues(la, loader, memory_limit=1500)


@pytest.mark.parametrize(
    "subset, n_pairs, yielded",
    [("all", 60, 48), ("last_layer", 60, 48), ("all", 150, 144)],  # kernel and GGN routes
)
def test_loader_that_skips_pairs_is_refused(reward_model, subset, n_pairs, yielded):
    loader = DataLoader(TensorDataset(*random_pairs(n_pairs)), batch_size=16, drop_last=True)
    la = fit_bt(reward_model, loader, subset, "diag")
    with pytest.raises(ValueError, match=f"yielded {yielded} pairs but its dataset has {n_pairs}"):
        exact_ggn_eigenvalues(la, loader)
