"""Query inputs, read one way: what the posterior's queries, the reward function and the server
take, checked and turned into a tensor or a token dict on the posterior's device.

Shape legend: ``B`` items or pairs, ``2`` the two items of a pair (index 0 first, index 1
second), ``*item`` one item, ``L`` sequence length.

- items ``(B, *item)``: a tensor ``(B, *item)``, a token dict ``input_ids (B, L)`` (a
  ``BatchEncoding`` too), or, given a tokenizer, texts: strings, conversations or TRL
  prompt-completion rows ``{"prompt", "completion"}``;
- pairs ``(B, 2, *item)``: a tensor ``(B, 2, *item)``, a token dict ``input_ids (B, 2, L)``,
  or, given a tokenizer, TRL preference rows ``{"prompt", "chosen", "rejected"}`` (item 0 the
  rejected text) or ``(text_0, text_1)`` tuples.

A conversation is a non-empty list of ``{"role", "content"}`` messages (:func:`is_conversation`,
the one rule every module uses); a text is a string or a conversation (:func:`is_text`).

Example:
    >>> is_conversation([{"role": "user", "content": "hi"}]), is_conversation([{"role": "user"}])
    (True, False)
    >>> check_texts(["a cat", [{"role": "assistant", "content": "no"}]], ["q: ", None])[1]
    ['q: ', None]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from bt_laplace._checks import check_choice, check_input_dtype, check_tensor, n_rows
from bt_laplace.choices import Reference
from bt_laplace.reading import TokenWindow

if TYPE_CHECKING:
    from bt_laplace.model import PairwiseRewardModel

__all__ = ["is_conversation", "is_text", "check_texts", "split_rows", "take_rows", "QueryReader"]


def is_conversation(value: Any) -> bool:
    """True if ``value`` is a non-empty list of messages, each a mapping with ``"role"`` and
    ``"content"`` (TRL's conversational format)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value)
    )


def is_text(value: Any) -> bool:
    """True if ``value`` is a string or a conversation (:func:`is_conversation`)."""
    return isinstance(value, str) or is_conversation(value)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {str(value)[:60]!r}"


def check_texts(
    completions: Any, prompts: Any = None, *, need_prompts: bool = False
) -> tuple[list[Any], list[Any] | None]:
    """Check ``B`` completions and their prompts: what the reward function and
    :meth:`~bt_laplace.TextPairCollator.collate_items` take.

    Args:
        completions: ``B`` texts (strings or conversations).
        prompts: None, or ``B`` prompts: texts or None, one per completion.
        need_prompts: Refuse ``prompts=None`` (TRL always passes them).

    Returns:
        ``(completions, prompts)`` as lists (``prompts`` None if it was).

    Raises:
        TypeError: If either is not a list, or an entry is not a text.
        ValueError: If their lengths differ.
    """
    named = (("completions", completions), ("prompts", prompts))
    for name, value in named:
        if name == "completions" or value is not None or need_prompts:
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise TypeError(
                    f"`{name}` must be a list with one entry per completion, got "
                    f"{type(value).__name__}; wrap a single text in a list: [text]."
                )
    if prompts is not None and len(prompts) != len(completions):
        raise ValueError(
            f"`prompts` has {len(prompts)} entries but `completions` {len(completions)}; pass "
            "one prompt per completion (repeat a prompt for each of its completions, as TRL "
            "does)."
        )
    for i, completion in enumerate(completions):
        if not is_text(completion):
            ids = isinstance(completion, list) and all(isinstance(v, int) for v in completion)
            raise TypeError(
                f"`completions` must hold texts: strings or lists of {{'role', 'content'}} "
                f"messages; entry {i} is {_describe(completion)}."
                + (
                    " Token ids are not scored here (TRL passes them separately as "
                    "`completion_ids`): decode them first."
                    if ids
                    else ""
                )
            )
    for i, prompt in enumerate(prompts or ()):
        if not (prompt is None or is_text(prompt)):
            raise TypeError(
                f"`prompts` must hold texts: strings, lists of {{'role', 'content'}} messages "
                f"or None; entry {i} is {_describe(prompt)}."
            )
    return list(completions), None if prompts is None else list(prompts)


def split_rows(x: Any, size: int) -> list[Any]:
    """``x`` (a tensor or a token dict) in batches of at most ``size`` rows."""
    if n_rows(x) <= size:
        return [x]
    if isinstance(x, Mapping):
        return [{k: v[i : i + size] for k, v in x.items()} for i in range(0, n_rows(x), size)]
    return list(x.split(size))


def take_rows(x: Any, rows: torch.Tensor) -> Any:
    """Rows ``rows`` of a tensor or token dict."""
    if isinstance(x, Mapping):
        return {k: v[rows] for k, v in x.items()}
    return x[rows]


def _usable(x: torch.Tensor) -> torch.Tensor:
    """A tensor made under ``torch.inference_mode()`` cannot enter autograd; copy it."""
    return x.clone() if x.is_inference() else x


def _check_finite(x: torch.Tensor, name: str) -> None:
    # a finite sum has finite terms (one reduction); only a NaN, an inf or an overflowing sum
    # needs the elementwise check
    if not x.is_floating_point() or bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        rows = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero().flatten()
        raise ValueError(
            f"`{name}` holds NaN or infinite values (rows {rows[:5].tolist()}); a NaN item "
            "has no reward, and with reference='group' it would spoil its whole group. Drop "
            "or fix those rows."
        )


def _is_text_batch(x: Any) -> bool:
    """A list of texts, TRL rows or pairs of texts (anything holding mappings counts, so that
    a bad conversation is explained as one): the inputs a tokenizer turns into tokens."""
    if not isinstance(x, (list, tuple)) or not x:
        return False
    first = x[0]
    return (
        is_text(first)
        or isinstance(first, (Mapping, tuple))
        or (isinstance(first, list) and any(isinstance(m, Mapping) for m in first))
    )


@dataclass(frozen=True)
class QueryReader:
    """Reads the items or pairs of a query into a tensor or a token dict on ``device``.

    Args:
        model: The :class:`~bt_laplace.PairwiseRewardModel` (it tells items from pairs).
        dtype: The dtype real-valued inputs must have (the posterior's).
        device: Where the inputs go.
        item_shape: Shape of one real-valued item the posterior was fitted on (None: any).
        text_collator: Turns texts into tokens (a :class:`~bt_laplace.TextPairCollator`), or
            None: texts are refused.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from bt_laplace import PairwiseRewardModel
        >>> reader = QueryReader(PairwiseRewardModel(nn.Linear(3, 1)), torch.float32,
        ...                      torch.device("cpu"), item_shape=(3,))
        >>> reader.items(torch.zeros(4, 3)).shape, reader.pairs(torch.zeros(4, 2, 3)).shape
        (torch.Size([4, 3]), torch.Size([4, 2, 3]))
        >>> reader.items(torch.zeros(4, 2, 3))
        Traceback (most recent call last):
        ...
        ValueError: `x` must be items of shape (B, *item), got pairs (4, 2, 3); use \
preference_probability(x) for pairs, or x.flatten(0, 1) to score both items.
    """

    model: PairwiseRewardModel
    dtype: torch.dtype
    device: torch.device
    item_shape: tuple[int, ...] | None = None
    text_collator: Any = None

    def items(self, x: Any, name: str = "x", *, check_shape: bool = True) -> Any:
        """Items ``(B, *item)``: a tensor, a token dict ``input_ids (B, L)`` or texts.

        Args:
            x: The items.
            name: The argument's name, for messages.
            check_shape: Compare real-valued items with :attr:`item_shape` (references are
                compared with the items instead).

        Returns:
            A tensor ``(B, *item)`` or a token dict of tensors, on :attr:`device`.
        """
        if _is_text_batch(x):
            x = self.tokens(x, name, pairs=False)
        if isinstance(x, Mapping):  # token dict: input_ids (B, L)
            x = self._token_dict(x, name)
            if self.model.is_pair_batch(x):
                raise ValueError(
                    f"`{name}` must be items, input_ids (B, L), got pairs "
                    f"{tuple(x['input_ids'].shape)}; use preference_probability for pairs."
                )
            return x
        x = self._tensor(x, name)
        if self.model.is_pair_batch(x):
            raise ValueError(
                f"`x` must be items of shape (B, *item), got pairs {tuple(x.shape)}; use "
                "preference_probability(x) for pairs, or x.flatten(0, 1) to score both items."
            )
        if check_shape:
            self._check_item_shape(tuple(x.shape[1:]), name, x)
        return x.to(self.device)

    def pairs(self, x: Any, name: str = "x") -> Any:
        """Pairs ``(B, 2, *item)``: a tensor, a token dict ``input_ids (B, 2, L)``, TRL
        preference rows or ``(text_0, text_1)`` tuples.

        Returns:
            A tensor ``(B, 2, *item)`` or a token dict of tensors, on :attr:`device`.
        """
        if _is_text_batch(x):
            x = self.tokens(x, name, pairs=True)
        if isinstance(x, Mapping):  # token dict: input_ids (B, 2, L)
            x = self._token_dict(x, name)
            if not self.model.is_pair_batch(x):
                raise ValueError(
                    f"`{name}` must be pairs, input_ids (B, 2, L), got "
                    f"{tuple(x['input_ids'].shape)}."
                )
            return x
        x = self._tensor(x, name)
        if not self.model.is_pair_batch(x):
            raise ValueError(
                f"`{name}` must be pairs of shape (B, 2, *item), got {tuple(x.shape)}; stack the "
                "two items of each pair on dim 1 (torch.stack([x0, x1], dim=1))."
            )
        self._check_item_shape(tuple(x.shape[2:]), name, x)
        return x.to(self.device)

    def references(self, reference: Any, x: Any, groups: Any = None) -> Any:
        """The ``reference`` of relative rewards: None for ``"group"`` (the items themselves,
        by ``groups`` if given), else reference items ``(M, *item)`` read like ``x``, the
        items ``(B, *item)`` already read, and checked against them: the same kind, the same
        item shape, at least one, and no ``groups``."""
        if isinstance(reference, str):
            check_choice("reference", reference, Reference)
            return None
        if groups is not None:
            raise ValueError(
                "`groups` goes with reference='group' (each item relative to its own "
                "group); with reference items every item is relative to the same "
                "reference, so call once per group instead."
            )
        ref = self.items(reference, "reference", check_shape=False)
        if n_rows(ref) == 0:
            raise ValueError(
                "`reference` has no items; pass at least one reference item, or reference='group'."
            )
        if isinstance(ref, Mapping) != isinstance(x, Mapping):
            raise TypeError(
                "`reference` and `x` must both be tensors or both token dicts, got "
                f"{type(reference).__name__} and {type(x).__name__}."
            )
        if not isinstance(x, Mapping) and ref.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"`reference` items have shape {tuple(ref.shape[1:])} but `x` items have "
                f"{tuple(x.shape[1:])}; pass reference items of the same shape."
            )
        return ref

    def tokens(self, x: Sequence[Any], name: str, *, pairs: bool) -> dict[str, Any]:
        """Token dict of a list of texts or prompt-completion rows (items), or of TRL
        preference rows or text tuples (pairs), prepared by :attr:`text_collator` as queries:
        read as far as the model reads (:attr:`window`, ``long_queries``)."""
        collator = self.text_collator
        if collator is None:
            raise TypeError(
                f"`{name}` is a list of texts, but the posterior has no tokenizer; call "
                "post.set_tokenizer(tokenizer) first (a fit on "
                "bt_laplace.text_preference_dataloader sets it), or pass a token dict."
            )
        if pairs:
            rows = [
                {"rejected": row[0], "chosen": row[1]}
                if isinstance(row, tuple) and len(row) == 2
                else row
                for row in x
            ]
            bad = next((r for r in rows if not isinstance(r, Mapping)), None)
            if bad is not None:
                raise TypeError(
                    f"`{name}` must be pairs of texts: TRL preference rows {{'prompt', "
                    f"'chosen', 'rejected'}} or (text_0, text_1) tuples; got "
                    f"{type(bad).__name__}."
                )
            tokens, _ = collator(rows, window=self.window)
            tokens.pop("margin", None)
            return tokens
        if all(isinstance(row, Mapping) and "completion" in row for row in x):
            return collator.collate_items(
                [row["completion"] for row in x],
                [row.get("prompt") for row in x],
                window=self.window,
            )
        bad_i = next((i for i, row in enumerate(x) if not is_text(row)), None)
        if bad_i is not None:
            raise TypeError(
                f"`{name}` must be items: strings, message lists or TRL prompt-completion rows "
                f"{{'prompt', 'completion'}}; entry {bad_i} is {str(x[bad_i])[:60]!r}"
                + (" (pairs go to preference_probability)." if isinstance(x[bad_i], tuple) else ".")
            )
        return collator.collate_items(list(x), window=self.window)

    @property
    def window(self) -> TokenWindow:
        """How many tokens the model reads of a query text, and which end of a longer one it
        keeps (:class:`~bt_laplace.reading.TokenWindow`)."""
        return TokenWindow.of(self.model, getattr(self.text_collator, "tokenizer", None))

    # ------------------------------------------------------------------ checks
    def _token_dict(self, x: Mapping[str, Any], name: str) -> dict[str, Any]:
        """A token dict (``BatchEncoding`` too) of tensors, on the device, usable by autograd."""
        bad = [k for k, v in x.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(
                f"`{name}` is a token dict, but {bad} are not tensors; tokenize with "
                "return_tensors='pt' (or use bt_laplace.TextPairCollator)."
            )
        return {k: _usable(v).to(self.device) for k, v in x.items()}

    def _tensor(self, x: Any, name: str) -> torch.Tensor:
        """``x`` as a tensor usable by autograd, of the posterior's dtype and finite."""
        x = _usable(check_tensor(name, x))
        fix = f"x.to({self.dtype}), or preference_dataloader(..., dtype=...)"
        check_input_dtype(x, self.dtype, "`x` has", fix)
        _check_finite(x, name)
        return x

    def _check_item_shape(self, shape: tuple[int, ...], name: str, x: torch.Tensor) -> None:
        if x.is_floating_point() and self.item_shape is not None and shape != self.item_shape:
            raise ValueError(
                f"`{name}` has items of shape {shape}, but the posterior was fitted on items of "
                f"shape {self.item_shape}; pass items like the training ones."
            )
