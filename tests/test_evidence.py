"""Exact-GGN evidence: spectrum against brute-force Jacobians, optimum against the determinant."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import fit_bt, make_net
from laplace import Laplace
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.evidence import (
    exact_evidence_prior_precision,
    exact_ggn_eigenvalues,
    exact_ggn_matrix,
    fitted_ggn_eigenvalues,
)
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
def test_spectrum_equals_brute_force_ggn(reward_model, item_route, subset, n_pairs):
    x, y = random_pairs(n_pairs)  # every item new: the pair kernel or the GGN
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    la = fit_bt(reward_model, loader, subset, "diag")
    ggn = exact_ggn(reward_model, x)
    if subset == "last_layer":
        ggn = ggn[-8:, -8:]  # the head's 7 weights and its bias
    eigs = exact_ggn_eigenvalues(la, loader)
    assert eigs.shape == (min(n_pairs, ggn.shape[0]),) and not item_route
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


@pytest.mark.parametrize("structure", ["kron", "full"])
def test_fitted_exact_curvature_gives_the_spectrum_without_a_pass(
    reward_model, pair_loader, structure
):
    """A last-layer kron posterior over a one-output head whose bias cancels, and a full one
    with P = 8 <= N = 60, hold the exact GGN: its spectrum is read off them."""
    la = fit_bt(reward_model, pair_loader, "last_layer", structure)
    fitted = fitted_ggn_eigenvalues(la)
    assert fitted is not None
    want = exact_ggn_eigenvalues(la, pair_loader)
    torch.testing.assert_close(fitted.sort().values, want, rtol=1e-10, atol=1e-12)


def test_fitted_curvature_that_is_not_exact_needs_the_pass(reward_model, pair_loader):
    assert fitted_ggn_eigenvalues(fit_bt(reward_model, pair_loader, "last_layer", "diag")) is None
    assert fitted_ggn_eigenvalues(fit_bt(reward_model, pair_loader, "all", "kron")) is None
    # full with P = 106 > N = 60: the pair kernel is the cheaper route
    assert fitted_ggn_eigenvalues(fit_bt(reward_model, pair_loader, "all", "full")) is None
    # a squashed head: its output gradient differs between the items of a pair, so its bias
    # has curvature and the weight-bias block that kron drops is not zero
    squashed = btl.PairwiseRewardModel(nn.Sequential(make_net(), nn.Tanh())).eval()
    la = fit_bt(squashed, pair_loader, "last_layer", "kron", last_layer_name="net.0.4")
    assert float(la.H_facs.kfacs[1][0]) > 0  # the bias block
    assert fitted_ggn_eigenvalues(la) is None


@pytest.mark.parametrize("structure, passes", [("kron", False), ("full", False), ("diag", True)])
def test_last_layer_fit_reads_the_exact_evidence_off_its_curvature(
    reward_model, pair_loader, monkeypatch, structure, passes
):
    """The default last-layer posterior (kron) sets the exact-evidence prior from its own
    curvature: no second pass over the pairs (half the cost of a fit through a large model)."""
    calls = []
    monkeypatch.setattr(
        "bt_laplace.prior.precision.exact_ggn_matrix",
        lambda la, loader, **kw: calls.append(1) or exact_ggn_matrix(la, loader),
    )
    post = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights="last_layer", hessian_structure=structure
    )
    assert bool(calls) == passes
    la = post.laplace
    want = exact_evidence_prior_precision(exact_ggn_eigenvalues(la, pair_loader), theta_sq_of(la))
    assert float(post.prior_precision) == pytest.approx(want, rel=1e-10)


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
    # 60 pairs of 120 new items: the item kernel is the largest matrix
    msg = r"distinct items, 120 x 120 in float64 .* above the 0 GiB limit; use evidence='post"
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


# ---------------------------------------------------------------- pairs among fewer items
def pooled_pairs(
    n_pairs: int, n_items: int, *, sets: int = 1, d: int = 5, seed: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_pairs`` pairs among ``n_items`` items in ``sets`` groups never compared across,
    with a repeated pair and a pair of an item with itself."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(n_items, d, generator=g, dtype=torch.float64)
    group = torch.randint(0, sets, (n_pairs,), generator=g)
    size = n_items // sets
    index = group[:, None] * size + torch.randint(0, size, (n_pairs, 2), generator=g)
    index[1] = index[0]
    index[2, 1] = index[2, 0]
    return items[index], torch.randint(0, 2, (n_pairs,), generator=g)


@pytest.fixture
def item_route(monkeypatch):
    """Counts the kernels built through the distinct items."""
    import bt_laplace.prior.kernel as kernel

    calls = []
    real = kernel._item_form
    monkeypatch.setattr(kernel, "_item_form", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize(
    "subset, n_pairs, n_items, sets, through",
    [
        ("all", 60, 20, 1, True),  # N = 60 < P = 106, M = 20: the 19 x 19 item form
        ("all", 60, 24, 3, True),  # three sets of items never compared across: r = 21
        ("all", 90, 60, 1, True),  # M = 60 < N = 90 < P = 106: still the item form
        ("all", 60, 50, 2, False),  # M = 50: the pair kernel gathered from the item kernel
        ("all", 40, 70, 1, False),  # M = 70 > N = 40 (few repeats): the same
        ("last_layer", 6, 4, 1, True),  # N = 6 < P = 8, M = 4
        ("all", 300, 12, 2, True),  # P = 106 <= N = 300, M = 12: the items' kernel, not the GGN
    ],
)
def test_spectrum_through_distinct_items_equals_brute_force_ggn(
    reward_model, item_route, subset, n_pairs, n_items, sets, through
):
    x, y = pooled_pairs(n_pairs, n_items, sets=sets)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    la = fit_bt(reward_model, loader, subset, "diag")
    ggn = exact_ggn(reward_model, x)
    if subset == "last_layer":
        ggn = ggn[-8:, -8:]
    eigs = exact_ggn_eigenvalues(la, loader)
    assert bool(item_route) == through, "not the form the operation counts choose"
    assert eigs.shape == (min(n_pairs, ggn.shape[0]),)
    want = brute_force_spectrum(ggn, eigs.numel()).clamp_min(0.0)
    assert float((eigs - want).abs().max() / want.max()) < 1e-10
    assert int((eigs > 1e-10 * eigs.max()).sum()) <= n_items - sets  # rank of the Laplacian


def pair_variance_problem(pooled: bool):
    """A 4-6-1 tanh MLP in float64, its training pairs ``x`` and their loader, and 7 query
    pairs: 30 pairs of new items, or 40 pairs of 12 items in two sets."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    model = btl.PairwiseRewardModel(net)
    if pooled:
        x, y = pooled_pairs(40, 12, sets=2, d=4)
    else:
        x, y = torch.randn(30, 2, 4, dtype=torch.float64), torch.randint(0, 2, (30,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    return model, x, loader, torch.randn(7, 2, 4, dtype=torch.float64)


def assert_exact_variances(post, xq: torch.Tensor, variances) -> None:
    """``variances(delta)`` equal the pair variances of ``xq`` of the fitted posterior
    ``post`` (a ``full`` one: the P x P covariance) at each of three priors, float64."""
    for delta in (0.01, 0.7, 40.0):
        post.laplace.prior_precision = delta
        _, ref = post.predictive.difference_moments(xq)
        torch.testing.assert_close(variances(delta), ref.reshape(-1), rtol=1e-9, atol=0)


@pytest.mark.parametrize("pooled", [False, True])
def test_exact_pair_variances_equal_the_full_posterior_in_float64(item_route, pooled):
    """The pair-kernel (Woodbury) variances of new pairs equal those of the all-weights
    ``full`` posterior (P x P covariance) at every prior, tempered too: 30 pairs of new items
    (the pair kernel), or 40 pairs of 12 items in two sets (through the distinct items)."""
    from bt_laplace.evidence import exact_pair_variances

    model, x, loader, xq = pair_variance_problem(pooled)
    for temperature in (1.0, 2.5):
        post = btl.fit_reward_posterior(
            model, loader, subset_of_weights="all", hessian_structure="full",
            prior_precision=1.0, temperature=temperature,
        )  # fmt: skip
        query = post.predictive.jacobians(xq, pairs=True)
        eigs, variances = exact_pair_variances(post.laplace, loader, (query[0], query[1]))
        assert eigs.shape == (len(x),) and bool(item_route) == pooled
        assert_exact_variances(post, xq, variances)


@pytest.mark.parametrize("centering", [None, 0.3])
@pytest.mark.parametrize("pooled", [False, True])
def test_kernel_without_items_is_the_exact_posterior_of_the_other_pairs(
    item_route, pooled, centering
):
    """The exact posterior of the pairs without some items, read off the kernel form of all
    the pairs (``KernelForm.without_items``, as the held-out calibration takes it): variances
    of new pairs at every prior equal the ``full`` posterior fitted on those pairs alone
    (P x P covariance, float64), eigenvalues those of the kernel built afresh from them; the
    pair kernel's rows and columns (30 pairs of new items), or through the distinct items (40
    pairs of 12 items); with TRL's centering rows too."""
    from bt_laplace.evidence import exact_pair_variances

    _, x, loader, xq = pair_variance_problem(pooled)
    y = loader.dataset.tensors[1]
    net = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 1)).double()
    model = btl.PairwiseRewardModel(net)  # P = 73: above the 30 pairs' 60 centered rows
    kwargs = {} if centering is None else {"center_rewards_coefficient": centering}

    def full(pairs):
        return btl.fit_reward_posterior(
            model, pairs, hessian_structure="full", prior_precision=1.0, backend_kwargs=kwargs
        )

    post = full(loader)
    form = exact_ggn_matrix(post.laplace, loader, restrictable=True).form
    assert form is not None and bool(item_route) == pooled
    keys = form.pairs.keys
    items, x_keys = torch.unique(x.reshape(-1, 4), dim=0, return_inverse=True)
    torch.testing.assert_close(keys, items, rtol=0, atol=0)
    held = torch.arange(len(keys)) % 3 == 0
    keep = ~held[form.pairs.index].any(1)
    assert torch.equal(keep, ~held[x_keys.reshape(-1, 2)].any(1)) and 3 < int(keep.sum()) < len(x)
    rest = DataLoader(TensorDataset(x[keep], y[keep]), batch_size=8)
    part = full(rest)
    query = part.predictive.jacobians(xq, pairs=True)
    sub = form.without_items(held)
    rows = int(keep.sum()) * (1 if centering is None else 2)
    eigs, variances = exact_pair_variances(part.laplace, rest, (query[0], query[1]), form=sub)
    want, _ = exact_pair_variances(part.laplace, rest, (query[0], query[1]))
    assert eigs.shape == want.shape == (rows,)
    torch.testing.assert_close(eigs, want, rtol=1e-9, atol=1e-12 * float(want.max()))
    assert_exact_variances(part, xq, variances)


def test_calibration_takes_the_kernel_only_of_the_same_pairs():
    """The held-out calibration restricts the exact evidence's kernel only where it is of
    the same pairs as its own (a multiset: any order): not of other pairs of the same items,
    nor a form built without ``restrictable`` (through the items: no item kernel kept)."""
    from bt_laplace.prior.calibration import held_out_split

    _, x, loader, _ = pair_variance_problem(True)  # 40 pairs of 12 items: through the items
    net = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 1)).double()
    model = btl.PairwiseRewardModel(net)
    post = btl.fit_reward_posterior(model, loader, hessian_structure="full", prior_precision=1.0)
    form = exact_ggn_matrix(post.laplace, loader, restrictable=True).form
    split = held_out_split(x)
    assert split is not None and form is not None
    got = split.kept_pairs_of(form)
    assert got is not None and got.n_pairs == int(split.keep.sum())
    shuffled = held_out_split(x[torch.randperm(len(x))].flip(1))  # pair order, item order
    assert shuffled is not None
    assert shuffled.kept_pairs_of(form) is not None
    other = x.clone()
    other[3, 1], other[4, 1] = x[4, 1], x[3, 1]  # the same items in other pairs
    assert not torch.equal(other[3], x[4]) and not torch.equal(other[3], x[4].flip(0))
    assert held_out_split(other).kept_pairs_of(form) is None
    plain = exact_ggn_matrix(post.laplace, loader).form
    assert plain is not None and plain.restrict is None
    assert split.kept_pairs_of(plain) is None
    with pytest.raises(ValueError, match="restrictable"):
        plain.without_items(split.held)


@pytest.mark.parametrize("cholesky_fails", [False, True])
def test_laplacian_factor_squares_to_the_laplacian(monkeypatch, cholesky_fails):
    """``F F^T = D^T W D`` with three sets of items, a zero weight (an edge that joins
    nothing) and a self pair; by grounded Cholesky, or the eigendecomposition where that
    fails."""
    from bt_laplace.prior.kernel import laplacian_factor

    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, 10, (30, 2), generator=g) + 10 * torch.randint(
        0, 3, (30, 1), generator=g
    )
    index[0] = torch.tensor([0, 29])  # across sets, with weight 0 below
    index[1, 1] = index[1, 0]
    weight = torch.rand(30, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(
        -6, 3, (30,), generator=g
    )
    weight[0] = 0.0
    incidence = torch.zeros(30, 30, dtype=torch.float64)
    incidence[torch.arange(30), index[:, 1]] += 1
    incidence[torch.arange(30), index[:, 0]] -= 1
    lap = incidence.T @ (weight[:, None] * incidence)
    if cholesky_fails:
        real = torch.linalg.cholesky_ex
        monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda a: (real(a)[0], torch.tensor(1)))
    factor = laplacian_factor(index, weight, 30)
    torch.testing.assert_close(factor @ factor.T, lap, rtol=0, atol=1e-12 * float(lap.abs().max()))
    assert factor.shape[1] <= 30 - 3


def test_distinct_items_by_layer_io_when_inputs_are_not_tensors():
    """Without tensor inputs, items are the same where their layer I/O agree bit for bit."""
    from bt_laplace.prior.kernel import LayerRows, pair_items

    acts = torch.tensor([[1.0], [2.0], [1.0], [3.0], [2.0], [3.0]], dtype=torch.float64)
    grads = torch.tensor([[0.5], [0.5], [0.5], [0.5], [0.5], [0.5]], dtype=torch.float64)
    root = torch.ones(3, dtype=torch.float64)
    pairs = pair_items(LayerRows([acts], [grads]), root)
    assert pairs.n_items == 3 and pairs.index.tolist() == [[0, 1], [0, 2], [1, 2]]
    more = torch.cat([acts, acts[:2]]), torch.cat([grads, grads[:2]])
    pairs = pair_items(LayerRows([more[0]], [more[1]]), torch.ones(4, dtype=torch.float64))
    assert pairs.n_items == 3 and pairs.index.tolist() == [[0, 1], [0, 2], [1, 2], [0, 1]]
    other = more[1].clone()
    other[2, 0] = 0.5 + 1e-16 * 4  # one rounding apart: another item
    pairs = pair_items(LayerRows([more[0]], [other]), torch.ones(4, dtype=torch.float64))
    assert pairs.n_items == 4 and pairs.index.tolist() == [[0, 2], [1, 3], [2, 3], [0, 2]]


def test_distinct_items_of_inputs_wider_than_the_layer_io(item_route, monkeypatch):
    """A last layer reads 8 features of 12-wide inputs: the items are told apart by their
    layer I/O (the inputs are not kept), one batch, so identical items agree bit for bit."""
    import bt_laplace.prior.pair_io as pair_io

    seen = []
    real = pair_io.pair_items
    monkeypatch.setattr(
        pair_io, "pair_items", lambda i, r, x, **kw: seen.append(x) or real(i, r, x, **kw)
    )
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    model = btl.PairwiseRewardModel(net)
    x, y = pooled_pairs(7, 4, d=12, seed=6)
    loader = DataLoader(TensorDataset(x, y), batch_size=7)
    la = fit_bt(model, loader, "last_layer", "diag")
    eigs = exact_ggn_eigenvalues(la, loader)  # N = 7 < P = 9: the kernel
    assert item_route and seen == [None]
    want = brute_force_spectrum(exact_ggn(model, x)[-9:, -9:], 7).clamp_min(0.0)
    assert float((eigs - want).abs().max() / want.max()) < 1e-10


def test_auto_counts_the_items_before_it_gives_up_the_exact_evidence(reward_model, monkeypatch):
    """Above the cost limit by the number of pairs, ``evidence="auto"`` counts the distinct
    items and takes the exact evidence where their kernel is within it: 300 pairs of 12 items
    (P = 106 <= N: the GGN ~4.6e6 operations, the items' kernel ~1e4) at a limit of 1e6;
    300 pairs of new items stay with the structure's own evidence."""
    import bt_laplace.prior.settings as settings

    monkeypatch.setattr(settings, "AUTO_EXACT_EVIDENCE_FLOPS", 1e6)

    def prior(x, y, **kw):
        loader = DataLoader(TensorDataset(x, y), batch_size=32)
        post = btl.fit_reward_posterior(reward_model, loader, prior_precision="marglik", **kw)
        return float(post.prior_precision)

    pooled = pooled_pairs(300, 12)
    assert (
        prior(*pooled) == prior(*pooled, evidence="exact") != prior(*pooled, evidence="posterior")
    )
    fresh = random_pairs(300)
    assert prior(*fresh) == prior(*fresh, evidence="posterior") != prior(*fresh, evidence="exact")


@pytest.mark.parametrize("block", [2**22, 200])  # one block; rows of 5 (not dividing 37)
def test_item_kernel_equals_explicit_jacobian_rows(monkeypatch, block):
    """``item_kernel`` (blocks on and above the diagonal, mirrored) and ``item_gram`` equal
    ``J J^T`` of explicit Jacobian rows: a layer with weight and bias, one with only a weight,
    one with only a bias in the posterior."""
    import bt_laplace.prior.kernel as kernel

    monkeypatch.setattr(kernel, "_KERNEL_BLOCK", block)
    g = torch.Generator().manual_seed(1)
    shapes = [(4, 3), (3, 2), (2, 1)]  # (in, out) per layer
    kinds = {0: {"weight", "bias"}, 1: {"weight"}, 2: {"bias"}}

    def rows(n):
        acts = [torch.randn(n, i, generator=g, dtype=torch.float64) for i, _ in shapes]
        grads = [torch.randn(n, o, generator=g, dtype=torch.float64) for _, o in shapes]
        return kernel.LayerRows(acts, grads)

    def jacobian(items):
        parts = []
        for layer, kind in kinds.items():
            a, gr = items.acts[layer], items.grads[layer]
            if "weight" in kind:
                parts.append((gr[:, :, None] * a[:, None, :]).flatten(1))
            if "bias" in kind:
                parts.append(gr)
        return torch.cat(parts, 1)

    left, right = rows(37), rows(11)
    want = jacobian(left) @ jacobian(left).T
    got = kernel.item_kernel(kinds, left)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(got, got.T)
    torch.testing.assert_close(
        kernel.item_gram(kinds, left, right), jacobian(left) @ jacobian(right).T,
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip
