"""Act on reward uncertainty: penalties, intervals, best-of-n and pairs worth labelling.

Shape legend: ``B`` pairs or items, ``2`` the two items of a pair (index 0 first, index 1
second), ``*item`` one item, ``S`` samples, ``G`` groups (prompts).

Everything here is built on the public queries of
:class:`~bt_laplace.posterior.RewardPosterior`: ``post(x)`` and ``post.relative_reward`` for
the Gaussian ``r ~ N(mean, variance)`` of each item's reward, ``post.pair_moments`` for the
joint 2x2 Gaussian of a pair, and ``post.sample`` for joint draws.

**Penalties** (:func:`penalize`, :func:`penalized_reward`) turn that Gaussian into one number:
``"std"`` ``mean - k std``; ``"variance"`` ``mean - k var``; ``"quantile"`` the lower
``level`` quantile ``mean + Phi^-1(level) std``; ``"kl"`` the pessimistic effective reward of
the KL-regularized RLHF objective with coefficient ``beta``, and ``"kl_optimistic"`` its twin.
The effective reward: the objective ``max_pi E_pi[r] - beta KL(pi || pi_ref)`` weighs a reward
through ``exp(r / beta)``, and averaging that weight over the reward's uncertainty gives the
certainty equivalent ``-beta log E[exp(-r / beta)]`` (pessimistic; ``+beta log E[exp(r /
beta)]`` optimistic). For ``r ~ N(mu, s^2)`` the cumulant generating function is
``K(t) = log E[exp(t r)] = t mu + t^2 s^2 / 2``, so with ``t = -1 / beta``

.. math:: -\\beta K(-1/\\beta) = \\mu - s^2 / (2\\beta), \\qquad
          \\beta K(1/\\beta) = \\mu + s^2 / (2\\beta):

the KL coefficient sets the price of variance (a small ``beta``, a policy free to move far from
the reference, pays more for uncertain rewards). Issue 10 cites "A Unifying Lens on Reward
Uncertainty in RLHF" (arXiv 2606.09073) for this penalty.

**Best-of-n** (:func:`best_of_n`) scores many prompts' candidates in one call and picks the
best per prompt, relative to the candidates of the same prompt by default (pairs identify
rewards only up to a constant per prompt, see docs/guides/gotchas.md).

**Pairs worth labelling** (:func:`rank_pairs_for_labeling`). A label is ``y ~ Bernoulli(
sigmoid(f))`` with ``f = r_1 - r_0 ~ N(m, v)`` from the pair's joint Gaussian. BALD (Houlsby
et al., 2011) is the mutual information between the label and the parameters,
``H[E sigmoid(f)] - E H[sigmoid(f)]`` (``H`` the binary entropy); ``"variance"`` is
``Var[sigmoid(f)]`` (the "infomax" of Dwaracherla et al., 2024). Both expectations are over the
1-D Gaussian of ``f``, by Gauss-Hermite quadrature. Thompson sampling draws a reward function
per pick and labels the pair it ranks highest (the sum of the pair's two sampled rewards);
double Thompson sampling (Dwaracherla et al., 2024, "Efficient Exploration for LLMs") draws two
and scores a pair by one item under the first draw plus the other under the second, which on a
pool of all pairs of a prompt's candidates picks ``(argmax draw 1, argmax draw 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from bt_laplace._checks import (
    check_choice,
    check_finite,
    check_positive_int,
    check_tensor,
    group_index,
    n_rows,
)
from bt_laplace.choices import PairMethod, Penalty
from bt_laplace.posterior import RewardPosterior, RewardPrediction

__all__ = [
    "PENALTIES",
    "PAIR_METHODS",
    "RewardInterval",
    "BestOfN",
    "PreferenceUncertainty",
    "penalize",
    "penalized_reward",
    "reward_interval",
    "best_of_n",
    "preference_uncertainty",
    "preference_uncertainty_from_moments",
    "rank_pairs_for_labeling",
]

#: penalties of :func:`penalize`
PENALTIES = Penalty.values()
#: methods of :func:`rank_pairs_for_labeling`
PAIR_METHODS = PairMethod.values()
#: lower tail probability of ``penalty="quantile"`` when ``level`` is not given
DEFAULT_QUANTILE_LEVEL = 0.05


# ---------------------------------------------------------------------------- penalties
def _check_level(name: str, level: Any) -> float:
    level = check_finite(name, level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"`{name}` must be a probability in (0, 1), got {level}.")
    return level


def _normal_quantile(level: float) -> float:
    return float(torch.special.ndtri(torch.tensor(level, dtype=torch.float64)))


def penalize(
    mean: torch.Tensor,
    variance: torch.Tensor,
    *,
    penalty: str = "std",
    k: float = 1.0,
    beta: float | None = None,
    level: float | None = None,
) -> torch.Tensor:
    """One number per Gaussian reward ``N(mean, variance)``: the penalized reward.

    ``"std"``: ``mean - k sqrt(variance)``; ``"variance"``: ``mean - k variance``;
    ``"quantile"``: ``mean + Phi^-1(level) sqrt(variance)``, the lower ``level`` quantile
    (default 0.05); ``"kl"``: ``mean - variance / (2 beta)`` ``= -beta log E[exp(-r / beta)]``;
    ``"kl_optimistic"``: ``mean + variance / (2 beta)`` (derivation in the module docstring).
    ``k < 0`` turns ``"std"`` and ``"variance"`` into bonuses.

    Args:
        mean: Reward means ``(B,)``.
        variance: Reward variances ``(B,)``, non-negative.
        penalty: One of :data:`PENALTIES`.
        k: Multiplier of ``"std"`` and ``"variance"``.
        beta: KL coefficient, positive; needed by ``"kl"`` and ``"kl_optimistic"``.
        level: Lower tail probability in ``(0, 1)`` of ``"quantile"``.

    Returns:
        Penalized rewards ``(B,)``.

    Example:
        >>> import torch
        >>> mean, variance = torch.tensor([1.0, 2.0]), torch.tensor([0.25, 4.0])
        >>> penalize(mean, variance, k=2.0)
        tensor([ 0., -2.])
        >>> penalize(mean, variance, penalty="kl", beta=0.5)
        tensor([ 0.7500, -2.0000])
    """
    penalty = check_choice("penalty", penalty, PENALTIES)
    mean, variance = check_tensor("mean", mean), check_tensor("variance", variance)
    if mean.shape != variance.shape:
        raise ValueError(
            f"`mean` and `variance` must have the same shape (B,), got {tuple(mean.shape)} and "
            f"{tuple(variance.shape)}; pass the two fields of one RewardPrediction."
        )
    if bool((variance < 0).any()):
        raise ValueError(
            f"`variance` must be non-negative, got a minimum of {float(variance.min()):.3g}; "
            "pass variances, not log variances or standard deviations."
        )
    k = check_finite("k", k)
    uses = {"beta": ("kl", "kl_optimistic"), "level": ("quantile",)}
    for name, value in (("beta", beta), ("level", level)):
        if value is not None and penalty not in uses[name]:
            raise ValueError(
                f"`{name}` is used by penalty {' or '.join(map(repr, uses[name]))}, not by "
                f"penalty={penalty!r}; drop `{name}` or choose one of those penalties."
            )
    if k != 1.0 and penalty not in ("std", "variance"):
        raise ValueError(
            f"`k` is used by penalty 'std' or 'variance', not by penalty={penalty!r} (got "
            f"k={k}); drop `k`, or set `level` (quantile) or `beta` (kl) instead."
        )
    if penalty == "std":
        return mean - k * variance.sqrt()
    if penalty == "variance":
        return mean - k * variance
    if penalty == "quantile":
        q = _check_level("level", DEFAULT_QUANTILE_LEVEL if level is None else level)
        return mean + _normal_quantile(q) * variance.sqrt()
    if beta is None:
        raise ValueError(
            f"penalty={penalty!r} needs `beta`, the KL coefficient of the RLHF objective "
            "(e.g. beta=0.05); pass it."
        )
    beta = check_finite("beta", beta)
    if beta <= 0:
        raise ValueError(f"`beta` must be positive (a KL coefficient), got {beta}.")
    sign = -1.0 if penalty == "kl" else 1.0
    return mean + sign * variance / (2.0 * beta)


def _moments(
    posterior: RewardPosterior, x: Any, reference: Any, groups: Any = None
) -> RewardPrediction:
    if reference is None:
        if groups is not None:
            raise ValueError(
                "`groups` needs reference='group' (rewards relative to each group); absolute "
                "rewards (reference=None) do not depend on the groups."
            )
        return posterior(x)
    return posterior.relative_reward(x, reference, groups=groups)


def penalized_reward(
    posterior: RewardPosterior,
    x: torch.Tensor,
    *,
    penalty: str = "std",
    k: float = 1.0,
    beta: float | None = None,
    level: float | None = None,
    reference: Any = None,
    groups: Any = None,
) -> torch.Tensor:
    """:func:`penalize` applied to the reward moments of ``x`` under ``posterior``.

    Args:
        posterior: A fitted :class:`~bt_laplace.RewardPosterior`.
        x: Items ``(B, *item)``.
        penalty, k, beta, level: As in :func:`penalize`.
        reference: ``None`` (default): the absolute reward ``post(x)``; ``"group"`` or items
            ``(M, *item)``: the moments of ``post.relative_reward(x, reference)``.
        groups: With ``reference="group"``: the group (prompt) of each item, as in
            :meth:`~bt_laplace.RewardPosterior.relative_reward`.

    Returns:
        Penalized rewards ``(B,)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import bt_laplace as btl
        >>> _ = torch.manual_seed(0)
        >>> model = btl.PairwiseRewardModel(nn.Sequential(nn.Linear(3, 8), nn.Tanh(),
        ...                                               nn.Linear(8, 1)))
        >>> rows = [{"x0": torch.randn(3), "x1": torch.randn(3), "label": i % 2}
        ...         for i in range(16)]
        >>> post = btl.fit_reward_posterior(model, btl.preference_dataloader(rows))
        >>> x = torch.randn(5, 3)
        >>> penalized_reward(post, x, penalty="kl", beta=0.1, reference="group").shape
        torch.Size([5])
    """
    mean, variance = _moments(posterior, x, reference, groups)
    return penalize(mean, variance, penalty=penalty, k=k, beta=beta, level=level)


class RewardInterval(NamedTuple):
    """Central interval of a Gaussian reward, each ``(B,)``; unpacks as a tuple."""

    mean: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor


def reward_interval(
    posterior: RewardPosterior,
    x: Any,
    *,
    level: float = 0.9,
    reference: Any = None,
    groups: Any = None,
) -> RewardInterval:
    """Central ``level`` interval of each item's reward: ``mean -/+ Phi^-1((1 + level) / 2) std``.

    Args:
        posterior: A fitted :class:`~bt_laplace.RewardPosterior`.
        x: Items ``(B, *item)``.
        level: Probability mass inside the interval, in ``(0, 1)``.
        reference, groups: As in :func:`penalized_reward`.

    Returns:
        :class:`RewardInterval` of ``mean``, ``lower``, ``upper``, each ``(B,)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import bt_laplace as btl
        >>> _ = torch.manual_seed(0)
        >>> model = btl.PairwiseRewardModel(nn.Sequential(nn.Linear(3, 8), nn.Tanh(),
        ...                                               nn.Linear(8, 1)))
        >>> rows = [{"x0": torch.randn(3), "x1": torch.randn(3), "label": i % 2}
        ...         for i in range(16)]
        >>> post = btl.fit_reward_posterior(model, btl.preference_dataloader(rows))
        >>> mean, lower, upper = reward_interval(post, torch.randn(4, 3), level=0.95)
        >>> bool((lower <= mean).all() and (mean <= upper).all())
        True
    """
    level = _check_level("level", level)
    mean, variance = _moments(posterior, x, reference, groups)
    half = _normal_quantile(0.5 + level / 2.0) * variance.sqrt()
    return RewardInterval(mean, mean - half, mean + half)


# ---------------------------------------------------------------------------- best-of-n
@dataclass(frozen=True)
class BestOfN:
    """The pick of :func:`best_of_n`.

    Attributes:
        indices: Index into the candidates of each group's winner ``(G,)``.
        groups: The group keys, in order of first appearance ``(G,)``.
        scores: Penalized reward of every candidate ``(B,)``.
        mean: Reward mean of every candidate ``(B,)`` (relative to its group when
            ``reference="group"``).
        variance: Reward variance of every candidate ``(B,)``, on the same scale.
    """

    indices: torch.Tensor
    groups: list[Hashable]
    scores: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor


def best_of_n(
    posterior: RewardPosterior,
    candidates: Any,
    *,
    k: float = 1.0,
    groups: Any = None,
    penalty: str = "std",
    beta: float | None = None,
    level: float | None = None,
    reference: Any = "group",
) -> BestOfN:
    """Pick the best candidate of each prompt by penalized reward.

    Args:
        posterior: A fitted :class:`~bt_laplace.RewardPosterior`.
        candidates: Candidate items ``(B, *item)`` of one or many prompts: a tensor, a token
            dict, or texts given a tokenizer (:meth:`~bt_laplace.RewardPosterior.set_tokenizer`).
        k, penalty, beta, level: As in :func:`penalize` (default ``mean - k std``).
        groups: Prompt of each candidate: ``None`` (one prompt), integer ids ``(B,)``, or a
            list of ``B`` hashable ids (e.g. the prompt strings).
        reference: ``"group"`` (default): each candidate's reward relative to the mean of the
            candidates of its own prompt (drops the per-prompt offset pairs cannot identify);
            ``None``: absolute rewards; items ``(M, *item)``: relative to those, for every
            group.

    Returns:
        :class:`BestOfN`: the winners' indices ``(G,)`` (ties go to the first candidate), the
        group keys and every candidate's score, mean and variance ``(B,)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import bt_laplace as btl
        >>> _ = torch.manual_seed(0)
        >>> model = btl.PairwiseRewardModel(nn.Sequential(nn.Linear(3, 8), nn.Tanh(),
        ...                                               nn.Linear(8, 1)))
        >>> rows = [{"x0": torch.randn(3), "x1": torch.randn(3), "label": i % 2}
        ...         for i in range(16)]
        >>> post = btl.fit_reward_posterior(model, btl.preference_dataloader(rows))
        >>> pick = best_of_n(post, torch.randn(10, 3), k=2.0, groups=["a"] * 4 + ["b"] * 6)
        >>> pick.groups, pick.indices.shape
        (['a', 'b'], torch.Size([2]))
        >>> bool(pick.indices[0] < 4 <= pick.indices[1])
        True
    """
    if isinstance(candidates, torch.Tensor) and (candidates.ndim < 1 or candidates.shape[0] == 0):
        raise ValueError(
            f"`candidates` must hold at least one item (B, *item), got shape "
            f"{tuple(candidates.shape)}."
        )
    n = n_rows(candidates) if not isinstance(candidates, (list, tuple)) else len(candidates)
    if n == 0:
        raise ValueError("`candidates` is empty; pass at least one candidate.")
    group_index_, keys = group_index(groups, n)
    by_group = isinstance(reference, str) and reference == "group"
    m, v = _moments(posterior, candidates, reference, groups if by_group else None)
    mean, variance = m.detach().cpu().double(), v.detach().cpu().double()
    scores = penalize(mean, variance, penalty=penalty, k=k, beta=beta, level=level)
    best = torch.full((len(keys),), -math.inf, dtype=scores.dtype)
    best = best.scatter_reduce(0, group_index_, scores, "amax")
    position = torch.arange(scores.shape[0])
    ties = torch.where(scores == best[group_index_], position, scores.shape[0])
    indices = torch.full((len(keys),), scores.shape[0], dtype=torch.long)
    indices = indices.scatter_reduce(0, group_index_, ties, "amin")
    return BestOfN(indices=indices, groups=keys, scores=scores, mean=mean, variance=variance)


# ---------------------------------------------------------------------------- pair selection
class PreferenceUncertainty(NamedTuple):
    """How uncertain the label of each pair is, each ``(B,)``; unpacks as a tuple.

    Attributes:
        probability: ``E[sigmoid(f)]``, ``P(item 1 preferred)`` by quadrature.
        bald: Mutual information between the label and the parameters (nats).
        variance: ``Var[sigmoid(f)]``, the variance of the preference probability.
    """

    probability: torch.Tensor
    bald: torch.Tensor
    variance: torch.Tensor


#: Gauss-Hermite nodes of :func:`preference_uncertainty_from_moments`
DEFAULT_NODES = 128


def _binary_entropy_of_logit(f: torch.Tensor) -> torch.Tensor:
    """``H(sigmoid(f))`` without forming ``log(p)`` of a rounded ``p``."""
    p = torch.sigmoid(f)
    softplus = torch.nn.functional.softplus
    return p * softplus(-f) + (1 - p) * softplus(f)


def preference_uncertainty_from_moments(
    mean_diff: torch.Tensor, var_diff: torch.Tensor, *, n_nodes: int = DEFAULT_NODES
) -> PreferenceUncertainty:
    """Label uncertainty of pairs whose reward difference is ``f ~ N(mean_diff, var_diff)``.

    ``E g(f) = sum_i w_i g(mean_diff + sqrt(2 var_diff) t_i) / sqrt(pi)`` over the
    ``n_nodes`` Gauss-Hermite nodes ``t_i`` and weights ``w_i``, in float64. BALD is
    ``H[E sigmoid(f)] - E H[sigmoid(f)]``. With the default 128 nodes the relative error of
    BALD is below 1e-8 for ``sqrt(var_diff) <= 3``, 1e-5 at 5, 2e-3 at 10, 4e-2 at 30 (the
    quadrature's nodes get sparse where the entropy lives, ``|f| < 5``, when the Gaussian is
    much wider than that).

    Args:
        mean_diff: Mean of ``r_1 - r_0`` ``(B,)``.
        var_diff: Variance of ``r_1 - r_0`` ``(B,)``.
        n_nodes: Number of quadrature nodes.

    Returns:
        :class:`PreferenceUncertainty` of ``(B,)`` float64 tensors.

    Example:
        >>> import torch
        >>> u = preference_uncertainty_from_moments(torch.zeros(2), torch.tensor([0.0, 4.0]))
        >>> [round(float(b), 4) for b in u.bald]
        [0.0, 0.2311]
    """
    mean_diff, var_diff = check_tensor("mean_diff", mean_diff), check_tensor("var_diff", var_diff)
    if mean_diff.shape != var_diff.shape or mean_diff.ndim != 1:
        raise ValueError(
            f"`mean_diff` and `var_diff` must both have shape (B,), got "
            f"{tuple(mean_diff.shape)} and {tuple(var_diff.shape)}."
        )
    n_nodes = check_positive_int("n_nodes", n_nodes)
    t, w = np.polynomial.hermite.hermgauss(n_nodes)
    dev = mean_diff.device
    nodes = torch.as_tensor(t, dtype=torch.float64, device=dev)
    weights = torch.as_tensor(w / math.sqrt(math.pi), dtype=torch.float64, device=dev)
    std = var_diff.double().clamp_min(0.0).sqrt()
    f = mean_diff.double()[:, None] + math.sqrt(2.0) * std[:, None] * nodes  # (B, n_nodes)
    p = torch.sigmoid(f)
    prob = (p * weights).sum(1).clamp(0.0, 1.0)
    second = (p.square() * weights).sum(1)
    expected_entropy = (_binary_entropy_of_logit(f) * weights).sum(1)
    q = prob.clamp(1e-300, 1.0)
    entropy = -(q * q.log() + (1 - q).clamp_min(1e-300) * (1 - q).clamp_min(1e-300).log())
    bald = (entropy - expected_entropy).clamp_min(0.0)
    return PreferenceUncertainty(prob, bald, (second - prob.square()).clamp_min(0.0))


def preference_uncertainty(
    posterior: RewardPosterior, x_pairs: torch.Tensor, *, n_nodes: int = DEFAULT_NODES
) -> PreferenceUncertainty:
    """BALD and the variance of the preference probability for each pair.

    The pair's joint 2x2 Gaussian (``post.pair_moments``) gives the difference
    ``f = r_1 - r_0 ~ N(mu_1 - mu_0, S_00 + S_11 - 2 S_01)``; then as
    :func:`preference_uncertainty_from_moments`.

    Args:
        posterior: A fitted :class:`~bt_laplace.RewardPosterior`.
        x_pairs: Pairs ``(B, 2, *item)``.
        n_nodes: Gauss-Hermite nodes.

    Returns:
        :class:`PreferenceUncertainty` of ``(B,)`` float64 tensors.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import bt_laplace as btl
        >>> _ = torch.manual_seed(0)
        >>> model = btl.PairwiseRewardModel(nn.Sequential(nn.Linear(3, 8), nn.Tanh(),
        ...                                               nn.Linear(8, 1)))
        >>> rows = [{"x0": torch.randn(3), "x1": torch.randn(3), "label": i % 2}
        ...         for i in range(16)]
        >>> post = btl.fit_reward_posterior(model, btl.preference_dataloader(rows))
        >>> u = preference_uncertainty(post, torch.randn(6, 2, 3))
        >>> u.bald.shape, bool((u.bald >= 0).all())
        (torch.Size([6]), True)
    """
    mean_diff, var_diff = posterior.difference_moments(x_pairs)  # float64 on the fast path
    mean_diff, var_diff = mean_diff.double(), var_diff.double()
    return preference_uncertainty_from_moments(mean_diff, var_diff, n_nodes=n_nodes)


def _item_index(x_pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct items ``(U, *item)`` of the pairs and the index ``(B,)`` of items 0 and 1."""
    b = x_pairs.shape[0]
    flat = x_pairs.reshape(2 * b, -1)
    _, inverse = torch.unique(flat, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), 2 * b, dtype=torch.long, device=flat.device)
    first = first.scatter_reduce(0, inverse, torch.arange(2 * b, device=flat.device), "amin")
    items = x_pairs.reshape(2 * b, *x_pairs.shape[2:])[first]
    inverse = inverse.reshape(b, 2)
    return items, inverse[:, 0], inverse[:, 1]


def _joint_draws(
    posterior: RewardPosterior,
    x_pairs: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Joint reward draws ``(S, U)`` of the distinct items, and their index per pair item."""
    items, i0, i1 = _item_index(x_pairs)
    draws = posterior.sample(items, n_samples, generator=generator).double()
    return draws, i0.to(draws.device), i1.to(draws.device)


def _greedy_diverse(score: torch.Tensor, differences: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy batch: at each step the pair maximizing ``score * residual``, where ``residual``
    is the fraction of the variance of its reward difference not explained (linearly) by the
    differences already chosen, from joint draws ``(S, B)`` (a score-weighted pivoted
    Cholesky of their sample covariance)."""
    centred = differences - differences.mean(0)
    total = centred.square().sum(0)
    residual = centred.clone()
    chosen: list[int] = []
    taken = torch.zeros(score.shape[0], dtype=torch.bool, device=score.device)
    for _ in range(n):
        left = residual.square().sum(0)
        fraction = torch.where(total > 0, left / total.clamp_min(1e-300), 0.0).clamp(0.0, 1.0)
        gain = torch.where(taken, -math.inf, score * fraction)
        if float(gain.max()) <= 0:  # everything left is explained: fall back to the score
            gain = torch.where(taken, -math.inf, score)
        best = int(gain.argmax())
        chosen.append(best)
        taken[best] = True
        column = residual[:, best]
        norm = column.square().sum()
        if float(norm) > 1e-12 * float(total[best].clamp_min(1e-300)):
            residual = residual - column[:, None] * (column @ residual / norm)[None, :]
    return torch.tensor(chosen, dtype=torch.long)


def _thompson(
    draws: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor, n: int, double: bool
) -> torch.Tensor:
    """One (or two) joint draws per pick; each pick the best pair not yet taken, skipping
    pairs of one item with itself and repeats of a taken pair while others are left."""
    b = i0.shape[0]
    same = i0 == i1
    key = torch.minimum(i0, i1) * (int(torch.maximum(i0, i1).max()) + 1) + torch.maximum(i0, i1)
    taken = torch.zeros(b, dtype=torch.bool, device=draws.device)
    repeat = torch.zeros(b, dtype=torch.bool, device=draws.device)
    chosen: list[int] = []
    for t in range(n):
        if double:
            d1, d2 = draws[2 * t], draws[2 * t + 1]
            score = torch.maximum(d1[i0] + d2[i1], d1[i1] + d2[i0])
        else:
            score = draws[t][i0] + draws[t][i1]
        for excluded in (taken | repeat | same, taken | repeat, taken):
            if not bool(excluded.all()):
                break
        best = int(torch.where(excluded, -math.inf, score).argmax())
        chosen.append(best)
        taken[best] = True
        repeat |= key == key[best]
    return torch.tensor(chosen, dtype=torch.long)


def rank_pairs_for_labeling(
    posterior: RewardPosterior,
    x_pairs: torch.Tensor,
    *,
    method: str = "bald",
    n: int | None = None,
    generator: torch.Generator | None = None,
    diverse: bool = True,
    n_samples: int | None = None,
    n_nodes: int = DEFAULT_NODES,
) -> torch.Tensor:
    """Indices of the candidate pairs worth labelling, most informative first.

    ``"bald"`` and ``"variance"`` score each pair from its joint 2x2 Gaussian
    (:func:`preference_uncertainty`). With ``n`` and ``diverse=True`` they pick a batch
    greedily: each step takes the pair maximizing ``score * residual``, where ``residual`` is
    the fraction of the variance of its reward difference ``f_b = r_1 - r_0`` left after
    regressing it on the differences already chosen (``Var(f_b | f_C) / Var(f_b)`` for a
    Gaussian; 0 for a duplicated or swapped pair, 1 for an independent one). The covariance
    between different pairs' differences is estimated from ``n_samples`` joint draws
    (``post.sample``; the pair moments hold only the covariance within a pair), with a
    sampling error of the correlation of about ``(1 - rho^2) / sqrt(S)``; duplicated pairs
    have identical draws, so they are caught exactly. Without ``n`` the whole pool is ranked
    by score. ``"thompson"`` and ``"double_thompson"`` draw one (two) joint reward functions
    per pick and take the best pair not yet taken (see the module docstring), which spreads a
    batch by itself; repeats of a taken pair come last.

    Args:
        posterior: A fitted :class:`~bt_laplace.RewardPosterior`.
        x_pairs: Candidate pairs ``(B, 2, *item)``; their distinct items must fit in one
            ``post.sample`` pass (at most ``posterior.batch_size``).
        method: One of :data:`PAIR_METHODS`.
        n: How many pairs to return (``1 <= n <= B``); ``None``: all ``B``.
        generator: Random generator of the joint draws (on the posterior's device).
        diverse: Batch selection for ``"bald"`` and ``"variance"`` when ``n`` is given.
        n_samples: Joint draws for ``diverse`` (default ``max(256, 4 n)``).
        n_nodes: Gauss-Hermite nodes for ``"bald"`` and ``"variance"``.

    Returns:
        Indices into ``x_pairs`` ``(n,)`` (LongTensor on the CPU), most informative first.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import bt_laplace as btl
        >>> _ = torch.manual_seed(0)
        >>> model = btl.PairwiseRewardModel(nn.Sequential(nn.Linear(3, 8), nn.Tanh(),
        ...                                               nn.Linear(8, 1)))
        >>> rows = [{"x0": torch.randn(3), "x1": torch.randn(3), "label": i % 2}
        ...         for i in range(16)]
        >>> post = btl.fit_reward_posterior(model, btl.preference_dataloader(rows))
        >>> pool = torch.randn(20, 2, 3)
        >>> rank_pairs_for_labeling(post, pool).shape
        torch.Size([20])
        >>> g = torch.Generator().manual_seed(0)
        >>> rank_pairs_for_labeling(post, pool, method="double_thompson", n=4,
        ...                         generator=g).shape
        torch.Size([4])
    """
    method = check_choice("method", method, PAIR_METHODS)
    x_pairs = check_tensor("x_pairs", x_pairs)
    if x_pairs.ndim < 2 or x_pairs.shape[1] != 2 or x_pairs.shape[0] == 0:
        raise ValueError(
            f"`x_pairs` must be candidate pairs of shape (B, 2, *item) with B >= 1, got "
            f"{tuple(x_pairs.shape)}; stack the two items of each pair on dim 1."
        )
    b = x_pairs.shape[0]
    if n is not None:
        n = check_positive_int("n", n)
        if n > b:
            raise ValueError(
                f"`n` must be at most the number of candidate pairs ({b}), got {n}; pass "
                "n=None to rank them all."
            )
    if n_samples is not None:
        n_samples = check_positive_int("n_samples", n_samples)
        if method in ("thompson", "double_thompson"):
            raise ValueError(
                f"`n_samples` sets the draws of diverse batches for 'bald' and 'variance'; "
                f"method={method!r} draws one reward function (two for double) per pick. "
                "Drop `n_samples`."
            )
    count = b if n is None else n
    if method in ("thompson", "double_thompson"):
        double = method == "double_thompson"
        draws, i0, i1 = _joint_draws(posterior, x_pairs, count * (2 if double else 1), generator)
        return _thompson(draws, i0, i1, count, double).cpu()
    u = preference_uncertainty(posterior, x_pairs, n_nodes=n_nodes)
    score = u.bald if method == "bald" else u.variance
    if n is None or not diverse or n == 1:
        return torch.sort(score, descending=True, stable=True).indices[:count].cpu()
    draws, i0, i1 = _joint_draws(posterior, x_pairs, n_samples or max(256, 4 * n), generator)
    return _greedy_diverse(score.to(draws.device), draws[:, i1] - draws[:, i0], n).cpu()
