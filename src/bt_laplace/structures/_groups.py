"""Private: items laid out by group, for rewards relative to the mean of each item's group.

Shape legend: ``N`` items, ``G`` groups, ``L`` positions of a sequence (1 for plain items),
``rows``/``cols`` the two sides of a weight's Jacobian ``u v^T``.

The relative variance of item ``n`` in group ``g`` is ``(J_n - Jbar_g) Sigma (J_n - Jbar_g)^T``
with ``Jbar_g`` the mean Jacobian of the group. For a weight whose covariance is diagonal in a
basis (``diag``, ``kron``), ``Jbar_g`` is the group's sum of ``uh vh^T`` over its items, one
``(rows, cols)`` matrix per group: :class:`GroupLayout` packs the items into zero-padded
``(groups, members, rows)`` blocks, groups of alike size together and a few groups at a time,
so that every group's mean and every item's cross term come from batched matrix products, with
no Python loop over groups and memory within a budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["GroupLayout", "GroupChunk", "group_means", "group_order", "CHUNK_BUDGET"]

#: numbers one chunk of padded group blocks may hold
CHUNK_BUDGET = 2**23


def group_means(values: torch.Tensor, index: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``(N, ...)`` over each group, ``(G, ...)``, for group ids ``index``
    ``(N,)`` and group sizes ``counts`` ``(G,)`` (all positive).

    Example:
        >>> group_means(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1, 0, 1]),
        ...             torch.tensor([1, 2]))
        tensor([2.0000, 2.5000])
    """
    sums = values.new_zeros((counts.shape[0], *values.shape[1:])).index_add_(0, index, values)
    return sums / counts.to(values.dtype).reshape(-1, *([1] * (values.ndim - 1)))


def group_order(index: torch.Tensor, n_groups: int) -> torch.Tensor:
    """The items ``(N,)`` ordered as :class:`GroupLayout` lays them out: by group, the groups
    by size (smallest first, then by id), each group's items in their given order. Items
    given in this order make a layout that needs no gathers (:attr:`GroupLayout.in_order`).

    Example:
        >>> group_order(torch.tensor([1, 0, 1, 2, 1]), 3)
        tensor([1, 3, 0, 2, 4])
    """
    return _size_order(index, torch.bincount(index, minlength=n_groups))[2]


def _size_order(
    index: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The groups by size (smallest first, then by id) ``(G,)``, each group's rank in that
    order ``(G,)``, and the items by their group's rank, then by position ``(N,)``."""
    by_size = torch.argsort(counts, stable=True)
    rank = torch.empty_like(by_size)
    rank[by_size] = torch.arange(counts.shape[0], device=index.device)
    return by_size, rank, torch.argsort(rank[index], stable=True)


@dataclass(frozen=True)
class GroupChunk:
    """A few groups of alike size, padded to ``width`` members.

    Attributes:
        counts: Sizes ``(g,)`` of the chunk's groups.
        rows: The chunk's items as a slice of the layout's order (:attr:`GroupLayout.order`).
        slot: Where each item sits in the padded blocks, group ``(k,)`` and member ``(k,)``.
        width: Members per padded group.
        uniform: Every group holds ``width`` items: the blocks are a view, nothing is padded.
    """

    counts: torch.Tensor
    rows: slice
    slot: tuple[torch.Tensor, torch.Tensor]
    width: int
    uniform: bool

    def pad(self, ordered: torch.Tensor) -> torch.Tensor:
        """Item rows ``(N, L, d)`` in the layout's order -> padded blocks
        ``(g, width * L, d)``, zeros where a group has fewer members."""
        part = ordered[self.rows]
        g = self.counts.shape[0]
        if self.uniform:
            return part.reshape(g, self.width * part.shape[1], part.shape[2])
        blocks = part.new_zeros(g, self.width, *part.shape[1:])
        blocks[self.slot] = part
        return blocks.flatten(1, 2)

    def take(self, blocks: torch.Tensor) -> torch.Tensor:
        """Per-member values ``(g, width * L)`` -> per item of the chunk ``(k,)`` in the
        layout's order, summed over the positions."""
        per_member = blocks.reshape(self.counts.shape[0], self.width, -1).sum(-1)
        return per_member.flatten() if self.uniform else per_member[self.slot]


class GroupLayout:
    """Items ``(N,)`` of ``G`` groups, sorted by group and the groups by size.

    Args:
        index: Group id of each item ``(N,)`` in ``[0, G)``; every group holds an item.
        n_groups: ``G``.

    Attributes:
        order: The items ``(N,)`` in the layout's order (:func:`group_order`).
        in_order: Whether ``order`` is ``0..N-1``: items already so ordered need no gathers.
    """

    def __init__(self, index: torch.Tensor, n_groups: int) -> None:
        self.index = index
        self.counts = torch.bincount(index, minlength=n_groups)
        by_size, rank, self.order = _size_order(index, self.counts)
        positions = torch.arange(index.shape[0], device=index.device)
        self.in_order = bool(torch.equal(self.order, positions))
        self.sizes = self.counts[by_size]  # ascending
        starts = torch.cumsum(self.sizes, 0) - self.sizes
        ranked = rank[index[self.order]]
        self.ranked = ranked  # group rank of each ordered item
        self.member = positions - starts[ranked]
        self.item_start = starts

    def ordered(self, t: torch.Tensor) -> torch.Tensor:
        """Rows ``(N, ...)`` of the items in the layout's order."""
        return t if self.in_order else t[self.order]

    def chunks(self, per_member: int, per_group: int) -> Iterator[GroupChunk]:
        """Chunks of groups whose padded blocks hold about :data:`CHUNK_BUDGET` numbers, for
        ``per_member`` numbers per padded member and ``per_group`` per group."""
        sizes = self.sizes.tolist()
        n = len(sizes)
        start = 0
        while start < n:
            # sizes ascend, so the cost of taking groups start..end-1 grows with end
            width = self.sizes[start:]
            cost = torch.arange(1, n - start + 1, device=width.device) * (
                width * per_member + per_group
            )
            end = start + max(1, int((cost <= CHUNK_BUDGET).sum()))
            lo, hi = int(self.item_start[start]), int(self.item_start[end - 1]) + sizes[end - 1]
            yield GroupChunk(
                counts=self.sizes[start:end],
                rows=slice(lo, hi),
                slot=(self.ranked[lo:hi] - start, self.member[lo:hi]),
                width=sizes[end - 1],
                uniform=sizes[start] == sizes[end - 1],
            )
            start = end
