"""Text in, pairs out: TRL-format preference rows as token batches of pairs.

Shape legend: ``B`` pairs in a batch, ``2`` the two items of a pair (index 0 the rejected
text, index 1 the chosen one), ``L`` sequence length (the longest item of the batch, rounded up
to ``pad_to_multiple_of``).

Rows come in the formats TRL names (https://huggingface.co/docs/trl/dataset_formats):

========================  ==============================================================
format                    columns
========================  ==============================================================
implicit prompt           ``chosen``, ``rejected``: strings (the prompt is inside each)
explicit prompt           ``prompt``, ``chosen``, ``rejected``: strings
conversational            the same columns holding lists of ``{"role", "content"}``
                          messages (optional ``tools``, ``chat_template_kwargs``)
tokenized                 ``chosen_ids``, ``rejected_ids`` (TRL 1.x), or the legacy
                          ``chosen_input_ids``/``rejected_input_ids`` or
                          ``input_ids_chosen``/``input_ids_rejected``: lists of token ids
========================  ==============================================================

and any of them may carry a ``margin`` column. Text is prepared as TRL 1.16's
``RewardTrainer`` prepares it, so the posterior sees what the model was trained on: the eos
token appended to ``chosen`` and ``rejected`` unless they end with it (text rows only), the
prompt prepended (string or message list concatenation), conversations rendered and tokenized
by the tokenizer's chat template, plain text by the tokenizer with its special tokens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader
from typing_extensions import Unpack

from bt_laplace._checks import check_positive_int
from bt_laplace._dataset import Batch, PairSource, check_not_empty, check_split, pair_dataloader
from bt_laplace._tokens import column_ids, column_text, cut, margins, pad
from bt_laplace.choices import Truncation
from bt_laplace.inputs import check_texts, is_conversation
from bt_laplace.reading import TokenWindow, cut_query, warn_cut
from bt_laplace.text_options import TextKeywords, TextOptions

# TextOptions and TextKeywords (bt_laplace.text_options) are importable from here too, as before;
# they are documented on their own module's page
__all__ = ["TextPairCollator", "text_preference_dataloader"]

#: pairs of token-id columns, (chosen, rejected), in the order they are looked for
ID_COLUMNS = (
    ("chosen_ids", "rejected_ids"),
    ("chosen_input_ids", "rejected_input_ids"),
    ("input_ids_chosen", "input_ids_rejected"),
)
_FORMATS = (
    "TRL's preference formats: 'chosen' and 'rejected' (text or messages, with an optional "
    "'prompt'), or token ids in 'chosen_ids' and 'rejected_ids'"
)


class TextPairCollator:
    """``collate_fn`` turning TRL-format preference rows into a token batch of pairs.

    Each batch is ``(batch, labels)`` with ``batch = {"input_ids": (B, 2, L), "attention_mask":
    (B, 2, L)}`` (long), plus ``"margin"`` ``(B,)`` float when the rows have a ``margin``
    column, and ``labels`` ``(B,)`` long. As in :class:`~bt_laplace.PairCollator` with
    ``chosen=``/``rejected=``, item 0 of each pair is the rejected text and item 1 the chosen
    one, so every label is 1 (the index of the preferred item) and a margin ``m`` asks for
    ``r(x_1) - r(x_0) > m`` as in TRL's loss ``-log sigmoid(r_chosen - r_rejected - m)``.

    Items are padded to the longest of the batch with the tokenizer's pad token (its eos token
    if it has none, as TRL does), on ``padding_side``. Rows longer than ``max_length`` tokens
    are never dropped silently: ``truncation="error"`` refuses them (TRL's ``RewardTrainer``
    filters them out of its training set: :meth:`fits` does the same test for
    ``dataset.filter``), ``"left"``/``"right"`` cut tokens from that side. Queries (given
    the model's ``window``: posterior queries on texts, the reward function, the server) are
    scored whole instead under ``long_queries="score"`` (the default), as far as the model
    reads (:class:`~bt_laplace.reading.TokenWindow`).

    Args:
        tokenizer: The tokenizer the model was trained with (for a ``RewardTrainer``,
            ``trainer.processing_class``, which has the eos and pad tokens the trainer set).
        options: How texts become token ids (:class:`TextOptions`: ``max_length``,
            ``truncation``, ``append_eos``, ``long_queries``).
        pad_to_multiple_of: Round ``L`` up to a multiple of this.
        padding_side: ``"right"`` or ``"left"``; None takes ``tokenizer.padding_side``. The
            rewards of :class:`~bt_laplace.PairwiseRewardModel` do not depend on it.
        **text: The fields of :class:`TextOptions` as keywords, instead of ``options``.

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> vocab = {"<pad>": 0, "</s>": 1, "the": 2, "cat": 3, "sat": 4, "<unk>": 5}
        >>> raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        >>> raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>",
        ...                               eos_token="</s>")
        >>> batch, labels = TextPairCollator(tok)([{"chosen": "the cat sat", "rejected": "cat"}])
        >>> batch["input_ids"]  # (1, 2, 4): rejected, chosen; eos appended, right-padded
        tensor([[[3, 1, 0, 0],
                 [2, 3, 4, 1]]])
        >>> batch["attention_mask"], labels
        (tensor([[[1, 1, 0, 0],
                 [1, 1, 1, 1]]]), tensor([1]))
        >>> TextPairCollator(tok).collate_items(["sat", "cat sat"], prompts=["the "] * 2)
        {'input_ids': tensor([[2, 4, 1, 0],
                [2, 3, 4, 1]]), 'attention_mask': tensor([[1, 1, 1, 0],
                [1, 1, 1, 1]])}
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        options: TextOptions | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        **text: Unpack[TextKeywords],
    ) -> None:
        if not callable(tokenizer) or not hasattr(tokenizer, "pad_token_id"):
            raise TypeError(
                "`tokenizer` must be a Hugging Face tokenizer (transformers."
                f"PreTrainedTokenizerBase), got {type(tokenizer).__name__}."
            )
        self.tokenizer = tokenizer
        #: how texts become token ids (also read as ``max_length``, ``truncation``, ``append_eos``)
        self.options = TextOptions.of(options, **text)
        self.pad_to_multiple_of = (
            None
            if pad_to_multiple_of is None
            else check_positive_int("pad_to_multiple_of", pad_to_multiple_of)
        )
        side = tokenizer.padding_side if padding_side is None else padding_side
        if side not in ("left", "right"):
            raise ValueError(f"`padding_side` must be 'left' or 'right', got {side!r}.")
        self.padding_side = side
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else None
        self.pad_token_id: int | None = pad if pad is not None else tokenizer.eos_token_id

    @property
    def max_length(self) -> int | None:
        """Longest item in tokens (:class:`TextOptions`)."""
        return self.options.max_length

    @property
    def truncation(self) -> Truncation:
        """What a longer item gets (:class:`TextOptions`)."""
        return self.options.truncation

    @property
    def append_eos(self) -> bool | str:
        """Whether the eos token is appended to text answers (:class:`TextOptions`): True
        where the tokenizer has one, ``"required"``, or False."""
        return self.options.append_eos

    def __repr__(self) -> str:
        return (
            f"TextPairCollator({type(self.tokenizer).__name__}, max_length={self.max_length}, "
            f"truncation={str(self.truncation)!r}, padding_side={self.padding_side!r})"
        )

    # ------------------------------------------------------------------ rows -> ids
    def encode(self, row: Mapping[str, Any], where: str = "the row") -> tuple[list[int], list[int]]:
        """Token ids ``(rejected, chosen)`` of one row, prepared as TRL's ``RewardTrainer``
        does, before ``max_length`` applies.

        Raises:
            ValueError, TypeError: For a row that fits no TRL format, naming the column.
        """
        if not isinstance(row, Mapping):
            raise TypeError(
                f"{where} is a {type(row).__name__}, expected a mapping (dict) with {_FORMATS}."
            )
        for chosen, rejected in ID_COLUMNS:
            if chosen in row or rejected in row:
                return (
                    column_ids(row, rejected, where),
                    column_ids(row, chosen, where),
                )
        for col in ("chosen", "rejected"):
            if col not in row:
                raise ValueError(
                    f"Column {col!r} is missing from {where}, which has columns {list(row)}; "
                    f"expected {_FORMATS}. Rename the columns (dataset.rename_column)."
                )
        if any(is_conversation(row.get(c)) for c in ("prompt", "chosen", "rejected")):
            return self._encode_messages(row, where)
        return self._encode_text(row, where)

    def fits(self, row: Mapping[str, Any]) -> bool:
        """True if both items of ``row`` have at most ``max_length`` tokens: the test TRL's
        ``RewardTrainer`` filters its training set with, for ``dataset.filter(collator.fits)``."""
        if self.max_length is None:
            return True
        return max(len(ids) for ids in self.encode(row)) <= self.max_length

    def _encode_text(self, row: Mapping[str, Any], where: str) -> tuple[list[int], list[int]]:
        prompt = column_text(row, "prompt", where) if "prompt" in row else ""
        rejected, chosen = (column_text(row, col, where) for col in ("rejected", "chosen"))
        ids = self.tokenizer([prompt + self._with_eos(t, where) for t in (rejected, chosen)])
        return list(ids["input_ids"][0]), list(ids["input_ids"][1])

    def _with_eos(self, text: str, where: str) -> str:
        """``text`` with the eos token appended unless it ends with it (as TRL does), where
        the tokenizer has one (``append_eos=True``) or must have one (``"required"``)."""
        if self.append_eos is False:
            return text
        eos = self.tokenizer.eos_token
        if eos is None:
            if self.append_eos is True:
                return text  # not trained by TRL, which needs an eos: none was appended
            raise ValueError(
                f"The tokenizer has no eos_token, which TRL's RewardTrainer appends to each "
                f"answer (it fails on {where} too); set tokenizer.eos_token (as "
                "RewardConfig(eos_token=...) does), or pass append_eos=False (or True: "
                "append it where the tokenizer has one) if the model was trained without it."
            )
        return text if text.endswith(eos) else text + eos

    def _messages(self, row: Mapping[str, Any], col: str, where: str) -> list[Any]:
        value = row[col]
        if is_conversation(value):
            return value
        if not isinstance(value, list) or not value:
            raise TypeError(
                f"Column {col!r} of {where} is {type(value).__name__} {str(value)[:60]!r}, but "
                "another column holds messages; in a conversational row prompt, chosen and "
                "rejected are all non-empty lists of {'role', 'content'} messages."
            )
        i = next(i for i, message in enumerate(value) if not is_conversation([message]))
        raise TypeError(
            f"Message {i} of column {col!r} of {where} is {str(value[i])[:60]!r}; each "
            "message is a dict with 'role' and 'content'."
        )

    def _render(self, messages: list[Any], row: Mapping[str, Any], where: str) -> list[int]:
        """Token ids of a conversation through the tokenizer's chat template."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"{where} holds messages, but the tokenizer has no chat template to render "
                "them; set tokenizer.chat_template (RewardConfig(chat_template_path=...) does "
                "this in TRL), or give the texts as strings."
            )
        tools = row.get("tools")
        kwargs = {"tools": json.loads(tools) if isinstance(tools, str) else tools}
        kwargs.update(row.get("chat_template_kwargs") or {})
        encoded = self.tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, **kwargs
        )
        return list(encoded["input_ids"])

    def _encode_messages(self, row: Mapping[str, Any], where: str) -> tuple[list[int], list[int]]:
        prompt = self._messages(row, "prompt", where) if "prompt" in row else []
        rejected, chosen = (
            self._render(prompt + self._messages(row, col, where), row, where)
            for col in ("rejected", "chosen")
        )
        return rejected, chosen

    # ------------------------------------------------------------------ items
    def encode_item(
        self, completion: Any, prompt: Any = None, *, where: str = "the item"
    ) -> list[int]:
        """Token ids of one item (a prompt's answer), prepared as the items of a training pair:
        a string gets the eos token and the prompt prepended, a list of messages is rendered
        after the prompt's messages by the chat template.

        Args:
            completion: The answer: a string, or a list of ``{"role", "content"}`` messages.
            prompt: None, or the prompt: a string (for a string answer) or messages.
            where: How to name the item in error messages.
        """
        row = (
            {"completion": completion}
            if prompt is None
            else {"prompt": prompt, "completion": completion}
        )
        if is_conversation(completion) or is_conversation(prompt):
            messages = self._messages(row, "prompt", where) if prompt is not None else []
            return self._render(messages + self._messages(row, "completion", where), {}, where)
        if not isinstance(completion, str):
            raise TypeError(
                f"{where} is {type(completion).__name__} {str(completion)[:60]!r}; an item is a "
                "string or a list of {'role', 'content'} messages."
            )
        text = self._with_eos(completion, where)
        if prompt is not None:
            text = column_text(row, "prompt", where) + text
        return list(self.tokenizer(text)["input_ids"])

    def collate_items(
        self,
        completions: Sequence[Any],
        prompts: Sequence[Any | None] | None = None,
        *,
        window: TokenWindow | None = None,
    ) -> dict[str, torch.Tensor]:
        """Token batch of items ``{"input_ids": (B, L), "attention_mask": (B, L)}`` from texts.

        Each item is encoded by :meth:`encode_item` (as the items of the training pairs);
        ``max_length`` applies as to training pairs, or as to queries given the model's
        ``window`` (:meth:`collate_queries`).

        Args:
            completions: ``B`` answers: strings or message lists.
            prompts: None, or ``B`` prompts (or Nones), one per answer.
            window: The model's :class:`~bt_laplace.reading.TokenWindow` for queries, or None.

        Raises:
            TypeError, ValueError: As :func:`~bt_laplace.inputs.check_texts`, or for no texts.
        """
        if window is not None:
            return self.collate_queries(completions, prompts, window=window)[0]
        completions, prompts = check_texts(completions, prompts)
        if len(completions) == 0:
            raise ValueError("`completions` is empty; pass at least one text.")
        self._check_pad()
        items = []
        for i, completion in enumerate(completions):
            where = f"item {i}"
            ids = self.encode_item(completion, None if prompts is None else prompts[i], where=where)
            items.append(self._cut((ids,), where)[0])
        return {k: v[:, 0] for k, v in self._pad([(ids,) for ids in items]).items()}

    def collate_queries(
        self,
        completions: Sequence[Any],
        prompts: Sequence[Any | None] | None = None,
        *,
        window: TokenWindow,
    ) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Token batch of query items, read as far as the model reads: a text over
        ``max_length`` is scored whole under ``long_queries="score"`` (the default), and cut
        to the model's ``window`` on the side it reads beyond that, with a warning.

        Args:
            completions, prompts: As in :meth:`collate_items`.
            window: The model's :class:`~bt_laplace.reading.TokenWindow`
                (``TokenWindow.of(model, tokenizer)``).

        Returns:
            ``({"input_ids": (B, L), "attention_mask": (B, L)}, cut)``, ``cut`` the indices of
            the texts cut to the window.
        """
        completions, prompts = check_texts(completions, prompts)
        if len(completions) == 0:
            raise ValueError("`completions` is empty; pass at least one text.")
        self._check_pad()
        items, cut = [], []
        for i, completion in enumerate(completions):
            where = f"item {i}"
            ids = self.encode_item(completion, None if prompts is None else prompts[i], where=where)
            ids, was_cut = cut_query(ids, self.options, window, where)
            items.append(ids)
            if was_cut:
                cut.append(i)
        warn_cut(len(cut), len(items), window)
        return {k: v[:, 0] for k, v in self._pad([(ids,) for ids in items]).items()}, cut

    # ------------------------------------------------------------------ batch
    def __call__(
        self, batch: Any, *, window: TokenWindow | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Collate ``batch``: a list of rows, or a mapping of columns (``dataset[:8]``).

        ``max_length`` applies as to training pairs, or as to queries (as in
        :meth:`collate_queries`) given the model's ``window``.

        Returns:
            ``({"input_ids": (B, 2, L), "attention_mask": (B, 2, L)[, "margin": (B,)]},
            labels (B,))``, labels all 1 (item 1 is the chosen text).
        """
        rows, indices = (batch.data, batch.indices) if isinstance(batch, Batch) else (batch, None)

        def where(i: int) -> str:
            return (
                f"row {i} of the batch" if indices is None else f"row {indices[i]} of the dataset"
            )

        if isinstance(rows, Mapping):
            lengths = {len(v) if isinstance(v, Sequence) else None for v in rows.values()}
            if len(lengths) != 1 or None in lengths:
                raise TypeError(
                    "A mapping is read as a batch of columns holding one value per row, but its "
                    "values are not lists of one length; to collate a single row, pass [row]."
                )
            n = lengths.pop() or 0
            rows = [{k: v[i] for k, v in rows.items()} for i in range(n)]
        if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
            raise TypeError(
                "TextPairCollator expects a list of row mappings or a mapping of columns, got "
                f"{type(rows).__name__}; wrap a single row in a list: collate([row])."
            )
        if len(rows) == 0:
            raise ValueError("Cannot collate an empty batch (0 rows); pass at least one row.")
        self._check_pad()
        encoded = [self.encode(row, where(i)) for i, row in enumerate(rows)]
        items: list[tuple[list[int], ...]]
        if window is None:
            items = [self._cut(row, where(i)) for i, row in enumerate(encoded)]
        else:
            cuts = [[cut_query(ids, self.options, window, where(i)) for ids in row]
                    for i, row in enumerate(encoded)]  # fmt: skip
            items = [tuple(ids for ids, _ in row) for row in cuts]
            warn_cut(sum(c for row in cuts for _, c in row), 2 * len(items), window)
        out = self._pad(items)
        margin = margins(rows, where)
        if margin is not None:
            out["margin"] = margin
        return out, torch.ones(len(rows), dtype=torch.long)

    def _cut(self, row: tuple[list[int], ...], where: str) -> tuple[list[int], ...]:
        return cut(row, self.max_length, self.truncation, where)

    def _pad(self, rows: list[tuple[list[int], ...]]) -> dict[str, torch.Tensor]:
        """Pad rows of ``K`` items each to ``(B, K, L)``."""
        assert self.pad_token_id is not None
        return pad(rows, self.pad_token_id, self.padding_side, self.pad_to_multiple_of)

    def _check_pad(self) -> None:
        if self.pad_token_id is None:
            raise ValueError(
                "The tokenizer has neither a pad token nor an eos token to pad with; set "
                "tokenizer.pad_token (TRL's RewardTrainer uses RewardConfig.pad_token, else eos)."
            )


def text_preference_dataloader(
    dataset: Any,
    tokenizer: Any,
    batch_size: int = 32,
    shuffle: bool = False,
    *,
    options: TextOptions | None = None,
    pad_to_multiple_of: int | None = None,
    padding_side: str | None = None,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    **text: Unpack[TextKeywords],
) -> DataLoader:
    r"""A DataLoader of token batches of pairs from a TRL-format preference dataset.

    The first row is collated up front, so a malformed dataset fails here, not mid-fit.

    Args:
        dataset: A ``datasets.Dataset`` or a list of row mappings in one of TRL's preference
            formats (see :class:`TextPairCollator`).
        tokenizer: The tokenizer the model was trained with.
        batch_size: Number of pairs ``B`` per batch.
        shuffle: Reshuffle the rows every epoch; ``False`` keeps the dataset order.
        options, pad_to_multiple_of, padding_side, \*\*text: As in :class:`TextPairCollator`.
        generator, num_workers, drop_last: As in ``torch.utils.data.DataLoader``.

    Returns:
        A DataLoader yielding ``({"input_ids": (B, 2, L), "attention_mask": (B, 2, L)
        [, "margin": (B,)]}, labels (B,))``; errors name rows by their index in ``dataset``.
    """
    collate = TextPairCollator(
        tokenizer,
        options=TextOptions.of(options, **text),
        pad_to_multiple_of=pad_to_multiple_of,
        padding_side=padding_side,
    )

    def rows() -> PairSource:
        import datasets as hf

        check_split(dataset)
        if not isinstance(dataset, (hf.Dataset, list, tuple)):
            raise TypeError(
                "`dataset` must be a datasets.Dataset or a list of row mappings, got "
                f"{type(dataset).__name__}."
            )
        check_not_empty(dataset)
        return PairSource(dataset)

    return pair_dataloader(
        rows, collate, batch_size=batch_size, shuffle=shuffle, generator=generator,
        num_workers=num_workers, drop_last=drop_last,
    )  # fmt: skip
