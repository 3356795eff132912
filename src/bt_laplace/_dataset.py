"""Private: a dataset's rows in batches that know their indices, and the DataLoader over them
(shared by :mod:`bt_laplace.data` and :mod:`bt_laplace.text`, so that a collator's errors name
rows by their index in the dataset)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from bt_laplace._checks import check_positive_int

__all__ = ["Batch", "PairSource", "check_split", "check_not_empty", "pair_dataloader"]


class Batch:
    """Rows (or a mapping of columns) together with their indices in the dataset."""

    __slots__ = ("data", "indices")

    def __init__(self, data: Any, indices: Sequence[int]) -> None:
        self.data, self.indices = data, indices


class PairSource(torch.utils.data.Dataset):
    """Map-style view of ``dataset`` (kept as ``.dataset``) whose batches know their indices."""

    def __init__(self, dataset: Any, view: Any = None) -> None:
        self.dataset, self._view = dataset, dataset if view is None else view

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self._view[index]

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        indices = list(indices)
        if self._view is not self.dataset:  # datasets.Dataset: one take -> dict of numpy columns
            return Batch(self._view[indices], indices)
        return Batch([self.dataset[i] for i in indices], indices)


def check_split(dataset: Any) -> None:
    """Refuse a ``DatasetDict`` (several splits), asking for one split."""
    import datasets as hf

    if isinstance(dataset, (hf.DatasetDict, hf.IterableDatasetDict)):
        raise TypeError(f"`dataset` is a {type(dataset).__name__}; pick a split: dataset['train'].")


def check_not_empty(dataset: Any) -> None:
    if len(dataset) == 0:
        raise ValueError("`dataset` is empty (0 rows); pass at least one pair.")


def pair_dataloader(
    source: Callable[[], PairSource],
    collate: Callable[[Any], Any],
    *,
    batch_size: Any,
    shuffle: Any,
    num_workers: Any,
    **loader_kwargs: Any,
) -> DataLoader:
    """A DataLoader over ``source()`` with ``collate``, its options checked first and its
    first row collated up front, so that a bad dataset fails here, naming its row, not in the
    first batch of a fit."""
    check_positive_int("batch_size", batch_size)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"`num_workers` must be a non-negative int, got {num_workers!r}.")
    if not isinstance(shuffle, bool):
        raise TypeError(f"`shuffle` must be a bool, got {type(shuffle).__name__}.")
    rows = source()
    collate(rows.__getitems__([0]))
    return DataLoader(
        rows,
        collate_fn=collate,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        **loader_kwargs,
    )
