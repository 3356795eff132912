"""The matrix-free formulas of benchmarks/bench_kron_floor.py against the dense GGN block.

For a weight block ``B = sum_n w_n vec(g1 a1^T - g0 a0^T) vec(.)^T`` and its Van Loan-Pitsianis
rearrangement ``R(B)``, the benchmark computes ``||B||_F``, ``<B, G x A>``, ``R(B) vec(A)``,
``R(B)^T vec(G)``, ``sigma_1(R(B))`` and the relative error of ``G x A`` from per-item
activations and output gradients only. The helpers below are a copy of the benchmark's (tests
import nothing from benchmarks/); they are checked here on the 5-7-7-1 MLP against the dense
block from jacrev Jacobians (conftest.exact_ggn) and the SVD of its dense rearrangement.
"""

from __future__ import annotations

import pytest
import torch
from conftest import exact_ggn, fit_bt
from torch import nn

SIGNS = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # s_0 (item 0), s_1 (item 1)
S2 = SIGNS[:, None] * SIGNS[None, :]
TOL = 1e-10


# ---------------------------------------------------------------------------- helpers (copy)
def item_taps(net: nn.Module, x: torch.Tensor):
    """Pair weights ``w (N,)`` and, per ``nn.Linear``, ``(a (N, 2, in), g (N, 2, out))``."""
    n, _, d = x.shape
    layers = [m for m in net.modules() if isinstance(m, nn.Linear)]
    ins: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        ins.append(inp[0])
        outs.append(out)

    hooks = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.enable_grad():
            r = net(x.reshape(2 * n, d)).reshape(-1)
            grads = torch.autograd.grad(r.sum(), outs)
    finally:
        for hk in hooks:
            hk.remove()
    r = r.detach().reshape(n, 2)
    p = torch.sigmoid(r[:, 1] - r[:, 0])
    taps = [
        (a.detach().reshape(n, 2, -1), g.detach().reshape(n, 2, -1))
        for a, g in zip(ins, grads, strict=True)
    ]
    return p * (1 - p), taps


def frob_sq(a: torch.Tensor, g: torch.Tensor, w: torch.Tensor, chunk: int = 1000) -> float:
    total = 0.0
    for s in range(0, a.shape[0], chunk):
        ac, gc, wc = a[s : s + chunk], g[s : s + chunk], w[s : s + chunk]
        k = sum(
            S2[i, j] * (gc[:, i] @ g[:, j].T) * (ac[:, i] @ a[:, j].T)
            for i in range(2)
            for j in range(2)
        )
        total += float((wc[:, None] * k.square() * w[None, :]).sum())
    return total


def pair_forms(u: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nip,pq,njq->nij", u, f, u)


def inner(a: torch.Tensor, g: torch.Tensor, w: torch.Tensor, gf, af) -> float:
    return float((w[:, None, None] * S2 * pair_forms(g, gf) * pair_forms(a, af)).sum())


def r_apply(u: torch.Tensor, v: torch.Tensor, w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    c = w[:, None, None] * S2 * pair_forms(u, f)
    return sum((v[:, i] * c[:, i, j, None]).T @ v[:, j] for i in range(2) for j in range(2))


def top_singular(a, g, w, max_iter: int = 500, tol: float = 1e-12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n_in = a.shape[-1]
    m = torch.randn(n_in, n_in, generator=gen, dtype=a.dtype)
    af = m @ m.T / n_in + torch.eye(n_in, dtype=a.dtype)
    g_raw = r_apply(a, g, w, af / af.norm())
    sigma, resid, its = 0.0, float("inf"), 0
    while its < max_iter and resid > tol:
        its += 1
        gf = g_raw / g_raw.norm()
        af = r_apply(g, a, w, gf)
        sigma = float(af.norm())
        af = af / sigma
        g_raw = r_apply(a, g, w, af)
        resid = float((g_raw - sigma * gf).norm()) / sigma
    return sigma, gf, af, its, resid


def kron_rel_error(a, g, w, b_sq: float, gf: torch.Tensor, af: torch.Tensor) -> float:
    e_sq = b_sq - 2 * inner(a, g, w, gf, af) + float(gf.square().sum() * af.square().sum())
    return max(e_sq, 0.0) ** 0.5 / b_sq**0.5


# ---------------------------------------------------------------------------- tests
# (parameter name, index of the nn.Linear) for the weights of the 5-7-7-1 MLP
WEIGHTS = [("net.0.weight", 0), ("net.2.weight", 1), ("net.4.weight", 2)]


@pytest.fixture
def dense_blocks(reward_model, pairs):
    """Per weight: the dense block ``B`` (jacrev), its rearrangement ``R(B)`` and the taps."""
    x, _ = pairs
    h = exact_ggn(reward_model, x)
    w, taps = item_taps(reward_model.net, x)
    out, start = {}, 0
    for name, p in reward_model.named_parameters():
        stop = start + p.numel()
        if p.ndim == 2:
            o, i = p.shape
            blk = h[start:stop, start:stop]
            r = blk.reshape(o, i, o, i).permute(0, 2, 1, 3).reshape(o * o, i * i)
            out[name] = (blk, r)
        start = stop
    return out, w, taps


def rel(x: float | torch.Tensor, ref: float | torch.Tensor) -> float:
    x, ref = torch.as_tensor(x), torch.as_tensor(ref)
    return float((x - ref).norm() / ref.norm())


@pytest.mark.parametrize(("name", "layer"), WEIGHTS)
def test_norm_inner_and_products_match_dense(dense_blocks, name, layer):
    blocks, w, taps = dense_blocks
    blk, r = blocks[name]
    a, g = taps[layer]
    o, i = g.shape[-1], a.shape[-1]
    gen = torch.Generator().manual_seed(5)
    gf = torch.randn(o, o, generator=gen, dtype=torch.float64)  # not symmetric on purpose
    af = torch.randn(i, i, generator=gen, dtype=torch.float64)
    assert rel(frob_sq(a, g, w, chunk=7), float(blk.square().sum())) < TOL
    assert rel(inner(a, g, w, gf, af), float((blk * torch.kron(gf, af)).sum())) < TOL
    assert rel(r_apply(a, g, w, af), (r @ af.flatten()).reshape(o, o)) < TOL
    assert rel(r_apply(g, a, w, gf), (r.T @ gf.flatten()).reshape(i, i)) < TOL
    b_sq = frob_sq(a, g, w)
    dense_err = float((torch.kron(gf, af) - blk).norm() / blk.norm())
    assert rel(kron_rel_error(a, g, w, b_sq, gf, af), dense_err) < TOL


@pytest.mark.parametrize(("name", "layer"), WEIGHTS)
def test_floor_matches_dense_svd(dense_blocks, name, layer):
    blocks, w, taps = dense_blocks
    blk, r = blocks[name]
    a, g = taps[layer]
    s = torch.linalg.svdvals(r)
    b_sq = frob_sq(a, g, w)
    sigma, gf, af, _, resid = top_singular(a, g, w)
    assert resid <= 1e-12
    assert rel(sigma, float(s[0])) < TOL
    # the singular pair's own error is the floor (G, A scaled by sigma)
    floor_free = max(1 - sigma**2 / b_sq, 0.0) ** 0.5
    floor_dense = float(s[1:].square().sum().sqrt() / s.norm())
    if g.shape[-1] == 1:  # head weight: a Kronecker product, floor 0 up to round-off
        assert floor_dense < 1e-12 and floor_free < 1e-7
        return
    assert rel(floor_free, floor_dense) < TOL
    assert rel(kron_rel_error(a, g, w, b_sq, sigma * gf, af), floor_dense) < TOL


def test_bt_laplace_kron_error_matches_dense(reward_model, pairs, pair_loader, dense_blocks):
    """The error of bt_laplace's own factors, as the benchmark reads them from ``H_facs``."""
    blocks, w, taps = dense_blocks
    la = fit_bt(reward_model, pair_loader, "all", "kron")
    kfacs = [k for k in la.H_facs.kfacs if len(k) == 2]
    for (name, layer), (gf, af) in zip(WEIGHTS, kfacs, strict=True):
        blk, _ = blocks[name]
        a, g = taps[layer]
        dense = float((torch.kron(gf, af) - blk).norm() / blk.norm())
        free = kron_rel_error(a, g, w, frob_sq(a, g, w), gf, af)
        if g.shape[-1] == 1:  # head weight: exact; the matrix-free error is sqrt(round-off)
            assert dense < 1e-12 and free < 1e-7
        else:
            assert rel(free, dense) < TOL
