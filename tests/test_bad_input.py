"""Bad input and odd states (issue 12): each case fails loudly with the fix, or is right.

Every case here failed before: it crashed the process, gave a silently wrong number, or
answered with an internal message from a dependency.
"""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import D_IN, make_net
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import bt_laplace as btl
from bt_laplace import bradley_terry
from bt_laplace.testing import exact_ggn, item_jacobians


def _loader(x, y, batch_size=16, shuffle=False):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=g)


def _model(dtype=torch.float64):
    return btl.PairwiseRewardModel(make_net()).to(dtype).eval()


# ---------------------------------------------------------------- the process never just stops


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_through_a_plain_loader_name_the_batch(pairs, bad):
    x, y = pairs
    x = x.clone()
    x[40, 1, 2] = bad
    with pytest.raises(ValueError, match=r"`train_loader` batch 2: x holds NaN or infinite"):
        btl.fit_reward_posterior(_model(), _loader(x, y), subset_of_weights="all")


def test_huge_inputs_raise_instead_of_exiting(pairs):
    """1e20 inputs overflow the float32 curvature of all weights; laplace-torch's eigh
    fallback then calls exit()."""
    x, y = pairs
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D_IN, 7), nn.ReLU(), nn.Linear(7, 7), nn.ReLU(), nn.Linear(7, 1))
    model = btl.PairwiseRewardModel(net).eval()  # ReLU features grow with the inputs
    with pytest.raises((ValueError, RuntimeError), match="NaN|infinite|not finite"):
        btl.fit_reward_posterior(model, _loader((x * 1e20).float(), y), subset_of_weights="all")
    # last layer: every pair saturates, the curvature is zero and the fit legitimately gives
    # the prior; queries at such inputs overflow float32 and say so instead of returning inf
    with pytest.raises(ValueError, match="the exact GGN is zero .* set prior_precision"):
        btl.fit_reward_posterior(
            model, _loader((x * 1e20).float(), y), subset_of_weights="last_layer"
        )
    post = btl.fit_reward_posterior(
        model, _loader((x * 1e20).float(), y), subset_of_weights="last_layer", prior_precision=1.0
    )
    with pytest.raises(RuntimeError, match="variances overflowed torch.float32"):
        post(torch.randn(3, D_IN) * 1e20)


# ---------------------------------------------------------------- labels through any loader
@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (lambda y: y.double() * 0.5, r"labels must be 0 or 1 .* got 0.5"),
        (lambda y: y + 2, r"labels must be 0 or 1 .* got [23]"),
        (lambda y: y - 1, r"labels must be 0 or 1 .* got -1"),
        (lambda y: torch.full(y.shape, float("nan")), r"labels must be 0 or 1 .* got nan"),
        (lambda y: y[:, None], r"labels must have shape \(B,\), got \(16, 1\); use y.squeeze"),
    ],
    ids=["half", "two", "minus-one", "nan", "column"],
)
def test_bad_labels_through_a_plain_loader(pairs, labels, match):
    x, y = pairs
    with pytest.raises(ValueError, match=match):
        btl.fit_reward_posterior(_model(), _loader(x, labels(y)))


def test_string_labels_and_item_batches_are_refused(pairs):
    x, y = pairs
    strings = [(x[:4], ["a", "b", "a", "b"])]
    with pytest.raises(TypeError, match=r"labels must be a tensor of 0/1 .* got list such as 'a'"):
        btl.fit_reward_posterior(_model(), strings)
    items = [(x[:4, 0], y[:4])]  # items (B, D), not pairs
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2, \*item\)"):
        btl.fit_reward_posterior(_model(), items, subset_of_weights="all")
    dicts = [{"x": x[:4]}]
    with pytest.raises(ValueError, match=r"dict without labels under 'labels'"):
        btl.fit_reward_posterior(_model(), dicts, subset_of_weights="all")


def test_item_shape_that_changes_between_batches_or_at_query_time(pairs):
    x, y = pairs
    batches = [(x[:8], y[:8]), (torch.randn(8, 2, D_IN + 1, dtype=torch.float64), y[:8])]
    with pytest.raises(ValueError, match=r"batch 1 has items of shape \(6,\), earlier .*\(5,\)"):
        btl.fit_reward_posterior(_model(), batches, subset_of_weights="all")
    mixed = [(x[:8], y[:8]), (x[8:16].float(), y[8:16])]
    with pytest.raises(ValueError, match=r"batch 1 has dtype torch.float32, earlier .*float64"):
        btl.fit_reward_posterior(_model(), mixed, subset_of_weights="all")
    post = btl.fit_reward_posterior(_model(), _loader(x, y), subset_of_weights="all")
    with pytest.raises(ValueError, match=r"items of shape \(6,\), but the posterior .* \(5,\)"):
        post(torch.randn(3, D_IN + 1, dtype=torch.float64))


# ---------------------------------------------------------------- loaders without len
class _PairStream(IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y, strict=True))


@pytest.mark.parametrize("hessian", ["diag", "kron", "full"])
def test_iterable_dataset_without_len_gives_the_same_posterior(pairs, hessian):
    x, y = pairs
    stream = DataLoader(_PairStream(x, y), batch_size=16)
    with pytest.raises(TypeError):
        len(stream.dataset)
    a = btl.fit_reward_posterior(
        _model(), stream, subset_of_weights="all", hessian_structure=hessian
    )
    b = btl.fit_reward_posterior(
        _model(), _loader(x, y), subset_of_weights="all", hessian_structure=hessian
    )
    assert a.laplace.n_data == b.laplace.n_data == len(y)
    q = torch.randn(6, D_IN, dtype=torch.float64)
    torch.testing.assert_close(a(q).variance, b(q).variance, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- float32 cancellation
@pytest.mark.parametrize("prior", [1e-8, 1e-12])
def test_float32_pair_probabilities_match_float64_with_a_weak_prior(pairs, prior):
    x, y = pairs
    f64 = btl.fit_reward_posterior(
        _model(),
        _loader(x, y),
        subset_of_weights="all",
        hessian_structure="diag",
        prior_precision=prior,
    )
    f32 = btl.fit_reward_posterior(
        _model(torch.float32),
        _loader(x.float(), y),
        subset_of_weights="all",
        hessian_structure="diag",
        prior_precision=prior,
    )
    g = torch.Generator().manual_seed(3)
    q = torch.randn(50, 2, D_IN, generator=g, dtype=torch.float64)
    q[:25, 1] = q[:25, 0] + 1e-3 * torch.randn(25, D_IN, generator=g, dtype=torch.float64)
    p64, p32 = f64.preference_probability(q), f32.preference_probability(q.float())
    assert p32.dtype == torch.float32
    assert float((p64 - p32.double()).abs().max()) < 2e-3


def test_monte_carlo_link_draws_in_bounded_chunks(reward_model, pair_loader, monkeypatch):
    post = btl.fit_reward_posterior(reward_model, pair_loader, subset_of_weights="all")
    monkeypatch.setattr(bradley_terry, "MC_CHUNK", 1000)
    sizes = []
    randn = torch.randn

    def spy(*shape, **kw):
        sizes.append(torch.Size(shape).numel())
        return randn(*shape, **kw)

    q = torch.randn(200, 2, D_IN, dtype=torch.float64)
    monkeypatch.setattr(torch, "randn", spy)
    g = torch.Generator().manual_seed(0)
    p = post.preference_probability(q, link_approx="mc", n_samples=20_000, generator=g)
    assert max(sizes) <= 1000 and len(sizes) == 4000
    probit = post.preference_probability(q, link_approx="probit")
    assert float((p - probit).abs().max()) < 0.03  # probit's own error is below 0.02


# ---------------------------------------------------------------- tied weights
class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(D_IN, D_IN)
        self.b = nn.Linear(D_IN, D_IN)
        self.b.weight = self.a.weight  # one Parameter in two layers
        self.head = nn.Linear(D_IN, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


@pytest.mark.parametrize("hessian", ["diag", "full"])
def test_tied_weights_get_the_exact_curvature_and_variance(pairs, hessian):
    x, y = pairs
    torch.manual_seed(0)
    model = btl.PairwiseRewardModel(_Tied().double()).eval()
    post = btl.fit_reward_posterior(
        model,
        _loader(x, y),
        subset_of_weights="all",
        hessian_structure=hessian,
        prior_precision=0.5,
    )
    ggn = exact_ggn(model, x)
    h = ggn if hessian == "full" else torch.diag(ggn.diagonal())
    sigma = torch.linalg.inv(h + 0.5 * torch.eye(h.shape[0], dtype=h.dtype))
    q = torch.randn(7, D_IN, dtype=torch.float64)
    jac = item_jacobians(model, q)
    torch.testing.assert_close(post(q).variance, ((jac @ sigma) * jac).sum(-1), rtol=1e-8, atol=0)


# ---------------------------------------------------------------- threads
def test_threads_get_the_serial_answers_and_leave_the_fast_path_on(reward_model, pair_loader):
    post = btl.fit_reward_posterior(reward_model, pair_loader, subset_of_weights="all")
    queries = [torch.randn(64 + 7 * i, D_IN, dtype=torch.float64) for i in range(8)]
    serial = [post(q).variance for q in queries]
    results: dict[int, torch.Tensor] = {}

    def work(i):
        for _ in range(5):
            results[i] = post(queries[i]).variance

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, v in enumerate(serial):
        assert torch.equal(results[i], v)
    assert post.predictive.structure.recorder.supported


# ---------------------------------------------------------------- kron and batching
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_kron_does_not_depend_on_batch_size_or_order(pairs, subset):
    x, y = pairs
    posts = [
        btl.fit_reward_posterior(
            _model(),
            _loader(x, y, batch_size=bs, shuffle=shuffle),
            subset_of_weights=subset,
            prior_precision=1.0,
        )
        for bs, shuffle in [(1, False), (40, False), (16, True)]
    ]
    q = torch.randn(9, D_IN, dtype=torch.float64)
    ref = posts[0](q).variance
    for post in posts[1:]:  # the same sums in another order: equal to rounding
        torch.testing.assert_close(post(q).variance, ref, rtol=1e-10, atol=0)


# ---------------------------------------------------------------- NaN and empty at query time
def test_nan_candidate_and_empty_reference_are_refused(reward_model, pair_loader):
    post = btl.fit_reward_posterior(reward_model, pair_loader)
    c = torch.randn(6, D_IN, dtype=torch.float64)
    c[3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"`x` holds NaN .*rows \[3\].*spoil its whole group"):
        post.relative_reward(c)
    with pytest.raises(ValueError, match="`reference` has no items"):
        post.relative_reward(c[:3], torch.empty(0, D_IN, dtype=torch.float64))


# ---------------------------------------------------------------- stale and unfitted
@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("change", ["train", "load_state_dict", "double"])
def test_changed_weights_are_noticed(pairs, change, subset):
    """Also for a last layer, whose predictions run through laplace-torch's copy of the model:
    the model the user trains further is not the one the posterior answers for (issue 17)."""
    x, y = pairs
    model = _model(torch.float32)
    post = btl.fit_reward_posterior(model, _loader(x.float(), y), subset_of_weights=subset)
    q = torch.randn(3, D_IN)
    post(q)
    if change == "train":
        torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
        model(x[:4].float()).sum().backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
    elif change == "load_state_dict":
        model.load_state_dict(btl.PairwiseRewardModel(make_net(seed=1)).state_dict())
    else:
        model.double()
        q = q.double()
    with pytest.raises(RuntimeError, match="weights changed since the posterior was fitted"):
        post(q)


def test_unfitted_laplace_is_refused(reward_model):
    from laplace import Laplace

    la = Laplace(reward_model, "reward_modeling", subset_of_weights="all", hessian_structure="diag")
    with pytest.raises(ValueError, match="is not fitted, so it holds only the prior"):
        btl.RewardPosterior(la, reward_model)


# ---------------------------------------------------------------- models and last layers
@pytest.mark.parametrize("hessian", ["diag", "kron", "full"])
def test_bare_linear_head_last_layer_equals_all_weights(pairs, hessian):
    x, y = pairs
    torch.manual_seed(0)
    model = btl.PairwiseRewardModel(nn.Linear(D_IN, 1).double()).eval()
    kw = {"hessian_structure": hessian, "prior_precision": 0.3}
    last = btl.fit_reward_posterior(model, _loader(x, y), **kw)
    every = btl.fit_reward_posterior(model, _loader(x, y), subset_of_weights="all", **kw)
    q = torch.randn(5, D_IN, dtype=torch.float64)
    torch.testing.assert_close(last(q).variance, every(q).variance, rtol=1e-10, atol=0)


@pytest.mark.parametrize("hessian", ["diag", "kron", "full"])
def test_samples_are_drawn_in_bounded_chunks(reward_model, pair_loader, monkeypatch, hessian):
    """At most SAMPLE_CHUNK parameter draws are held at once; the joint samples still have
    the posterior's moments and repeat with the same generator."""
    from bt_laplace.structures import base

    post = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights="all", hessian_structure=hessian
    )
    monkeypatch.setattr(base, "SAMPLE_CHUNK", 500 * post.laplace.n_params)
    drawn = []
    sample = post.laplace.sample

    def spy(n, generator=None):
        drawn.append(n)
        return sample(n, generator=generator)

    monkeypatch.setattr(post.laplace, "sample", spy)
    q = torch.randn(4, D_IN, dtype=torch.float64)
    s = post.sample(q, 4000, generator=torch.Generator().manual_seed(1))
    assert max(drawn) == 500 and sum(drawn) == 4000 and s.shape == (4000, 4)
    mean, var = post(q)  # 5 Monte Carlo standard errors
    torch.testing.assert_close(s.mean(0), mean, rtol=0, atol=5 * float(var.max().sqrt()) / 63)
    torch.testing.assert_close(s.var(0), var, rtol=5 * (2 / 4000) ** 0.5, atol=0)
    again = post.sample(q, 4000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s, again)
