"""Pair-correct curvature against the brute-force Bradley-Terry GGN in float64."""

from __future__ import annotations

import pytest
import torch
from conftest import fit_bt
from laplace import Laplace
from laplace.curvature import CurvlinopsGGN
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace import PairwiseRewardModel
from bt_laplace._layer_io import LayerIORecorder
from bt_laplace.bradley_terry import bradley_terry_weight
from bt_laplace.curvature import BradleyTerryGGN, nearest_kronecker_factors
from bt_laplace.structures.kron import PairKronFactors
from bt_laplace.testing import (
    exact_ggn,
    exact_last_layer_ggn,
    item_jacobians,
    nearest_kronecker_floor,
    rel_err,
)


def _blocks(model: nn.Module):
    """(name, parameter, offset) of each parameter in laplace-torch's order."""
    off = 0
    for name, p in model.named_parameters():
        yield name, p, off
        off += p.numel()


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_all_weights_diag_and_full_are_the_exact_ggn(reward_model, pairs, pair_loader, structure):
    la = fit_bt(reward_model, pair_loader, "all", structure)
    exact = exact_ggn(reward_model, pairs[0])
    assert rel_err(la.H, exact.diagonal() if structure == "diag" else exact) < 1e-10


def test_loss_is_the_summed_bradley_terry_nll(reward_model, pairs, pair_loader):
    la = fit_bt(reward_model, pair_loader, "all", "diag")
    with torch.no_grad():
        nll = nn.functional.cross_entropy(reward_model(pairs[0]), pairs[1], reduction="sum")
    torch.testing.assert_close(torch.as_tensor(la.loss), nll)


@pytest.mark.parametrize("batch_size", [16, 3], ids=["4-chunks", "20-chunks-subsampled-start"])
def test_kron_reaches_nearest_kronecker_floor_and_exact_last_layer(reward_model, pairs, batch_size):
    loader = DataLoader(TensorDataset(*pairs), batch_size=batch_size)
    la = fit_bt(reward_model, loader, "all", "kron")
    approx = la.H_facs.to_matrix()
    exact = exact_ggn(reward_model, pairs[0])
    checked = 0
    for name, p, off in _blocks(reward_model):
        sl = slice(off, off + p.numel())
        blk, got = exact[sl, sl], approx[sl, sl]
        if name == "net.4.bias":
            assert torch.count_nonzero(got) == 0, "the head bias cancels in r1 - r0"
            assert float(blk.abs().max()) == 0.0
            continue
        if p.ndim == 1:  # hidden biases are exact dense blocks
            assert rel_err(got, blk) < 1e-10
            continue
        out, inp = p.shape
        floor = nearest_kronecker_floor(blk, out, inp)
        err = rel_err(got, blk)
        if out == 1:  # last layer of a single-output network: exact
            assert err < 1e-6
        else:
            assert floor > 1e-3, "the test needs a block that is not a Kronecker product"
            assert err <= 1.25 * floor
            assert err >= floor * (1 - 1e-6)  # nothing can beat the floor
        checked += 1
    assert checked == 3


def test_laplace_torch_kron_is_far_from_exact_on_last_layer(reward_model, pairs, pair_loader):
    """The gap bt_laplace closes: laplace-torch's KFAC treats the two items as independent."""
    la = Laplace(reward_model, "reward_modeling", subset_of_weights="all", hessian_structure="kron")
    la.fit(pair_loader)
    exact = exact_ggn(reward_model, pairs[0])
    h = la.H_facs.to_matrix()
    n = sum(p.numel() for p in reward_model.parameters())
    last = slice(n - 8, n - 1)  # last weight (1 x 7)
    assert rel_err(h[last, last], exact[last, last]) > 0.5
    assert float(h[n - 1, n - 1]) > 0  # curvature on the unidentifiable bias


def test_diag_matches_laplace_torch_exact_backend(reward_model, pair_loader):
    ours = fit_bt(reward_model, pair_loader, "all", "diag")
    ref = Laplace(
        reward_model,
        "reward_modeling",
        subset_of_weights="all",
        hessian_structure="diag",
        backend=CurvlinopsGGN,
    )
    ref.fit(pair_loader)
    assert rel_err(ours.H, ref.H) < 1e-10
    torch.testing.assert_close(torch.as_tensor(ours.loss), torch.as_tensor(ref.loss))


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_last_layer_curvature_is_exact(reward_model, pairs, pair_loader, structure):
    la = fit_bt(reward_model, pair_loader, "last_layer", structure)
    x = pairs[0]
    with torch.no_grad():
        phi = reward_model.net[:-1](x.reshape(-1, x.shape[-1])).reshape(x.shape[0], 2, -1)
        logits = reward_model(x)
    p = torch.sigmoid(logits[:, 1] - logits[:, 0])
    d_phi = torch.cat([phi[:, 1] - phi[:, 0], torch.zeros(x.shape[0], 1, dtype=x.dtype)], 1)
    exact = (d_phi * (p * (1 - p))[:, None]).T @ d_phi
    got = {"diag": lambda: la.H, "full": lambda: la.H, "kron": lambda: la.H_facs.to_matrix()}[
        structure
    ]()
    want = exact.diagonal() if structure == "diag" else exact
    assert rel_err(got, want) < 1e-10
    assert torch.count_nonzero(got[-1]) == 0  # the head bias gets no curvature


class _ScaledNet(nn.Module):
    """A parameter outside nn.Linear forces the generic (torch.func Jacobian) path."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.lin(x)) * self.scale).sum(-1, keepdim=True)


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_generic_path_for_non_linear_parameters_is_exact(structure):
    torch.manual_seed(0)
    model = PairwiseRewardModel(_ScaledNet().double()).eval()
    x = torch.randn(20, 2, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (20,))
    la = fit_bt(model, DataLoader(TensorDataset(x, y), batch_size=8), "all", structure)
    exact = exact_ggn(model, x)
    assert rel_err(la.H, exact.diagonal() if structure == "diag" else exact) < 1e-10


def test_kron_with_non_linear_parameters_is_refused():
    model = PairwiseRewardModel(_ScaledNet().double()).eval()
    x = torch.randn(4, 2, 4, dtype=torch.float64)
    loader = DataLoader(TensorDataset(x, torch.zeros(4, dtype=torch.long)), batch_size=4)
    with pytest.raises(NotImplementedError, match="kron.*nn.Linear.*diag"):
        fit_bt(model, loader, "all", "kron")


def test_nearest_kronecker_factors_of_a_kronecker_product_are_exact():
    g = torch.Generator().manual_seed(0)
    b = 30
    a0, a1 = (
        torch.randn(b, 4, generator=g, dtype=torch.float64),
        torch.randn(b, 4, generator=g, dtype=torch.float64),
    )
    gvec = torch.randn(1, 3, generator=g, dtype=torch.float64).expand(b, 3)
    w = torch.rand(b, generator=g, dtype=torch.float64)
    gf, af = nearest_kronecker_factors(gvec, gvec, a0, a1, w)
    d = torch.einsum("bo,bi->boi", gvec, a1 - a0).reshape(b, -1)
    exact = (d * w[:, None]).T @ d
    assert rel_err(torch.kron(gf, af), exact) < 1e-12
    # both factors are positive semi-definite
    assert float(torch.linalg.eigvalsh(gf).min()) > -1e-12
    assert float(torch.linalg.eigvalsh(af).min()) > -1e-12


@pytest.mark.parametrize("out,inp", [(1, 4), (3, 1)], ids=["one-output", "one-input"])
def test_nearest_kronecker_factors_single_row_or_column_are_exact(out, inp):
    """A layer with one output or one input is a Kronecker product, even with g1 != g0."""
    g = torch.Generator().manual_seed(2)
    b = 25
    g0, g1 = (torch.randn(b, out, generator=g, dtype=torch.float64) for _ in range(2))
    a0, a1 = (torch.randn(b, inp, generator=g, dtype=torch.float64) for _ in range(2))
    w = torch.rand(b, generator=g, dtype=torch.float64)
    gf, af = nearest_kronecker_factors(g0, g1, a0, a1, w)
    d = (torch.einsum("bo,bi->boi", g1, a1) - torch.einsum("bo,bi->boi", g0, a0)).reshape(b, -1)
    assert rel_err(torch.kron(gf, af), (d * w[:, None]).T @ d) < 1e-12


@pytest.mark.parametrize("structure", ["diag", "full"])
@pytest.mark.parametrize("fixture", ["sequence_model_and_pairs", "reused_model_and_pairs"])
def test_sequence_inputs_are_exact(request, fixture, structure):
    """Layers applied to every position of a sequence: per-item Jacobian blocks sum_t g_t a_t^T
    from the taps; a layer applied twice: laplace-torch's Jacobians. Both exact."""
    model, x, loader = request.getfixturevalue(fixture)
    la = fit_bt(model, loader, "all", structure)
    assert la.backend.layer_io.supported == (fixture == "sequence_model_and_pairs")
    exact = exact_ggn(model, x)
    assert rel_err(la.H, exact.diagonal() if structure == "diag" else exact) < 1e-10


@pytest.mark.parametrize("iterations", [2, 8])
def test_sequence_kron_reaches_the_floor(sequence_model_and_pairs, iterations):
    """Per-pair blocks sum_t g1_t a1_t^T - sum_t g0_t a0_t^T: the alternating steps with 2L
    columns reach the nearest Kronecker product; the head (one output) and biases are exact."""
    model, x, loader = sequence_model_and_pairs
    la = fit_bt(model, loader, "all", "kron", backend_kwargs={"kron_iterations": iterations})
    approx, exact = la.H_facs.to_matrix(), exact_ggn(model, x)
    for name, p, off in _blocks(model):
        sl = slice(off, off + p.numel())
        blk, got = exact[sl, sl], approx[sl, sl]
        if name == "net.head.bias":  # cancels in r1 - r0
            assert torch.count_nonzero(got) == 0 and float(blk.abs().max()) == 0.0
        elif p.ndim == 1 or p.shape[0] == 1:  # body bias dense, head (1 x 4) a Kronecker product
            assert rel_err(got, blk) < 1e-10
        else:
            floor, err = nearest_kronecker_floor(blk, *p.shape), rel_err(got, blk)
            assert floor > 1e-3, "the test needs a block that is not a Kronecker product"
            assert floor * (1 - 1e-6) <= err <= (1.25 if iterations == 2 else 1.001) * floor


@pytest.mark.parametrize("iterations", [2, 5])
def test_sequence_pair_jacobians_give_the_factors_of_the_layer_io(
    sequence_model_and_pairs, iterations
):
    """On sequences the fit keeps each pair's Jacobian D = J1 - J0 where it is smaller than
    the per-position I/O (here the 4 x 3 body at L = 5: 12 against 70 numbers): the half-steps
    on D give the factors of the half-steps on the I/O."""
    from bt_laplace._layer_io import pair_split
    from bt_laplace.structures.kron import PairKronFactors

    model, _, loader = sequence_model_and_pairs
    backend = BradleyTerryGGN(model, "classification")
    store = PairKronFactors(backend.layer_io, iterations)
    io: list[list[torch.Tensor]] = [[], [], [], [], []]
    for xb, yb in loader:
        _, w, result, _ = backend.pair_pass(xb, yb, kron=True)
        store.add(result, w)
        parts = [*pair_split(result.grads[0]), *pair_split(result.acts[0]), w]
        for chunks, t in zip(io, parts, strict=True):
            chunks.append(t)
    kept, _ = store.batches[0]  # the body keeps D; the one-output head is summed in the pass
    assert set(kept) == {0} and len(kept[0]) == 1 and kept[0][0].shape == (5, 4, 3)
    g, a = store.finish().kfacs[0]  # the body weight (slots: body.weight, body.bias, head...)
    want_g, want_a = nearest_kronecker_factors(*io, iterations=iterations)
    torch.testing.assert_close(torch.kron(g, a), torch.kron(want_g, want_a), rtol=1e-10, atol=0)


def test_reused_layer_refuses_kron_with_the_reason(reused_model_and_pairs):
    model, _, loader = reused_model_and_pairs
    with pytest.raises(NotImplementedError, match=r"kron.*called 2 times.*'diag' or 'full'"):
        fit_bt(model, loader, "all", "kron")


def test_sequence_last_layer_with_feature_reduction(sequence_model_and_pairs):
    model, x, loader = sequence_model_and_pairs
    la = fit_bt(model, loader, "last_layer", "full", feature_reduction="average")
    with torch.no_grad():
        phi = torch.tanh(model.net.body(x)).mean(2)  # (B, 2, 4): the head is linear
        logits = model(x)
    p = torch.sigmoid(logits[:, 1] - logits[:, 0])
    d_phi = torch.cat([phi[:, 1] - phi[:, 0], torch.zeros(12, 1, dtype=x.dtype)], 1)
    assert rel_err(la.H, (d_phi * (p * (1 - p))[:, None]).T @ d_phi) < 1e-10


def test_unwrapped_model_is_refused_with_the_fix():
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    x = torch.randn(6, 2, 4, dtype=torch.float64)
    loader = DataLoader(TensorDataset(x, torch.zeros(6, dtype=torch.long)), batch_size=3)
    la = Laplace(
        net,
        "reward_modeling",
        subset_of_weights="all",
        hessian_structure="diag",
        backend=BradleyTerryGGN,
    )
    with pytest.raises(ValueError, match=r"logits \(B, 2\), got \(3, 2, 1\).*PairwiseRewardModel"):
        la.fit(loader)


@pytest.mark.parametrize("iterations", [2, 3, 4, 7])
def test_any_number_of_half_steps_is_a_projection_near_the_floor(reward_model, pairs, iterations):
    """From two half-steps on, each returns a factor optimal for the other, near the floor."""
    from bt_laplace._layer_io import pair_split

    x, y = pairs
    backend = BradleyTerryGGN(reward_model, "classification")
    _, w, taps, _ = backend.pair_pass(x, y)
    g0, g1 = pair_split(taps.grads[1])
    a0, a1 = pair_split(taps.acts[1])
    d = (torch.einsum("bo,bi->boi", g1, a1) - torch.einsum("bo,bi->boi", g0, a0)).flatten(1)
    exact = (d * w[:, None]).T @ d
    gf, af = nearest_kronecker_factors(g0, g1, a0, a1, w, iterations=iterations)
    assert rel_err(torch.kron(gf, af), exact) <= 1.25 * nearest_kronecker_floor(exact, 7, 7)


class SeqFirstNet(nn.Module):
    """Items (L, 3); the layers run on (L, N, .) after a transpose: sequence-first."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x.transpose(0, 1)))).mean(0)


@pytest.mark.parametrize("structure", ["diag", "full"])
def test_sequence_first_layout_is_not_mistaken_for_items_first(structure):
    """With L equal to the number of items, (L, N, in) has the shape of (N, L, in); the taps
    must notice and fall back (found by review: the variances were 60-80% off)."""
    torch.manual_seed(5)
    model = PairwiseRewardModel(SeqFirstNet().double(), item_ndim=2).eval()
    x = torch.randn(6, 2, 4, 3, dtype=torch.float64)  # L = 4 = 2 pairs x 2 items per batch
    loader = DataLoader(TensorDataset(x, torch.randint(0, 2, (6,))), batch_size=2)
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure=structure, prior_precision=1.0
    )
    assert not post.laplace.backend.layer_io.supported
    exact = exact_ggn(model, x)
    assert rel_err(post.laplace.H, exact.diagonal() if structure == "diag" else exact) < 1e-10
    items = x[:2].reshape(4, 4, 3)  # N = L = 4 again
    jac = item_jacobians(model, items)
    sigma = (
        torch.diag(post.laplace.posterior_variance)
        if structure == "diag"
        else post.laplace.posterior_covariance
    )
    want = ((jac @ sigma) * jac).sum(1)
    torch.testing.assert_close(post(items).variance, want, rtol=1e-10, atol=1e-12)


def test_items_first_layout_is_confirmed_once_per_layer(sequence_model_and_pairs, monkeypatch):
    """The extra backward pass that tells (N, L, in) from (L, N, in) when L == N runs on the
    first such batch only: the layout is the model's, not the batch's."""
    from bt_laplace._layer_io import LayerIORecorder

    model, x, _ = sequence_model_and_pairs
    items = x[:3].reshape(6, 5, 3)[:5]  # N = L = 5
    recorder = LayerIORecorder(model, list(model.parameters()))
    calls = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or grad(*a, **k))
    first = recorder.run(lambda: model(items))
    assert len(calls) == 2 and recorder.items_first == {0, 1}
    again = recorder.run(lambda: model(items))
    assert len(calls) == 3
    for a, b in zip(first.grads + first.acts, again.grads + again.acts, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_kron_recomputing_the_pair_factors_equals_keeping_them(reward_model, pair_loader, subset):
    """Past kron_store_limit the fit keeps nothing per pair and recomputes the factors with
    one more pass per half-step: the same sums in the same order, so the same factors."""
    kept = btl.fit_reward_posterior(
        reward_model, pair_loader, subset_of_weights=subset, prior_precision=1.0
    )
    recomputed = btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights=subset,
        prior_precision=1.0,
        backend_kwargs={"kron_store_limit": 0, "kron_iterations": 4},
    )
    four = btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights=subset,
        prior_precision=1.0,
        backend_kwargs={"kron_iterations": 4},
    )
    for a, b in zip(four.laplace.H_facs.kfacs, recomputed.laplace.H_facs.kfacs, strict=True):
        for fa, fb in zip(a, b, strict=True):
            torch.testing.assert_close(fa, fb, rtol=1e-12, atol=0)
    if subset == "all":  # hidden layers are not Kronecker products: more half-steps move them
        assert not torch.equal(kept.laplace.H_facs.kfacs[0][1], four.laplace.H_facs.kfacs[0][1])


def _add_pairs(model, params, x, *, repeats, store_limit=None):
    """Feed ``repeats`` passes over the pairs ``x`` (batches of 16) to a :class:`PairKronFactors`
    over ``params``, as the fit does batch by batch."""
    recorder = LayerIORecorder(model, params)
    store = PairKronFactors(recorder, iterations=2, store_limit=store_limit)

    def batches():
        for _ in range(repeats):
            for xb in x.split(16):
                result = recorder.run(lambda xb=xb: model(xb))
                logits = result.output.reshape(-1, 2)
                yield result, bradley_terry_weight(logits[:, 1] - logits[:, 0])

    for result, w in batches():
        store.add(result, w)
    return store, batches


def test_last_layer_kron_keeps_nothing_per_pair(reward_model, pairs):
    """The head of a reward model (one output) is a Kronecker product: it is summed exactly in
    the fit's own pass, so nothing is kept per pair however many pairs pass, and no pass is
    recomputed (the last-layer fit's memory did grow with the pairs, up to the 1 GiB store)."""
    x, _ = pairs
    head = list(reward_model.net[-1].parameters())
    for repeats in (1, 8):
        store, _ = _add_pairs(reward_model, head, x, repeats=repeats, store_limit=0)
        assert (store.stored_bytes, store.peak_bytes, store.batches, store.recompute) == (
            0,
            0,
            [],
            False,
        )
        kron = store.finish()  # no `batches`: nothing to recompute
        got = torch.block_diag(torch.kron(*kron.kfacs[0]), kron.kfacs[1][0])
        want = repeats * exact_last_layer_ggn(reward_model, x)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_kron_store_keeps_only_iterated_layers_up_to_the_limit(reward_model, pairs):
    """All weights: only the hidden layers (not Kronecker products, so iterated) keep their
    factors, ``2 (in + out)`` numbers per pair each plus the pair weight; past the limit
    nothing is kept, and the recomputed factors equal the kept ones in float64."""
    x, _ = pairs
    params = list(reward_model.parameters())
    hidden = [reward_model.net[0], reward_model.net[2]]
    per_pair = sum(2 * (m.in_features + m.out_features) for m in hidden) * 8 + 8
    kept, _ = _add_pairs(reward_model, params, x, repeats=3)
    assert kept.stored_bytes == kept.peak_bytes == 3 * len(x) * per_pair
    assert not kept.recompute
    limit = len(x) * per_pair  # one pass over the pairs fits, three do not
    for repeats in (1, 3, 6):
        store, batches = _add_pairs(reward_model, params, x, repeats=repeats, store_limit=limit)
        assert store.peak_bytes <= limit
        assert store.recompute == (repeats > 1)
        if repeats == 3:
            assert store.stored_bytes == 0
            recomputed = store.finish(batches=batches)
    for a, b in zip(kept.finish().kfacs, recomputed.kfacs, strict=True):
        for fa, fb in zip(a, b, strict=True):
            torch.testing.assert_close(fa, fb, rtol=1e-12, atol=0)


def test_streamed_last_layer_kron_fit_reads_the_pairs_as_often_as_diag(reward_model, pairs):
    """Through fit_reward_posterior with a loader without len and no store at all: the
    last-layer kron fit passes over the pairs as often as the diag fit (no recomputing pass)."""
    x, y = pairs

    class Stream:
        passes = 0

        def __iter__(self):
            Stream.passes += 1
            yield from zip(x.split(16), y.split(16), strict=True)

    counts = {}
    for structure in ("diag", "kron"):
        Stream.passes = 0
        post = btl.fit_reward_posterior(
            reward_model,
            Stream(),
            subset_of_weights="last_layer",
            hessian_structure=structure,
            prior_precision=1.0,
            backend_kwargs={"kron_store_limit": 0} if structure == "kron" else {},
        )
        counts[structure] = Stream.passes
    assert counts["kron"] == counts["diag"]
    assert post.laplace.backend.kron_kept_bytes == 0


@pytest.mark.parametrize("iterations", [2, 5])
def test_sequence_kron_from_pair_jacobians_equals_layer_io(
    sequence_model_and_pairs, iterations, monkeypatch
):
    """On sequences the later half-steps run on each pair's Jacobian D (smaller than the
    per-position layer I/O for the 3 -> 4 body at 5 positions); the factors equal those from
    the layer I/O, kept or recomputed past the store limit."""
    import bt_laplace.structures.kron_factors as kron

    model, _, loader = sequence_model_and_pairs

    def factors(store_limit):
        la = fit_bt(model, loader, "all", "kron", prior_precision=1.0,
                    backend_kwargs={"kron_iterations": iterations,
                                    "kron_store_limit": store_limit})  # fmt: skip
        return [f for fs in la.H_facs.kfacs for f in fs]

    dense = factors(None)
    recomputed = factors(0)
    monkeypatch.setattr(kron, "_pair_jacobian_is_smaller", lambda g, a: False)  # layer I/O
    io = factors(None)
    for d, r, i in zip(dense, recomputed, io, strict=True):
        torch.testing.assert_close(d, i, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(r, i, rtol=1e-10, atol=1e-12)


def test_kron_recomputing_pair_jacobians_equals_keeping_them(sequence_model_and_pairs):
    """The same on sequences, where the fit keeps pair Jacobians: recomputed, they are made
    the same way."""
    model, _, loader = sequence_model_and_pairs
    kw = {"subset_of_weights": "all", "prior_precision": 1.0}
    kept = btl.fit_reward_posterior(model, loader, **kw)
    recomputed = btl.fit_reward_posterior(
        model, loader, **kw, backend_kwargs={"kron_store_limit": 0}
    )
    for a, b in zip(kept.laplace.H_facs.kfacs, recomputed.laplace.H_facs.kfacs, strict=True):
        for fa, fb in zip(a, b, strict=True):
            torch.testing.assert_close(fa, fb, rtol=1e-12, atol=0)
