"""Private: a loader of pairs checked batch by batch before laplace-torch sees it.

Shape legend: ``B`` pairs, ``2`` the two items of a pair, ``*item`` one item.

Any iterable of ``(x, y)`` batches works, a plain ``DataLoader`` as well as
:func:`~bt_laplace.preference_dataloader`, one over an ``IterableDataset`` or a streaming
``datasets`` dataset, or a generator-backed loader without ``len``: the pairs are counted as
they pass, never read from ``len(loader.dataset)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

__all__ = ["CheckedPairLoader", "check_pair_batch", "batch_on", "split_batch"]


def split_batch(batch: Any, dict_key_y: str = "labels") -> tuple[Any, torch.Tensor]:
    """``(x, y)`` of a batch: a tuple, or a dict holding the labels under ``dict_key_y``
    (then ``x`` is the dict itself; the model reads only its token keys)."""
    if isinstance(batch, Mapping):
        return batch, batch[dict_key_y]
    x, y = batch
    return x, y


def batch_on(batch: Any, dict_key_y: str, device: torch.device) -> tuple[Any, torch.Tensor]:
    """``(x, y)`` of a batch as laplace-torch unpacks it (a tuple, or a dict holding the labels
    under ``dict_key_y``), moved to ``device``."""
    if isinstance(batch, Mapping):
        x: Any = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return x, batch[dict_key_y].to(device)
    x, y = batch
    return x.to(device), y.to(device)


def check_pair_batch(batch: Any, index: int, name: str, dict_key_y: str = "labels") -> int:
    """Check one batch ``(x (B, 2, *item), y (B,))`` (or a dict holding ``dict_key_y``) and
    return ``B``. Labels are the index, 0 or 1, of the preferred item of each pair."""
    where = f"`{name}` batch {index}"
    if isinstance(batch, Mapping):
        if dict_key_y not in batch:
            raise ValueError(
                f"{where} is a dict without labels under {dict_key_y!r} (keys: "
                f"{sorted(batch)}); add them or pass dict_key_y=... naming the label key."
            )
        x, y = None, batch[dict_key_y]
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
    else:
        raise TypeError(
            f"{where} must be (x, y) with x pairs (B, 2, *item) and y labels (B,), got "
            f"{type(batch).__name__}"
            + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
            + "; build the loader with bt_laplace.preference_dataloader."
        )
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"{where}: labels must be a tensor of 0/1 (index of the preferred item), got "
            f"{type(y).__name__}"
            + (f" such as {y[0]!r}" if isinstance(y, (list, tuple)) and y else "")
            + "; map them to 0/1 first (preference_dataloader does, and says which row is bad)."
        )
    if y.ndim != 1:
        raise ValueError(
            f"{where}: labels must have shape (B,), got {tuple(y.shape)}; "
            + ("use y.squeeze(-1)." if y.ndim == 2 and y.shape[-1] == 1 else "one label a pair.")
        )
    bad = ~((y == 0) | (y == 1))
    if bool(bad.any()):
        value = y[bad][0].item()
        raise ValueError(
            f"{where}: labels must be 0 or 1 (the index of the preferred item of each pair), "
            f"got {value!r} at row {int(bad.nonzero()[0])}; ties and soft labels are not "
            "Bradley-Terry labels."
        )
    if isinstance(x, Mapping):  # token dict (TextPairCollator): input_ids (B, 2, L)
        ids = x.get("input_ids")
        if not isinstance(ids, torch.Tensor) or ids.ndim != 3 or ids.shape[:2] != (len(y), 2):
            raise ValueError(
                f"{where}: a token dict x needs input_ids of shape (B, 2, L) with B = {len(y)} "
                f"labels, got {None if ids is None else tuple(getattr(ids, 'shape', ()))}; "
                "build the loader with bt_laplace.text_preference_dataloader."
            )
    elif x is not None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{where}: x must be a tensor of pairs (B, 2, *item), got {type(x).__name__}."
            )
        if x.ndim < 2 or x.shape[0] != y.shape[0] or x.shape[1] != 2:
            raise ValueError(
                f"{where}: x must have shape (B, 2, *item) with B = {y.shape[0]} labels, got "
                f"{tuple(x.shape)}; stack the two items of each pair on dim 1."
            )
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"{where}: x holds NaN or infinite values; clean or drop those pairs first."
            )
    return int(y.shape[0])


class CheckedPairLoader:
    """Wraps an iterable of pair batches: checks each batch and counts the pairs.

    Has a ``dataset`` whose ``len`` is the pairs counted so far (laplace-torch reads it; the
    fit sets ``n_data`` from :attr:`n_pairs` afterwards).

    Args:
        loader: The user's iterable of batches.
        name: The argument name, for messages.
        dict_key_y: Label key of dict batches.
        margin: Whether the fit uses TRL's ``margin`` column of token batches (bt_laplace's
            pair backend does); False refuses batches with one rather than ignore it.
    """

    def __init__(
        self, loader: Iterable[Any], name: str, dict_key_y: str = "labels", *, margin: bool = True
    ) -> None:
        self.loader = loader
        self.margin = margin
        self.name = name
        self.dict_key_y = dict_key_y
        self.n_pairs = 0
        self.dataset = _Count(self)
        #: shape of one item of real-valued inputs (None for token ids and dicts, whose
        #: length may change from batch to batch)
        self.item_shape: tuple[int, ...] | None = None
        self.item_dtype: torch.dtype | None = None

    def __iter__(self) -> Iterator[Any]:
        self.n_pairs = 0
        for i, batch in enumerate(self.loader):
            self.n_pairs += check_pair_batch(batch, i, self.name, self.dict_key_y)
            x = None if isinstance(batch, Mapping) else batch[0]
            if isinstance(x, Mapping):  # (tokens, labels): one dict, as laplace-torch takes it
                batch = {**x, self.dict_key_y: batch[1]}
                x = None
            if not self.margin and isinstance(batch, Mapping) and "margin" in batch:
                raise NotImplementedError(
                    f"`{self.name}` batch {i} has a 'margin' column (TRL's), which only "
                    "bt_laplace's pair backend puts in the likelihood; the `backend` passed "
                    "would ignore it. Use the default backend, or drop the column "
                    "(dataset.remove_columns('margin')) to fit without margins."
                )
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                shape = tuple(x.shape[2:])
                if self.item_shape is None:
                    self.item_shape, self.item_dtype = shape, x.dtype
                elif shape != self.item_shape:
                    raise ValueError(
                        f"`{self.name}` batch {i} has items of shape {shape}, earlier batches "
                        f"{self.item_shape}; every pair needs items of one shape (pad or "
                        "resize them in the dataset)."
                    )
                elif x.dtype != self.item_dtype:
                    raise ValueError(
                        f"`{self.name}` batch {i} has dtype {x.dtype}, earlier batches "
                        f"{self.item_dtype}; give every batch the model's dtype "
                        "(preference_dataloader(..., dtype=...))."
                    )
            yield batch
        if self.n_pairs == 0:
            raise ValueError(f"`{self.name}` yielded no pairs; pass a non-empty loader.")


class _Count:
    def __init__(self, owner: CheckedPairLoader) -> None:
        self.owner = owner

    def __len__(self) -> int:
        try:
            return len(self.owner.loader.dataset)  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # no dataset, or an IterableDataset
            return self.owner.n_pairs
