"""Private input validation shared by the public entry points, and the optional progress bar."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import torch

__all__ = [
    "BTLaplaceWarning",
    "check_choice",
    "check_positive_int",
    "check_tensor",
    "check_finite",
    "progress",
    "check_input_dtype",
    "n_rows",
]

T = TypeVar("T")


class BTLaplaceWarning(UserWarning):
    """Category of every warning bt_laplace emits."""


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` as a string if it is one of ``choices``, else raise ``ValueError``."""
    value = getattr(value, "value", value)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
    return str(value)


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is a positive int, else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value}.")
    return value


def check_tensor(name: str, value: Any) -> torch.Tensor:
    """Raise ``TypeError`` unless ``value`` is a tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"`{name}` must be a torch.Tensor, got {type(value).__name__}; "
            "convert it with torch.as_tensor(...)."
        )
    return value


def check_finite(name: str, value: float) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    return float(value)


def progress(iterable: Iterable[T], enabled: bool, desc: str) -> Iterable[T]:
    """``iterable`` with a tqdm bar when ``enabled``; tqdm.auto is imported only then (in a
    notebook without ipywidgets its import alone prints a warning)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc)


def check_input_dtype(x: Any, dtype: torch.dtype, subject: str, fix: str) -> None:
    """Refuse floating inputs of another dtype than the model's parameters (token ids pass)."""
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
        raise ValueError(
            f"{subject} dtype {x.dtype} but the model's parameters are {dtype}; convert one "
            f"of them ({fix})."
        )


def n_rows(x: Any) -> int:
    """Items or pairs in a batch ``x``: a tensor, or a token dict holding ``input_ids``."""
    return int(x["input_ids"].shape[0] if isinstance(x, Mapping) else x.shape[0])
