"""Brute-force float64 references for the tests and the benchmarks, not for production.

What the library computes fast and structured, these compute slowly and plainly, so each claim
of the library can be checked against them (as curvlinops ships its ``torch.func`` references):

- :mod:`bt_laplace.testing.ggn`: per-item Jacobians by ``torch.func`` (``jacrev`` and ``vmap``),
  the exact Bradley-Terry GGN ``sum_pairs p(1-p) (J1 - J0)^T (J1 - J0)`` and the
  nearest-Kronecker floor of a block (Van Loan-Pitsianis rearrangement and SVD);
- :mod:`bt_laplace.testing.matrix_free`: the same floor and errors of Kronecker factors for
  weight blocks too large to form, from per-item layer inputs and output gradients;
- :mod:`bt_laplace.testing.problems`: teacher-labelled preference pairs and MAP training with
  the Bradley-Terry loss, shared by the benchmarks;
- :mod:`bt_laplace.testing.tiny`: tiny fitted posteriors (an MLP on random pairs, a one-layer
  GPT-2 on text pairs) for examples and doctests, each written once.

Everything here forms per-item Jacobians or dense ``(P, P)`` matrices: use it on small models
in float64, never in a training or serving loop.
"""

from bt_laplace.testing import ggn, matrix_free, problems, tiny
from bt_laplace.testing.ggn import *  # noqa: F403
from bt_laplace.testing.matrix_free import *  # noqa: F403
from bt_laplace.testing.problems import *  # noqa: F403
from bt_laplace.testing.tiny import *  # noqa: F403

#: dense references (ggn), the matrix-free floor (matrix_free), problems and MAP training
#: (problems), tiny fitted posteriors (tiny)
__all__ = [*ggn.__all__, *matrix_free.__all__, *problems.__all__, *tiny.__all__]
