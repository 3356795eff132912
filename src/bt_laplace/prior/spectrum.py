"""The top of a pair kernel's spectrum, as far as the exact evidence needs it.

Shape legend: ``N`` training pairs, ``k`` eigenvalues kept.

The exact evidence's prior ``delta`` solves ``sum_j kappa_j / (kappa_j + delta) = delta
||theta* - mu_0||^2`` over the eigenvalues ``kappa_j`` of the ``N x N`` pair kernel
(:mod:`bt_laplace.prior.evidence`). On the benchmark MLPs the spectrum falls fast: of 4,000
eigenvalues, a few hundred exceed ``delta / 1000`` (docs/results/heldout.md). An eigenvalue far
below ``delta`` adds ``kappa_j / (kappa_j + delta) ~ kappa_j / delta`` whatever its exact value,
so the sum needs only the top ``k`` eigenvalues and the trace of the rest. :func:`settled_spectrum`
finds the top ``k`` by randomized subspace iteration (Halko, Martinsson and Tropp 2011,
Algorithm 4.4: ``O(N^2 k)`` instead of the ``O(N^3)`` of a full eigendecomposition) and keeps
them when the smallest is below :data:`SETTLE_TOL` times the prior they give (then the rest,
spread evenly over the other ``N - k`` eigenvalues with their exact trace, moves each term by
less than that share); otherwise, or where ``k`` would reach a third of ``N``, it takes the
full eigendecomposition. One attempt only: on MovieLens at 4,000 pairs about 1,000 eigenvalues
matter (an effective number of parameters of 465), and growing ``k`` that far costs more than
the full decomposition; an attempt at :data:`START_RANK` costs about a fifth of it. Where the
default fit calibrates its prior on held-out items, the calibration's spectrum (the pairs among
80% of the items, decomposed first) decides whether the attempt is made (:func:`may_settle`):
of the eight benchmark tasks at 4,000 pairs it is made on exam alone (208 eigenvalues above
``delta / 1000``; 537 to 3,540 on the others); without that spectrum it is always made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Spectrum", "settled_spectrum", "may_settle", "SETTLE_TOL", "START_RANK"]

#: the smallest kept eigenvalue must be below this share of the prior it gives
SETTLE_TOL = 1e-3
#: eigenvalues the one attempt computes
START_RANK = 256
_OVERSAMPLE, _POWER_STEPS = 16, 2


@dataclass(frozen=True)
class Spectrum:
    """The top of a symmetric positive semi-definite ``N x N`` matrix's spectrum.

    Attributes:
        values: The ``k`` top eigenvalues ``(k,)``, ascending, float64 (all ``N`` when exact).
        vectors: Their eigenvectors ``(N, k)``, or None when not asked for (or exact).
        tail: The trace of the rest, ``trace - values.sum()`` (0 when exact).
        size: ``N``.
        matrix: The matrix itself when exact and asked to project: :meth:`project` then
            solves with its Cholesky factor at each prior (cheaper than the eigenvectors).

    Example:
        >>> a = torch.randn(50, 5, dtype=torch.float64)
        >>> s = settled_spectrum(a @ a.T, lambda e: 1.0)  # small: the full decomposition
        >>> s.values.shape, s.tail
        (torch.Size([50]), 0.0)
    """

    values: torch.Tensor
    vectors: torch.Tensor | None
    tail: float
    size: int
    matrix: torch.Tensor | None = None

    def eigenvalues(self) -> torch.Tensor:
        """All ``N`` eigenvalues ``(N,)``: the top ones and the rest spread evenly (same
        trace), ascending."""
        rest = self.size - len(self.values)
        if rest == 0:
            return self.values
        spread = torch.full((rest,), max(self.tail, 0.0) / rest, dtype=self.values.dtype)
        return torch.cat([spread, self.values])

    def project(self, cross: torch.Tensor, delta: float) -> torch.Tensor:
        """``c^T (M + delta I)^-1 c`` ``(Q,)`` for the columns ``c`` of ``cross`` ``(N, Q)``
        (needs ``vectors`` or ``matrix``): exact on the top eigenvectors, the rest of ``c`` at
        the spread tail eigenvalue; or exact by a Cholesky solve."""
        if self.matrix is not None:
            shifted = self.matrix + delta * torch.eye(self.size, dtype=self.matrix.dtype)
            chol, info = torch.linalg.cholesky_ex(shifted)
            if int(info) == 0:
                return torch.linalg.solve_triangular(chol, cross, upper=False).square().sum(0)
            values, vecs = torch.linalg.eigh(self.matrix)  # not numerically positive definite
            return Spectrum(values.clamp_min(0.0), vecs, 0.0, self.size).project(cross, delta)
        assert self.vectors is not None
        top = (self.vectors.T @ cross).square()
        out = (top / (self.values + delta)[:, None]).sum(0)
        rest = self.size - len(self.values)
        if rest == 0:
            return out
        left = (cross.square().sum(0) - top.sum(0)).clamp_min(0.0)
        return out + left / (max(self.tail, 0.0) / rest + delta)


def _top_eigenpairs(mat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest eigenvalues (ascending) and eigenvectors of ``mat`` by randomized
    subspace iteration (fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(mat.shape[0], k + _OVERSAMPLE, generator=gen, dtype=mat.dtype)
    basis = torch.linalg.qr(mat @ basis).Q
    for _ in range(_POWER_STEPS):
        basis = torch.linalg.qr(mat @ basis).Q
    values, small = torch.linalg.eigh(basis.T @ mat @ basis)
    return values[-k:].clamp_min(0.0), basis @ small[:, -k:]


def settled_spectrum(
    mat: torch.Tensor,
    prior_of: Callable[[torch.Tensor], float],
    *,
    vectors: bool = False,
    tol: float = SETTLE_TOL,
    rank: int = START_RANK,
) -> Spectrum:
    """The top of ``mat``'s spectrum, as far as the exact evidence's prior needs it.

    Args:
        mat: A symmetric positive semi-definite matrix ``(N, N)``, float64, CPU.
        prior_of: The prior precision from all ``N`` eigenvalues (ascending).
        vectors: Make :meth:`Spectrum.project` work: keep the top eigenvectors, or where
            every eigenvalue is needed the matrix itself (no eigenvectors: each projection
            solves with a Cholesky factor, cheaper than the eigenvectors for a few priors).
        tol: Keep the top ``rank`` eigenvalues when the smallest is at most ``tol`` times
            ``prior_of(spectrum.eigenvalues())``.
        rank: Eigenvalues the attempt computes.

    Returns:
        The :class:`Spectrum`; exact (every eigenvalue) where ``3 k`` would reach ``N``.
    """
    n = mat.shape[0]
    if 3 * rank < n:
        values, vecs = _top_eigenpairs(mat, rank)
        tail = float(mat.diagonal().sum()) - float(values.sum())
        spectrum = Spectrum(values, vecs if vectors else None, tail, n)
        if float(values[0]) <= tol * prior_of(spectrum.eigenvalues()):
            return spectrum
    values = torch.linalg.eigvalsh(mat).clamp_min(0.0)
    return Spectrum(values, None, 0.0, n, mat if vectors else None)


def may_settle(
    eigenvalues: torch.Tensor, prior: float, *, tol: float = SETTLE_TOL, rank: int = START_RANK
) -> bool:
    """Whether a kernel with these eigenvalues would settle at its top ``rank`` for this
    prior: at most ``rank`` of them above ``tol`` times it (the test of
    :func:`settled_spectrum`, read off a spectrum at hand, to skip an attempt on a kernel
    like it that would fail)."""
    return int((eigenvalues > tol * prior).sum()) <= rank
