"""The matrix-free floor helpers of bt_laplace.testing against the dense GGN block.

For a weight block ``B = sum_n w_n vec(g1 a1^T - g0 a0^T) vec(.)^T`` and its Van Loan-Pitsianis
rearrangement ``R(B)``, the benchmark computes ``||B||_F``, ``<B, G x A>``, ``R(B) vec(A)``,
``R(B)^T vec(G)``, ``sigma_1(R(B))`` and the relative error of ``G x A`` from per-item
activations and output gradients only, with the helpers of bt_laplace.testing.matrix_free (what
benchmarks/bench_kron_floor.py runs); they are checked here on the 5-7-7-1 MLP against the dense
block from jacrev Jacobians (bt_laplace.testing.exact_ggn) and the SVD of its dense
rearrangement.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fit_bt

from bt_laplace.testing import (
    exact_ggn,
    frob_sq,
    inner,
    item_taps,
    kron_rel_error,
    kronecker_rearrangement,
    r_apply,
    top_singular,
)
from bt_laplace.testing import rel_err as rel

TOL = 1e-10


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
            out[name] = (blk, kronecker_rearrangement(blk, o, i))
        start = stop
    return out, w, taps


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
