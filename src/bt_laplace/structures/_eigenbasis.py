"""Private: the covariance algebra shared by ``diag`` and ``kron``.

Shape legend: ``N`` items, ``L`` positions of a sequence, ``in``/``out`` the sizes of a linear
layer.

Both structures keep each parameter tensor's covariance diagonal in a basis of its own:
for a weight ``W (out, in)``,
``Sigma_W = (Q_out x Q_in) diag(vec M) (Q_out x Q_in)^T`` with ``M (out, in)``; for a bias
``Sigma_b = Q_out diag(m) Q_out^T``. ``diag`` has ``Q = I`` and ``M`` the posterior variances;
``kron`` has the eigenvectors of its two factors and ``M = 1 / (l_out l_in^T + delta)``.
With ``J = g a^T`` per item, rotating ``g`` and ``a`` into the basis once per batch turns
``J Sigma J'^T`` into ``(gh * gh')^T M (ah * ah')`` with ``gh = Q_out^T g``, ``ah = Q_in^T a``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bt_laplace._layer_io import LayerIO, bias_jacobian, is_sequence, item_chunks, weight_jacobian
from bt_laplace.structures.base import PosteriorStructure

__all__ = ["EigenbasisStructure", "SlotCovariance"]


@dataclass(frozen=True)
class SlotCovariance:
    """The covariance of one parameter tensor, diagonal in its own basis.

    Attributes:
        q_out: Output basis ``(out, out)``, or None for the identity.
        q_in: Input basis ``(in, in)`` (weights only), or None for the identity.
        m: Variances in that basis, ``(out, in)`` for a weight, ``(out,)`` for a bias.
    """

    q_out: torch.Tensor | None
    q_in: torch.Tensor | None
    m: torch.Tensor


class EigenbasisStructure(PosteriorStructure):
    """A structure whose pieces are one :class:`SlotCovariance` per parameter tensor."""

    def _rotate(
        self, results: list[LayerIO]
    ) -> list[tuple[SlotCovariance, list[torch.Tensor], list[torch.Tensor] | None]]:
        """Per parameter tensor: its covariance and the output gradients (bias: summed over
        positions) and activations (None for a bias) of each result, in its basis."""
        out: list[tuple[SlotCovariance, list[torch.Tensor], list[torch.Tensor] | None]] = []
        pieces = self.pieces(results[0].output.dtype)
        for slot, piece in zip(self.recorder.slots, pieces, strict=True):
            g = [r.grads[slot.layer] for r in results]
            if piece.q_out is not None:
                g = [gi @ piece.q_out for gi in g]
            if slot.kind == "bias":
                out.append((piece, [bias_jacobian(gi) for gi in g], None))
                continue
            a = [r.acts[slot.layer] for r in results]
            if piece.q_in is not None:
                a = [ai @ piece.q_in for ai in a]
            out.append((piece, g, a))
        return out

    def _crosses(self, results: list[LayerIO], pairs: list[tuple[int, int]]) -> list[torch.Tensor]:
        totals = [torch.zeros_like(results[0].output) for _ in pairs]
        for piece, g, a in self._rotate(results):
            for k, (i, j) in enumerate(pairs):
                if a is not None and is_sequence(a[0]):  # per-item blocks sum_t g_t a_t^T
                    totals[k] = totals[k] + _block_products(g[i], a[i], g[j], a[j], piece.m)
                    continue
                gg = g[i].square() if i == j else g[i] * g[j]
                if a is None:  # bias
                    totals[k] = totals[k] + (gg * piece.m).sum(-1)
                else:
                    aa = a[i].square() if i == j else a[i] * a[j]
                    totals[k] = totals[k] + ((gg @ piece.m) * aa).sum(-1)
        return totals

    def _dense_cross(
        self, result: LayerIO, dense: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cross = torch.zeros_like(result.output)
        quad = torch.zeros((), dtype=cross.dtype, device=cross.device)
        for (piece, g, a), d in zip(self._rotate([result]), dense, strict=True):
            if piece.q_out is not None:  # Jbar into the basis too
                d = piece.q_out.T @ d
            if piece.q_in is not None:
                d = d @ piece.q_in
            weighted = piece.m * d
            quad = quad + (weighted * d).sum()
            if a is None:
                cross = cross + g[0] @ weighted
            elif is_sequence(a[0]):
                cross = cross + _block_products(g[0], a[0], None, None, weighted)
            else:
                cross = cross + ((g[0] @ weighted) * a[0]).sum(-1)
        return cross, quad


def _block_products(
    g: torch.Tensor,
    a: torch.Tensor,
    g2: torch.Tensor | None,
    a2: torch.Tensor | None,
    m: torch.Tensor,
) -> torch.Tensor:
    """``sum_{o,i} M_n[o, i] M2_n[o, i] m[o, i]`` ``(N,)`` for per-item Jacobian blocks
    ``M = sum_t g_t a_t^T`` of sequences (``g2 = None``: ``M2`` is all ones, so this is
    ``<M_n, m>``), a few items at a time."""
    out = torch.empty(g.shape[0], dtype=m.dtype, device=m.device)
    for sl in item_chunks(g.shape[0], m.numel()):
        blocks = weight_jacobian(g[sl], a[sl])
        if g2 is not None and a2 is not None:
            blocks = blocks * (blocks if g2 is g and a2 is a else weight_jacobian(g2[sl], a2[sl]))
        out[sl] = (blocks * m).sum((1, 2))
    return out
