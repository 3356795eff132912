"""Private: the covariance algebra shared by ``diag`` and ``kron``.

Shape legend: ``N`` items, ``L`` positions of a sequence, ``in``/``out`` the sizes of a linear
layer, ``rows``/``cols`` the two sides of a weight tensor: ``(out, in)`` for ``nn.Linear``,
``(in, out)`` for ``Conv1D``.

Both structures keep each parameter tensor's covariance diagonal in a basis of its own:
for a weight ``W (rows, cols)``,
``Sigma_W = (Q_rows x Q_cols) diag(vec M) (Q_rows x Q_cols)^T`` with ``M (rows, cols)``; for a
bias ``Sigma_b = Q_out diag(m) Q_out^T``. ``diag`` has ``Q = I`` and ``M`` the posterior
variances; ``kron`` has the eigenvectors of its two factors and
``M = 1 / (l_rows l_cols^T + delta)``. With ``J = u v^T`` per item (``u, v = g, a`` for
``nn.Linear``, ``a, g`` for ``Conv1D``: :func:`~bt_laplace._layer_io.weight_factors`), rotating
``u`` and ``v`` into the basis once per batch turns ``J Sigma J'^T`` into
``(uh * uh')^T M (vh * vh')`` with ``uh = Q_rows^T u``, ``vh = Q_cols^T v``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from bt_laplace._layer_io import (
    LayerIO,
    bias_jacobian,
    is_sequence,
    item_chunks,
    weight_factors,
    weight_jacobian,
)
from bt_laplace.structures._groups import GroupLayout
from bt_laplace.structures.base import PosteriorStructure
from bt_laplace.structures.low_rank import is_thin, rotate

__all__ = ["EigenbasisStructure", "SlotCovariance", "Workspace"]


@dataclass(frozen=True)
class SlotCovariance:
    """The covariance of one parameter tensor, diagonal in its own basis.

    A basis may be thin, ``(d, k)`` with ``k < d``, for a low-rank factor: its sides are then
    rotated into ``k + d`` coordinates (:func:`~bt_laplace.structures.low_rank.rotate`) and
    ``m`` is laid out in those.

    Attributes:
        q_rows: Basis of the rows ``(rows, rows)`` of a weight, of a bias ``(out, out)``; None
            for the identity.
        q_cols: Basis of the columns ``(cols, cols)`` (weights only), or None for the identity.
        m: Variances in that basis, ``(rows, cols)`` for a weight, ``(out,)`` for a bias.
    """

    q_rows: torch.Tensor | None
    q_cols: torch.Tensor | None
    m: torch.Tensor


class EigenbasisStructure(PosteriorStructure):
    """A structure whose pieces are one :class:`SlotCovariance` per parameter tensor."""

    def _rotate(
        self, results: list[LayerIO], work: Workspace | None = None
    ) -> Iterator[tuple[SlotCovariance, list[torch.Tensor], list[torch.Tensor] | None]]:
        """Per parameter tensor, one at a time: its covariance and, for each result in its
        basis, the row side ``u`` of the weight's Jacobian ``u v^T`` (of a bias: the output
        gradients, summed over positions) and the column side ``v`` (None for a bias).

        Given a :class:`Workspace`, the sides rotated by a square basis are written into its
        buffers, which the next parameter tensor's overwrite: the caller is done with one
        before it asks for the next (the memory of two rotated sides per result instead of
        all of them, and no fresh memory per tensor)."""
        pieces = self.pieces(results[0].output.dtype)
        for slot, piece in zip(self.recorder.slots, pieces, strict=True):
            if slot.kind == "bias":
                g = [r.grads[slot.layer] for r in results]
                g = [_rotated(gi, piece.q_rows, work, ("u", i)) for i, gi in enumerate(g)]
                yield piece, [bias_jacobian(gi) for gi in g], None
                continue
            sides = [weight_factors(slot, r.grads[slot.layer], r.acts[slot.layer]) for r in results]
            u = [_rotated(s[0], piece.q_rows, work, ("u", i)) for i, s in enumerate(sides)]
            v = [_rotated(s[1], piece.q_cols, work, ("v", i)) for i, s in enumerate(sides)]
            yield piece, u, v

    def _crosses(self, results: list[LayerIO], pairs: list[tuple[int, int]]) -> list[torch.Tensor]:
        totals = [torch.zeros_like(results[0].output) for _ in pairs]
        # variances alone, each result's once: its rotated sides are squared in place
        squares = all(i == j for i, j in pairs) and len(set(pairs)) == len(pairs)
        work = Workspace()
        for piece, u, v in self._rotate(results, work):
            rows, cols = squares and piece.q_rows is not None, squares and piece.q_cols is not None
            for k, (i, j) in enumerate(pairs):
                vi, vj = (None, None) if v is None else (v[i], v[j])
                cross = _slot_cross(piece.m, u[i], vi, u[j], vj, (rows, cols), work)
                totals[k] = totals[k].add_(cross)
        return totals

    def _group_variance(self, result: LayerIO, index: torch.Tensor, n_groups: int) -> torch.Tensor:
        """``(J_n - Jbar_g) Sigma (J_n - Jbar_g)^T`` ``(N,)`` in float64: per weight
        ``J_n Sigma J_n^T - 2 J_n Sigma Jbar_g^T + Jbar_g Sigma Jbar_g^T`` from the rotated
        sides (one rotation for the three), each group's ``Jbar_g`` in the basis from batched
        products over the padded groups of :class:`GroupLayout`; per bias the centred sides.

        The products run in the model's precision, as ``J_n Sigma J_n^T`` does in
        :meth:`cross` (each of the three terms is a sum of like terms and keeps its digits),
        and the sums that cancel, the three terms over every parameter tensor, in float64.
        A bias is centred in the model's precision: ``u_n - mean_g u`` is as exact as the
        rounded sides themselves, and its weighted squares sum without cancelling. Items given
        in the layout's order (:func:`~bt_laplace.structures._groups.group_order`) need no
        gathers."""
        layout = GroupLayout(index, n_groups)
        total = torch.zeros_like(result.output, dtype=torch.float64)  # by item
        laid_out = torch.zeros_like(total)  # in the layout's order
        for piece, (u,), v_ in self._rotate([result], Workspace()):  # model precision
            m = piece.m
            if v_ is None:  # bias: (u_n - mean_g u) weighted by m, a sum without cancelling
                ub = layout.ordered(u)[:, None]
                for chunk in layout.chunks(ub.shape[-1], ub.shape[-1]):
                    up = chunk.pad(ub)  # (g, width, out), zeros past a group's members
                    mean = up.sum(1, keepdim=True) / chunk.counts.to(up.dtype)[:, None, None]
                    laid_out[chunk.rows] += chunk.take((up - mean).square_() @ m).double()
                continue
            v = v_[0]
            total += _slot_cross(m, u, v, u, v).double()
            u3, v3 = (u, v) if is_sequence(u) else (u[:, None], v[:, None])
            u3, v3 = layout.ordered(u3), layout.ordered(v3)
            per_member = u3.shape[1] * (u3.shape[2] + v3.shape[2])
            for chunk in layout.chunks(per_member, m.numel()):
                up, vp = chunk.pad(u3), chunk.pad(v3)  # (g, width * L, rows), (g, width * L, cols)
                weighted = (up.mT @ vp).mul_(m)  # Sigma-weighted n_g Jbar_g in the basis
                # n_g J_n Sigma Jbar_g^T; summed over the group: n_g^2 Jbar_g Sigma Jbar_g^T
                cross = chunk.take(torch.linalg.vecdot(up @ weighted, vp)).double()
                group, counts = chunk.slot[0], chunk.counts.to(torch.float64)
                quad = torch.zeros_like(counts).index_add_(0, group, cross) / counts.square()
                laid_out[chunk.rows] += quad[group] - 2 * cross / counts[group]
        if layout.in_order:
            return total + laid_out
        return total.index_add_(0, layout.order, laid_out)

    def _dense_cross(
        self, result: LayerIO, dense: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cross = torch.zeros_like(result.output)
        quad = torch.zeros((), dtype=cross.dtype, device=cross.device)
        for (piece, u, v), d in zip(self._rotate([result]), dense, strict=True):
            if v is None:  # Jbar into the basis too
                d = rotate(d, piece.q_rows)
            else:
                d = rotate(rotate(d, piece.q_cols).mT, piece.q_rows).mT
            weighted = piece.m * d
            quad = quad + (weighted * d).sum()
            if v is None:
                cross = cross + u[0] @ weighted
            elif is_sequence(v[0]):
                cross = cross + _block_products(u[0], v[0], None, None, weighted)
            else:
                cross = cross + ((u[0] @ weighted) * v[0]).sum(-1)
        return cross, quad


class Workspace:
    """Flat buffers by name, reused for tensors of any shape up to their size (grown when a
    larger one is asked for); they live as long as the workspace, one query batch."""

    def __init__(self) -> None:
        self._flat: dict[Any, torch.Tensor] = {}

    def take(self, name: Any, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialized contiguous ``shape`` tensor of ``like``'s dtype and device."""
        n = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.numel() < n or flat.dtype != like.dtype:
            flat = self._flat[name] = torch.empty(n, dtype=like.dtype, device=like.device)
        return flat[:n].view(shape)


def _rotated(
    x: torch.Tensor, q: torch.Tensor | None, work: Workspace | None, name: Any
) -> torch.Tensor:
    """:func:`~bt_laplace.structures.low_rank.rotate`, into ``work``'s buffer ``name`` for a
    square basis."""
    if work is None or q is None or is_thin(q):
        return rotate(x, q)
    return torch.matmul(x, q, out=work.take(name, (*x.shape[:-1], q.shape[1]), x))


def _slot_cross(
    m: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor | None,
    u2: torch.Tensor,
    v2: torch.Tensor | None,
    in_place: tuple[bool, bool] = (False, False),
    work: Workspace | None = None,
) -> torch.Tensor:
    """``J Sigma J'^T`` ``(N,)`` of one parameter tensor from the rotated sides of two aligned
    batches (``v = None`` for a bias); ``in_place``: whether ``u`` and ``v`` (each then the
    same as ``u2``, ``v2``) may be squared in place. A weight's ``(uu @ m) . vv`` takes the
    product on the shorter side of ``m`` (a head's ``(1, in)``: one matrix-vector product, not
    an ``(N, in)`` outer product), into ``work``'s buffer where given."""
    if v is not None and is_sequence(v):  # per-item blocks sum_t u_t v_t^T
        return _block_products(u, v, u2, v2, m)
    uu = _times(u, u2, in_place[0])
    if v is None or v2 is None:  # bias: one matrix-vector product
        return uu @ m
    vv = _times(v, v2, in_place[1])
    if m.shape[0] < m.shape[1]:
        uu, vv, m = vv, uu, m.T
    out = None if work is None else work.take("product", (uu.shape[0], m.shape[1]), uu)
    return torch.matmul(uu, m, out=out).mul_(vv).sum(-1)  # no second (N, cols) product


def _times(x: torch.Tensor, y: torch.Tensor, in_place: bool) -> torch.Tensor:
    """``x * y``, a square in place where allowed (no fresh memory to fault in)."""
    if x is not y:
        return x * y
    return x.square_() if in_place else x.square()


def _block_products(
    u: torch.Tensor,
    v: torch.Tensor,
    u2: torch.Tensor | None,
    v2: torch.Tensor | None,
    m: torch.Tensor,
) -> torch.Tensor:
    """``sum_{r,c} M_n[r, c] M2_n[r, c] m[r, c]`` ``(N,)`` for per-item Jacobian blocks
    ``M = sum_t u_t v_t^T`` of sequences (``u2 = None``: ``M2`` is all ones, so this is
    ``<M_n, m>``), a few items at a time."""
    out = torch.empty(u.shape[0], dtype=m.dtype, device=m.device)
    for sl in item_chunks(u.shape[0], m.numel()):
        blocks = weight_jacobian(u[sl], v[sl])
        if u2 is not None and v2 is not None:
            blocks = blocks * (blocks if u2 is u and v2 is v else weight_jacobian(u2[sl], v2[sl]))
        out[sl] = (blocks * m).sum((1, 2))
    return out
