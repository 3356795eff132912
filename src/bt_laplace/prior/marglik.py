"""Marginal-likelihood prior precision on the eigenvalues of the curvature.

Shape legend: ``P`` posterior parameters, ``K`` prior precisions (1 scalar or one per layer).

The Laplace log marginal likelihood as a function of the prior precision ``delta`` is

.. math::
    \\log p(D \\mid \\delta) \\approx \\log p(D \\mid \\theta^*)
    - \\tfrac12 \\big(\\log\\det(H + \\delta) - \\log\\det \\delta
    + (\\theta^* - \\mu_0)^T \\delta (\\theta^* - \\mu_0)\\big),

(MacKay, 1992; Immer et al., 2021). With the eigenvalues ``lambda`` of the (tempered) curvature
``H`` computed once, ``log det(H + delta) = sum log(lambda + delta)``, so each optimizer step costs
``O(P)`` instead of a determinant. :func:`optimize_marglik` runs laplace-torch's procedure
(Adam on ``log delta``, same defaults) on the closed-form gradient
``0.5 (sum delta / (lambda + delta) - n + delta ||theta* - mu_0||^2)``, on the CPU in float64,
for a scalar prior and, for diagonal and Kronecker posteriors over all weights, a per-layer
prior; other cases are handed to laplace-torch's ``optimize_prior_precision``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from laplace.baselaplace import ParametricLaplace
from laplace.lllaplace import LLLaplace

from bt_laplace._checks import progress
from bt_laplace.structures import structure_class

__all__ = ["curvature_eigenvalues", "optimize_marglik"]


def curvature_eigenvalues(laplace: ParametricLaplace) -> list[torch.Tensor] | None:
    """Eigenvalues of the tempered curvature ``H / T``, one tensor per parameter tensor.

    Returns None when they do not separate by parameter tensor (a dense ``full`` curvature
    gives a single group) or for Kronecker posteriors with damping.
    """
    try:
        structure = structure_class(laplace)
    except NotImplementedError:
        return None
    return structure.curvature_eigenvalues(laplace)


def optimize_marglik(
    laplace: ParametricLaplace,
    *,
    n_steps: int = 100,
    lr: float = 1e-1,
    init_prior_prec: float = 1.0,
    prior_structure: str = "scalar",
    progress_bar: bool = False,
    **kwargs: Any,
) -> None:
    """Set ``laplace.prior_precision`` by maximizing the Laplace marginal likelihood.

    Same algorithm and defaults as laplace-torch's
    ``optimize_prior_precision(method="marglik")``, on precomputed eigenvalues.

    Args:
        laplace: A fitted laplace-torch ``DiagLaplace``, ``KronLaplace`` or ``FullLaplace``.
        n_steps: Adam steps.
        lr: Adam learning rate on ``log delta``.
        init_prior_prec: Initial scalar prior precision.
        prior_structure: ``"scalar"`` or ``"layerwise"``.
        progress_bar: Show a tqdm bar over the steps.
        **kwargs: Passed to laplace-torch when it handles the case itself.
    """
    groups = curvature_eigenvalues(laplace)
    layerwise = prior_structure == "layerwise"
    fast = groups is not None and (
        prior_structure == "scalar" or (layerwise and not isinstance(laplace, LLLaplace))
    )
    if fast and layerwise and len(groups or []) != laplace.n_layers:
        fast = False
    if not fast or not isinstance(init_prior_prec, (int, float)):
        laplace.optimize_prior_precision(
            method="marglik",
            n_steps=n_steps,
            lr=lr,
            init_prior_prec=init_prior_prec,
            prior_structure=prior_structure,
            progress_bar=progress_bar,
            **kwargs,
        )
        return
    assert groups is not None
    # a few thousand numbers: optimize on the CPU in float64 (no kernel launches per step)
    cpu: dict[str, Any] = {"device": "cpu", "dtype": torch.float64}
    delta = (laplace.mean - laplace.prior_mean).detach().to(**cpu)
    if layerwise:  # one prior per parameter tensor, whose eigenvalues are its own group
        eigs = [g.detach().to(**cpu) for g in groups]
        sq = torch.stack([d.square().sum() for d in delta.split([e.numel() for e in eigs])])
    else:  # for full, eigenvalues do not pair with parameters, but a scalar prior needs no pairing
        eigs = [torch.cat(groups).detach().to(**cpu)]
        sq = delta.square().sum().reshape(1)
    counts = torch.tensor([float(e.numel()) for e in eigs], **cpu)
    log_prior = torch.full((len(eigs),), math.log(init_prior_prec), **cpu)
    # Adam with torch.optim.Adam's defaults on the closed-form gradient in log(delta) of
    # 0.5 (sum log(lambda + delta) - n log delta + delta ||theta - mu_0||^2)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m, v = torch.zeros_like(log_prior), torch.zeros_like(log_prior)
    for t in progress(range(1, n_steps + 1), progress_bar, "[Optimizing marglik]"):
        prior = log_prior.exp()
        trace = torch.stack([(prior[k] / (e + prior[k])).sum() for k, e in enumerate(eigs)])
        grad = 0.5 * (trace - counts + prior * sq)
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad.square()
        denom = (v / (1 - beta2**t)).sqrt() + eps
        log_prior = log_prior - lr / (1 - beta1**t) * m / denom
    device, dtype = laplace._device, laplace._dtype
    laplace.prior_precision = log_prior.exp().to(device=device, dtype=dtype)
