"""The diagonal posterior: one variance per parameter.

Shape legend: ``B`` pairs, ``P`` posterior parameters, ``in``/``out`` the sizes of a linear
layer.

Curvature: the exact diagonal of the Bradley-Terry GGN,
``sum_pairs p (1 - p) (J_1 - J_0)^2`` elementwise; for a weight with ``J = g a^T`` per item it
is three matrix products of ``a`` and ``g`` per batch (``a g^T`` for a ``Conv1D`` weight
``(in, out)``). Covariance: the posterior variances
``V = 1 / (H / T + delta)``, so ``J Sigma J'^T = sum_layers (g * g')^T V (a * a')``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from laplace.baselaplace import DiagLaplace

from bt_laplace._layer_io import (
    LayerIO,
    LayerIORecorder,
    bias_jacobian,
    is_sequence,
    item_chunks,
    pair_split,
    posterior_parameters,
    weight_factors,
    weight_jacobian,
)
from bt_laplace.structures._eigenbasis import EigenbasisStructure, SlotCovariance
from bt_laplace.structures.inplace import BTDiagLaplace, BTDiagLLLaplace

__all__ = ["DiagStructure"]


class DiagStructure(EigenbasisStructure):
    """``hessian_structure="diag"``: laplace-torch's ``DiagLaplace`` / ``DiagLLLaplace``."""

    name: ClassVar[str] = "diag"
    laplace_type: ClassVar[type] = DiagLaplace

    @classmethod
    def laplace_class(cls, subset_of_weights: str, pair_backend: bool) -> type:
        return BTDiagLaplace if subset_of_weights == "all" else BTDiagLLLaplace

    @staticmethod
    def batch_curvature(
        recorder: LayerIORecorder, result: LayerIO, weight: torch.Tensor
    ) -> torch.Tensor:
        """Exact GGN diagonal ``(P,)`` of a batch of pairs."""
        w = weight
        blocks = []
        for slot in recorder.slots:
            g = result.grads[slot.layer]
            if slot.kind == "bias":
                g0, g1 = pair_split(g)
                d_bias = bias_jacobian(g1) - bias_jacobian(g0)
                blocks.append((w[:, None] * d_bias.square()).sum(0))
                continue
            # the weight's Jacobian u v^T in its own layout: u, v = g, a (Conv1D: a, g)
            u, v = weight_factors(slot, g, result.acts[slot.layer])
            (u0, u1), (v0, v1) = pair_split(u), pair_split(v)
            if is_sequence(u0):  # per-pair Jacobian blocks, a few pairs at once:
                # sqrt(w) (sum_t u1_t v1_t^T - sum_t u0_t v0_t^T) as one product over 2L rows
                uh = torch.cat([u1, -u0], 1) * w.sqrt()[:, None, None]
                vh = torch.cat([v1, v0], 1)
                total = torch.zeros(u0.shape[-1], v0.shape[-1], dtype=w.dtype, device=w.device)
                for sl in item_chunks(len(w), total.numel()):
                    total += weight_jacobian(uh[sl], vh[sl]).square_().sum(0)
                blocks.append(total.flatten())
                continue
            # sum_n w (u1 v1^T - u0 v0^T)^2, elementwise, as three matrix products
            d = (
                (w[:, None] * u1.square()).T @ v1.square()
                + (w[:, None] * u0.square()).T @ v0.square()
                - 2 * (w[:, None] * u1 * u0).T @ (v1 * v0)
            )
            blocks.append(d.clamp_min(0.0).flatten())
        return torch.cat(blocks)

    @staticmethod
    def jacobian_curvature(d_jac: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (weight[:, None] * d_jac.square()).sum(0)

    @staticmethod
    def curvature_eigenvalues(laplace: Any) -> list[torch.Tensor] | None:
        sizes = [p.numel() for p in posterior_parameters(laplace)]
        return list((laplace.H * laplace._H_factor).split(sizes))

    @staticmethod
    def curvature_state(laplace: Any) -> dict[str, torch.Tensor]:
        return {"H": laplace.H}

    @classmethod
    def state_numbers(cls, shapes: list[tuple[int, ...]], backend_kwargs: dict[str, Any]) -> int:
        """One number per parameter."""
        return sum(math.prod(s) for s in shapes)

    def _pieces(self) -> list[SlotCovariance]:
        params = posterior_parameters(self.laplace)
        variances = self.laplace.posterior_variance.split([p.numel() for p in params])
        return [
            SlotCovariance(None, None, v.reshape(p.shape[0], -1) if p.ndim > 1 else v)
            for v, p in zip(variances, params, strict=True)
        ]
