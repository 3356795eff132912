"""The nearest-Kronecker floor of a pair-GGN weight block without forming the block.

Shape legend: ``B`` pairs, ``2`` the two items of a pair, ``in`` and ``out`` the input and output
width of an ``nn.Linear``.

For a linear weight with per-pair inputs ``a (B, 2, in)``, output gradients ``g (B, 2, out)``
(of each item's reward) and pair weights ``w = p (1 - p) (B,)``, the exact Bradley-Terry GGN
block is

    B = sum_b w_b vec(dJ_b) vec(dJ_b)^T,   dJ_b = g_1 a_1^T - g_0 a_0^T.

Everything here works from ``a``, ``g`` and ``w`` (signs ``s_0 = -1``, ``s_1 = 1``) without
forming ``B`` or its Van Loan-Pitsianis rearrangement ``R(B)`` (a 256 x 256 weight has a
65,536 x 65,536 block). :mod:`bt_laplace.testing.ggn` holds the dense versions these are tested
against.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "item_taps",
    "frob_sq",
    "pair_forms",
    "inner",
    "r_apply",
    "top_singular",
    "kron_rel_error",
]

_SIGNS = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # s_0 (item 0), s_1 (item 1)
_S2 = _SIGNS[:, None] * _SIGNS[None, :]  # s_i s_j

Taps = list[tuple[torch.Tensor, torch.Tensor]]


def _total(terms: list[torch.Tensor]) -> torch.Tensor:
    """``terms[0] + terms[1] + ...``, left to right."""
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def item_taps(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Taps]:
    """Pair weights and, per ``nn.Linear`` of ``net``, its inputs and output gradients per item.

    Forward hooks and one backward pass of the summed rewards, independent of the library's own
    taps.

    Args:
        net: an item network ``(2B, D) -> (2B, 1)``.
        x: pairs ``(B, 2, D)``.

    Returns:
        ``(w (B,), [(a (B, 2, in), g (B, 2, out)), ...])`` in module order.
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


def frob_sq(a: torch.Tensor, g: torch.Tensor, w: torch.Tensor, chunk: int = 1000) -> float:
    """``||B||_F^2 = sum_{b,c} w_b w_c (dJ_b . dJ_c)^2``, over row chunks of the pair kernel.

    ``dJ_b . dJ_c = sum_{i,j} s_i s_j (g_i^b . g_j^c)(a_i^b . a_j^c)``.
    """
    total = 0.0
    for s in range(0, a.shape[0], chunk):
        ac, gc, wc = a[s : s + chunk], g[s : s + chunk], w[s : s + chunk]
        k = _total(
            [
                _S2[i, j] * (gc[:, i] @ g[:, j].T) * (ac[:, i] @ a[:, j].T)
                for i in range(2)
                for j in range(2)
            ]
        )
        total += float((wc[:, None] * k.square() * w[None, :]).sum())
    return total


def pair_forms(u: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``u_i^T F u_j`` per pair: ``u (B, 2, k)``, ``F (k, k)`` -> ``(B, 2, 2)``."""
    return torch.einsum("nip,pq,njq->nij", u, f, u)


def inner(
    a: torch.Tensor, g: torch.Tensor, w: torch.Tensor, gf: torch.Tensor, af: torch.Tensor
) -> float:
    """``<B, G x A>_F = sum_b w_b sum_{i,j} s_i s_j (g_i^T G g_j)(a_i^T A a_j)``."""
    return float((w[:, None, None] * _S2 * pair_forms(g, gf) * pair_forms(a, af)).sum())


def r_apply(u: torch.Tensor, v: torch.Tensor, w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``sum_b w_b sum_{i,j} s_i s_j (u_i^T F u_j) v_i v_j^T``.

    ``(u, v) = (a, g)``: ``R(B) vec(A)`` as a matrix ``(out, out)``; ``(u, v) = (g, a)``:
    ``R(B)^T vec(G)`` as ``(in, in)``.
    """
    c = w[:, None, None] * _S2 * pair_forms(u, f)
    return _total([(v[:, i] * c[:, i, j, None]).T @ v[:, j] for i in range(2) for j in range(2)])


def top_singular(
    a: torch.Tensor,
    g: torch.Tensor,
    w: torch.Tensor,
    max_iter: int = 500,
    tol: float = 1e-12,
    seed: int = 0,
) -> tuple[float, torch.Tensor, torch.Tensor, int, float]:
    """``sigma_1(R(B))`` and its unit singular matrices by alternating power iteration.

    Starts from a random positive-definite ``A`` (``B`` is positive semi-definite, so its top
    singular pair can be taken symmetric positive semi-definite and a positive-definite start
    has a component along it). Stops when the residual ``||R vec(A) - sigma vec(G)|| / sigma``
    is below ``tol`` (the error of ``sigma`` is of the order of its square) or after
    ``max_iter`` iterations.

    Returns:
        ``(sigma, G (out, out), A (in, in), iterations, residual)``.
    """
    gen = torch.Generator().manual_seed(seed)
    n_in = a.shape[-1]
    m = torch.randn(n_in, n_in, generator=gen, dtype=a.dtype)
    af = m @ m.T / n_in + torch.eye(n_in, dtype=a.dtype)
    g_raw = r_apply(a, g, w, af / af.norm())
    gf = g_raw / g_raw.norm()
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


def kron_rel_error(
    a: torch.Tensor,
    g: torch.Tensor,
    w: torch.Tensor,
    b_sq: float,
    gf: torch.Tensor,
    af: torch.Tensor,
) -> float:
    """``||B - G x A||_F / ||B||_F`` from ``||B||^2 - 2 <B, G x A> + ||G||^2 ||A||^2``.

    Args:
        a: ``(B, 2, in)``.
        g: ``(B, 2, out)``.
        w: ``(B,)``.
        b_sq: ``||B||_F^2`` from :func:`frob_sq`.
        gf: ``G (out, out)``.
        af: ``A (in, in)``.
    """
    e_sq = b_sq - 2 * inner(a, g, w, gf, af) + float(gf.square().sum() * af.square().sum())
    return max(e_sq, 0.0) ** 0.5 / b_sq**0.5
