"""Rewards relative to a reference: against brute-force Jacobians and joint Monte Carlo."""

from __future__ import annotations

import pytest
import torch
from conftest import D_IN
from laplace.baselaplace import DiagLaplace, KronLaplace

import bt_laplace as btl
from bt_laplace.testing import item_jacobians


def dense_covariance(la) -> torch.Tensor:
    """The posterior covariance ``(P, P)`` of any structure, densified."""
    if isinstance(la, DiagLaplace):
        return torch.diag(la.posterior_variance)
    if isinstance(la, KronLaplace):
        return torch.linalg.inv(la.posterior_precision.to_matrix())
    return la.posterior_covariance


def brute_force(post, x, ref, last_layer):
    jac, jac_ref = item_jacobians(post.model, x), item_jacobians(post.model, ref)
    if last_layer:
        jac, jac_ref = jac[:, -8:], jac_ref[:, -8:]  # the head's 7 weights and its bias
    sigma = dense_covariance(post.laplace)
    diff = jac - jac_ref.mean(0)
    with torch.no_grad():
        mean = post.model(x).squeeze(1) - post.model(ref).squeeze(1).mean()
    return mean, ((diff @ sigma) * diff).sum(1)


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("reference", ["group", "items"])
def test_relative_moments_equal_brute_force(
    reward_model, pair_loader, subset, structure, reference
):
    post = btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights=subset,
        hessian_structure=structure,
        prior_precision=0.7,
        batch_size=3,  # several batches of items and of references
    )
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, D_IN, generator=g, dtype=torch.float64)
    ref = x if reference == "group" else torch.randn(5, D_IN, generator=g, dtype=torch.float64)
    mean, var = post.relative_reward(x, "group" if reference == "group" else ref)
    want_mean, want_var = brute_force(post, x, ref, subset == "last_layer")
    torch.testing.assert_close(mean, want_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, want_var, rtol=1e-8, atol=1e-12)
    # the point of it: the absolute variance is larger, by the offset pairs cannot identify
    assert bool((post(x).variance > var).any())


@pytest.mark.parametrize("fixture", ["sequence_model_and_pairs", "reused_model_and_pairs"])
def test_relative_moments_of_sequence_models(request, fixture):
    model, x, loader = request.getfixturevalue(fixture)
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure="diag", prior_precision=0.7
    )
    items, ref = x[:4, 0], x[4:9, 1]
    mean, var = post.relative_reward(items, ref)
    want_mean, want_var = brute_force(post, items, ref, last_layer=False)
    torch.testing.assert_close(mean, want_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, want_var, rtol=1e-8, atol=1e-12)


def test_relative_variance_matches_joint_samples(reward_model, pair_loader):
    post = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights="all", hessian_structure="kron"
    )
    g = torch.Generator().manual_seed(6)
    x = torch.randn(6, D_IN, generator=g, dtype=torch.float64)
    samples = post.sample(x, n_samples=40_000, generator=torch.Generator().manual_seed(7))
    rel = samples - samples.mean(1, keepdim=True)  # each draw relative to its group mean
    _, var = post.relative_reward(x)
    # sample variance of a Gaussian: relative standard error sqrt(2 / S) = 0.7%
    torch.testing.assert_close(rel.var(0), var, rtol=0.04, atol=0.0)


def test_penalized_reward_relative_to_the_group(reward_model, pair_loader):
    post = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights="all", hessian_structure="diag"
    )
    x = torch.randn(6, D_IN, dtype=torch.float64)
    mean, var = post.relative_reward(x)
    torch.testing.assert_close(
        post.penalized_reward(x, k=2.0, reference="group"), mean - 2.0 * var.sqrt()
    )
    absolute = post(x)
    torch.testing.assert_close(
        post.penalized_reward(x, k=2.0), absolute.mean - 2.0 * absolute.variance.sqrt()
    )


def test_bad_reference_names_itself(reward_model, pair_loader):
    post = btl.fit_reward_posterior(reward_model, pair_loader, prior_precision=1.0)
    x = torch.randn(4, D_IN, dtype=torch.float64)
    with pytest.raises(ValueError, match="`reference`"):
        post.relative_reward(x, "prompt")
    with pytest.raises(ValueError, match=r"`reference` items have shape \(3,\)"):
        post.relative_reward(x, torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="pairs"):
        post.relative_reward(torch.randn(4, 2, D_IN, dtype=torch.float64))


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_float32_model_keeps_relative_variance_accurate(subset):
    """A weak prior makes the shared offset variance dwarf the relative one; a float32 model
    must still give the float64 answer (the cancellation runs in float64)."""
    from conftest import make_net
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(8)
    x = torch.randn(200, 2, D_IN, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (200,), generator=g)
    items = torch.randn(6, D_IN, generator=g, dtype=torch.float64)
    answers = []
    for dtype in (torch.float64, torch.float32):
        model = btl.PairwiseRewardModel(make_net().to(dtype)).eval()
        loader = DataLoader(TensorDataset(x.to(dtype), y), batch_size=50)
        post = btl.fit_reward_posterior(
            model, loader, subset_of_weights=subset, hessian_structure="diag",
            prior_precision=1e-4,
        )  # fmt: skip
        answers.append(post.relative_reward(items.to(dtype)).variance)
    assert answers[1].dtype == torch.float32
    torch.testing.assert_close(answers[1].double(), answers[0], rtol=2e-3, atol=0.0)


@pytest.mark.parametrize("reference", ["group", "items"])
def test_batched_group_and_reference_equal_one_batch(reward_model, pair_loader, reference):
    """A group or reference larger than batch_size is summarized batch by batch (memory within
    one batch), with the same moments as in one batch."""
    post = btl.fit_reward_posterior(reward_model, pair_loader, prior_precision=0.5)
    x = torch.randn(23, D_IN, dtype=torch.float64)
    ref = "group" if reference == "group" else torch.randn(17, D_IN, dtype=torch.float64)
    whole = post.relative_reward(x, ref)
    post.batch_size = 4
    batched = post.relative_reward(x, ref)
    torch.testing.assert_close(batched.mean, whole.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(batched.variance, whole.variance, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- groups (many prompts)
@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
@pytest.mark.parametrize("batch_size", [64, 2], ids=["one-pass", "per-group"])
def test_groups_give_each_item_relative_to_its_own_group(
    reward_model, pair_loader, structure, batch_size
):
    post = btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        hessian_structure=structure,
        prior_precision=0.7,
        batch_size=batch_size,
    )
    g = torch.Generator().manual_seed(6)
    x = torch.randn(9, D_IN, generator=g, dtype=torch.float64)
    groups = ["b", "a", "b", "c", "a", "b", "c", "c", "a"]  # interleaved, not sorted
    mean, var = post.relative_reward(x, "group", groups=groups)
    for key in "abc":
        rows = torch.tensor([i for i, k in enumerate(groups) if k == key])
        want_mean, want_var = brute_force(post, x[rows], x[rows], last_layer=False)
        torch.testing.assert_close(mean[rows], want_mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(var[rows], want_var, rtol=1e-8, atol=1e-12)
    # one group is the plain group reference; integer ids are the same groups as the keys
    torch.testing.assert_close(post.relative_reward(x, groups=[0] * 9).variance,
                               post.relative_reward(x).variance, rtol=1e-12, atol=0)  # fmt: skip
    ids = torch.tensor([{"a": 0, "b": 1, "c": 2}[k] for k in groups])
    torch.testing.assert_close(post.relative_reward(x, groups=ids).mean, mean, rtol=0, atol=0)
    penalized = post.penalized_reward(x, 2.0, reference="group", groups=groups)
    torch.testing.assert_close(penalized, mean - 2.0 * var.sqrt(), rtol=0, atol=0)


def test_groups_need_the_group_reference(reward_model, pair_loader):
    post = btl.fit_reward_posterior(reward_model, pair_loader, prior_precision=1.0)
    x = torch.randn(4, D_IN, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`groups` goes with reference='group'"):
        post.relative_reward(x, x[:2], groups=[0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"`groups` needs reference='group'"):
        post.penalized_reward(x, groups=[0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"one id per item \(4\), got 3"):
        post.relative_reward(x, groups=[0, 0, 1])
    with pytest.raises(TypeError, match=r"hashable ids, got a list.*json.dumps"):
        post.relative_reward(x, groups=[[1], [1], [2], [2]])


# ------------------------------------------------- groups: batched algebra against references
def per_group_reference(post, x, index, n_groups):
    """Today's route before the batched groups: one :meth:`relative_moments` per group."""
    mean = torch.empty(x.shape[0], dtype=torch.float64)
    var = torch.empty_like(mean)
    for g in range(n_groups):
        rows = (index == g).nonzero().flatten()
        mean[rows], var[rows] = post.predictive.relative_moments([x[rows]], None)
    return mean, var


def jacrev_reference(post, x, index, n_groups, last_layer):
    """``(J_n - Jbar_g) Sigma (J_n - Jbar_g)^T`` from jacrev Jacobians and the dense
    posterior covariance."""
    jac = item_jacobians(post.model, x)
    if last_layer:
        jac = jac[:, -8:]
    counts = torch.bincount(index, minlength=n_groups).double()
    jbar = torch.zeros(n_groups, jac.shape[1], dtype=jac.dtype).index_add_(0, index, jac)
    diff = jac - (jbar / counts[:, None])[index]
    with torch.no_grad():
        r = post.model(x).squeeze(1)
    rbar = torch.zeros(n_groups, dtype=r.dtype).index_add_(0, index, r) / counts
    sigma = dense_covariance(post.laplace)
    return r - rbar[index], ((diff @ sigma) * diff).sum(1)


GROUPINGS = {  # group sizes (shuffled into unsorted ids)
    "singletons": [1] * 12,
    "mixed": [1, 2, 3, 5, 8, 13, 1, 40],
    "one-large": [1000, 3, 1],
    "equal": [7] * 6,  # padded blocks that are views of the items (GRPO's generations)
}


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("grouping", list(GROUPINGS))
@pytest.mark.parametrize("batch_size", [4096, 16], ids=["one-batch", "batches"])
def test_grouped_relative_equals_per_group_and_jacrev(
    reward_model, pair_loader, structure, subset, grouping, batch_size, monkeypatch
):
    """The batched group algebra (no loop over groups) gives today's per-group answer and the
    jacrev one, for groups of 1 to 1,000 items, unsorted ids, in one batch or in many (a
    group larger than a batch, groups packed into batches, padded groups in small chunks)."""
    if batch_size < 100:
        monkeypatch.setattr("bt_laplace.structures._groups.CHUNK_BUDGET", 300)
    post = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights=subset, hessian_structure=structure,
        prior_precision=0.7, batch_size=batch_size,
    )  # fmt: skip
    sizes = GROUPINGS[grouping]
    g = torch.Generator().manual_seed(11)
    index = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    index = index[torch.randperm(index.numel(), generator=g)]
    x = torch.randn(index.numel(), D_IN, generator=g, dtype=torch.float64)
    mean, var = post.relative_reward(x, groups=index)
    ref_mean, ref_var = per_group_reference(post, x, index, len(sizes))
    torch.testing.assert_close(mean, ref_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, ref_var, rtol=1e-8, atol=1e-12)
    want_mean, want_var = jacrev_reference(post, x, index, len(sizes), subset == "last_layer")
    torch.testing.assert_close(mean, want_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, want_var, rtol=1e-8, atol=1e-12)
    if grouping == "singletons":  # alone in its group, an item is its own reference
        assert float(var.abs().max()) < 1e-12


@pytest.mark.parametrize(
    ("fixture", "structure"),
    [
        ("sequence_model_and_pairs", "diag"),
        ("sequence_model_and_pairs", "kron"),
        ("reused_model_and_pairs", "diag"),
    ],
)
def test_grouped_relative_of_sequence_models(request, fixture, structure):
    """Layers applied to the positions of a sequence: the padded groups hold every position
    (a layer called twice: off the fast path, group by group)."""
    model, x, loader = request.getfixturevalue(fixture)
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure=structure, prior_precision=0.7
    )
    items = x[:9, 0]
    for index in (torch.tensor([2, 0, 1, 2, 0, 2, 1, 1, 2]), torch.tensor([1, 0, 2] * 3)):
        mean, var = post.relative_reward(items, groups=index)  # groups of 2-4 items; of 3
        ref_mean, ref_var = per_group_reference(post, items, index, 3)
        torch.testing.assert_close(mean, ref_mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(var, ref_var, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_float32_model_keeps_grouped_relative_variance_accurate(subset, structure):
    """As above, with groups: the sides rotate in float32, the cancelling sums run in
    float64, and the float32 model's answer is the float64 model's."""
    from conftest import make_net
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(8)
    x = torch.randn(200, 2, D_IN, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (200,), generator=g)
    items = torch.randn(30, D_IN, generator=g, dtype=torch.float64)
    index = torch.randint(0, 4, (30,), generator=g)
    index[:4] = torch.arange(4)  # every group holds an item
    answers = []
    for dtype in (torch.float64, torch.float32):
        model = btl.PairwiseRewardModel(make_net().to(dtype)).eval()
        loader = DataLoader(TensorDataset(x.to(dtype), y), batch_size=50)
        post = btl.fit_reward_posterior(
            model, loader, subset_of_weights=subset, hessian_structure=structure,
            prior_precision=1e-4,
        )  # fmt: skip
        answers.append(post.relative_reward(items.to(dtype), groups=index).variance)
    assert answers[1].dtype == torch.float32
    torch.testing.assert_close(answers[1].double(), answers[0], rtol=2e-3, atol=0.0)
