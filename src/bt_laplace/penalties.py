"""Penalized rewards: one number from each Gaussian reward ``r ~ N(mean, variance)``.

Shape legend: ``B`` items.

One value, :class:`RewardPenalty`, holds how a reward's mean and variance become one number,
checked once when it is made; :func:`penalize` applies it. The posterior's
:meth:`~bt_laplace.RewardPosterior.penalized_reward`, :func:`bt_laplace.rlhf.penalized_reward`,
:func:`~bt_laplace.rlhf.best_of_n`, the TRL reward function and the server all take it, or the
same four settings ``penalty``, ``k``, ``beta``, ``level``:

``"std"`` ``mean - k std``; ``"variance"`` ``mean - k var``; ``"quantile"`` the lower ``level``
quantile ``mean + Phi^-1(level) std``; ``"kl"`` the pessimistic effective reward of the
KL-regularized RLHF objective with coefficient ``beta``, and ``"kl_optimistic"`` its twin.
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

This module sits low (it imports no posterior), so that the posterior and the RLHF helpers
share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bt_laplace._checks import check_choice, check_finite, check_probability, check_tensor
from bt_laplace.choices import Penalty

__all__ = ["PENALTIES", "DEFAULT_QUANTILE_LEVEL", "RewardPenalty", "penalize", "normal_quantile"]

#: penalties of :func:`penalize`
PENALTIES = Penalty.values()
#: lower tail probability of ``penalty="quantile"`` when ``level`` is not given
DEFAULT_QUANTILE_LEVEL = 0.05
#: the penalties each setting other than ``k`` is used by
_USES = {"beta": ("kl", "kl_optimistic"), "level": ("quantile",)}


def normal_quantile(level: float) -> float:
    """``Phi^-1(level)``, the standard normal quantile, in float64.

    Example:
        >>> round(normal_quantile(0.975), 4)
        1.96
    """
    return float(torch.special.ndtri(torch.tensor(level, dtype=torch.float64)))


@dataclass(frozen=True)
class RewardPenalty:
    """How a Gaussian reward ``N(mean, variance)`` becomes one number, checked when made.

    ``"std"``: ``mean - k sqrt(variance)``; ``"variance"``: ``mean - k variance``;
    ``"quantile"``: ``mean + Phi^-1(level) sqrt(variance)``, the lower ``level`` quantile
    (default 0.05); ``"kl"``: ``mean - variance / (2 beta)`` ``= -beta log E[exp(-r / beta)]``;
    ``"kl_optimistic"``: ``mean + variance / (2 beta)`` (derivation in the module docstring).
    ``k < 0`` turns ``"std"`` and ``"variance"`` into bonuses.

    Attributes:
        penalty: One of :data:`PENALTIES` (stored as the plain string).
        k: Multiplier of ``"std"`` and ``"variance"``; the other penalties take ``k=1.0``.
        beta: KL coefficient, positive; needed by ``"kl"`` and ``"kl_optimistic"`` only.
        level: Lower tail probability in ``(0, 1)`` of ``"quantile"`` only (``None``:
            :data:`DEFAULT_QUANTILE_LEVEL`).

    Raises:
        ValueError: For an unknown penalty, a non-finite ``k``, a setting the penalty does not
            use, or a missing or out-of-range ``beta`` or ``level``.

    Example:
        >>> import torch
        >>> rule = RewardPenalty("kl", beta=0.5)
        >>> rule.apply(torch.tensor([1.0, 2.0]), torch.tensor([0.25, 4.0]))
        tensor([ 0.7500, -2.0000])
        >>> RewardPenalty("kl")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: penalty='kl' needs `beta`, the KL coefficient of the RLHF objective ...
    """

    penalty: str = "std"
    k: float = 1.0
    beta: float | None = None
    level: float | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a bad combination; store the checked values (plain
        ``str`` and ``float``). Called when the value is made."""
        penalty = check_choice("penalty", self.penalty, Penalty)
        penalty = str(getattr(penalty, "value", penalty))
        k = check_finite("k", self.k)
        for name in ("beta", "level"):
            if getattr(self, name) is not None and penalty not in _USES[name]:
                raise ValueError(
                    f"`{name}` is used by penalty {' or '.join(map(repr, _USES[name]))}, not "
                    f"by penalty={penalty!r}; drop `{name}` or choose one of those penalties."
                )
        if k != 1.0 and penalty not in ("std", "variance"):
            raise ValueError(
                f"`k` is used by penalty 'std' or 'variance', not by penalty={penalty!r} (got "
                f"k={k}); drop `k`, or set `level` (quantile) or `beta` (kl) instead."
            )
        level, beta = self.level, self.beta
        if level is not None:
            level = check_probability("level", level)
        if penalty in _USES["beta"]:
            if beta is None:
                raise ValueError(
                    f"penalty={penalty!r} needs `beta`, the KL coefficient of the RLHF objective "
                    "(e.g. beta=0.05); pass it."
                )
            beta = check_finite("beta", beta)
            if beta <= 0:
                raise ValueError(f"`beta` must be positive (a KL coefficient), got {beta}.")
        for name, value in (("penalty", penalty), ("k", k), ("beta", beta), ("level", level)):
            object.__setattr__(self, name, value)

    @classmethod
    def from_arguments(
        cls,
        penalty: str | RewardPenalty = "std",
        *,
        k: float = 1.0,
        beta: float | None = None,
        level: float | None = None,
    ) -> RewardPenalty:
        """The penalty of a function taking ``penalty, k, beta, level``: ``penalty`` itself
        when it is a :class:`RewardPenalty` (then the other three must be left at their
        defaults), else ``RewardPenalty(penalty, k, beta, level)``.

        Example:
            >>> RewardPenalty.from_arguments("quantile", level=0.1)
            RewardPenalty(penalty='quantile', k=1.0, beta=None, level=0.1)
        """
        if isinstance(penalty, RewardPenalty):
            if k != 1.0 or beta is not None or level is not None:
                raise ValueError(
                    f"`penalty` is a RewardPenalty ({penalty}), so `k`, `beta` and `level` "
                    f"must be left out, got k={k}, beta={beta}, level={level}; set them in the "
                    "RewardPenalty."
                )
            return penalty
        return cls(penalty, k, beta, level)

    def apply(self, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """The penalized rewards ``(B,)`` of rewards ``N(mean (B,), variance (B,))``.

        Raises:
            TypeError: When ``mean`` or ``variance`` is not a tensor.
            ValueError: When their shapes differ or a variance is negative.
        """
        mean, variance = check_tensor("mean", mean), check_tensor("variance", variance)
        if mean.shape != variance.shape:
            raise ValueError(
                f"`mean` and `variance` must have the same shape (B,), got {tuple(mean.shape)} "
                f"and {tuple(variance.shape)}; pass the two fields of one RewardPrediction."
            )
        if bool((variance < 0).any()):
            raise ValueError(
                f"`variance` must be non-negative, got a minimum of {float(variance.min()):.3g}; "
                "pass variances, not log variances or standard deviations."
            )
        if self.penalty == "std":
            return mean - self.k * variance.sqrt()
        if self.penalty == "variance":
            return mean - self.k * variance
        if self.penalty == "quantile":
            level = DEFAULT_QUANTILE_LEVEL if self.level is None else self.level
            return mean + normal_quantile(level) * variance.sqrt()
        assert self.beta is not None  # checked when made
        sign = -1.0 if self.penalty == "kl" else 1.0
        return mean + sign * variance / (2.0 * self.beta)


def penalize(
    mean: torch.Tensor,
    variance: torch.Tensor,
    *,
    penalty: str | RewardPenalty = "std",
    k: float = 1.0,
    beta: float | None = None,
    level: float | None = None,
) -> torch.Tensor:
    """One number per Gaussian reward ``N(mean, variance)``: the penalized reward.

    ``RewardPenalty.from_arguments(penalty, k=k, beta=beta, level=level).apply(mean,
    variance)``; the formulas are those of :class:`RewardPenalty`.

    Args:
        mean: Reward means ``(B,)``.
        variance: Reward variances ``(B,)``, non-negative.
        penalty: One of :data:`PENALTIES`, or a :class:`RewardPenalty` (then leave out the
            other three).
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
    rule = RewardPenalty.from_arguments(penalty, k=k, beta=beta, level=level)
    return rule.apply(mean, variance)
