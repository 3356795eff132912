"""How a reward model reads a query text: how many tokens it reads and which end of a longer
text it keeps (:class:`TokenWindow`), and which special tokens its tokenizer adds itself
(:class:`AddedTokens`), so that a text decoded with them (as OpenRLHF decodes its queries,
``skip_special_tokens=False``) does not get them twice.

A Hugging Face sequence-classification model reads the reward from one token: a decoder
(GPT-2, Llama, Mistral, Qwen, ...) from the last token, which has seen the whole text; an
encoder (BERT, RoBERTa, DeBERTa, ...) from the first, ``[CLS]``; an encoder-decoder (BART, T5)
from the last eos. A text longer than the model's positions cannot be read whole; it keeps
the end the reward is read from (:class:`~bt_laplace.choices.KeptEnd`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

from bt_laplace._checks import BTLaplaceWarning
from bt_laplace.choices import KeptEnd, LongQueries, Truncation

if TYPE_CHECKING:
    from bt_laplace.model import PairwiseRewardModel
    from bt_laplace.text_options import TextOptions

__all__ = ["TokenWindow", "AddedTokens", "cut_query", "warn_cut"]

#: a tokenizer's ``model_max_length`` at or above this is transformers' "unknown" sentinel
UNKNOWN_LENGTH = 10**12


def _first_token_pooling(net: Any) -> bool:
    """True for a Hugging Face model that reads the reward from its first token: a
    bidirectional encoder (its model type has a masked-LM head in transformers) that is not
    an encoder-decoder."""
    config = getattr(net, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - transformers always has it
        return False
    return getattr(config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES


@dataclasses.dataclass(frozen=True)
class TokenWindow:
    """How many tokens a reward model reads, and which end of a longer text it keeps.

    Args:
        length: Most tokens the model reads (its positions), or None if unknown.
        keep: The end kept of a longer text: ``"end"`` for a last-token model, ``"start"``
            for a first-token (``[CLS]``) model.
        source: How ``length`` was found, for messages.

    Example:
        >>> window = TokenWindow(4, "end")
        >>> window.cut([1, 2, 3, 4, 5, 6]), TokenWindow(4, "start").cut([1, 2, 3, 4, 5, 6])
        ([3, 4, 5, 6], [1, 2, 3, 4])
    """

    length: int | None
    keep: KeptEnd = KeptEnd.END
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", KeptEnd.check("keep", self.keep))

    @classmethod
    def of(cls, model: PairwiseRewardModel | None, tokenizer: Any) -> TokenWindow:
        """The window of ``model`` read through ``tokenizer``: the smaller known of the
        model's ``config.max_position_embeddings`` and the tokenizer's ``model_max_length``;
        the start kept for a first-token model, else the end.

        Args:
            model: A :class:`~bt_laplace.PairwiseRewardModel` (a network that is not a Hugging
                Face model has no known positions), or None.
            tokenizer: The tokenizer, or None.
        """
        known: list[tuple[int, str]] = []
        net = getattr(model, "net", None)
        first = False
        if net is not None and getattr(model, "hugging_face", False):
            base = net.get_base_model() if hasattr(net, "get_base_model") else net
            config = base.config
            text = config.get_text_config() if hasattr(config, "get_text_config") else config
            positions = getattr(text, "max_position_embeddings", None)
            if isinstance(positions, int) and positions > 0:
                known.append((positions, f"the model's max_position_embeddings={positions}"))
            first = _first_token_pooling(base)
        limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < UNKNOWN_LENGTH:
            known.append((limit, f"the tokenizer's model_max_length={limit}"))
        length, source = min(known) if known else (None, "")
        return cls(length, KeptEnd.START if first else KeptEnd.END, source)

    def cut(self, ids: list[int]) -> list[int]:
        """``ids`` cut to :attr:`length` on the side not kept (unchanged if it fits)."""
        if self.length is None or len(ids) <= self.length:
            return ids
        return ids[: self.length] if self.keep == KeptEnd.START else ids[-self.length :]


def cut_query(
    ids: list[int], options: TextOptions, window: TokenWindow, where: str
) -> tuple[list[int], bool]:
    """Token ids of one query item: ``max_length`` applied as ``options`` say for queries,
    then the model's window.

    Returns:
        ``(ids, cut)``: the ids to score, and whether they were cut to the model's window.

    Raises:
        ValueError: For an item over ``max_length`` with ``truncation="error"`` and
            ``long_queries="refuse"``.
    """
    limit = options.max_length
    if limit is not None and len(ids) > limit:
        if options.truncation == Truncation.LEFT:
            ids = ids[-limit:]
        elif options.truncation == Truncation.RIGHT:
            ids = ids[:limit]
        elif options.long_queries == LongQueries.REFUSE:
            raise ValueError(
                f"The text of {where} has {len(ids)} tokens, more than max_length={limit}; "
                "raise max_length, pass truncation='left' or 'right' to cut it, or "
                "long_queries='score' to score it whole (the default)."
            )
    kept = window.cut(ids)
    return kept, len(kept) < len(ids)


def warn_cut(cut: int, total: int, window: TokenWindow) -> None:
    """Warn that ``cut`` of ``total`` query texts were cut to ``window``."""
    if not cut:
        return
    side = "last" if window.keep == KeptEnd.END else "first"
    warnings.warn(
        f"{cut} of {total} query texts are longer than the model reads ({window.length} "
        f"tokens, {window.source}); scored on their {side} {window.length} tokens, where the "
        f"model reads the reward (keep='{window.keep}'). Pass long_queries='refuse' to refuse "
        "them instead.",
        BTLaplaceWarning,
        stacklevel=3,
    )


@dataclasses.dataclass(frozen=True)
class AddedTokens:
    """The special tokens a tokenizer adds to every text itself: ``prefix`` before it (bos,
    ``[CLS]``), ``suffix`` after it (``[SEP]``), as token strings.

    A text that already starts with the prefix (or ends with the suffix), as OpenRLHF's
    queries decoded with ``skip_special_tokens=False`` do, loses it first
    (:meth:`strip_from`), so
    that the tokenizer's own are the only ones: its tokens are those of the plain text.

    Example:
        >>> AddedTokens(("[CLS]",), ("[SEP]",)).strip_from("[CLS] the cat [SEP]")
        ' the cat '
        >>> AddedTokens(("<s>",), ()).strip_from("<s>hi</s>")
        'hi</s>'
        >>> AddedTokens((), ()).strip_from("<s>hi")
        '<s>hi'
    """

    prefix: tuple[str, ...]
    suffix: tuple[str, ...]

    @classmethod
    def of(cls, tokenizer: Any) -> AddedTokens:
        """The special tokens ``tokenizer`` adds itself, found by tokenizing a probe text
        with and without them."""
        probe = "a"
        bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        full = list(tokenizer(probe)["input_ids"])
        start = next(
            (i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare),
            None,
        )
        if start is None or not bare:
            return cls((), ())
        special = set(getattr(tokenizer, "all_special_ids", ()) or ())
        prefix, suffix = full[:start], full[start + len(bare) :]
        if not set(prefix + suffix) <= special:
            return cls((), ())
        names = tokenizer.convert_ids_to_tokens
        return cls(tuple(names(prefix)), tuple(names(suffix)))

    def strip_from(self, text: str) -> str:
        """``text`` without one leading prefix and one trailing suffix (whitespace between
        the special tokens allowed, as ``decode`` writes them)."""
        if self.prefix:
            rest = text
            for i, token in enumerate(self.prefix):
                rest = rest.lstrip() if i else rest
                if not rest.startswith(token):
                    break
                rest = rest[len(token) :]
            else:
                text = rest
        if self.suffix:
            rest = text
            for i, token in enumerate(reversed(self.suffix)):
                rest = rest.rstrip() if i else rest
                if not rest.endswith(token):
                    break
                rest = rest[: -len(token)]
            else:
                text = rest
        return text
