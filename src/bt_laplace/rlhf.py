"""Act on reward uncertainty: penalized rewards, intervals, best-of-n, pairs worth labelling.

Shape legend: ``B`` pairs or items, ``2`` the two items of a pair (index 0 first, index 1
second), ``*item`` one item, ``S`` samples, ``G`` groups (prompts).

Everything here is built on the public queries of
:class:`~bt_laplace.posterior.RewardPosterior`: ``post(x)`` and ``post.relative_reward`` for
the Gaussian ``r ~ N(mean, variance)`` of each item's reward, ``post.difference_moments`` for
the reward difference of a pair, and ``post.sample`` for joint draws.

**Penalties** (:func:`penalized_reward`) turn that Gaussian into one number, by one
:class:`~bt_laplace.penalties.RewardPenalty` (``"std"``, ``"variance"``, ``"quantile"``,
``"kl"``, ``"kl_optimistic"``; formulas and the KL derivation in :mod:`bt_laplace.penalties`,
whose :class:`RewardPenalty`, :func:`penalize` and :data:`PENALTIES` are re-exported here).

**Best-of-n** (:func:`best_of_n`) scores many prompts' candidates in one call and picks the
best per prompt, relative to the candidates of the same prompt by default (pairs identify
rewards only up to a constant per prompt, see docs/guides/gotchas.md).

**Pairs worth labelling** (:func:`rank_pairs_for_labeling`, :func:`preference_uncertainty`):
BALD, the variance of the preference probability and (double) Thompson sampling live in
:mod:`bt_laplace.labeling` and are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from bt_laplace._checks import check_probability, group_index, n_rows
from bt_laplace.labeling import (
    DEFAULT_NODES,
    PAIR_METHODS,
    PreferenceUncertainty,
    preference_uncertainty,
    preference_uncertainty_from_moments,
    rank_pairs_for_labeling,
)
from bt_laplace.penalties import (
    DEFAULT_QUANTILE_LEVEL,
    PENALTIES,
    RewardPenalty,
    normal_quantile,
    penalize,
)
from bt_laplace.posterior import RewardPosterior, RewardPrediction

__all__ = [
    "PENALTIES",
    "PAIR_METHODS",
    "DEFAULT_QUANTILE_LEVEL",
    "DEFAULT_NODES",
    "RewardPenalty",
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


# ---------------------------------------------------------------------------- penalties
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
    penalty: str | RewardPenalty = "std",
    k: float = 1.0,
    beta: float | None = None,
    level: float | None = None,
    reference: Any = None,
    groups: Any = None,
) -> torch.Tensor:
    """:func:`penalize` applied to the reward moments of ``x`` under ``posterior``: the same
    as ``posterior.penalized_reward(x, k, penalty=penalty, ...)``, the one implementation.

    Args:
        posterior: A fitted :class:`~bt_laplace.RewardPosterior`.
        x: Items ``(B, *item)``.
        penalty, k, beta, level: As in :func:`penalize` (or one
            :class:`~bt_laplace.penalties.RewardPenalty` as ``penalty``).
        reference: ``None`` (default): the absolute reward ``post(x)``; ``"group"`` or items
            ``(M, *item)``: the moments of ``post.relative_reward(x, reference)``.
        groups: With ``reference="group"``: the group (prompt) of each item, as in
            :meth:`~bt_laplace.RewardPosterior.relative_reward`.

    Returns:
        Penalized rewards ``(B,)``.

    Example:
        >>> import torch
        >>> from bt_laplace.testing import tiny_posterior
        >>> post = tiny_posterior()  # a 3-8-1 tanh MLP fitted on 16 random pairs
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(5, 3)
        >>> penalized_reward(post, x, penalty="kl", beta=0.1, reference="group").shape
        torch.Size([5])
    """
    return posterior.penalized_reward(
        x, k, penalty=penalty, beta=beta, level=level, reference=reference, groups=groups
    )


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
        >>> from bt_laplace.testing import tiny_posterior
        >>> post = tiny_posterior()  # a 3-8-1 tanh MLP fitted on 16 random pairs
        >>> _ = torch.manual_seed(0)
        >>> mean, lower, upper = reward_interval(post, torch.randn(4, 3), level=0.95)
        >>> bool((lower <= mean).all() and (mean <= upper).all())
        True
    """
    level = check_probability("level", level)
    mean, variance = _moments(posterior, x, reference, groups)
    half = normal_quantile(0.5 + level / 2.0) * variance.sqrt()
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
    penalty: str | RewardPenalty = "std",
    beta: float | None = None,
    level: float | None = None,
    reference: Any = "group",
) -> BestOfN:
    """Pick the best candidate of each prompt by penalized reward.

    Args:
        posterior: A fitted :class:`~bt_laplace.RewardPosterior`.
        candidates: Candidate items ``(B, *item)`` of one or many prompts: a tensor, a token
            dict, or texts given a tokenizer (:meth:`~bt_laplace.RewardPosterior.set_tokenizer`).
        k, penalty, beta, level: As in :func:`penalize` (default ``mean - k std``; or one
            :class:`~bt_laplace.penalties.RewardPenalty` as ``penalty``).
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
        >>> from bt_laplace.testing import tiny_posterior
        >>> post = tiny_posterior()  # a 3-8-1 tanh MLP fitted on 16 random pairs
        >>> _ = torch.manual_seed(0)
        >>> pick = best_of_n(post, torch.randn(10, 3), k=2.0, groups=["a"] * 4 + ["b"] * 6)
        >>> pick.groups, pick.indices.shape
        (['a', 'b'], torch.Size([2]))
        >>> bool(pick.indices[0] < 4 <= pick.indices[1])
        True
    """
    rule = RewardPenalty.from_arguments(penalty, k=k, beta=beta, level=level)
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
    scores = rule.apply(mean, variance)
    best = torch.full((len(keys),), -math.inf, dtype=scores.dtype)
    best = best.scatter_reduce(0, group_index_, scores, "amax")
    position = torch.arange(scores.shape[0])
    ties = torch.where(scores == best[group_index_], position, scores.shape[0])
    indices = torch.full((len(keys),), scores.shape[0], dtype=torch.long)
    indices = indices.scatter_reduce(0, group_index_, ties, "amin")
    return BestOfN(indices=indices, groups=keys, scores=scores, mean=mean, variance=variance)
