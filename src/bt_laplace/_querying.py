"""Private: what every query of :class:`~bt_laplace.RewardPosterior` shares: running under its
lock with autograd on, the weights check, batching that keeps memory to one batch, and the
refusal of overflowed variances."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from bt_laplace._checks import n_rows
from bt_laplace._sharding import reshard
from bt_laplace.inputs import split_rows

__all__ = ["WeightsGuard", "autograd_query", "finite_variance", "per_batch"]


def finite_variance(variance: torch.Tensor) -> torch.Tensor:
    """Refuse variances that overflowed, rather than return them."""
    if not bool(torch.isfinite(variance).all()):
        raise RuntimeError(
            f"reward variances overflowed {variance.dtype} (largest finite input rows give "
            "rewards far outside the training range, or the prior precision is tiny); scale "
            "the inputs like the training ones, or use a float64 model and posterior."
        )
    return variance


def per_batch(fn: Callable[[Any], tuple[torch.Tensor, ...]], x: Any, size: int) -> Any:
    """``fn`` over ``x`` in batches of ``size`` rows, its results written into tensors made
    once: no per-batch result outlives its batch, so memory stays that of one batch (many small
    survivors between freed batch buffers would keep the allocator from reusing them)."""
    outs: list[torch.Tensor] | None = None
    start = 0
    for xb in split_rows(x, size):
        parts = fn(xb)
        n = parts[0].shape[0]
        if outs is None:
            total = n_rows(x)
            outs = [p.new_empty((total, *p.shape[1:])) for p in parts]
        for out, part in zip(outs, parts, strict=True):
            out[start : start + n] = part
        start += n
    assert outs is not None
    return tuple(outs)


_F = TypeVar("_F", bound=Callable[..., Any])


def autograd_query(method: _F) -> _F:
    """Run a query under the posterior's lock (queries from several threads run one at a
    time: they share hooks on one model), after checking that the model's weights are those
    it was fitted on, with autograd available also inside ``torch.inference_mode()`` (scoring
    loops often use it): the variances come from one backward pass through the model."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.lock, torch.inference_mode(False):
            self.weights.check()
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class WeightsGuard:
    """Refuses queries once the weights of any of ``modules`` changed: which tensor each
    parameter and buffer is, how often it was changed in place, its dtype and device, taken at
    construction and compared by :meth:`check` (a cheap fingerprint, checked on every query).
    Every posterior reads the user's model itself (a last-layer one too: no copy, see
    :mod:`bt_laplace.structures.inplace`), so training it further, loading other weights into
    it or casting it is seen here."""

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = list({id(m): m for m in modules}.values())
        self.key = self._key()

    def _key(self) -> list[tuple[int, int, torch.dtype, torch.device, tuple[int, ...]]]:
        # which tensor, how often changed in place, its dtype, device and shape; not where its
        # memory lives: sending the model to another process (multiprocessing, spawn) moves
        # its storage to shared memory without changing a weight. FSDP2: the shards, which
        # are the same objects between forwards (and changed in place by an optimizer step)
        for m in self.modules:
            reshard(m)
        tensors = [t for m in self.modules for t in (*m.parameters(), *m.buffers())]
        return [(id(t), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors]

    def check(self) -> None:
        """Raise ``RuntimeError`` naming the fix if the weights changed."""
        if self._key() != self.key:
            raise RuntimeError(
                "the model's weights changed since the posterior was fitted (trained further, "
                "reloaded or moved to another dtype or device); its curvature belongs to the "
                "old weights. Refit with bt_laplace.fit_reward_posterior, or restore the weights."
            )
