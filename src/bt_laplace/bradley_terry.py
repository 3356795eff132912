"""The Bradley-Terry pair math: likelihood, curvature weight, and predictive probabilities.

Shape legend: ``B`` pairs, ``2`` the two items of a pair (index 0 first, index 1 second),
``S`` samples.

The Bradley-Terry model (Bradley & Terry, 1952) gives the probability that item 1 of a pair is
preferred over item 0 from the rewards of the two items:

.. math:: P(y = 1 \\mid x_0, x_1) = \\sigma(r(x_1) - r(x_0)) = \\sigma(f),

so a pair behaves like a binary logistic observation of the reward *difference* ``f``. Its
negative log likelihood has second derivative ``p (1 - p)`` in ``f`` (``p = \\sigma(f)``),
which is the weight of each pair in the generalized Gauss-Newton matrix
``sum_pairs p (1 - p) (J_1 - J_0)^T (J_1 - J_0)``.

Under a Gaussian posterior on the rewards of the two items (mean ``mu`` ``(B, 2)``, covariance
``Sigma`` ``(B, 2, 2)``) the difference is Gaussian with mean ``mu_1 - mu_0`` and variance
``Sigma_00 + Sigma_11 - 2 Sigma_01``. The probit approximation (MacKay, 1992; Spiegelhalter &
Lauritzen, 1990) of its expected sigmoid is

.. math:: E[\\sigma(f)] \\approx \\sigma(\\mu_f / \\sqrt{1 + \\pi \\sigma_f^2 / 8}).

Using the variance of the difference (with the covariance term) is what makes it right for
pairs: two near-duplicate items have large, but almost perfectly correlated, reward variances.

The expectation itself is one-dimensional, and :func:`quadrature_preference_probability`
computes it to about 1e-10 (the default ``link_approx="quadrature"``): by Gauss-Hermite
quadrature over the Gaussian where the logistic is smooth on the Gaussian's scale
(``sigma_f <= 2``), else written over a standard logistic ``L`` (``sigma(f) = P(L < f)``),
``E[sigma(f)] = E_L[Phi((mu_f - L) / sigma_f)]``, by the trapezoidal rule, which converges
geometrically for the logistic's density.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from bt_laplace.choices import LinkApprox

__all__ = [
    "bradley_terry_weight",
    "pair_difference_moments",
    "probit_preference_probability",
    "quadrature_preference_probability",
    "mc_preference_probability",
    "gauss_hermite",
    "preference_probability",
    "bradley_terry_nll",
    "margin_shift",
]


def bradley_terry_weight(logit_diff: torch.Tensor) -> torch.Tensor:
    """Curvature weight ``p (1 - p)`` of each pair, with ``p = sigmoid(logit_diff)``.

    Args:
        logit_diff: Reward differences ``r(x_1) - r(x_0)``, shape ``(B,)``.

    Returns:
        Weights ``(B,)`` in ``(0, 1/4]``.

    Example:
        >>> bradley_terry_weight(torch.tensor([0.0]))
        tensor([0.2500])
    """
    p = torch.sigmoid(logit_diff)
    return p * (1 - p)


def pair_difference_moments(
    mean: torch.Tensor, variance: torch.Tensor, covariance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``r_1 - r_0`` from the joint moments of the two rewards.

    Args:
        mean: Reward means ``(B, 2)``.
        variance: Reward variances ``(B, 2)``.
        covariance: ``Cov(r_0, r_1)``, shape ``(B,)``.

    Returns:
        ``(mean_diff, var_diff)``, each ``(B,)``; the variance is clamped at zero against
        round-off.

    Example:
        >>> m, v = pair_difference_moments(
        ...     torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 2.0]]), torch.tensor([1.5]))
        >>> m, v
        (tensor([1.]), tensor([1.]))
    """
    mean_diff = mean[:, 1] - mean[:, 0]
    var_diff = (variance[:, 0] + variance[:, 1] - 2 * covariance).clamp_min(0.0)
    return mean_diff, var_diff


def probit_preference_probability(mean_diff: torch.Tensor, var_diff: torch.Tensor) -> torch.Tensor:
    """Probit approximation of ``E[sigmoid(f)]`` for ``f ~ N(mean_diff, var_diff)``.

    Args:
        mean_diff: Mean of the reward difference ``(B,)``.
        var_diff: Variance of the reward difference ``(B,)``.

    Returns:
        ``P(item 1 preferred over item 0)``, shape ``(B,)``.

    Example:
        >>> probit_preference_probability(torch.tensor([1.0]), torch.tensor([0.0]))
        tensor([0.7311])
    """
    return torch.sigmoid(mean_diff / torch.sqrt(1.0 + math.pi / 8.0 * var_diff))


#: numbers one chunk of Monte Carlo draws or quadrature nodes may hold
MC_CHUNK = 2**22
#: Gauss-Hermite nodes of :func:`quadrature_preference_probability` (error below 1e-10 up to
#: :data:`QUADRATURE_SWITCH`)
QUADRATURE_NODES = 64
#: ``sqrt(var_diff)`` above which :func:`quadrature_preference_probability` integrates over the
#: logistic instead of the Gaussian
QUADRATURE_SWITCH = 2.0
#: the trapezoidal grid over the logistic: ``L`` in ``[-24, 24]`` in steps of 0.6, the weights
#: normalized to sum to one (tails ``e^-24``; the logistic's density has poles at ``+-i pi``,
#: so the discretization error falls as ``exp(-2 pi^2 / 0.6)``)
LOGISTIC_GRID = (24.0, 0.6)


def gauss_hermite(
    n_nodes: int, *, dtype: torch.dtype = torch.float64, device: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Hermite nodes ``z`` and weights ``w`` ``(n_nodes,)`` for a standard normal:
    ``E g(z) ~ sum_i w_i g(z_i)`` for ``z ~ N(0, 1)``, exact for polynomials of degree up to
    ``2 n_nodes - 1``.

    Example:
        >>> z, w = gauss_hermite(5)
        >>> round(float((w * z**2).sum()), 12), round(float(w.sum()), 12)
        (1.0, 1.0)
    """
    t, w = np.polynomial.hermite.hermgauss(n_nodes)
    nodes = torch.as_tensor(t * math.sqrt(2.0), dtype=dtype, device=device)
    return nodes, torch.as_tensor(w / math.sqrt(math.pi), dtype=dtype, device=device)


def quadrature_preference_probability(
    mean_diff: torch.Tensor, var_diff: torch.Tensor
) -> torch.Tensor:
    """``E[sigmoid(f)]`` for ``f ~ N(mean_diff, var_diff)`` by deterministic quadrature, in
    float64, to about 1e-10 for every mean and variance (zero included).

    ``sqrt(var_diff) <= 2`` (:data:`QUADRATURE_SWITCH`): :data:`QUADRATURE_NODES`
    Gauss-Hermite nodes, ``sum_i w_i sigmoid(mean_diff + sigma_f z_i)``. Wider: the same
    integral over a standard logistic ``L``, ``E[Phi((mean_diff - L) / sigma_f)]``, by the
    trapezoidal rule on :data:`LOGISTIC_GRID` (81 nodes), where a Gauss-Hermite rule would
    step over the logistic's rise.

    Args:
        mean_diff: Mean of the reward difference ``(B,)``.
        var_diff: Variance of the reward difference ``(B,)``.

    Returns:
        ``P(item 1 preferred over item 0)`` ``(B,)``, in the dtype of ``mean_diff``.

    Example:
        >>> p = quadrature_preference_probability(torch.tensor([1.0, 1.0]),
        ...                                       torch.tensor([0.0, 100.0]))
        >>> [round(float(v), 4) for v in p]
        [0.7311, 0.5392]
    """
    m = mean_diff.double().reshape(-1)
    std = var_diff.double().clamp_min(0.0).sqrt().reshape(-1)
    z, w = gauss_hermite(QUADRATURE_NODES, device=m.device)
    half, step = LOGISTIC_GRID
    logistic = torch.arange(-half, half + step / 2, step, dtype=torch.float64, device=m.device)
    density = torch.sigmoid(logistic) * torch.sigmoid(-logistic)
    density = density / density.sum()
    wide = std > QUADRATURE_SWITCH
    out = torch.empty_like(m)
    rows = MC_CHUNK // logistic.numel()
    for sel, is_wide in ((~wide).nonzero().flatten(), False), (wide.nonzero().flatten(), True):
        for part in sel.split(rows):
            mi, si = m[part, None], std[part, None]
            if is_wide:  # Phi(t) = erfc(-t / sqrt 2) / 2
                scale = 1.0 / (si * math.sqrt(2.0))
                out[part] = torch.erfc(torch.addcmul(-mi * scale, logistic, scale)) @ density / 2
            else:
                out[part] = torch.sigmoid(mi + si * z) @ w
    return out.clamp(0.0, 1.0).reshape(mean_diff.shape).to(mean_diff.dtype)


def mc_preference_probability(
    mean_diff: torch.Tensor,
    var_diff: torch.Tensor,
    *,
    n_samples: int = 1000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Monte Carlo estimate of ``E[sigmoid(f)]`` for ``f ~ N(mean_diff, var_diff)``.

    The difference of two jointly Gaussian rewards is exactly Gaussian, so sampling the
    one-dimensional difference is the same as sampling the joint 2x2 Gaussian and subtracting.

    Args:
        mean_diff: ``(B,)``.
        var_diff: ``(B,)``.
        n_samples: Number of samples ``S``.
        generator: Optional random generator for reproducibility.

    Returns:
        ``(B,)`` probabilities.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> p = mc_preference_probability(torch.zeros(2), torch.ones(2), generator=g)
        >>> bool(((p - 0.5).abs() < 0.05).all())
        True
    """
    # draw in chunks of samples so that memory stays about MC_CHUNK numbers whatever S and B
    step = max(1, MC_CHUNK // max(1, mean_diff.numel()))
    std = var_diff.sqrt()
    total = torch.zeros_like(mean_diff)
    for start in range(0, n_samples, step):
        eps = torch.randn(
            min(step, n_samples - start),
            *mean_diff.shape,
            generator=generator,
            dtype=mean_diff.dtype,
            device=mean_diff.device,
        )
        total += torch.sigmoid(mean_diff + std * eps).sum(0)
    return total / n_samples


def preference_probability(
    mean_diff: torch.Tensor,
    var_diff: torch.Tensor,
    link_approx: str = "quadrature",
    *,
    n_samples: int = 1000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``P(item 1 preferred) = E[sigmoid(f)]`` for ``f ~ N(mean_diff, var_diff)`` ``(B,)``, by
    ``link_approx``: ``"quadrature"`` (default, :func:`quadrature_preference_probability`,
    exact to about 1e-10), ``"probit"`` (:func:`probit_preference_probability`) or ``"mc"``
    (:func:`mc_preference_probability` with ``n_samples`` draws from ``generator``); the one
    place a pair probability is computed from the moments of the reward difference.

    Example:
        >>> float(preference_probability(torch.zeros(1), torch.ones(1)))
        0.5
    """
    link = LinkApprox.check("link_approx", link_approx)
    if link is LinkApprox.QUADRATURE:
        return quadrature_preference_probability(mean_diff, var_diff)
    if link is LinkApprox.PROBIT:
        return probit_preference_probability(mean_diff, var_diff)
    return mc_preference_probability(mean_diff, var_diff, n_samples=n_samples, generator=generator)


def bradley_terry_nll(prob_second: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean negative log likelihood of labels under predicted preference probabilities.

    Args:
        prob_second: ``P(item 1 preferred)`` per pair, ``(B,)``.
        label: Index of the preferred item (0 or 1), ``(B,)``.

    Returns:
        Scalar mean NLL.

    Example:
        >>> bradley_terry_nll(torch.tensor([0.5, 0.5]), torch.tensor([0, 1]))
        tensor(0.6931)
    """
    p = torch.where(label.bool(), prob_second, 1 - prob_second)
    return -torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)).mean()


def margin_shift(x: Any, y: torch.Tensor) -> torch.Tensor | None:
    """How much a ``margin`` moves the Bradley-Terry logit ``f = r(x_1) - r(x_0)``, ``(B,)``.

    TRL's loss with a margin ``m`` is ``-log sigmoid(r_chosen - r_rejected - m)``: the
    preferred item (index ``y``) must win by ``m``, so the likelihood is that of the shifted
    logit ``f - m (2 y - 1)``. Its curvature weight is ``p (1 - p)`` at the shifted logit.

    Args:
        x: A batch of pairs: a token dict may hold ``"margin"`` ``(B,)``; a tensor holds none.
        y: Index of the preferred item (0 or 1), ``(B,)``.

    Returns:
        ``m (2 y - 1)`` ``(B,)``, or None when the batch has no margin.

    Example:
        >>> margin_shift({"margin": torch.tensor([0.5, 0.5])}, torch.tensor([1, 0]))
        tensor([ 0.5000, -0.5000])
    """
    if not isinstance(x, Mapping) or "margin" not in x:
        return None
    margin = x["margin"]
    if not isinstance(margin, torch.Tensor) or margin.shape != y.shape:
        raise ValueError(
            f"the batch's 'margin' must be a tensor of shape {tuple(y.shape)} (one per pair), "
            f"got {getattr(margin, 'shape', type(margin).__name__)}; build batches with "
            "bt_laplace.TextPairCollator."
        )
    if not bool(torch.isfinite(margin).all()):
        raise ValueError("the batch's 'margin' holds NaN or infinite values; fix those rows.")
    return margin.to(y.device) * (2 * y - 1)
