"""Private: the columns of a TRL row read, and lists of token ids cut to ``max_length``, padded
into ``(B, K, L)`` tensors and stacked (shared by :mod:`bt_laplace.text` and
:mod:`bt_laplace.serve`).

Shape legend: ``B`` rows, ``K`` items a row (2 for a pair, 1 for an item), ``L`` the longest
item of the batch."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from bt_laplace.choices import Truncation

__all__ = ["column_ids", "column_text", "cut", "pad", "concat", "margins"]


def column_ids(row: Mapping[str, Any], col: str, where: str) -> list[int]:
    """The token ids in column ``col`` of ``row``, a non-empty list of ints ``>= 0``."""
    if col not in row:
        raise ValueError(
            f"Column {col!r} is missing from {where}, which has columns {list(row)}; token "
            "ids come in pairs of columns: chosen_ids and rejected_ids."
        )
    value = row[col]
    if isinstance(value, torch.Tensor) or hasattr(value, "tolist"):
        value = value.tolist()
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise TypeError(
            f"Column {col!r} of {where} must be a non-empty list of token ids (ints >= 0), "
            f"got {str(value)[:60]!r}."
        )
    return list(value)


def column_text(row: Mapping[str, Any], col: str, where: str) -> str:
    """The string in column ``col`` of a text row."""
    value = row[col]
    if not isinstance(value, str):
        raise TypeError(
            f"Column {col!r} of {where} is {type(value).__name__} {str(value)[:60]!r}; in a "
            "text row prompt, chosen and rejected are all strings (or all lists of "
            "{'role', 'content'} messages)."
        )
    return value


def cut(
    row: tuple[list[int], ...], limit: int | None, truncation: Truncation, where: str
) -> tuple[list[int], ...]:
    """Apply ``max_length`` (``limit``) to the items of a row (a pair ``(rejected, chosen)``,
    or one item): refuse a longer item, or cut it on the side ``truncation`` names."""
    if limit is None or max(len(ids) for ids in row) <= limit:
        return row
    if truncation == Truncation.ERROR:
        item = next(i for i, ids in enumerate(row) if len(ids) > limit)
        name = f"The {('rejected', 'chosen')[item]} text of " if len(row) == 2 else ""
        raise ValueError(
            f"{name or 'The text of '}{where} has {len(row[item])} "
            f"tokens, more than max_length={limit}; raise max_length, pass "
            "truncation='left' or 'right' to cut it"
            + (
                ", or drop such rows first as TRL's RewardTrainer does: "
                "dataset.filter(collator.fits)."
                if len(row) == 2
                else "."
            )
        )
    if truncation == Truncation.LEFT:
        return tuple(ids[-limit:] for ids in row)
    return tuple(ids[:limit] for ids in row)


def pad(
    rows: Sequence[tuple[list[int], ...]], pad_id: int, side: str, multiple: int | None
) -> dict[str, torch.Tensor]:
    """Rows of ``K`` items each as ``input_ids`` and ``attention_mask`` ``(B, K, L)``, padded
    with ``pad_id`` on ``side`` to the longest item, rounded up to ``multiple``."""
    length = max(len(ids) for row in rows for ids in row)
    if multiple is not None:
        length = -(-length // multiple) * multiple
    shape = (len(rows), len(rows[0]), length)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.long)
    for i, row in enumerate(rows):
        for j, item in enumerate(row):
            span = slice(0, len(item)) if side == "right" else slice(-len(item), None)
            ids[i, j, span] = torch.tensor(item, dtype=torch.long)
            mask[i, j, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


def concat(parts: Sequence[dict[str, torch.Tensor]], pad_id: int, side: str) -> dict[str, Any]:
    """Token dicts ``(B_i, L_i)`` padded to the longest ``L`` on ``side`` and stacked."""
    if len(parts) == 1:
        return dict(parts[0])
    length = max(p["input_ids"].shape[1] for p in parts)
    out = {}
    for key in parts[0]:
        padded = []
        for p in parts:
            t = p[key]
            if t.shape[1] < length:
                fill = t.new_full(
                    (t.shape[0], length - t.shape[1]), pad_id if key == "input_ids" else 0
                )
                t = torch.cat([t, fill] if side == "right" else [fill, t], dim=1)
            padded.append(t)
        out[key] = torch.cat(padded)
    return out


def margins(rows: Sequence[Mapping[str, Any]], where: Callable[[int], str]) -> torch.Tensor | None:
    """TRL's ``margin`` column ``(B,)`` float, or None if no row has one."""
    has = ["margin" in row for row in rows]
    if not any(has):
        return None
    if not all(has):
        i = has.index(False)
        raise ValueError(
            f"Column 'margin' is missing from {where(i)} but present in other rows; give "
            "every row a margin (0.0 for none) or drop the column."
        )
    values = []
    for i, row in enumerate(rows):
        v = row["margin"]
        v = v.item() if hasattr(v, "item") else v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(
                f"Column 'margin' of {where(i)} is {v!r}; a margin is a finite number (the "
                "reward gap TRL's loss asks of chosen over rejected)."
            )
        values.append(float(v))
    return torch.tensor(values, dtype=torch.float32)
