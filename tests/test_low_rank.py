"""Low-rank Kronecker factors (``backend_kwargs={"kron_rank": k, "kron_full_width": w}``),
against float64 references: today's full factors at full rank, the brute-force truncated
eigendecomposition of the exact factor at low rank, dense covariances from the same low-rank
precision for the predictive, and a save/load round trip."""

from __future__ import annotations

import pytest
import torch
from conftest import fit_bt
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.curvature import BradleyTerryGGN
from bt_laplace.predictive import Predictive
from bt_laplace.structures.low_rank import (
    FactorSketch,
    LowRankFactor,
    LowRankKron,
    LowRankKronDecomposed,
    nystrom_factor,
)
from bt_laplace.testing.ggn import item_jacobians

F64 = torch.float64


def _net(seed: int = 0) -> nn.Module:
    """Layers whose factors are wider than the width kept whole (5): the first layer's output
    factor (found first, A = I), the second's input factor (found second, from a whole output
    factor), the third's output factor, and the head's exact block."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 12),
        nn.Tanh(),
        nn.Linear(12, 2, bias=False),
        nn.Tanh(),
        nn.Linear(2, 12, bias=False),
        nn.Tanh(),
        nn.Linear(12, 1),
    ).double()


class _SequenceNet(nn.Module):
    """Per-position layers on items (4, 3), mean-pooled: sequence factors of width 10."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 10)
        self.b = nn.Linear(10, 2, bias=False)
        self.head = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))).mean(1))


def _problem(n_pairs: int = 3, seed: int = 1, sequence: bool = False):
    g = torch.Generator().manual_seed(seed)
    shape = (n_pairs, 2, 4, 3) if sequence else (n_pairs, 2, 5)
    x = torch.randn(*shape, generator=g, dtype=F64)
    y = torch.randint(0, 2, (n_pairs,), generator=g)
    if sequence:
        torch.manual_seed(seed)
        model = btl.PairwiseRewardModel(_SequenceNet().double(), item_ndim=2).eval()
    else:
        model = btl.PairwiseRewardModel(_net(seed)).eval()
    return model, x, DataLoader(TensorDataset(x, y), batch_size=2)


def _truncated(f: torch.Tensor, k: int) -> torch.Tensor:
    """The brute-force low-rank factor: top ``k`` eigenpairs, the rest their mean."""
    values, vectors = torch.linalg.eigh(f)
    top, rest = values[-k:], values[:-k]
    q = vectors[:, -k:]
    return (q * (top - rest.mean())) @ q.T + rest.mean() * torch.eye(len(f), dtype=f.dtype)


def _dense(f) -> torch.Tensor:
    return f.to_dense() if isinstance(f, LowRankFactor) else f


def _unit(f: torch.Tensor) -> torch.Tensor:
    return f / f.norm()


def test_full_rank_is_todays_kron():
    model, _, loader = _problem()
    whole = fit_bt(model, loader, "all", "kron", backend_kwargs={"kron_rank": None})
    for kwargs in ({}, {"kron_rank": 12, "kron_full_width": 0}):  # default; rank >= width
        la = fit_bt(model, loader, "all", "kron", backend_kwargs=kwargs)
        assert type(la.H_facs) is type(whole.H_facs)  # noqa: E721 (a plain Kron)
        for fs, ws in zip(la.H_facs.kfacs, whole.H_facs.kfacs, strict=True):
            for f, w in zip(fs, ws, strict=True):
                assert torch.equal(f, w)


@pytest.mark.parametrize("sequence", [False, True], ids=["items", "sequences"])
def test_low_rank_factors_are_the_truncated_eigendecomposition(sequence):
    """Rank 3 of factors of rank up to 6 (three pairs of items, two of sequences, whose pair
    terms have rank up to 3): the sketch (6 columns) holds the factor, so the result is the
    brute-force truncation, in float64 to 1e-10. A factor found after a truncated one (a
    weight's input factor after its output factor) is the exact alternating step from the
    truncated factor, checked from the pair Jacobians."""
    model, x, loader = _problem(n_pairs=2 if sequence else 3, sequence=sequence)
    k, kwargs = 3, {"kron_rank": 3, "kron_full_width": 5}
    la = fit_bt(model, loader, "all", "kron", backend_kwargs=kwargs)
    whole = fit_bt(model, loader, "all", "kron", backend_kwargs={"kron_rank": None})
    assert isinstance(la.H_facs, LowRankKron) and isinstance(la.H, LowRankKronDecomposed)
    backend = BradleyTerryGGN(model, "classification")
    _, w, io, _ = backend.pair_pass(x, torch.zeros(len(x)), kron=True)
    slots, n_low = backend.layer_io.slots, 0
    for slot, fs, ws in zip(slots, la.H_facs.kfacs, whole.H_facs.kfacs, strict=True):
        if slot.kind == "bias":
            torch.testing.assert_close(fs[0], ws[0], rtol=1e-10, atol=1e-14)
            continue
        g_lr, a_lr = fs
        g_whole, a_whole = ws
        if isinstance(g_lr, LowRankFactor):  # found first (A = I): the truncation, unit norm
            n_low += 1
            assert g_lr.rank == k
            want = _unit(_truncated(g_whole, k))
            torch.testing.assert_close(_dense(g_lr), want, rtol=1e-10, atol=1e-13)
            # the input factor: sum_n w_n D_n^T G D_n from the truncated G
            g0, g1 = (
                io.grads[slot.layer].reshape(len(x), 2, *io.grads[slot.layer].shape[1:]).unbind(1)
            )
            a0, a1 = (
                io.acts[slot.layer].reshape(len(x), 2, *io.acts[slot.layer].shape[1:]).unbind(1)
            )
            d = _jac(g1, a1) - _jac(g0, a0)
            a_ref = torch.einsum("b,boi,op,bpj->ij", w, d, _dense(g_lr), d)
            torch.testing.assert_close(a_lr, a_ref, rtol=1e-10, atol=1e-13)
        elif isinstance(a_lr, LowRankFactor):  # found last: the truncation of today's
            n_low += 1
            torch.testing.assert_close(g_lr, g_whole, rtol=1e-10, atol=1e-14)
            want = _truncated(a_whole, k)
            torch.testing.assert_close(_dense(a_lr), want, rtol=1e-10, atol=1e-12)
        else:
            torch.testing.assert_close(g_lr, g_whole, rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(a_lr, a_whole, rtol=1e-10, atol=1e-14)
    assert n_low >= 2


def _jac(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return g[:, :, None] * a[:, None] if g.ndim == 2 else g.mT @ a


def test_sketch_is_a_sum_in_any_order_and_split():
    """``Y = F Omega`` and ``tr F`` are linear in ``F``: batches in another order, or split
    over two sketches and added (two processes), give the same factor to rounding; with the
    factor's rank within the sketch, Nystrom gives its eigenpairs exactly."""
    g = torch.Generator().manual_seed(0)
    roots = [torch.randn(30, 2, generator=g, dtype=F64) for _ in range(4)]  # rank 8
    f = sum(r @ r.T for r in roots)
    one, other, half = (FactorSketch(30, 4, roots[0], seed=7) for _ in range(3))
    for r in roots:
        one.add(r)
    for r in reversed(roots):
        other.add(r)
    rest = FactorSketch(30, 4, roots[0], seed=7)
    for r in roots[:2]:
        half.add(r)
    rest.add(torch.stack(roots[2:]))  # a batch of roots (B, d, m)
    got = [s.finish(lambda t: t).to_dense() for s in (one, other)]
    summed = half.finish(lambda t, rest=rest: t + (rest.sketch if t.ndim == 2 else rest.trace))
    want = _truncated(f, 4)
    for low in [*got, summed.to_dense()]:
        torch.testing.assert_close(low, want, rtol=1e-10, atol=1e-10)


def test_nystrom_keeps_the_trace_beyond_the_sketch():
    g = torch.Generator().manual_seed(1)
    r = torch.randn(40, 25, generator=g, dtype=F64) * torch.logspace(0, -3, 25, dtype=F64)
    f = r @ r.T
    omega = torch.linalg.qr(torch.randn(40, 10, generator=g, dtype=F64))[0]
    low = nystrom_factor(f @ omega, omega, f.trace(), 5)
    assert low.values.sum() == pytest.approx(float(f.trace()), rel=1e-12)
    top = torch.linalg.eigvalsh(f)[-5:].flip(0)
    assert (low.values[:5] <= top * (1 + 1e-12)).all()  # Nystrom never overshoots
    assert float(low.values[0]) == pytest.approx(float(top[0]), rel=1e-2)


@pytest.mark.parametrize("damping", [False, True])
def test_low_rank_precision_algebra_matches_dense(damping):
    model, _, loader = _problem()
    la = fit_bt(model, loader, "all", "kron", backend_kwargs={"kron_rank": 3, "kron_full_width": 5})
    h = la.H_facs.decompose(damping=damping)
    prec = h * 2.0 + torch.tensor(0.7, dtype=F64)
    assert isinstance(prec, LowRankKronDecomposed)
    dense = prec.to_matrix()
    if not damping:
        torch.testing.assert_close(
            dense, 2.0 * la.H_facs.to_matrix() + 0.7 * torch.eye(la.n_params, dtype=F64)
        )
    eye = torch.eye(la.n_params, dtype=F64)
    inv = torch.linalg.inv(dense)
    w = torch.randn(3, 2, la.n_params, dtype=F64)
    torch.testing.assert_close(prec.bmm(w, exponent=-1), w @ inv, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(prec.bmm(w, exponent=1), w @ dense, rtol=1e-9, atol=1e-12)
    root = prec.bmm(eye[:, None], exponent=-0.5)[:, 0]  # rows of Sigma^{1/2}: samples
    torch.testing.assert_close(root @ root.T, inv, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(prec.diag(exponent=-1), inv.diagonal(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(prec.logdet(), torch.logdet(dense), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sequence", [False, True], ids=["items", "sequences"])
def test_predictive_matches_the_dense_low_rank_covariance(sequence):
    """Item variances, pair-difference variances and rewards relative to a reference and to
    groups, against ``J Sigma J^T`` with ``Sigma`` the dense inverse of the same low-rank
    precision and ``J`` from ``torch.func``."""
    model, x, loader = _problem(n_pairs=8, sequence=sequence)
    post = btl.fit_reward_posterior(
        model,
        loader,
        subset_of_weights="all",
        hessian_structure="kron",
        prior_precision=0.5,
        backend_kwargs={"kron_rank": 3, "kron_full_width": 5},
    )
    la = post.laplace
    assert isinstance(la.H, LowRankKronDecomposed)
    sigma = torch.linalg.inv(la.posterior_precision.to_matrix())
    items = x.reshape(-1, *x.shape[2:])[:7]
    j = item_jacobians(model, items)
    cov = j @ sigma @ j.T
    torch.testing.assert_close(post(items).variance, cov.diagonal(), rtol=1e-9, atol=1e-12)
    pred = Predictive(la)
    _, diff_var = pred.difference_moments(x)
    jp = item_jacobians(model, x.reshape(-1, *x.shape[2:])).reshape(len(x), 2, -1)
    dj = jp[:, 1] - jp[:, 0]
    torch.testing.assert_close(diff_var, ((dj @ sigma) * dj).sum(1), rtol=1e-9, atol=1e-12)
    _, rel_var = pred.relative_moments([items], None)
    centred = j - j.mean(0)
    torch.testing.assert_close(rel_var, ((centred @ sigma) * centred).sum(1), rtol=1e-8, atol=1e-11)
    index = torch.tensor([0, 1, 0, 1, 1, 2, 2])
    _, group_var = pred.grouped_relative_moments(items, index, 3)
    means = torch.stack([j[index == g].mean(0) for g in range(3)])
    c = j - means[index]
    torch.testing.assert_close(group_var, ((c @ sigma) * c).sum(1), rtol=1e-8, atol=1e-11)


def test_prior_eigenvalues_are_the_low_rank_curvature_spectrum():
    model, _, loader = _problem()
    la = fit_bt(model, loader, "all", "kron", backend_kwargs={"kron_rank": 3, "kron_full_width": 5})
    from bt_laplace.prior import curvature_eigenvalues

    got = torch.cat(curvature_eigenvalues(la)).sort().values
    want = torch.linalg.eigvalsh(la.H_facs.to_matrix())
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_recomputed_pair_factors_equal_kept_ones():
    model, _, loader = _problem(n_pairs=6, sequence=True)
    kw = {"kron_rank": 3, "kron_full_width": 5}
    kept = fit_bt(model, loader, "all", "kron", backend_kwargs=kw)
    again = fit_bt(model, loader, "all", "kron", backend_kwargs={**kw, "kron_store_limit": 0})
    assert again.backend.kron_kept_bytes == 0
    torch.testing.assert_close(
        kept.H_facs.to_matrix(), again.H_facs.to_matrix(), rtol=1e-10, atol=0
    )


def test_saved_low_rank_posterior_loads_bit_identical(tmp_path):
    model, x, loader = _problem(n_pairs=8)
    post = btl.fit_reward_posterior(
        model, loader, hessian_structure="kron", subset_of_weights="all",
        prior_precision=0.5, backend_kwargs={"kron_rank": 3, "kron_full_width": 5},
    )  # fmt: skip
    folder = post.save(tmp_path / "post")
    from safetensors.torch import load_file

    from bt_laplace.persistence import TENSORS_FILE

    saved = load_file(str(folder / TENSORS_FILE))
    thin = [
        k
        for k, v in saved.items()
        if k.startswith("eig.") and v.ndim == 2 and v.shape[0] != v.shape[1]
    ]
    assert thin and all(v.shape[0] == 3 for k, v in saved.items() if k in thin)  # (k, d) rows
    assert not any(k.startswith("curvature.H_facs.0.0") for k in saved)  # the low-rank G
    again = btl.load_reward_posterior(folder, model)
    assert isinstance(again.laplace.H, LowRankKronDecomposed)
    items = x.reshape(-1, 5)
    assert torch.equal(again(items).variance, post(items).variance)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"kron_rank": 0},
            r"`kron_rank` must be .*>= 1 \(the smallest that holds a factor is 1\).*got 0",
        ),
        ({"kron_rank": 2.5}, r"`kron_rank` must be .*got 2.5"),
        ({"kron_rank": True}, r"`kron_rank` must be .*got True"),
        ({"kron_full_width": -1}, r"`kron_full_width` must be .*>= 0.*got -1"),
    ],
    ids=["zero", "float", "bool", "negative-width"],
)
def test_bad_rank_is_refused_naming_the_smallest(kwargs, match, reward_model, pair_loader):
    with pytest.raises(ValueError, match=match):
        btl.fit_reward_posterior(
            reward_model, pair_loader, hessian_structure="kron", subset_of_weights="all",
            backend_kwargs=kwargs,
        )  # fmt: skip


def test_lora_model_gets_a_low_rank_lora_posterior_by_default():
    """peft LoRA on a tiny Llama: ``subset_of_weights="auto"`` takes the adapters and the
    score head; with factors wider than 8 low rank (hidden 16), the variances equal jacrev
    Jacobians with the dense inverse of the same low-rank precision."""
    peft = pytest.importorskip("peft")
    from conftest import tiny_reward_net, word_tokenizer

    tok = word_tokenizer("llama")
    net = tiny_reward_net("llama", tok).double()
    config = peft.LoraConfig(
        r=2,
        target_modules=["q_proj", "v_proj", "down_proj"],
        lora_dropout=0.0,
        task_type="SEQ_CLS",
        init_lora_weights=False,
    )
    model = btl.PairwiseRewardModel(peft.get_peft_model(net, config).eval()).eval()
    texts = ["good answer here", "bad", "a much longer answer with words", "no", "yes", "maybe"]
    rows = [{"chosen": texts[i], "rejected": texts[(i + 1) % 6]} for i in range(6)]
    loader = btl.text_preference_dataloader(rows, tok, batch_size=3)
    post = btl.fit_reward_posterior(
        model,
        loader,
        prior_precision=1.0,
        backend_kwargs={"kron_rank": 3, "kron_full_width": 8},
    )
    la = post.laplace
    assert isinstance(la.H, LowRankKronDecomposed)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert la.n_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    enc = tok(texts[:4], padding=True, return_tensors="pt")
    items = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    jac = torch.func.jacrev(lambda ps: torch.func.functional_call(model, ps, (items,)).reshape(-1))(
        params
    )
    jac = torch.cat([jac[n].reshape(4, -1) for n in names], 1)
    sigma = torch.linalg.inv(la.posterior_precision.to_matrix())
    torch.testing.assert_close(
        post(items).variance, ((jac @ sigma) * jac).sum(1), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize(
    ("structure", "kwargs"),
    [
        ("kron", {"kron_rank": 3, "kron_full_width": 5}),
        ("kron", {"kron_rank": None}),
        ("diag", {}),
        ("full", {}),
    ],
    ids=["kron-low-rank", "kron-whole", "diag", "full"],
)
def test_stated_size_is_what_a_saved_posterior_holds(structure, kwargs):
    """What ``subset_of_weights="auto"`` weighs: the numbers of the saved curvature."""
    from bt_laplace.structures import STRUCTURES

    model, _, loader = _problem(n_pairs=8)
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure=structure,
        prior_precision=1.0, backend_kwargs=kwargs,
    )  # fmt: skip
    _, tensors = post.state()
    held = sum(t.numel() for k, t in tensors.items() if k.startswith(("curvature.", "eig.")))
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert STRUCTURES[structure].state_numbers(shapes, kwargs) == held


def test_kron_names_a_trainable_module_that_is_not_a_lora_linear():
    peft = pytest.importorskip("peft")
    from conftest import tiny_reward_net, word_tokenizer

    tok = word_tokenizer("llama")
    net = tiny_reward_net("llama", tok).double()
    config = peft.LoraConfig(r=2, target_modules=["q_proj"], task_type="SEQ_CLS")
    lora = peft.get_peft_model(net, config)
    lora.base_model.model.model.norm.weight.requires_grad_(True)
    model = btl.PairwiseRewardModel(lora.eval()).eval()
    rows = [{"chosen": "good answer", "rejected": "bad"}, {"chosen": "yes", "rejected": "no"}]
    loader = btl.text_preference_dataloader(rows, tok, batch_size=2)
    with pytest.raises(
        NotImplementedError,
        match=r"belongs to LlamaRMSNorm 'net\.base_model\.model\.model\.norm', not a linear layer",
    ):
        btl.fit_reward_posterior(
            model, loader, subset_of_weights="all", hessian_structure="kron", prior_precision=1.0
        )
