"""The default prior's held-out calibration: scale the exact evidence's prior so that a
block-diagonal all-weights posterior gives new items the exact posterior's variance.

Shape legend: ``N`` pairs, ``2`` the two items of a pair, ``*item`` one item, ``Q`` query pairs.

The exact evidence's prior suits the exact posterior (the full GGN); a ``kron`` or ``diag``
posterior drops the covariance between layers and at the same prior can give pairs of unseen
items far too little variance (docs/results/prior_sweep.md: about 100 times too strong a prior on
Warriner valence ratings). Training pairs cannot show it, their items are seen, so
:func:`held_out_prior_ratio` holds out :data:`CALIBRATION_HELD_OUT` of the training *items*
(fixed seed), fits the same structure and the exact posterior (through its pair kernel,
:func:`~bt_laplace.prior.evidence.exact_pair_variances`) on the pairs among the others, sets
the exact one's prior by its exact evidence, and finds by bisection the prior at which the
structure's mean log variance over :data:`CALIBRATION_QUERIES` random pairs of held-out items
equals the exact one's. No labels are used: only variances are compared, never the MAP
model's predictions.

The calibration only ever *weakens* the prior (a factor of at most 1). Where the structure
already gives held-out items at least the exact posterior's variance at the exact evidence's
prior, that prior stays, after one comparison, with no bisection. On the real preference
tasks of docs/results/heldout.md the calibration's factor was about 0.1 on Warriner and 0.7-0.8
on MovieLens (kron too confident about new items, the case it was built for), 0.96-0.99 on
stated car choices, and 5-12 on exam and math scores; there raising the prior cut OOD AUROC by
0.03-0.05 for an NLL gain of about 0.001: a stronger prior shrinks the variance in every
direction the data do not pin down, which is where new kinds of items differ, while the
comparison sees only new items of the training kind.

The exact posterior of the pairs among the kept items needs no kernel of its own: its pair
kernel is the block of those pairs in the kernel the exact evidence builds of all the pairs (the
same MAP model, the same weights), or, through the distinct items, the same item kernel with the
kept pairs' Laplacian (:meth:`~bt_laplace.prior.kernel.KernelForm.without_items`; its own pass
over the kept pairs where the exact evidence took another route). Its spectrum is computed
first and whole; it tells whether the attempt at the top of the full spectrum can settle
(:func:`~bt_laplace.prior.spectrum.may_settle`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from bt_laplace._distributed import Processes
from bt_laplace._loader import split_batch
from bt_laplace.bradley_terry import margin_shift
from bt_laplace.predictive import Predictive
from bt_laplace.prior.evidence import exact_evidence_prior_precision, exact_pair_variances
from bt_laplace.prior.kernel import KernelForm
from bt_laplace.prior.spectrum import may_settle

__all__ = [
    "CALIBRATION_HELD_OUT",
    "CALIBRATION_QUERIES",
    "HeldOut",
    "held_out_split",
    "held_out_prior_ratio",
]

#: share of the training items that :func:`held_out_prior_ratio` holds out
CALIBRATION_HELD_OUT = 0.2
#: pairs of held-out items on which it compares the two posteriors
CALIBRATION_QUERIES = 1024

#: fits the posterior's structure, unfitted laplace-torch object and all, on a loader of pairs
Refit = Callable[[DataLoader], Any]


@dataclass(frozen=True)
class HeldOut:
    """Training items held out (:func:`held_out_split`).

    Attributes:
        keep: ``(N,)`` the pairs with no held-out item.
        query: ``(Q, 2, *item)`` random pairs of two different held-out items.
        items: ``(M, d)`` the distinct items, flattened, in ``torch.unique``'s order.
        held: ``(M,)`` which of them are held out.
        index: ``(N, 2)`` each pair's two items among ``items``.
    """

    keep: torch.Tensor
    query: torch.Tensor
    items: torch.Tensor
    held: torch.Tensor
    index: torch.Tensor

    def kept_pairs_of(self, form: KernelForm | None) -> KernelForm | None:
        """``form`` (the kernel of all the training pairs) restricted to the kept pairs,
        where it is of the same pairs (the same distinct items, the same pairs of them as a
        multiset of unordered pairs: a loader may yield them in another order from one pass
        to the next, and the exact posterior's variances and spectrum do not depend on which
        item of a pair comes first); None otherwise, or where it cannot be restricted."""
        if form is None or form.restrict is None:
            return None
        keys = form.pairs.keys
        if keys is None or keys.shape != self.items.shape or not torch.equal(keys, self.items):
            return None
        if not torch.equal(_sorted_pairs(form.pairs.index), _sorted_pairs(self.index)):
            return None
        return form.without_items(self.held)


def _sorted_pairs(index: torch.Tensor) -> torch.Tensor:
    """Unordered pairs of item indices ``(N, 2)``, each smaller index first, in
    lexicographic order (a multiset's normal form)."""
    pairs = index.sort(1).values
    key = pairs[:, 0] * (int(pairs.max()) + 1) + pairs[:, 1]
    return pairs[torch.argsort(key, stable=True)]


def held_out_split(x: torch.Tensor) -> HeldOut | None:
    """Hold out :data:`CALIBRATION_HELD_OUT` of the distinct items of pairs ``x`` ``(N, 2,
    *item)`` (fixed seed) and draw :data:`CALIBRATION_QUERIES` random pairs of two different
    held-out items; None when fewer than two items or pairs remain on either side."""
    items, index = torch.unique(x.reshape(2 * len(x), -1), dim=0, return_inverse=True)
    index = index.reshape(-1, 2)
    gen = torch.Generator().manual_seed(0)
    held = (torch.rand(len(items), generator=gen) < CALIBRATION_HELD_OUT).to(index.device)
    keep = ~held[index].any(1)
    new = held.nonzero().reshape(-1)
    if int(keep.sum()) < 2 or len(new) < 2:
        return None
    picks = new[torch.randint(len(new), (CALIBRATION_QUERIES, 2), generator=gen).to(new.device)]
    picks = picks[picks[:, 0] != picks[:, 1]]
    query = items[picks].reshape(len(picks), 2, *x.shape[2:])
    return HeldOut(keep, query, items, held, index)


def _tensor_pairs(
    train_loader: Iterable[Any], processes: Processes, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """All training pairs ``x (N, 2, *item)``, ``y (N,)`` of every process, or None when some
    process has inputs that are not tensors or carry TRL margins (every rank decides alike)."""
    xs, ys, usable = [], [], True
    for batch in train_loader:
        x, y = split_batch(batch)
        if not isinstance(x, torch.Tensor) or margin_shift(x, y) is not None:
            usable = False
            break
        xs.append(x)
        ys.append(y)
    if processes.sum_number(0 if usable and xs else 1) > 0:
        return None
    x = processes.gather_rows(torch.cat(xs).to(device))
    return x, processes.gather_rows(torch.cat(ys).to(device))


def held_out_prior_ratio(
    laplace: Any,
    refit: Refit,
    train_loader: Iterable[Any],
    processes: Processes,
    theta_sq: float,
    form: KernelForm | None = None,
) -> tuple[float | None, bool | None]:
    """How much to scale the exact evidence's prior of ``laplace`` (a fitted all-weights
    ``kron`` or ``diag`` posterior) so that it gives new items the exact posterior's variance
    (see the module doc).

    Args:
        laplace: The fitted posterior.
        refit: Fits the same structure on a loader of pairs (one process).
        train_loader: The pairs it was fitted on.
        processes: The process group they are split over; every rank gathers all pairs and
            computes the same ratio.
        theta_sq: ``||theta* - mu_0||^2`` over the posterior parameters.
        form: The exact evidence's kernel form of all the pairs, if at hand
            (:attr:`~bt_laplace.prior.evidence.ExactGGN.form`, built ``restrictable``): the
            held-out fit's exact posterior is then taken from it
            (:meth:`~bt_laplace.prior.kernel.KernelForm.without_items`), with no pass of the
            exact evidence over the kept pairs and no second item kernel, where it is of the
            same pairs (:meth:`HeldOut.kept_pairs_of`); else that pass is made.

    Returns:
        ``(ratio, settles)``: the matched prior over the held-out fit's exact-evidence prior,
        at most 1 (1: the structure already gives held-out items at least the exact
        variance), or None (the exact evidence's prior stays) for inputs that are not
        tensors, TRL margins, a model off the fast path, or too few items to hold out; and
        whether the held-out fit's spectrum would have settled at its top
        (:func:`~bt_laplace.prior.spectrum.may_settle`), which tells whether the attempt is
        worth making on all the pairs' (None where not known). The held-out fit's own
        spectrum is computed whole.
    """
    pairs = _tensor_pairs(train_loader, processes, laplace._device)
    if pairs is None:
        return None, None
    x, y = pairs
    split = held_out_split(x)
    if split is None:
        return None, None
    keep = split.keep  # on the posterior's device, as x
    rest = DataLoader(TensorDataset(x[keep], y[keep]), batch_size=512)
    part_la = refit(rest)
    part = Predictive(part_la)
    query = part.jacobians(split.query, pairs=True)
    exact = exact_pair_variances(
        part_la,
        rest,
        (query[0], query[1]),
        theta_sq=theta_sq,
        settle=False,
        form=split.kept_pairs_of(form),
    )
    if exact is None:
        return None, None
    eigenvalues, exact_variances = exact
    if not float(eigenvalues.sum()) > 0:  # no curvature among the remaining pairs
        return None, None
    part_prior = exact_evidence_prior_precision(eigenvalues, theta_sq)
    settles = may_settle(eigenvalues, part_prior)
    tiny = torch.finfo(torch.float64).tiny
    target = float(exact_variances(part_prior).clamp_min(tiny).log().mean())

    def excess(log_prior: float) -> float:  # decreasing in the prior
        part_la.prior_precision = math.exp(log_prior)
        _, var = part.difference_moments_from(query[0], query[1])
        return float(var.double().clamp_min(tiny).log().mean()) - target

    lo, hi = math.log(part_prior) - 30.0, math.log(part_prior)
    if excess(hi) >= 0:
        return 1.0, settles  # at least the exact variance already: the prior stays
    if excess(lo) < 0:
        return None, settles  # the structure's variance never meets the exact one
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2) / part_prior, settles
