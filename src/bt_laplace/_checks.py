"""Private input validation shared by the public entry points, and the optional progress bar."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import torch

from bt_laplace._sharding import local_value
from bt_laplace.choices import Choice

__all__ = [
    "group_index",
    "BTLaplaceWarning",
    "check_choice",
    "check_positive_int",
    "check_tensor",
    "check_finite",
    "check_probability",
    "check_centering",
    "progress",
    "all_finite",
    "check_input_dtype",
    "n_rows",
]

T = TypeVar("T")


class BTLaplaceWarning(UserWarning):
    """Category of every warning bt_laplace emits."""


def check_choice(name: str, value: Any, choices: tuple[str, ...] | type[Choice]) -> str:
    """Return ``value`` if it is one of ``choices`` (a :class:`~bt_laplace.choices.Choice`
    class: its member), else raise ``ValueError`` naming ``name``."""
    if isinstance(choices, type) and issubclass(choices, Choice):
        return choices.check(name, value)
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


def check_probability(name: str, value: Any) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite number in ``(0, 1)``."""
    value = check_finite(name, value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"`{name}` must be a probability in (0, 1), got {value}.")
    return value


def check_centering(value: Any) -> float:
    """TRL's ``center_rewards_coefficient`` as a float: None is 0; else a finite number
    ``>= 0``, or ``ValueError`` naming it."""
    if value is None:
        return 0.0
    value = check_finite("center_rewards_coefficient", value)
    if value < 0:
        raise ValueError(
            f"`center_rewards_coefficient` must be >= 0 (TRL's RewardConfig value the model was "
            f"trained with; None or 0 for none), got {value}."
        )
    return value


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


def group_index(groups: Any, n: int) -> tuple[torch.Tensor, list[Hashable]]:
    """Group ids of ``n`` items (``None``: one group, a LongTensor ``(n,)`` or a list of ``n``
    hashables such as prompts) -> (index ``(n,)`` into the keys, keys in order of first
    appearance)."""
    if groups is None:
        return torch.zeros(n, dtype=torch.long), [0]
    if isinstance(groups, torch.Tensor):
        if groups.ndim != 1 or groups.is_floating_point() or groups.is_complex():
            raise ValueError(
                f"`groups` must be integer ids of shape (B,), got dtype {groups.dtype} and "
                f"shape {tuple(groups.shape)}; pass a LongTensor with one id per item."
            )
        if groups.shape[0] == n and n > 0:  # vectorized: no Python loop over the items
            return _tensor_group_index(groups)
        values: Sequence[Hashable] = groups.tolist()
    elif isinstance(groups, Sequence) and not isinstance(groups, str):
        values = groups
    else:
        raise TypeError(
            f"`groups` must be a LongTensor (B,) or a list of one hashable id per item "
            f"(e.g. the prompt), got {type(groups).__name__}."
        )
    if len(values) != n:
        raise ValueError(
            f"`groups` must hold one id per item ({n}), got {len(values)}; pass the "
            "prompt (or prompt id) of every item."
        )
    keys: dict[Hashable, int] = {}
    try:
        index = [keys.setdefault(v, len(keys)) for v in values]
    except TypeError:
        bad = next(v for v in values if not isinstance(v, Hashable))
        raise TypeError(
            f"`groups` must hold hashable ids, got a {type(bad).__name__}; for conversational "
            "prompts pass e.g. json.dumps(prompt) or an integer id per prompt."
        ) from None
    return torch.tensor(index, dtype=torch.long), list(keys)


def _tensor_group_index(groups: torch.Tensor) -> tuple[torch.Tensor, list[Hashable]]:
    """:func:`group_index` of integer ids ``(n,)``, ``n > 0``: the same index and keys."""
    keys, inverse = torch.unique(groups, return_inverse=True)  # keys sorted
    positions = torch.arange(groups.shape[0], device=groups.device)
    first = torch.full(keys.shape, groups.shape[0], device=groups.device)
    first = first.scatter_reduce(0, inverse, positions, "amin")
    by_first = torch.argsort(first)  # keys in order of first appearance
    rank = torch.empty_like(by_first)
    rank[by_first] = torch.arange(keys.shape[0], device=groups.device)
    return rank[inverse].cpu(), keys[by_first].tolist()


def all_finite(t: torch.Tensor, chunk: int = 2**20) -> bool:
    """Whether every value of ``t`` is finite, checked ``chunk`` values at a time: ``isfinite``
    of a whole weight makes four temporaries of its size (64 MB for a 16M-parameter bf16
    weight), which a fit that must not copy the network cannot afford. A sharded (FSDP2)
    parameter is checked on this rank's shard: no collective, and every rank checks its own."""
    flat = local_value(t).detach().reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))
