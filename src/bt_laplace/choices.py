"""Every string option of bt_laplace, defined once as a str-Enum (as laplace-torch and curvlinops
name theirs).

A member is a ``str``: ``HessianStructure.KRON == "kron"``, so plain strings work wherever an
option is taken, and what an option resolved to reads as the string it stands for. Each class
checks a value with :meth:`Choice.check`, which names the argument, the allowed values and what
arrived.

Example:
    >>> from bt_laplace.choices import LinkApprox
    >>> LinkApprox.check("link_approx", "probit")
    <LinkApprox.PROBIT: 'probit'>
    >>> LinkApprox.values()
    ('quadrature', 'probit', 'mc')
    >>> LinkApprox.check("link_approx", "bogus")
    Traceback (most recent call last):
    ...
    ValueError: `link_approx` must be one of ('quadrature', 'probit', 'mc'), got 'bogus'.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

__all__ = [
    "Choice",
    "SubsetOfWeights",
    "PriorMethod",
    "Evidence",
    "LinkApprox",
    "Truncation",
    "LongQueries",
    "AppendEos",
    "KeptEnd",
    "Penalty",
    "PairMethod",
    "Reference",
]

_C = TypeVar("_C", bound="Choice")


class Choice(str, Enum):
    """A string option: a ``str`` that is one of the class's values."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The allowed strings, in order."""
        return tuple(str(m.value) for m in cls)

    @classmethod
    def check(cls: type[_C], name: str, value: Any) -> _C:
        """``value`` as a member, or ``ValueError`` naming ``name``, the allowed values and
        what arrived."""
        raw = getattr(value, "value", value)
        if isinstance(raw, str):
            for member in cls:
                if member.value == raw:
                    return member
        raise ValueError(f"`{name}` must be one of {cls.values()}, got {raw!r}.")


class SubsetOfWeights(Choice):
    """``subset_of_weights``: which parameters the posterior covers (laplace-torch's names)."""

    AUTO = "auto"
    ALL = "all"
    LAST_LAYER = "last_layer"


class PriorMethod(Choice):
    """``prior_precision`` given as a method (a positive number fixes it instead)."""

    AUTO = "auto"
    MARGLIK = "marglik"
    GRIDSEARCH = "gridsearch"
    #: a number was given (never passed by a user)
    FIXED = "fixed"


class Evidence(Choice):
    """``evidence``: which Laplace evidence ``prior_precision="marglik"`` maximizes.

    - ``AUTO``: ``EXACT`` when its estimated cost is at most 1e11 floating-point operations
      (about 5 s on 2 cores: up to about 4,600 pairs for an all-weights MLP, 600,000 for a
      385-parameter last layer) and no optimizer settings or vector prior are passed, else
      ``POSTERIOR``.
    - ``POSTERIOR`` (laplace-torch's): the fitted structure's own, from the eigenvalues of its
      curvature, a few milliseconds; it puts the prior too high with ``kron`` (24-40% above
      the exact optimum, docs/results/prior.md), so the posterior is too narrow.
    - ``EXACT``: the exact Bradley-Terry GGN's over all posterior parameters, whatever
      ``hessian_structure``; scalar prior only, solved to 1e-12. Costs one more pass over the
      training pairs and a dense ``min(N, P)``-square eigendecomposition (``N`` pairs, ``P``
      parameters; 2 s at 3,000 pairs, 51 s at 10,000 on 2 cores), refused above 4 GiB; no pass
      where the fitted curvature already is the exact GGN (the last-layer ``kron`` of a
      one-output head, ``full`` with ``P <= N``: through a transformer that halves the fit).
      See :mod:`bt_laplace.prior.evidence`.
    """

    AUTO = "auto"
    POSTERIOR = "posterior"
    EXACT = "exact"


class LinkApprox(Choice):
    """``link_approx``: how a pair probability integrates the logistic over the Gaussian
    reward difference."""

    QUADRATURE = "quadrature"
    PROBIT = "probit"
    MC = "mc"


class Truncation(Choice):
    """``truncation``: what a text longer than ``max_length`` gets."""

    ERROR = "error"
    LEFT = "left"
    RIGHT = "right"


class LongQueries(Choice):
    """``long_queries``: what a query text (a posterior query on texts, the reward function,
    the server) longer than ``max_length`` gets while ``truncation="error"`` (training pairs
    that long are refused whatever this says).

    - ``SCORE`` (default): scored whole, as far as the model reads (its positions); a text
      longer than that is cut on the side the model keeps (:class:`KeptEnd`), with a
      :class:`~bt_laplace.BTLaplaceWarning`, and counted.
    - ``REFUSE``: refused like a training pair (``ValueError``; the server answers 422).
    """

    SCORE = "score"
    REFUSE = "refuse"


class AppendEos(Choice):
    """``append_eos`` given as a word (``True``, the default, appends the tokenizer's eos
    where it has one; ``False`` appends none)."""

    #: append the eos, refusing a tokenizer without one (as TRL's RewardTrainer fails on it)
    REQUIRED = "required"


class KeptEnd(Choice):
    """Which end of a text longer than the model's positions is kept: the one it reads the
    reward from."""

    #: a last-token model (GPT-2, Llama and other decoders, which pool the last token)
    END = "end"
    #: a first-token model (BERT, RoBERTa, DeBERTa and other encoders, which pool [CLS])
    START = "start"


class Penalty(Choice):
    """``penalty``: how :func:`bt_laplace.rlhf.penalize` turns a reward's mean and variance
    into one number."""

    STD = "std"
    VARIANCE = "variance"
    QUANTILE = "quantile"
    KL = "kl"
    KL_OPTIMISTIC = "kl_optimistic"


class PairMethod(Choice):
    """``method`` of :func:`bt_laplace.rank_pairs_for_labeling`."""

    BALD = "bald"
    VARIANCE = "variance"
    THOMPSON = "thompson"
    DOUBLE_THOMPSON = "double_thompson"


class Reference(Choice):
    """``reference`` given as a word (reference items are passed as items instead)."""

    GROUP = "group"
