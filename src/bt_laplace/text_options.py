"""How texts become token ids besides the tokenizer: :class:`TextOptions`, one value that
:class:`~bt_laplace.TextPairCollator`, :func:`~bt_laplace.text_preference_dataloader`,
:meth:`~bt_laplace.RewardPosterior.set_tokenizer`, the reward function and the server take
(re-exported by :mod:`bt_laplace.text`).

Two moments read them differently. Training pairs (a fit's dataloader) longer than
``max_length`` are refused or cut by ``truncation``, as TRL's ``RewardTrainer`` drops them.
Queries (posterior queries on texts, the reward function, the server) longer than
``max_length`` are scored whole by default (``long_queries="score"``), as far as the model
reads (:class:`~bt_laplace.reading.TokenWindow`), so an RLHF loop never loses a reward.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypedDict

from typing_extensions import Unpack

from bt_laplace._checks import check_positive_int
from bt_laplace.choices import AppendEos, LongQueries, Truncation

__all__ = ["TextOptions", "TextKeywords"]


class TextKeywords(TypedDict, total=False):
    """The fields of :class:`TextOptions` as keywords, which the functions that take
    ``options=`` take too (``max_length=512`` for ``options=TextOptions(max_length=512)``)."""

    max_length: int | None
    truncation: str
    append_eos: bool | str
    long_queries: str


@dataclasses.dataclass(frozen=True, repr=False)
class TextOptions:
    """How texts become token ids besides the tokenizer.

    Args:
        max_length: Longest item in tokens, or None for no limit.
        truncation: What a longer item gets: ``"error"`` (default) refuses a training pair
            (TRL's ``RewardTrainer`` drops such pairs; ``dataset.filter(collator.fits)`` does
            the same), ``"left"`` keeps its last ``max_length`` tokens (the end of the answer
            and the eos, which a decoder reward model pools), ``"right"`` its first (the
            ``[CLS]`` an encoder pools). Token ids are cut after the tokenizer and chat
            template, special tokens included. ``"left"`` and ``"right"`` cut queries too.
        append_eos: ``True`` (default) appends the tokenizer's eos token to text answers that
            do not end with it, as TRL does, where the tokenizer has one: a model trained by
            TRL always has one (``RewardTrainer`` fails without), and a BERT/DeBERTa-style
            tokenizer without one, trained elsewhere, gets none. ``"required"`` refuses a
            tokenizer without an eos; ``False`` appends none.
        long_queries: What a query text longer than ``max_length`` gets under
            ``truncation="error"``: ``"score"`` (default) reads it whole, up to the model's
            positions (beyond them it is cut on the side the model reads the reward from,
            with a :class:`~bt_laplace.BTLaplaceWarning`, and counted); ``"refuse"`` refuses
            it like a training pair (the server answers 422).

    Example:
        >>> TextOptions(max_length=512, truncation="left")
        TextOptions(max_length=512, truncation='left', append_eos=True)
        >>> TextOptions(max_length=512, truncation="left").changed()
        ['max_length', 'truncation']
        >>> TextOptions(max_length=512, long_queries="refuse", append_eos="required")
        TextOptions(max_length=512, truncation='error', append_eos='required', \
long_queries='refuse')
    """

    max_length: int | None = None
    truncation: Truncation = Truncation.ERROR
    append_eos: bool | AppendEos = True
    long_queries: LongQueries = LongQueries.SCORE

    def __post_init__(self) -> None:
        if self.max_length is not None:
            check_positive_int("max_length", self.max_length)
        object.__setattr__(self, "truncation", Truncation.check("truncation", self.truncation))
        object.__setattr__(
            self, "long_queries", LongQueries.check("long_queries", self.long_queries)
        )
        if isinstance(self.append_eos, str):
            if self.append_eos not in AppendEos.values():
                raise ValueError(
                    f"`append_eos` must be True, False or 'required', got {self.append_eos!r}."
                )
            object.__setattr__(self, "append_eos", AppendEos(self.append_eos))
        elif not isinstance(self.append_eos, bool):
            raise TypeError(
                f"`append_eos` must be a bool or 'required', got {type(self.append_eos).__name__}."
            )

    def __repr__(self) -> str:
        eos = self.append_eos if isinstance(self.append_eos, bool) else str(self.append_eos)
        extra = (
            ""
            if self.long_queries == LongQueries.SCORE
            else f", long_queries={str(self.long_queries)!r}"
        )
        return (
            f"TextOptions(max_length={self.max_length}, truncation={str(self.truncation)!r}, "
            f"append_eos={eos!r}{extra})"
        )

    @classmethod
    def of(
        cls, options: TextOptions | None = None, **keywords: Unpack[TextKeywords]
    ) -> TextOptions:
        """``options``, or the options the keywords give (the older spelling), not both."""
        if options is None:
            return cls(**keywords)  # type: ignore[arg-type]  # __post_init__ reads the str
        if not isinstance(options, TextOptions):
            raise TypeError(
                f"`options` must be a bt_laplace.TextOptions, got {type(options).__name__}."
            )
        if keywords:
            raise ValueError(
                f"pass the text options either as `options` or as keywords, not both; got "
                f"options={options} and {sorted(keywords)}."
            )
        return options

    def as_config(self) -> dict[str, Any]:
        """The options as JSON-able keywords (what a saved posterior records)."""
        return {
            "max_length": self.max_length,
            "truncation": str(self.truncation),
            "append_eos": self.append_eos
            if isinstance(self.append_eos, bool)
            else str(self.append_eos),
            "long_queries": str(self.long_queries),
        }

    def changed(self) -> list[str]:
        """The names of the options that differ from their defaults."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]
