"""One class per posterior structure (``diag``, ``kron``, ``full``; each for all weights and
for the last layer): its curvature from layer inputs and output gradients, its covariance
applied to per-item Jacobians, and the tensors that define it. See
:mod:`bt_laplace.structures.base` for the interface.

Adding a structure means one module here with a :class:`PosteriorStructure` subclass and one
entry in :data:`STRUCTURES`; the predictive, the fit options and the prior read it from there.
"""

from laplace.baselaplace import ParametricLaplace
from laplace.lllaplace import LLLaplace

from bt_laplace.choices import SubsetOfWeights
from bt_laplace.structures._groups import group_means, group_order
from bt_laplace.structures.base import DenseJacobians, Jacobians, PosteriorStructure
from bt_laplace.structures.diag import DiagStructure
from bt_laplace.structures.full import FullStructure
from bt_laplace.structures.kron import KronStructure

__all__ = [
    "PosteriorStructure",
    "DiagStructure",
    "KronStructure",
    "FullStructure",
    "DenseJacobians",
    "Jacobians",
    "STRUCTURES",
    "group_means",
    "group_order",
    "structure_class",
    "structure_for",
    "subset_of_weights",
]

#: the structures by ``hessian_structure`` name
STRUCTURES: dict[str, type[PosteriorStructure]] = {
    cls.name: cls for cls in (DiagStructure, KronStructure, FullStructure)
}


def structure_class(laplace: ParametricLaplace) -> type[PosteriorStructure]:
    """The structure class of a laplace-torch posterior (all weights or last layer)."""
    for cls in STRUCTURES.values():
        if isinstance(laplace, cls.laplace_type):
            return cls
    raise NotImplementedError(
        f"bt_laplace supports laplace-torch's diag, kron and full posteriors, got "
        f"{type(laplace).__name__}; use hessian_structure='diag', 'kron' or 'full'."
    )


def subset_of_weights(laplace: ParametricLaplace) -> SubsetOfWeights:
    """Which parameters a laplace-torch posterior covers: ``LAST_LAYER`` or ``ALL``."""
    return SubsetOfWeights.LAST_LAYER if isinstance(laplace, LLLaplace) else SubsetOfWeights.ALL


def structure_for(laplace: ParametricLaplace) -> PosteriorStructure:
    """The structure of a fitted laplace-torch posterior, built once per posterior."""
    return structure_class(laplace)(laplace)
