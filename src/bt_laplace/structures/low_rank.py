"""Low-rank Kronecker factors: the top eigenpairs of a wide factor and one number for the rest.

Shape legend: ``d`` the width of a factor, ``k`` eigenpairs kept, ``s`` sketch columns, ``m``
root columns, ``n`` rows of a batch of vectors.

A Kronecker factor wider than ``kron_full_width`` (a LoRA matrix's ``d_in x d_in`` input
factor or ``d_out x d_out`` output factor at LLM widths) is never formed. It is kept as

.. math:: F \\approx Q \\operatorname{diag}(l) Q^T + \\sigma (I - Q Q^T),

its top ``k`` eigenpairs ``(Q (d, k), l (k,))`` and the mean ``sigma`` of the other ``d - k``
eigenvalues, so that the trace is kept (Laplace-LoRA, Yang et al. 2024, keeps the top
eigenpairs and drops the rest). :class:`LowRankFactor` stores it as ``Q`` and the ``d``
eigenvalues ``[l, sigma, ..., sigma]``, which is all laplace-torch's ``KronDecomposed`` reads
for log determinants and the prior.

Every factor of the pair curvature is a sum over pairs of positive semi-definite terms
``R_n R_n^T`` (``R_n`` ``(d, m)``: the pair weight ``p (1 - p)`` included, as the full factors
have it). :class:`FactorSketch` sums the sketch ``Y = F Omega`` (``Omega`` ``(d, s)``
Gaussian, from a fixed seed) and ``tr F`` batch by batch; both are linear in ``F``, so the
order of the batches and their split over processes change only rounding, and the processes
sum ``Y`` (``d s`` numbers) instead of ``d^2``. The eigenpairs come from the stable single-pass
Nystrom approximation ``F ~ Y (Omega^T Y)^+ Y^T`` (Tropp, Yurtsever, Udell & Cevher, 2017,
Algorithm 3), which is ``F`` itself when ``rank F <= s``; ``s = 2 k``.

The covariance in the eigenbasis needs the ``d - k`` complement vectors only through
``P x = x - Q Q^T x``: :func:`rotate` maps ``x (..., d)`` to ``[Q^T x, P x]`` ``(..., k + d)``,
where every complement coordinate has the eigenvalue ``sigma`` (:func:`extended_values`), so
sums of products over the ``k + d`` coordinates equal those over a full eigenbasis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from laplace.utils import Kron, KronDecomposed
from laplace.utils.utils import symeig

from bt_laplace._layer_io import is_sequence

__all__ = [
    "KRON_FULL_WIDTH",
    "KRON_RANK",
    "FactorSketch",
    "LowRankFactor",
    "LowRankKron",
    "LowRankKronDecomposed",
    "check_low_rank",
    "Factor",
    "extended_values",
    "is_thin",
    "nystrom_factor",
    "pair_roots",
    "psd_root",
    "right_times",
    "root_times",
    "rotate",
    "unrotate",
]

#: eigenpairs kept of a Kronecker factor wider than :data:`KRON_FULL_WIDTH` (the default of
#: ``backend_kwargs={"kron_rank": ...}``)
KRON_RANK = 128
#: Kronecker factors up to this width are kept whole and eigendecomposed exactly (16 MiB in
#: float32, about a second); wider ones are low rank
KRON_FULL_WIDTH = 2048


def check_low_rank(rank: Any, full_width: Any) -> tuple[int | None, int]:
    """``(kron_rank, kron_full_width)`` checked: a positive int (or None) and an int >= 0."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(
            f"`kron_rank` must be a whole number of eigenpairs >= 1 (the smallest that holds a "
            f"factor is 1), or None to keep every Kronecker factor whole; got {rank!r}. Pass "
            f"e.g. backend_kwargs={{'kron_rank': {KRON_RANK}}}."
        )
    if isinstance(full_width, bool) or not isinstance(full_width, int) or full_width < 0:
        raise ValueError(
            f"`kron_full_width` must be a whole number >= 0 (factors up to that width are kept "
            f"whole), got {full_width!r}; the default is {KRON_FULL_WIDTH}."
        )
    return rank, full_width


@dataclass(frozen=True)
class LowRankFactor:
    """A positive semi-definite ``(d, d)`` factor ``Q diag(l) Q^T + sigma (I - Q Q^T)``.

    Attributes:
        vectors: ``Q`` ``(d, k)``, orthonormal columns.
        values: The ``d`` eigenvalues ``[l (k), sigma (d - k)]``.

    Example:
        >>> q = torch.eye(3, dtype=torch.float64)[:, :1]
        >>> f = LowRankFactor(q, torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64))
        >>> f.to_dense()
        tensor([[4., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]], dtype=torch.float64)
    """

    vectors: torch.Tensor
    values: torch.Tensor

    @property
    def rank(self) -> int:
        """``k``."""
        return int(self.vectors.shape[1])

    @property
    def remainder(self) -> torch.Tensor:
        """``sigma``, the eigenvalue of every direction outside ``Q``."""
        return self.values[self.rank]

    def scaled(self, c: torch.Tensor | float) -> LowRankFactor:
        """``c F``."""
        return LowRankFactor(self.vectors, self.values * c)

    def norm(self) -> torch.Tensor:
        """Frobenius norm ``||F||``."""
        return self.values.norm()

    def right(self, x: torch.Tensor) -> torch.Tensor:
        """``x F`` for rows ``x`` ``(..., d)``."""
        top = x @ self.vectors
        sigma = self.remainder
        return (top * (self.values[: self.rank] - sigma)) @ self.vectors.T + sigma * x

    def right_sqrt(self, x: torch.Tensor) -> torch.Tensor:
        """``x F^{1/2}`` for rows ``x`` ``(..., d)``: a root, ``(x F^{1/2})(x F^{1/2})^T =
        x F x^T``."""
        root = self.values.clamp_min(0.0).sqrt()
        top = x @ self.vectors
        return (top * (root[: self.rank] - root[self.rank])) @ self.vectors.T + root[self.rank] * x

    def to_dense(self) -> torch.Tensor:
        """The ``(d, d)`` matrix (for tests and small factors)."""
        q, sigma = self.vectors, self.remainder
        eye = torch.eye(q.shape[0], dtype=q.dtype, device=q.device)
        return (q * (self.values[: self.rank] - sigma)) @ q.T + sigma * eye


def nystrom_factor(
    sketch: torch.Tensor, omega: torch.Tensor, trace: torch.Tensor, rank: int
) -> LowRankFactor:
    """The top ``rank`` eigenpairs of a PSD ``F`` from its sketch ``Y = F Omega`` ``(d, s)``,
    and ``sigma = (tr F - sum l) / (d - k)``.

    Tropp et al. (2017), Algorithm 3, in float64: ``Y_nu = Y + nu Omega``,
    ``C = chol(Omega^T Y_nu)``, ``U S _ = svd(Y_nu C^{-T})`` (from the ``(s, s)`` Gram matrix),
    ``l = S^2 - nu``. Exact (to rounding) when ``rank F <= s``.

    Args:
        sketch: ``Y`` ``(d, s)``.
        omega: ``Omega`` ``(d, s)`` of full column rank.
        trace: ``tr F`` (scalar).
        rank: ``k <= s``.
    """
    dtype = sketch.dtype
    y, om = sketch.double(), omega.double()
    d = y.shape[0]
    nu = max(math.sqrt(d) * torch.finfo(dtype).eps * float(y.norm()), 1e-300)
    for _ in range(8):  # the shift that makes Omega^T Y_nu positive definite to rounding
        y_nu = y + nu * om
        gram = om.T @ y_nu
        c, info = torch.linalg.cholesky_ex((gram + gram.T) / 2)
        if int(info) == 0:
            break
        nu *= 100
    else:
        raise RuntimeError("the Kronecker factor's sketch is not positive semi-definite")
    y = y_nu
    e = torch.linalg.solve_triangular(c, y.T, upper=False).T  # (d, s), E E^T the Nystrom F
    squares, vectors = torch.linalg.eigh(e.T @ e)  # E's singular values squared, ascending
    squares, vectors = squares.flip(0)[:rank], vectors.flip(1)[:, :rank]
    # E's left singular vectors; orthonormalized, as those of (near) zero values are noise
    u = torch.linalg.qr(e @ (vectors / squares.clamp_min(nu).sqrt()))[0]
    top = (squares - nu).clamp_min(0.0)
    sigma = (trace.double() - top.sum()).clamp_min(0.0) / max(d - rank, 1)
    values = torch.cat([top, sigma.reshape(1).expand(d - rank)])
    return LowRankFactor(u.to(dtype), values.to(dtype))


class FactorSketch:
    """The sketch ``Y = F Omega`` and trace of a factor ``F = sum_n R_n R_n^T``, fed the roots.

    Args:
        width: ``d``.
        rank: Eigenpairs to keep, ``k``; the sketch has ``s = min(2 k, d)`` columns.
        like: A tensor with the dtype and device to use.
        seed: Seed of ``Omega``; the same on every process.
    """

    def __init__(self, width: int, rank: int, like: torch.Tensor, seed: int) -> None:
        self.width, self.rank = width, rank
        cols = min(2 * rank, width)
        g = torch.Generator().manual_seed(seed)  # Gaussian columns (orthonormal is not needed)
        omega = torch.randn(width, cols, generator=g, dtype=like.dtype) / width**0.5
        self.omega = omega.to(like.device)
        self.sketch = torch.zeros_like(self.omega)
        self.trace = torch.zeros((), dtype=like.dtype, device=like.device)

    def add(self, roots: torch.Tensor) -> None:
        """Add ``R R^T`` for roots ``R`` ``(d, m)`` (or a batch ``(B, d, m)``, summed)."""
        r = roots if roots.ndim == 2 else roots.transpose(0, 1).reshape(self.width, -1)
        self.sketch += r @ (r.T @ self.omega)
        self.trace += r.square().sum()

    def finish(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> LowRankFactor:
        """The low-rank factor of the sum over all processes (``reduce`` sums a tensor)."""
        return nystrom_factor(reduce(self.sketch), self.omega, reduce(self.trace), self.rank)


# ---------------------------------------------------------------------- roots of pair terms
#: a Kronecker factor: dense ``(d, d)``, low rank, or None for the identity
Factor = torch.Tensor | LowRankFactor | None


def right_times(x: torch.Tensor, f: Factor) -> torch.Tensor:
    """``x F`` for rows ``x`` ``(..., d)`` (``F`` symmetric; None is the identity)."""
    if f is None:
        return x
    if isinstance(f, LowRankFactor):
        return f.right(x)
    return x @ f


def psd_root(c: torch.Tensor) -> torch.Tensor:
    """``R`` with ``R R^T = C`` for PSD ``C`` ``(..., m, m)`` (negative rounding dropped)."""
    values, vectors = torch.linalg.eigh(c)
    return vectors * values.clamp_min(0.0).sqrt()[..., None, :]


def root_times(e: torch.Tensor, f: Factor, f_root: torch.Tensor | None) -> torch.Tensor:
    """``E F^{1/2}`` for rows ``E`` ``(..., o)``: a root of ``E F E^T`` (``f_root``: a root of a
    dense ``F``)."""
    if f is None:
        return e
    if isinstance(f, LowRankFactor):
        return f.right_sqrt(e)
    assert f_root is not None
    return e @ f_root


def pair_roots(
    u0: torch.Tensor,
    u1: torch.Tensor,
    v0: torch.Tensor,
    v1: torch.Tensor,
    w: torch.Tensor,
    f: Factor,
    f_root: torch.Tensor | None,
) -> torch.Tensor:
    """Roots ``(B, t, m)`` of the pair terms ``w_n Vhat_n Uhat_n^T F Uhat_n Vhat_n^T`` of a
    factor of side ``v`` (width ``t``), ``F`` the factor of side ``u`` (width ``o``), with
    ``Uhat_n = [u1_n, -u0_n]``, ``Vhat_n = [v1_n, v0_n]`` (``(B, o)`` items or ``(B, L, o)``
    sequences): ``sqrt(w_n) E_n F^{1/2}`` with ``E_n = Vhat_n Uhat_n^T`` (``m = o``) when ``o``
    is at most ``Uhat``'s ``2 L`` columns, else ``Vhat_n C_n^{1/2}`` with
    ``C_n = w_n Uhat_n^T F Uhat_n`` (``m = 2 L``)."""
    cat = torch.cat if is_sequence(u0) else torch.stack
    uh, vh = cat([u1, -u0], 1), cat([v1, v0], 1)  # (B, 2L, o), (B, 2L, t)
    if uh.shape[-1] <= uh.shape[1]:
        return root_times(vh.mT @ uh, f, f_root) * w.sqrt()[:, None, None]
    c = right_times(uh, f) @ uh.mT * w[:, None, None]
    return vh.mT @ psd_root(c)


# ---------------------------------------------------------------------- the eigenbasis
def is_thin(q: torch.Tensor | None) -> bool:
    """Whether a basis ``(d, k)`` holds fewer than ``d`` vectors (a low-rank factor)."""
    return q is not None and q.shape[1] < q.shape[0]


def rotate(x: torch.Tensor, q: torch.Tensor | None) -> torch.Tensor:
    """Rows ``x`` ``(..., d)`` in the eigenbasis: ``x Q`` ``(..., d)``, or for a thin ``Q``
    ``(d, k)`` the ``k + d`` coordinates ``[x Q, x (I - Q Q^T)]``."""
    if q is None:
        return x
    top = x @ q
    if not is_thin(q):
        return top
    return torch.cat([top, x - top @ q.T], -1)


def unrotate(y: torch.Tensor, q: torch.Tensor | None) -> torch.Tensor:
    """The inverse of :func:`rotate` on coordinates whose complement part lies outside
    ``Q``: ``y Q^T``, or ``y[..., :k] Q^T + y[..., k:]``."""
    if q is None:
        return y
    if not is_thin(q):
        return y @ q.T
    k = q.shape[1]
    return y[..., :k] @ q.T + y[..., k:]


def extended_values(values: torch.Tensor, q: torch.Tensor | None) -> torch.Tensor:
    """Eigenvalues ``(d,)`` laid out as :func:`rotate`'s coordinates: ``(k + d,)`` for a thin
    ``Q``, the remainder repeated over the ``d`` complement coordinates."""
    if not is_thin(q):
        return values
    assert q is not None
    k, d = q.shape[1], q.shape[0]
    return torch.cat([values[:k], values[k : k + 1].expand(d)])


def _squared_basis(q: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q_full^2 collapsed (d, k + 1), eigenvalues (k + 1,))`` for diagonals: the complement
    columns of a full eigenbasis square-sum to ``1 - sum_j Q_ij^2`` and share ``sigma``."""
    if not is_thin(q):
        return q.square(), values
    k = q.shape[1]
    sq = q.square()
    return torch.cat([sq, (1 - sq.sum(1, keepdim=True)).clamp_min(0.0)], 1), values[: k + 1]


def _full_basis(q: torch.Tensor) -> torch.Tensor:
    """A square orthonormal basis whose first ``k`` columns are ``Q`` (tests only)."""
    if not is_thin(q):
        return q
    eye = torch.eye(q.shape[0], dtype=q.dtype, device=q.device)
    _, vecs = torch.linalg.eigh(eye - q @ q.T)  # eigenvalues 0 (k of them), then 1
    return torch.cat([q, vecs[:, q.shape[1] :]], 1)


class LowRankKron(Kron):
    """laplace-torch's ``Kron`` whose factors may be :class:`LowRankFactor` s (kept as their
    eigenpairs); :meth:`decompose` eigendecomposes only the dense ones."""

    def decompose(self, damping: bool = False) -> LowRankKronDecomposed:
        """The eigendecomposition: dense factors by ``eigh``, low-rank ones as kept."""
        vectors: list[Any] = []
        values: list[Any] = []
        for fs in self.kfacs:
            qs, ls = [], []
            for f in fs:
                if isinstance(f, LowRankFactor):
                    q, v = f.vectors, f.values
                else:
                    v, q = symeig(f)
                qs.append(q)
                ls.append(v)
            vectors.append(qs)
            values.append(ls)
        return LowRankKronDecomposed(vectors, values, damping=damping)

    def to_matrix(self) -> torch.Tensor:
        """The dense block-diagonal ``(P, P)`` curvature (tests only)."""
        blocks = []
        for fs in self.kfacs:
            dense = [f.to_dense() if isinstance(f, LowRankFactor) else f for f in fs]
            blocks.append(dense[0] if len(dense) == 1 else torch.kron(dense[0], dense[1]))
        return torch.block_diag(*blocks)


class LowRankKronDecomposed(KronDecomposed):
    """laplace-torch's ``KronDecomposed`` whose eigenvectors may be thin: ``Q`` ``(d, k)``
    with ``d`` eigenvalues, those past the ``k``-th all equal (the remainder ``sigma``).

    Log determinants, scaling and prior shifts are laplace-torch's (they read the ``d``
    eigenvalues); products, diagonals and dense matrices go through :func:`rotate`."""

    def __add__(self, deltas: torch.Tensor) -> LowRankKronDecomposed:
        """The same factors plus a prior precision ``deltas`` (scalar or one per group)."""
        self._check_deltas(deltas)
        return LowRankKronDecomposed(
            self.eigenvectors, self.eigenvalues, self.deltas + deltas, self.damping
        )

    def __mul__(self, scalar: torch.Tensor | float) -> LowRankKronDecomposed:
        """The factors times a scalar (a temperature or loss factor)."""
        scaled = super().__mul__(scalar)
        return LowRankKronDecomposed(
            self.eigenvectors, scaled.eigenvalues, self.deltas, self.damping
        )

    __radd__ = __add__
    __rmul__ = __mul__

    def _spectrum(self, ls: Any, qs: Any, delta: torch.Tensor, exponent: float) -> torch.Tensor:
        """``(l + delta)^e`` of a bias, ``(l_1 l_2^T + delta)^e`` of a weight, in the
        :func:`rotate` coordinates of its bases."""
        if len(ls) == 1:
            return torch.pow(extended_values(ls[0], qs[0]) + delta, exponent)
        l1, l2 = (extended_values(v, q) for v, q in zip(ls, qs, strict=True))
        if self.damping:
            s = torch.sqrt(delta)
            return torch.pow(torch.outer(l1 + s, l2 + s), exponent)
        return torch.pow(torch.outer(l1, l2) + delta, exponent)

    def _bmm(self, W: torch.Tensor, exponent: float = -1) -> torch.Tensor:  # noqa: N803
        """``P^exponent W`` for ``W`` ``(B, K, P)``, through :func:`rotate` per group."""
        b, k, p = W.shape
        w = W.reshape(b * k, p)
        start, out = 0, []
        for ls, qs, delta in zip(self.eigenvalues, self.eigenvectors, self.deltas, strict=True):
            lam = self._spectrum(ls, qs, delta, exponent)
            if len(ls) == 1:
                n = len(ls[0])
                part = unrotate(rotate(w[:, start : start + n], qs[0]) * lam, qs[0])
            else:
                n_rows, n_cols = len(ls[0]), len(ls[1])
                n = n_rows * n_cols
                x = w[:, start : start + n].reshape(-1, n_rows, n_cols)
                x = rotate(rotate(x, qs[1]).mT, qs[0]).mT * lam
                part = unrotate(unrotate(x, qs[1]).mT, qs[0]).mT.reshape(-1, n)
            out.append(part)
            start += n
        return torch.cat(out, dim=1).reshape(b, k, p)

    def diag(self, exponent: float = 1) -> torch.Tensor:
        """The diagonal ``(P,)`` of the precision to the power ``exponent``."""
        diags = []
        for qs, ls, delta in zip(self.eigenvectors, self.eigenvalues, self.deltas, strict=True):
            squared = [_squared_basis(q, v) for q, v in zip(qs, ls, strict=True)]
            if len(ls) == 1:
                sq, v = squared[0]
                diags.append(sq @ torch.pow(v + delta, exponent))
                continue
            (sq1, v1), (sq2, v2) = squared
            if self.damping:
                s = torch.sqrt(delta)
                lam = torch.pow(torch.outer(v1 + s, v2 + s), exponent)
            else:
                lam = torch.pow(torch.outer(v1, v2) + delta, exponent)
            diags.append((sq1 @ lam @ sq2.T).flatten())
        return torch.cat(diags)

    def to_matrix(self, exponent: float = 1) -> torch.Tensor:
        """The dense ``(P, P)`` precision to the power ``exponent`` (tests only)."""
        full: Any = [[_full_basis(q) for q in qs] for qs in self.eigenvectors]
        return KronDecomposed(full, self.eigenvalues, self.deltas, self.damping).to_matrix(exponent)
