"""The exact Laplace evidence of a Bradley-Terry reward model, and the prior that maximizes it.

Shape legend: ``N`` training pairs, ``P`` posterior parameters, ``in``/``out`` the sizes of a
linear layer.

With the exact Bradley-Terry GGN ``H = dJ^T W dJ`` (``dJ (N, P)`` the Jacobian of
``r(x_1) - r(x_0)``, ``W`` the pair weights ``p (1 - p)``) and a scalar prior ``delta``, the
Laplace log marginal likelihood depends on ``H`` only through

.. math:: \\log\\det(H + \\delta I) - P \\log \\delta = \\sum_j \\log(1 + \\kappa_j / \\delta),

where ``kappa_j`` are the non-zero eigenvalues of ``H``, equal to those of the ``N x N`` pair
kernel ``K = W^1/2 dJ dJ^T W^1/2`` (Sylvester's determinant identity). A block-diagonal
posterior (Kronecker or diagonal) drops the covariance between parameter tensors and with it
the overlap of their data directions, which overstates the model's effective number of
parameters: its evidence optimum sits 15-29% above the exact one on the benchmark MLPs
(docs/results/prior.md), whatever the accuracy inside each block. :func:`exact_ggn_eigenvalues`
computes the ``kappa_j`` from whichever of ``H`` (``P <= N``) or ``K`` (``N < P``) is smaller;
``K`` comes from per-item activations and output gradients of the linear layers: the item
kernel ``J_i . J_j`` of the pairs' ``M`` distinct items is a product of two Gram matrices per
layer, and ``K`` gathers a pair's four item terms from it, so a model with 82,689 parameters and
3,000 pairs needs no ``P x P`` matrix; where ``M`` is well below ``N``, the non-zero spectrum
comes from the item kernel and the pairs' graph Laplacian at size below ``M`` instead
(:mod:`bt_laplace.prior.kernel`: MovieLens at 4,000 pairs has 1,023 movies), which also
replaces ``H`` where it costs fewer operations.
:func:`exact_evidence_prior_precision` then finds the prior precision by solving the
stationarity condition ``sum_j kappa_j / (kappa_j + delta) = delta ||theta* - mu_0||^2``
(MacKay's effective number of parameters), whose left side falls and right side grows with
``delta``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from laplace.baselaplace import ParametricLaplace

from bt_laplace._checks import progress
from bt_laplace._distributed import Processes
from bt_laplace._layer_io import LayerIO, is_sequence
from bt_laplace._loader import batch_on
from bt_laplace.curvature import BradleyTerryGGN, is_pair_backend
from bt_laplace.prior.kernel import (
    KernelForm,
    LayerRows,
    ggn_cost,
    item_form_cost,
    kernel_form,
    pair_gram_diagonal,
    pair_items,
    rows_per_pair,
    weight_width,
)
from bt_laplace.prior.pair_io import (
    centering_weight,
    check_count,
    check_size,
    collect_pair_io,
    distinct_input_count,
    gathered_pairs,
    layer_kinds,
    pair_backend,
)
from bt_laplace.prior.spectrum import Spectrum, settled_spectrum
from bt_laplace.structures import structure_class

__all__ = [
    "distinct_input_count",
    "ExactGGN",
    "exact_ggn_matrix",
    "exact_ggn_eigenvalues",
    "fitted_ggn_eigenvalues",
    "exact_evidence_prior_precision",
    "exact_pair_variances",
    "EVIDENCE_MEMORY_LIMIT",
]

#: largest dense matrix (``P x P`` GGN or ``N x N`` pair kernel) the exact evidence builds, bytes
EVIDENCE_MEMORY_LIMIT = 4 * 2**30


@dataclass(frozen=True)
class ExactGGN:
    """The exact tempered Bradley-Terry GGN of a posterior's pairs, in the matrix its
    eigenvalues come from (:func:`exact_ggn_matrix`).

    Attributes:
        matrix: The dense ``P x P`` GGN, or the ``N x N`` pair kernel from Jacobian rows (off
            the fast path); untempered. None where ``form`` is.
        form: The pair kernel from layer I/O (:mod:`bt_laplace.prior.kernel`), or None.
        size: How many eigenvalues :meth:`eigenvalues` returns (``min(N, P)``; ``2N`` for
            ``N`` with TRL's centering term).
        temper: The posterior's ``1 / T``.
    """

    matrix: torch.Tensor | None
    form: KernelForm | None
    size: int
    temper: float

    def eigenvalues(self, theta_sq: float | None = None, *, settle: bool = True) -> torch.Tensor:
        """The ``size`` eigenvalues (float64, CPU, ascending, clamped at 0): all exactly
        without ``theta_sq``; with it the top of the spectrum, as far as the evidence's
        prior for that ``||theta* - mu_0||^2`` needs it, the rest spread evenly with its exact
        trace (:func:`~bt_laplace.prior.spectrum.settled_spectrum`; ``settle`` False: every
        eigenvalue at once, where the attempt at the top is known not to settle)."""
        mat = self.form.matrix if self.form is not None else self.matrix
        assert mat is not None
        values = _evidence_spectrum(mat.cpu() * self.temper, theta_sq, settle).eigenvalues()
        if self.form is None:
            return values
        return self.form.padded(values, self.size)


def exact_ggn_eigenvalues(
    laplace: ParametricLaplace,
    train_loader: Iterable[Any],
    *,
    memory_limit: int = EVIDENCE_MEMORY_LIMIT,
    progress_bar: bool = False,
    processes: Processes | None = None,
    theta_sq: float | None = None,
    n_items: int | None = None,
) -> torch.Tensor:
    """Eigenvalues of the exact tempered Bradley-Terry GGN ``H / T`` over the posterior parameters.

    Returns the ``min(N, P)`` eigenvalues of the smaller of ``H`` and the pair kernel ``K``
    (``2N`` for ``N`` with TRL's centering term, whose rows ``K`` then has too)
    (float64, CPU, ascending, clamped at 0); the other ``|P - N|`` eigenvalues of the larger
    one are zero. Independent of the posterior's ``hessian_structure`` and of the backend it was
    fit with: this is one extra pass over ``train_loader`` with :class:`BradleyTerryGGN`.
    With ``theta_sq`` only the top of the spectrum is computed, as far as the evidence's prior
    for that ``||theta* - mu_0||^2`` needs it, and the rest is spread evenly with its exact
    trace (:func:`~bt_laplace.prior.spectrum.settled_spectrum`).

    Args:
        laplace: A fitted laplace-torch Laplace object over a pair model (all weights or
            last layer).
        train_loader: The pairs the posterior was fit on.
        memory_limit: Largest dense matrix to build, in bytes.
        progress_bar: Show a tqdm bar over the batches.
        processes: The process group the pairs are split over (their sums are summed, their
            layer I/O gathered), or None for one process.
        theta_sq: ``||theta* - mu_0||^2`` of the evidence to settle, or None for every
            eigenvalue exactly.
        n_items: The pairs' distinct items, if :func:`distinct_input_count` has counted them
            already (where ``P <= N``, else they are counted here).

    Raises:
        ValueError: If the largest square matrix of the route exceeds ``memory_limit`` (the
            ``P x P`` GGN; or the item kernel of the pairs' ``M`` distinct items and the pair
            kernel, side ``max(M, N)``, ``M`` where the reduced form is taken), or if the pair
            kernel is needed for a model outside the fast path and the ``N x P`` Jacobian
            would exceed it.
    """
    ggn = exact_ggn_matrix(
        laplace,
        train_loader,
        memory_limit=memory_limit,
        progress_bar=progress_bar,
        processes=processes,
        n_items=n_items,
    )
    return ggn.eigenvalues(theta_sq)


def exact_ggn_matrix(
    laplace: ParametricLaplace,
    train_loader: Iterable[Any],
    *,
    memory_limit: int = EVIDENCE_MEMORY_LIMIT,
    progress_bar: bool = False,
    processes: Processes | None = None,
    n_items: int | None = None,
    restrictable: bool = False,
) -> ExactGGN:
    """The matrix :func:`exact_ggn_eigenvalues` decomposes, not yet decomposed: its arguments
    and errors (without ``theta_sq``, which :meth:`ExactGGN.eigenvalues` takes). With
    ``restrictable``, its :attr:`~ExactGGN.form`, where the route has one, also gives the
    exact posterior of the pairs among some of the items
    (:meth:`~bt_laplace.prior.kernel.KernelForm.without_items`), as the held-out calibration
    needs, without another pass over them (through the items it then keeps their kernel)."""
    processes = processes or Processes(enabled=False)
    n_pairs = int(laplace.n_data)  # over every process
    n_params = int(laplace.n_params)
    temper = float(laplace._H_factor)
    fix = (
        "use evidence='posterior' (the fitted structure's own evidence), fewer pairs, or "
        "subset_of_weights='last_layer'."
    )
    backend = pair_backend(laplace)
    device = laplace._device
    batches = progress(train_loader, progress_bar, "[Exact evidence]")
    # the P x P GGN where P is at most the kernel's rows (2 a pair with TRL's centering),
    # unless few items in many pairs make theirs cheaper
    n_rows = n_pairs * rows_per_pair(laplace)
    if n_params <= n_rows:
        form = _through_items(
            backend, train_loader, batches, laplace, memory_limit, processes, n_items, restrictable
        )
        if form is not None:
            return ExactGGN(None, form, n_params, temper)
        check_size(n_params, n_params, "the dense GGN", fix, memory_limit)
        ggn = torch.zeros(n_params, n_params, dtype=torch.float64, device=device)
        seen = 0
        for data in batches:
            x, y = batch_on(data, laplace.dict_key_y, device)
            _, h = backend.full(x, y)
            ggn += h.to(torch.float64)
            seen += len(y)
        check_count(int(processes.sum_number(seen)), n_pairs)
        return ExactGGN(processes.sum(ggn), None, n_params, temper)
    # the N x N pair kernel, or its form on the distinct items
    kernel = _pair_kernel(
        backend, batches, laplace, n_pairs, n_params, memory_limit, fix, processes, restrictable
    )
    if isinstance(kernel, KernelForm):
        return ExactGGN(None, kernel, n_rows, temper)
    return ExactGGN(kernel, None, n_rows, temper)


def _through_items(
    backend: BradleyTerryGGN,
    train_loader: Iterable[Any],
    batches: Iterable[Any],
    laplace: ParametricLaplace,
    memory_limit: int,
    processes: Processes,
    n_items: int | None,
    restrictable: bool = False,
) -> KernelForm | None:
    """The reduced kernel form whose eigenvalues are :func:`exact_ggn_eigenvalues`'s for
    ``P <= N`` (padded to ``P``), through the pairs' distinct items, where those are few
    enough that their kernel costs fewer operations than the ``P x P`` GGN from every pair
    (``n_items``, or a scan of the inputs counts them first); None to build the GGN (inputs
    that are not tensors, too many items, layer I/O off the fast path: every process decides
    alike)."""
    n_pairs, n_params = int(laplace.n_data), int(laplace.n_params)
    width = weight_width(laplace)
    if 2 * n_pairs * width * 8 > memory_limit:
        return None
    if n_items is None:
        n_items = distinct_input_count(train_loader, laplace, processes)
    ggn = ggn_cost(n_pairs, n_params)
    if n_items is None or item_form_cost(n_items, width) >= ggn:
        return None
    seen, items, root, inputs, rows = collect_pair_io(
        backend, batches, laplace, n_pairs, n_params, memory_limit, None
    )
    if processes.sum_number(len(rows)) > 0:  # off the fast path on some process
        return None
    check_count(int(processes.sum_number(seen)), n_pairs)
    pairs = gathered_pairs(items, root, inputs, processes, centering_weight(backend))
    if item_form_cost(pairs.n_items, width) >= ggn:
        return None  # more items by their layer I/O than the inputs showed
    return kernel_form(layer_kinds(backend), pairs, through_items=True, restrictable=restrictable)


def fitted_ggn_eigenvalues(laplace: ParametricLaplace) -> torch.Tensor | None:
    """The eigenvalues of :func:`exact_ggn_eigenvalues` read off the fitted curvature when it
    already is the exact GGN, so that no pass over the pairs is needed; None otherwise.

    Each structure knows when that is (:meth:`~bt_laplace.structures.PosteriorStructure.
    exact_ggn_eigenvalues`): a ``full`` posterior on at most as many parameters as pairs, and
    the last-layer ``kron`` posterior of a one-output head, the default last-layer posterior;
    only for curvature from :class:`BradleyTerryGGN`.

    Returns:
        The ``P`` eigenvalues (float64, CPU, ascending per block, clamped at 0), tempered as
        those of :func:`exact_ggn_eigenvalues`; None when the pass is needed.
    """
    if not is_pair_backend(getattr(laplace, "backend", None)):
        return None
    return structure_class(laplace).exact_ggn_eigenvalues(laplace)


def _pair_kernel(
    backend: BradleyTerryGGN,
    batches: Any,
    laplace: ParametricLaplace,
    n_pairs: int,
    n_params: int,
    memory_limit: int,
    fix: str,
    processes: Processes,
    restrictable: bool = False,
) -> torch.Tensor | KernelForm:
    """``K = W^1/2 dJ dJ^T W^1/2`` ``(N, N)`` in float64 from per-pair Jacobians, or its
    :class:`~bt_laplace.prior.kernel.KernelForm` from layer I/O (of the pairs of every process,
    gathered in rank order)."""
    collected = collect_pair_io(backend, batches, laplace, n_pairs, n_params, memory_limit, fix)
    seen, items, root, inputs, rows = collected
    check_count(int(processes.sum_number(seen)), n_pairs)
    if processes.sum_number(len(rows)) > 0:  # some process is off the fast path: all are
        n_rows = n_pairs * rows_per_pair(laplace)
        check_size(n_rows, n_rows, "the dense pair kernel", fix, memory_limit)
        phi = processes.gather_rows(torch.cat(rows))
        return phi @ phi.T
    pairs = gathered_pairs(items, root, inputs, processes, centering_weight(backend))
    what = "pair kernel" if pairs.size == pairs.n_rows else "kernel of the pairs' distinct items"
    check_size(pairs.size, pairs.size, f"the dense {what}", fix, memory_limit)
    return kernel_form(layer_kinds(backend), pairs, restrictable=restrictable)


def exact_pair_variances(
    laplace: ParametricLaplace,
    train_loader: Iterable[Any],
    query: tuple[Any, Any],
    *,
    memory_limit: int = EVIDENCE_MEMORY_LIMIT,
    theta_sq: float | None = None,
    settle: bool = True,
    form: KernelForm | None = None,
) -> tuple[torch.Tensor, Any] | None:
    """The exact Laplace posterior of ``laplace``'s pairs, through its pair kernel: the
    eigenvalues of the tempered GGN and the margin variances of ``query`` pairs as a function
    of the prior precision.

    With ``A = sqrt(T^-1) W^1/2 dJ`` ``(N, P)`` over the training pairs and ``j`` the Jacobian
    of a query pair's reward difference, ``var(delta) = |j|^2 / delta - (A j)^T
    (A A^T + delta)^-1 (A j) / delta`` (Woodbury), evaluated from one eigendecomposition
    ``A A^T = U diag(e) U^T`` for every ``delta``; no ``P x P`` matrix.

    Args:
        laplace: A fitted all-weights posterior whose parameters are all on the fast path.
        train_loader: Its training pairs, every one once.
        query: Layer I/O of items 0 and 1 of the query pairs (``Predictive.jacobians(x,
            pairs=True)``).
        memory_limit: Largest square matrix to build (the item or the pair kernel), in bytes.
        theta_sq: ``||theta* - mu_0||^2``: with it only the top of the kernel's spectrum is
            computed, as far as the exact evidence's prior needs it
            (:func:`~bt_laplace.prior.spectrum.settled_spectrum`; the variances are then
            settled at priors near that one, not at every prior).
        settle: Attempt the top of the spectrum first (with ``theta_sq``); False goes to every
            eigenvalue at once, where the attempt is known not to settle.
        form: The kernel form of ``train_loader``'s pairs, if at hand (as
            :meth:`~bt_laplace.prior.kernel.KernelForm.without_items` gives it from the exact
            evidence's of more pairs): no pass over ``train_loader`` then.

    Returns:
        ``(e, variances)``: the ``N`` kernel eigenvalues (float64, the exact evidence's), and
        a function of ``delta`` giving the query pairs' variances ``(Q,)``; None when the
        kernel would exceed ``memory_limit`` or a parameter is off the fast path (a sequence
        model, a layer called more than once).
    """
    n_pairs = int(laplace.n_data)
    if not all(isinstance(q, LayerIO) and not any(is_sequence(a) for a in q.acts) for q in query):
        return None
    backend = pair_backend(laplace)
    kinds = layer_kinds(backend)
    if form is None:
        n_params = int(laplace.n_params)
        seen, items, root, inputs, rows = collect_pair_io(
            backend, train_loader, laplace, n_pairs, n_params, memory_limit, None
        )
        if rows:
            return None
        check_count(seen, n_pairs)
        pairs = pair_items(items, root, inputs, centering=centering_weight(backend))
        if pairs.size * pairs.size * 8 > memory_limit:
            return None
        form = kernel_form(kinds, pairs)
    elif form.pairs.size * form.pairs.size * 8 > memory_limit:
        return None
    q0, q1 = (LayerRows([a.double() for a in q.acts], [g.double() for g in q.grads]) for q in query)
    temper = float(laplace._H_factor)
    kernel = form.matrix.cpu() * temper
    cross = form.cross(q0, q1).cpu()  # A j / sqrt(temper), in the form's coordinates
    sq = pair_gram_diagonal(kinds, q0, q1).cpu()
    spectrum = _evidence_spectrum(kernel, theta_sq, settle, vectors=True)

    def variances(delta: float) -> torch.Tensor:
        return (sq - spectrum.project(cross, delta) * temper) / delta

    return form.padded(spectrum.eigenvalues()), variances


def _evidence_spectrum(
    mat: torch.Tensor, theta_sq: float | None, settle: bool, *, vectors: bool = False
) -> Spectrum:
    """The spectrum of the tempered kernel or GGN ``mat`` (CPU) as the exact evidence needs it:
    its top, as far as the prior for ``theta_sq`` needs it
    (:func:`~bt_laplace.prior.spectrum.settled_spectrum`), or every eigenvalue without
    ``theta_sq`` or with ``settle`` False."""
    if theta_sq is None or not settle:  # n <= 3 * rank: every eigenvalue, at once
        return settled_spectrum(mat, lambda e: 1.0, vectors=vectors, rank=mat.shape[0])
    prior_of = lambda e: exact_evidence_prior_precision(e, theta_sq)  # noqa: E731
    return settled_spectrum(mat, prior_of, vectors=vectors)


def exact_evidence_prior_precision(
    eigenvalues: torch.Tensor, theta_sq: float, *, rtol: float = 1e-12
) -> float:
    """Scalar prior precision maximizing the Laplace evidence with the given GGN eigenvalues.

    Solves ``sum_j kappa_j / (kappa_j + delta) = delta * theta_sq`` by bisection in
    ``log delta`` (the left side falls, the right side grows: one root).

    Args:
        eigenvalues: Non-negative eigenvalues ``kappa`` of the tempered GGN (zeros may be
            included or left out).
        theta_sq: ``||theta* - mu_0||^2`` over the posterior parameters.
        rtol: Relative tolerance on ``delta``.

    Raises:
        ValueError: If the curvature is zero (no data information: the evidence grows as
            ``delta -> 0``) or ``theta_sq`` is zero (it grows as ``delta -> infinity``).
    """
    kappa = eigenvalues.detach().to(device="cpu", dtype=torch.float64).clamp_min(0.0)
    if not float(kappa.sum()) > 0:
        raise ValueError(
            "the exact GGN is zero (no pair carries information: all weights p(1-p) or "
            "reward differences vanish), so the evidence has no finite maximizer; set "
            "prior_precision to a number."
        )
    if not theta_sq > 0 or not math.isfinite(theta_sq):
        raise ValueError(
            f"||theta* - prior_mean||^2 = {theta_sq!r}, so the evidence has no finite "
            "maximizer; set prior_precision to a number or change prior_mean."
        )

    def excess(log_delta: float) -> float:  # increasing in log delta
        delta = math.exp(log_delta)
        return delta * theta_sq - float((kappa / (kappa + delta)).sum())

    # the root lies between the bounds below: gamma <= min(sum kappa / delta, #kappa)
    lo = math.log(float(kappa.sum()) / theta_sq) / 2 - 1.0
    while excess(lo) > 0:
        lo -= 2.0
    hi = math.log(kappa.numel() / theta_sq) + 1.0
    while excess(hi) < 0:
        hi += 2.0
    while hi - lo > rtol:
        mid = (lo + hi) / 2
        if excess(mid) < 0:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)
