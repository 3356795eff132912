"""Dense brute-force references: per-item Jacobians, the exact Bradley-Terry GGN, the
nearest-Kronecker floor.

Shape legend: ``B`` pairs, ``2`` the two items of a pair, ``N`` items, ``P`` parameters,
``D`` features; ``*item`` the shape of one item.

For pairs ``x (B, 2, *item)`` with rewards ``r_0, r_1`` and ``p = sigmoid(r_1 - r_0)``, the
Bradley-Terry generalized Gauss-Newton matrix is

    H = sum_b p_b (1 - p_b) (J_1 - J_0)_b^T (J_1 - J_0)_b,

with ``J_i (1, P)`` the Jacobian of the reward of item ``i`` with respect to the parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

__all__ = [
    "item_jacobians",
    "exact_ggn",
    "exact_last_layer_ggn",
    "kronecker_rearrangement",
    "nearest_kronecker_floor",
    "rel_err",
]


def item_jacobians(model: nn.Module, items: torch.Tensor, *, chunk: int = 1000) -> torch.Tensor:
    """Per-item Jacobians of the reward by ``torch.func.jacrev`` under ``vmap``.

    Args:
        model: a reward model mapping ``(1, *item)`` to one reward (a ``PairwiseRewardModel``).
        items: ``(N, *item)``.
        chunk: items per ``vmap`` call (memory).

    Returns:
        ``(N, P)``, columns in ``model.named_parameters()`` order (all parameters, trainable or
        not).

    Example:
        >>> net = nn.Linear(3, 1).double()
        >>> item_jacobians(net, torch.ones(2, 3, dtype=torch.float64)).shape
        torch.Size([2, 4])
    """
    params = {k: v.detach() for k, v in model.named_parameters()}

    def reward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze()

    out = []
    for part in items.split(chunk):
        jac = vmap(jacrev(reward), in_dims=(None, 0))(params, part)
        out.append(torch.cat([jac[k].reshape(part.shape[0], -1) for k in params], dim=1))
    return torch.cat(out)


def _pair_weights(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``p (1 - p)`` ``(B,)`` from the pair logits ``model(x) (B, 2)``."""
    with torch.no_grad():
        logits = model(x)
    p = torch.sigmoid(logits[:, 1] - logits[:, 0])
    return p * (1 - p)


def exact_ggn(
    model: nn.Module, x: torch.Tensor, center_rewards_coefficient: float = 0.0
) -> torch.Tensor:
    """The exact Bradley-Terry GGN ``sum_pairs p(1-p) (J1 - J0)^T (J1 - J0)``, plus
    ``2 c sum_pairs (J1 + J0)^T (J1 + J0)``, the GGN of TRL's centering term
    ``c (r_0 + r_1)^2``, for ``center_rewards_coefficient`` ``c``.

    Args:
        model: a pair model, ``model(x (B, 2, *item)) -> logits (B, 2)``, whose
            ``model(x (1, *item))`` is one reward (a ``PairwiseRewardModel``).
        x: pairs ``(B, 2, *item)``.
        center_rewards_coefficient: ``c`` (0: the Bradley-Terry GGN alone).

    Returns:
        ``(P, P)``, in ``model.named_parameters()`` order.

    Example:
        >>> from bt_laplace.model import PairwiseRewardModel
        >>> model = PairwiseRewardModel(nn.Linear(3, 1).double())
        >>> h = exact_ggn(model, torch.randn(5, 2, 3, dtype=torch.float64))
        >>> h.shape, float(h[-1, -1])  # the bias cancels in r_1 - r_0
        (torch.Size([4, 4]), 0.0)
    """
    b = x.shape[0]
    jac = item_jacobians(model, x.reshape(2 * b, *x.shape[2:])).reshape(b, 2, -1)
    d_jac = jac[:, 1] - jac[:, 0]
    ggn = (d_jac * _pair_weights(model, x)[:, None]).T @ d_jac
    if center_rewards_coefficient:
        s_jac = jac[:, 1] + jac[:, 0]
        ggn = ggn + 2 * center_rewards_coefficient * s_jac.T @ s_jac
    return ggn


def exact_last_layer_ggn(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The exact Bradley-Terry GGN of the head of ``model.net = nn.Sequential(..., Linear(H, 1))``.

    ``sum_pairs p(1-p) dphi dphi^T`` with ``dphi = phi(x_1) - phi(x_0)`` the difference of the
    features entering the head, in laplace-torch's last-layer order (weights, then the bias,
    whose row and column are 0).

    Args:
        model: a ``PairwiseRewardModel`` around an ``nn.Sequential`` ending in a linear head.
        x: pairs ``(B, 2, D)``.

    Returns:
        ``(H + 1, H + 1)``.
    """
    net = getattr(model, "net", None)
    if not isinstance(net, nn.Sequential):
        raise TypeError(
            f"`model.net` must be an nn.Sequential ending in the linear head, got "
            f"{type(net).__name__}; wrap the network as PairwiseRewardModel(nn.Sequential(...))."
        )
    n, _, d = x.shape
    with torch.no_grad():
        phi = net[:-1](x.reshape(-1, d))
    dphi = phi[1::2] - phi[0::2]
    h = phi.shape[1]
    out = torch.zeros(h + 1, h + 1, dtype=phi.dtype)
    out[:h, :h] = (dphi * _pair_weights(model, x)[:, None]).T @ dphi
    return out


def kronecker_rearrangement(block: torch.Tensor, out: int, inp: int) -> torch.Tensor:
    """Van Loan-Pitsianis rearrangement ``R(B)`` of a weight block.

    ``||B - G x A||_F = ||R(B) - vec(G) vec(A)^T||_F``, so the nearest Kronecker product is the
    top singular pair of ``R(B)``.

    Args:
        block: ``(out * inp, out * inp)``, the block of a weight ``(out, inp)`` in row-major
            ``vec`` order.
        out: rows of the weight.
        inp: columns of the weight.

    Returns:
        ``(out * out, inp * inp)``.
    """
    return block.reshape(out, inp, out, inp).permute(0, 2, 1, 3).reshape(out * out, inp * inp)


def nearest_kronecker_floor(block: torch.Tensor, out: int, inp: int) -> float:
    """Relative Frobenius error of the nearest Kronecker product ``G (out, out) x A (inp, inp)``.

    ``min_{G, A} ||B - G x A||_F / ||B||_F = sqrt(sum_{k >= 2} s_k^2) / ||s||`` with ``s`` the
    singular values of :func:`kronecker_rearrangement`.

    Example:
        >>> g, a = torch.eye(2, dtype=torch.float64), torch.ones(3, 3, dtype=torch.float64)
        >>> nearest_kronecker_floor(torch.kron(g, a), 2, 3) < 1e-12
        True
    """
    s = torch.linalg.svdvals(kronecker_rearrangement(block, out, inp))
    return float(s[1:].square().sum().sqrt() / s.norm())


def rel_err(a: torch.Tensor | float, b: torch.Tensor | float) -> float:
    """Relative Frobenius error ``||a - b|| / ||b||``; the absolute ``||a - b||`` when ``b = 0``.

    Example:
        >>> rel_err(torch.tensor([3.0, 3.0]), torch.tensor([3.0, 4.0]))
        0.2
    """
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    diff, ref = float((a - b).norm()), float(b.norm())
    return diff / ref if ref > 0 else diff
