"""The pair wrapper: one reward network, two modes of input.

Shape legend: ``B`` pairs or items, ``2`` the two items of a pair (index 0 first, index 1
second), ``*item`` the shape of one item (``item_ndim`` dimensions).

A Bradley-Terry reward model scores one item, ``r(x)``, and is trained on pairs with

.. math:: P(\\text{item 1} \\succ \\text{item 0}) = \\sigma(r(x_1) - r(x_0)).

:class:`PairwiseRewardModel` makes any single-item network speak both languages that
laplace-torch's ``likelihood="reward_modeling"`` expects: pairs ``(B, 2, *item)`` give logits
``(B, 2)`` whose softmax is the Bradley-Terry probability, items ``(B, *item)`` give rewards
``(B, 1)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bt_laplace._checks import check_tensor

__all__ = ["PairwiseRewardModel"]


class PairwiseRewardModel(nn.Module):
    """Wrap a single-item reward network so it also scores pairs.

    The mode is decided from the known item rank, never guessed: an input with
    ``item_ndim + 2`` dimensions and size 2 on dim 1 is a batch of pairs, one with
    ``item_ndim + 1`` dimensions is a batch of items, and anything else is an error.

    Args:
        net: Any module that maps items ``(N, *item)`` to rewards ``(N,)``, ``(N, 1)``, or an
            object with a ``.logits`` attribute of one of those shapes (Hugging Face style).
        item_ndim: Number of dimensions of one item: 1 for feature vectors ``(D,)`` or token
            ids ``(L,)``, 3 for images ``(C, H, W)``. Keyword-only.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = PairwiseRewardModel(nn.Linear(3, 1))
        >>> model(torch.randn(4, 2, 3)).shape  # pairs -> logits
        torch.Size([4, 2])
        >>> model(torch.randn(5, 3)).shape  # items -> rewards
        torch.Size([5, 1])
    """

    def __init__(self, net: nn.Module, *, item_ndim: int = 1) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"`net` must be a torch.nn.Module, got {type(net).__name__}.")
        if isinstance(item_ndim, bool) or not isinstance(item_ndim, int) or item_ndim < 0:
            raise ValueError(f"`item_ndim` must be a non-negative int, got {item_ndim!r}.")
        self.net = net
        self.item_ndim = item_ndim

    def is_pair_batch(self, x: torch.Tensor) -> bool:
        """Return True for pairs ``(B, 2, *item)``, False for items ``(B, *item)``.

        Raises:
            ValueError: If ``x`` fits neither mode.
        """
        check_tensor("x", x)
        if x.ndim == self.item_ndim + 2 and x.shape[1] == 2:
            return True
        if x.ndim == self.item_ndim + 1:
            return False
        raise ValueError(
            f"`x` must have shape (B, 2, *item) for pairs or (B, *item) for items with "
            f"{self.item_ndim}-dimensional items (item_ndim={self.item_ndim}), got "
            f"{tuple(x.shape)}; stack the two items of a pair on dim 1, or set `item_ndim` "
            "to the number of dimensions of one item."
        )

    def score(self, items: torch.Tensor) -> torch.Tensor:
        """Score flat items ``(N, *item)`` and return rewards ``(N,)``."""
        out: Any = self.net(items)
        if not isinstance(out, torch.Tensor) and hasattr(out, "logits"):
            out = out.logits
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"`net` must return a tensor or an object with `.logits`, got {type(out).__name__}."
            )
        n = items.shape[0]
        if out.shape == (n,):
            return out
        if out.shape == (n, 1):
            return out.squeeze(1)
        raise ValueError(
            f"`net` must return one reward per item, shape ({n},) or ({n}, 1), got "
            f"{tuple(out.shape)}; a reward model has a single output."
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score pairs or items.

        Args:
            x: Pairs ``(B, 2, *item)`` or items ``(B, *item)``.

        Returns:
            Logits ``(B, 2)`` for pairs (``[:, 1] - [:, 0]`` is the Bradley-Terry logit of
            item 1 over item 0) or rewards ``(B, 1)`` for items.
        """
        if self.is_pair_batch(x):
            b = x.shape[0]
            return self.score(x.reshape(2 * b, *x.shape[2:])).reshape(b, 2)
        return self.score(x).unsqueeze(1)
