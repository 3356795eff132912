"""The full posterior: a dense covariance over all posterior parameters.

Shape legend: ``N`` items, ``B`` pairs, ``P`` posterior parameters.

Curvature: the exact Bradley-Terry GGN ``sum_pairs p (1 - p) (J_1 - J_0)^T (J_1 - J_0)``
``(P, P)``, with per-item Jacobians rebuilt from layer I/O (``J = [g a^T, g]``).
Covariance: ``Sigma = (H / T + delta I)^-1``, so ``J Sigma J'^T`` row by row. Meant for last
layers and small models: ``P x P`` numbers.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from laplace.baselaplace import FullLaplace

from bt_laplace._layer_io import LayerIO, LayerIORecorder, pair_split
from bt_laplace.structures._groups import group_means
from bt_laplace.structures.base import PosteriorStructure
from bt_laplace.structures.inplace import BTFullLaplace, BTFullLLLaplace

__all__ = ["FullStructure"]


class FullStructure(PosteriorStructure):
    """``hessian_structure="full"``: laplace-torch's ``FullLaplace`` / ``FullLLLaplace``."""

    name: ClassVar[str] = "full"
    laplace_type: ClassVar[type] = FullLaplace
    dense_covariance: ClassVar[bool] = True

    @classmethod
    def laplace_class(cls, subset_of_weights: str, pair_backend: bool) -> type:
        return BTFullLaplace if subset_of_weights == "all" else BTFullLLLaplace

    @staticmethod
    def batch_curvature(
        recorder: LayerIORecorder, result: LayerIO, weight: torch.Tensor
    ) -> torch.Tensor:
        """Exact GGN ``(P, P)`` of a batch of pairs."""
        j0, j1 = pair_split(recorder.jacobian(result))
        return FullStructure.jacobian_curvature(j1 - j0, weight)

    @staticmethod
    def jacobian_curvature(d_jac: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (d_jac * weight[:, None]).T @ d_jac

    @staticmethod
    def curvature_eigenvalues(laplace: Any) -> list[torch.Tensor] | None:
        return [torch.linalg.eigvalsh(laplace.H * laplace._H_factor)]

    @staticmethod
    def curvature_state(laplace: Any) -> dict[str, torch.Tensor]:
        return {"H": laplace.H}

    @classmethod
    def state_numbers(cls, shapes: list[tuple[int, ...]], backend_kwargs: dict[str, Any]) -> int:
        """``P x P``."""
        return sum(math.prod(s) for s in shapes) ** 2

    @staticmethod
    def exact_ggn_eigenvalues(laplace: Any) -> torch.Tensor | None:
        """Its ``H`` is the exact GGN; read off it up to as many parameters as pairs (with
        more, the pair kernel is the cheaper route)."""
        if int(laplace.n_params) > int(laplace.n_data):
            return None
        eigs = torch.linalg.eigvalsh(laplace.H.detach().to("cpu", torch.float64))
        return (eigs * float(laplace._H_factor)).clamp_min(0.0)

    def _pieces(self) -> torch.Tensor:
        return self.laplace.posterior_covariance

    def _crosses(self, results: list[LayerIO], pairs: list[tuple[int, int]]) -> list[torch.Tensor]:
        sigma = self.pieces(results[0].output.dtype)
        jac = [self.recorder.jacobian(r) for r in results]
        jac_sigma = {i: jac[i] @ sigma for i in {i for i, _ in pairs}}
        return [(jac_sigma[i] * jac[j]).sum(-1) for i, j in pairs]

    def _dense_cross(
        self, result: LayerIO, dense: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self.pieces(result.output.dtype)
        jbar = torch.cat([d.reshape(-1) for d in dense])
        sigma_jbar = sigma @ jbar
        return self.recorder.jacobian(result) @ sigma_jbar, jbar @ sigma_jbar

    def _group_variance(self, result: LayerIO, index: torch.Tensor, n_groups: int) -> torch.Tensor:
        """From the centred Jacobians ``J_n - Jbar_g`` ``(N, P)``: centred in float64 and
        rounded once to the model's precision (as exact as ``J_n`` itself), then weighted by
        ``Sigma`` in that precision, as ``J Sigma J^T`` is in :meth:`cross` (to the same
        rounding, at the same cost); returned in float64."""
        jac = self.recorder.jacobian(result)
        sigma = self.pieces(jac.dtype)
        counts = torch.bincount(index, minlength=n_groups)
        wide = jac.double()
        d = (wide - group_means(wide, index, counts)[index]).to(jac.dtype)
        return ((d @ sigma) * d).sum(-1).double()
