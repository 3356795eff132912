"""Turn preference data into ``(x, y)`` batches of pairs for Bradley-Terry reward models.

Shape legend:
    ``B``: number of pairs in a batch.
    ``2``: the two items of a pair; index 0 is the first item, index 1 the second item.
    ``*item``: the shape of one item, e.g. ``()`` for scalars or ``(D,)`` for feature vectors.

A batch is ``x`` float ``(B, 2, *item)`` with label ``y`` long ``(B,)`` holding the index (0 or 1)
of the preferred item of each pair, so ``logits[:, 1] - logits[:, 0]`` is the Bradley-Terry logit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import numpy as np
import torch
from torch.utils.data import DataLoader
from typing_extensions import Unpack

from bt_laplace._dataset import Batch, PairSource, check_not_empty, check_split, pair_dataloader

__all__ = ["PairCollator", "PairCollatorKeywords", "preference_dataloader"]

_NAMES_HINT = "pass the column names (first=, second=, label=, or chosen=, rejected=)"
_EMPTY = "Cannot collate an empty batch (0 rows); pass at least one row."


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    extra = f" of shape {tuple(shape)}, dtype {value.dtype}," if shape is not None else ""
    return f"{type(value).__name__}{extra} {str(value)[:60]!r}"


#: integer dtypes ``x`` may have (token ids for an embedding layer)
_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class PairCollatorKeywords(TypedDict, total=False):
    """The keywords of :class:`PairCollator`, which :func:`preference_dataloader` takes too."""

    first: str
    second: str
    label: str
    chosen: str | None
    rejected: str | None
    dtype: torch.dtype
    pad_value: float | None


class PairCollator:
    """Collate rows of preference data into ``(x, y)``; use it as a DataLoader ``collate_fn``.

    Two column conventions are supported:

    * default: every row has columns ``first``, ``second`` and ``label`` (0 or 1, the index of
      the preferred item); ``x[:, 0] = row[first]``, ``x[:, 1] = row[second]``, ``y = row[label]``.
    * TRL naming (pass ``chosen`` and ``rejected``): no label column; the chosen item is the
      preferred one and is put SECOND: ``x[:, 0] = row[rejected]``, ``x[:, 1] = row[chosen]`` and
      ``y`` is all ones, so the BT logit ``logits[:, 1] - logits[:, 0]`` favours ``chosen``.

    Items may be numbers, (nested) lists, numpy arrays or tensors of any real dtype (converted to
    ``dtype``); all items share one shape ``*item`` and must be finite. Labels may be ints, numpy
    integers, one-element integer arrays/tensors, or the floats 0.0/1.0; bools are rejected.
    A batch is a sequence of row mappings (what a DataLoader passes) or one mapping of columns
    holding ``B`` values each (always read as a batch, never as a single row).

    Args:
        first: Column of the first item (default convention).
        second: Column of the second item (default convention).
        label: Column of the label (default convention).
        chosen: Column of the preferred item (TRL convention, requires ``rejected``).
        rejected: Column of the other item (TRL convention, requires ``chosen``).
        dtype: dtype of ``x``: floating for feature vectors (default float32), or integer
            (``torch.long``) for token ids, which must then be whole numbers.
        pad_value: If set, items are 1-D sequences (token ids) that may differ in length; both
            items of every pair are right-padded with it to the longest item of the batch, as
            TRL's tokenized ``input_ids_chosen``/``input_ids_rejected`` need. The network must
            mask the padding itself (e.g. attention mask = ids != pad id).

    Example:
        >>> x, y = PairCollator()([{"x0": [1.0, 2.0], "x1": [3.0, 4.0], "label": 1}])
        >>> x.shape, y
        (torch.Size([1, 2, 2]), tensor([1]))
        >>> PairCollator(chosen="good", rejected="bad")([{"good": 5, "bad": 7}])
        (tensor([[7., 5.]]), tensor([1]))
    """

    def __init__(
        self,
        *,
        first: str = "x0",
        second: str = "x1",
        label: str = "label",
        chosen: str | None = None,
        rejected: str | None = None,
        dtype: torch.dtype = torch.float32,
        pad_value: float | None = None,
    ) -> None:
        if (chosen is None) != (rejected is None):
            raise ValueError(
                "Pass both `chosen` and `rejected` (TRL naming) or neither; got "
                f"chosen={chosen!r}, rejected={rejected!r}."
            )
        names: dict[str, Any] = {"first": first, "second": second, "label": label}
        if chosen is not None:
            if (first, second, label) != ("x0", "x1", "label"):
                raise ValueError(
                    "Pass either `chosen`/`rejected` (TRL naming, no label column) or "
                    f"`first`/`second`/`label`, not both; got {names}."
                )
            names = {"rejected": rejected, "chosen": chosen}
        for arg, col in names.items():
            if not isinstance(col, str):
                raise TypeError(f"`{arg}` must be a column name (str), got {type(col).__name__}.")
        if len(set(names.values())) != len(names):
            raise ValueError(f"Column names must differ, got {names}.")
        if (
            not isinstance(dtype, torch.dtype)
            or dtype.is_complex
            or dtype == torch.bool
            or not (dtype.is_floating_point or dtype in _INTEGER_DTYPES)
        ):
            raise TypeError(
                "`dtype` must be a floating torch.dtype such as torch.float32 (features) or an "
                f"integer one such as torch.long (token ids), got {dtype!r}."
            )
        self.dtype = dtype
        if pad_value is not None:
            whole = not dtype.is_floating_point
            if (
                isinstance(pad_value, bool)
                or not isinstance(pad_value, (int, float))
                or not math.isfinite(pad_value)
                or (whole and pad_value != int(pad_value))
            ):
                kind = "a whole number (the pad token id)" if whole else "a finite number"
                raise TypeError(f"`pad_value` must be {kind} for dtype={dtype}, got {pad_value!r}.")
        self.pad_value = pad_value
        cols = tuple(names.values())
        self._items: tuple[str, str] = (cols[0], cols[1])
        self._label: str | None = cols[2] if len(cols) == 3 else None
        self._repr = ", ".join(f"{k}={v!r}" for k, v in names.items()) + f", dtype={dtype}"
        if pad_value is not None:
            self._repr += f", pad_value={pad_value!r}"

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns read: the item at ``x[:, 0]``, the item at ``x[:, 1]``, the label if any."""
        return self._items + ((self._label,) if self._label is not None else ())

    def __repr__(self) -> str:
        return f"PairCollator({self._repr})"

    def __call__(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Collate ``batch`` (B row mappings, or a mapping of B-long columns).

        Returns:
            ``x`` ``(B, 2, *item)`` of ``self.dtype`` and ``y`` ``(B,)`` long.
        """
        data, idx = (batch.data, batch.indices) if isinstance(batch, Batch) else (batch, None)

        def where(i: int) -> str:
            return f"row {idx[i]} of the dataset" if idx is not None else f"row {i} of the batch"

        if isinstance(data, Mapping):
            cols, n = self._from_columns(data)
        elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
            cols, n = self._from_rows(data, where), len(data)
        else:
            raise TypeError(
                "PairCollator expects a list of row mappings or a mapping of columns, got "
                f"{type(data).__name__}; wrap a single row in a list: collate([row])."
            )
        if self.pad_value is None:
            a, b = (self._stack(cols[c], c, where, n) for c in self._items)
        else:
            a, b = self._stack_padded(cols, where, n)
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"Column {self._items[1]!r} of {where(0)} has shape {tuple(b.shape[1:])} but "
                f"column {self._items[0]!r} has shape {tuple(a.shape[1:])}; both items of a pair "
                "must have the same shape (pad or truncate them to one shape)."
            )
        if not self.dtype.is_floating_point:
            for col, t in zip(self._items, (a, b), strict=True):
                self._check_integral(t, col, where)
        x = torch.stack([a.to(self.dtype), b.to(self.dtype)], dim=1)
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            row, item = (~finite).reshape(n, 2, -1).any(-1).nonzero()[0].tolist()
            bad = x[row, item][~finite[row, item]].tolist()
            kinds = sorted({"nan" if v != v else ("inf" if v > 0 else "-inf") for v in bad})
            raise ValueError(
                f"Column {self._items[item]!r} of {where(row)} has non-finite values "
                f"({', '.join(kinds)}) as {self.dtype} (missing values, and values beyond the "
                "dtype's range, become nan/inf); drop or impute such rows, e.g. dataset.filter."
            )
        if self._label is None:
            return x, torch.ones(n, dtype=torch.long)
        return x, self._labels(cols[self._label], self._label, where, n)

    def _check_integral(self, t: torch.Tensor, col: str, where: Callable[[int], str]) -> None:
        """Integer ``dtype`` (token ids): every value must be a whole number in its range."""
        info = torch.iinfo(self.dtype)
        if t.dtype == torch.bool or t.is_complex():
            return  # bools fit; complex items were rejected while stacking
        if t.is_floating_point() or t.dtype == torch.uint64:  # compare in float64:
            wide = t.double()  # max + 1 is a power of two, exact there (max itself may round)
            bad = (wide != wide.round()) | (wide < info.min) | (wide >= float(info.max) + 1)
        else:
            wide = t.long()
            bad = (wide < info.min) | (wide > info.max)
        if bool(bad.any()):
            row = int(bad.reshape(t.shape[0], -1).any(1).nonzero()[0])
            value = wide[row][bad[row]].reshape(-1)[0].item()
            raise ValueError(
                f"Column {col!r} of {where(row)} has the value {value!r}, which is not a whole "
                f"number in the range of dtype={self.dtype} (token ids); pass integer token ids, "
                "or a floating dtype such as torch.float32 for feature vectors."
            )

    def _from_rows(self, rows: Sequence[Any], where: Callable[[int], str]) -> dict[str, list]:
        if len(rows) == 0:
            raise ValueError(_EMPTY)
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise TypeError(
                    f"Column {self.columns[0]!r} of {where(i)} cannot be read: the row is a "
                    f"{type(row).__name__}, expected a mapping (dict) with columns "
                    f"{list(self.columns)}."
                )
            for col in self.columns:
                if col not in row:
                    raise ValueError(
                        f"Column {col!r} is missing from {where(i)}, which has columns "
                        f"{list(row)}; rename the column or {_NAMES_HINT}."
                    )
        return {col: [row[col] for row in rows] for col in self.columns}

    def _from_columns(self, data: Mapping) -> tuple[dict[str, Any], int]:
        for col in self.columns:
            if col not in data:
                raise ValueError(
                    f"Column {col!r} is missing from the batch of columns, which has columns "
                    f"{list(data)}; rename the column or {_NAMES_HINT}."
                )
        lengths = {c: _length(data[c]) for c in self.columns}
        if len(set(lengths.values())) != 1 or None in lengths.values():
            raise ValueError(
                f"A mapping is read as a batch of columns holding one value per row, but the "
                f"columns have lengths {lengths}; to collate a single row, pass [row]."
            )
        n = lengths[self.columns[0]] or 0
        if n == 0:
            raise ValueError(_EMPTY)
        return {c: data[c] for c in self.columns}, n

    def _stack(self, values: Any, col: str, where: Callable[[int], str], n: int) -> torch.Tensor:
        """Stack ``n`` item values into a real tensor ``(n, *item)``, one call per row at most."""
        if isinstance(values, (np.ndarray, torch.Tensor)) and values.dtype != object:
            try:  # a whole numeric column at once (e.g. from a datasets.Dataset)
                out = _tensor(values)
                if not out.is_complex():
                    return out
            except (TypeError, ValueError, RuntimeError):
                pass  # diagnose row by row below
        items = [_as_item(values[i], col, where(i)) for i in range(n)]
        for i, t in enumerate(items):
            if t.shape != items[0].shape:
                raise ValueError(
                    f"Column {col!r} of {where(i)} has shape {tuple(t.shape)} but column {col!r} "
                    f"of {where(0)} has shape {tuple(items[0].shape)}; every item must have the "
                    "same shape (pad or truncate them to one shape)."
                )
        return torch.stack(items)

    def _stack_padded(
        self, cols: dict[str, Any], where: Callable[[int], str], n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both item columns as ``(n, L)``, each 1-D item right-padded with ``pad_value`` to the
        longest item of the batch (token ids of different lengths)."""
        items = {c: [_as_item(cols[c][i], c, where(i)) for i in range(n)] for c in self._items}
        for c, ts in items.items():
            for i, t in enumerate(ts):
                if t.ndim != 1:
                    raise ValueError(
                        f"Column {c!r} of {where(i)} has shape {tuple(t.shape)}; `pad_value` "
                        "pads 1-D items (sequences of token ids) to one length. Pass items of "
                        "shape (L,), or pad them yourself and leave pad_value=None."
                    )
        every = [t for ts in items.values() for t in ts]
        length = max(t.shape[0] for t in every)
        floating = any(t.is_floating_point() for t in every)
        out = []
        for c in self._items:
            dtype = torch.float64 if floating else torch.int64
            padded = torch.full((n, length), self.pad_value, dtype=dtype)  # type: ignore[arg-type]
            for i, t in enumerate(items[c]):
                padded[i, : t.shape[0]] = t.to(dtype)
            out.append(padded)
        return out[0], out[1]

    @staticmethod
    def _labels(values: Any, col: str, where: Callable[[int], str], n: int) -> torch.Tensor:
        """Return labels as long ``(n,)``; only 0/1 (or 0.0/1.0) pass."""
        fix = "use the int 0 (first item preferred) or 1 (second item preferred)"
        if isinstance(values, (np.ndarray, torch.Tensor)) and values.dtype != object:
            t = _tensor(values).reshape(n, -1) if values.ndim else None
            if t is not None and t.shape[1] == 1 and not (t.dtype == torch.bool or t.is_complex()):
                bad = ((t[:, 0] != 0) & (t[:, 0] != 1)).nonzero()
                if len(bad) == 0:
                    return t[:, 0].long()
                values, n = t[:, 0].tolist(), int(bad[0]) + 1  # report the first bad row below
        out = []
        for i in range(n):
            v = values[i]
            if isinstance(v, (torch.Tensor, np.ndarray, np.generic)):
                if int(np.prod(v.shape)) != 1:
                    raise ValueError(
                        f"Column {col!r} of {where(i)} has shape {tuple(v.shape)}; {fix}."
                    )
                v = v.reshape(-1)[0].item()
            if isinstance(v, bool):
                raise TypeError(f"Column {col!r} of {where(i)} is a bool ({v}); {fix}.")
            if not isinstance(v, (int, float)):
                raise TypeError(f"Column {col!r} of {where(i)} is {_describe(values[i])}; {fix}.")
            if v not in (0, 1):
                raise ValueError(f"Column {col!r} of {where(i)} is {v!r}, not 0 or 1; {fix}.")
            out.append(int(v))
        return torch.tensor(out, dtype=torch.long)


def _tensor(value: Any) -> torch.Tensor:
    """``torch.as_tensor``, copying read-only numpy arrays (e.g. zero-copy views of arrow data)."""
    if isinstance(value, np.ndarray) and not value.flags.writeable:
        return torch.tensor(value)
    return torch.as_tensor(value)


def _length(values: Any) -> int | None:
    if isinstance(values, (str, bytes)) or getattr(values, "ndim", 1) == 0:
        return None
    return len(values) if hasattr(values, "__len__") else None


def _as_item(value: Any, col: str, loc: str) -> torch.Tensor:
    try:
        t = _tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        t, why = None, str(err)
    else:
        why = "complex values are not supported"
    if t is None or t.is_complex():
        raise TypeError(
            f"Column {col!r} of {loc} cannot be converted to a real tensor ({why}): expected a "
            f"number, a (nested) list of numbers, a numpy array or a tensor, got "
            f"{_describe(value)}. Encode text into numbers (e.g. embeddings) first."
        )
    return t


def _source(dataset: Any, columns: tuple[str, ...]) -> PairSource:
    import datasets as hf

    check_split(dataset)
    if isinstance(dataset, (hf.IterableDataset, torch.utils.data.IterableDataset)):
        raise TypeError(
            f"`dataset` is an iterable {type(dataset).__name__} without a length, but Laplace "
            "needs N; pass a map-style dataset (e.g. load without streaming=True)."
        )
    is_hf = isinstance(dataset, hf.Dataset)
    if (
        is_hf
        or isinstance(dataset, (list, tuple))
        or (isinstance(dataset, torch.utils.data.Dataset) and hasattr(dataset, "__len__"))
    ):
        check_not_empty(dataset)
        if not is_hf:
            return PairSource(dataset)
        for col in columns:
            if col not in dataset.column_names:
                raise ValueError(
                    f"Column {col!r} is missing from `dataset`, which has columns "
                    f"{dataset.column_names}; rename it (dataset.rename_column) or {_NAMES_HINT}."
                )
        # dtype=None keeps the stored dtype; the numpy format alone would cast floats to float32.
        return PairSource(
            dataset, dataset.select_columns(list(columns)).with_format("numpy", dtype=None)
        )
    example = "{" + ", ".join(f"{c!r}: [...]" for c in columns) + "}"
    hint = f"datasets.Dataset.from_dict({example}) or a list of rows"
    if type(dataset).__name__ == "DataFrame":
        hint = "datasets.Dataset.from_pandas(df)"
    elif isinstance(dataset, (torch.Tensor, np.ndarray)):
        hint += "; tensors x (N, 2, *item), y (N,) can go to DataLoader(TensorDataset(x, y))"
    raise TypeError(
        "`dataset` must be a datasets.Dataset, a list of row mappings or a map-style torch "
        f"Dataset of row mappings, got {type(dataset).__name__}; pass {hint}."
    )


def preference_dataloader(
    dataset: Any,
    batch_size: int = 32,
    shuffle: bool = False,
    *,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    **columns: Unpack[PairCollatorKeywords],
) -> DataLoader:
    """Build a DataLoader of ``(x, y)`` pair batches from preference data.

    The first row is collated up front, so a malformed dataset fails here, not mid-training.

    Args:
        dataset: A ``datasets.Dataset`` (fetched one batch at a time as numpy columns), a list
            of row mappings, or a map-style torch Dataset of row mappings; see
            :class:`PairCollator` for the columns and the value types.
        batch_size: Number of pairs ``B`` per batch.
        shuffle: Reshuffle the rows every epoch; ``False`` keeps the dataset order.
        generator: Random generator for shuffling.
        num_workers: DataLoader worker processes.
        drop_last: Drop the last incomplete batch.
        **columns: The keywords of :class:`PairCollator` (``first``, ``second``, ``label``,
            or ``chosen`` and ``rejected``; ``dtype``, ``pad_value``).

    Returns:
        A DataLoader yielding ``x`` ``(B, 2, *item)`` and ``y`` ``(B,)`` long. Its ``.dataset``
        is a view with ``len`` = number of pairs, whose ``.dataset`` is the one passed in. Errors
        name rows by their index in ``dataset``.

    Example:
        >>> rows = [{"x0": [0.0, 1.0], "x1": [2.0, 3.0], "label": i % 2} for i in range(3)]
        >>> loader = preference_dataloader(rows, batch_size=2)
        >>> [(tuple(x.shape), y.tolist()) for x, y in loader], len(loader.dataset)
        ([((2, 2, 2), [0, 1]), ((1, 2, 2), [0])], 3)
    """
    collate = PairCollator(**columns)
    return pair_dataloader(
        lambda: _source(dataset, collate.columns),
        collate,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=drop_last,
    )
