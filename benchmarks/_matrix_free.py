"""Matrix-free pair-GGN block quantities from per-item taps (bench_kron_floor.py and its test).

For a linear weight with per-pair activations ``a (N, 2, in)`` and output gradients
``g (N, 2, out)`` and pair weights ``w (N,)``, the exact block is
``B = sum_n w_n vec(g1 a1^T - g0 a0^T) vec(.)^T``. Everything here works from ``a``, ``g`` and
``w`` without forming ``B`` or its Van Loan-Pitsianis rearrangement ``R(B)``.
"""

from __future__ import annotations

import torch
from torch import nn

SIGNS = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # s_0 (item 0), s_1 (item 1)
S2 = SIGNS[:, None] * SIGNS[None, :]  # s_i s_j


# ---------------------------------------------------------------------------- per-item taps
def item_taps(net: nn.Module, x: torch.Tensor):
    """Pair weights ``w (N,)`` and, per ``nn.Linear`` of ``net``, ``(a (N, 2, in), g (N, 2, out))``.

    ``a``: the layer's input per item, ``g``: the gradient of the item's reward with respect to
    the layer's output (forward hooks, one backward pass of the summed rewards).
    """
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


# ---------------------------------------------------------------------------- matrix-free block
def frob_sq(a: torch.Tensor, g: torch.Tensor, w: torch.Tensor, chunk: int = 1000) -> float:
    """``||B||_F^2 = sum_{n,m} w_n w_m (dJ_n . dJ_m)^2``, over row chunks of the pair kernel."""
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
    """``(N, 2, 2)``: ``u_i^T F u_j`` per pair."""
    return torch.einsum("nip,pq,njq->nij", u, f, u)


def inner(a: torch.Tensor, g: torch.Tensor, w: torch.Tensor, gf, af) -> float:
    """``<B, G x A>_F = sum_n w_n sum_{i,j} s_i s_j (g_i^T G g_j)(a_i^T A a_j)``."""
    return float((w[:, None, None] * S2 * pair_forms(g, gf) * pair_forms(a, af)).sum())


def r_apply(u: torch.Tensor, v: torch.Tensor, w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``sum_n w_n sum_{i,j} s_i s_j (u_i^T F u_j) v_i v_j^T``.

    ``(u, v) = (a, g)``: ``R(B) vec(A)`` as a matrix ``(out, out)``; ``(u, v) = (g, a)``:
    ``R(B)^T vec(G)`` as ``(in, in)``.
    """
    c = w[:, None, None] * S2 * pair_forms(u, f)
    return sum((v[:, i] * c[:, i, j, None]).T @ v[:, j] for i in range(2) for j in range(2))


def top_singular(a, g, w, max_iter: int = 500, tol: float = 1e-12, seed: int = 0):
    """``sigma_1(R(B))`` and its unit singular matrices ``(G, A)`` by alternating power iteration.

    Starts from a random positive-definite ``A`` (B is PSD: the top singular pair can be taken
    symmetric positive semi-definite, so a PD start has a non-zero component along it). Stops when
    the residual ``||R vec(A) - sigma vec(G)|| / sigma`` is below ``tol`` (the error of ``sigma``
    is of the order of its square) or after ``max_iter`` iterations.
    Returns ``(sigma, G, A, iterations, residual)``.
    """
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
    """``||B - G x A||_F / ||B||_F`` from ``||B||^2 - 2 <B, G x A> + ||G||^2 ||A||^2``."""
    e_sq = b_sq - 2 * inner(a, g, w, gf, af) + float(gf.square().sum() * af.square().sum())
    return max(e_sq, 0.0) ** 0.5 / b_sq**0.5
