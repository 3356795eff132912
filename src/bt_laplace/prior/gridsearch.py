"""The prior precision that minimizes the validation NLL of pair probabilities, and that NLL.

Shape legend: ``B`` pairs, ``2`` the two items of a pair, ``*item`` one item.

The activations and output gradients of the validation pairs do not depend on the prior, so
:func:`gridsearch` computes them once; each grid point then costs only the quadratic forms.
Models outside the fast path are scored afresh at each grid point by :func:`pair_nll_sum`,
the same scoring :meth:`~bt_laplace.RewardPosterior.validation_nll` uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from bt_laplace._checks import progress
from bt_laplace._distributed import Processes
from bt_laplace._layer_io import LayerIO
from bt_laplace._loader import split_batch
from bt_laplace.bradley_terry import bradley_terry_nll, margin_shift, preference_probability
from bt_laplace.choices import LinkApprox
from bt_laplace.predictive import Predictive

__all__ = ["gridsearch", "pair_nll_sum", "scored_nll_sum"]

#: Monte Carlo draws per pair when ``link_approx="mc"`` scores validation pairs (seeded)
MC_SCORING_SAMPLES = 20_000


def scored_nll_sum(
    mean_diff: torch.Tensor,
    var_diff: torch.Tensor,
    y: torch.Tensor,
    shift: torch.Tensor | None,
    link_approx: LinkApprox,
) -> float:
    """Summed NLL of labels ``y`` ``(B,)`` under the pair probabilities of reward differences
    ``N(mean_diff, var_diff)`` ``(B,)``; TRL's ``margin`` ``shift`` ``(B,)`` lowers the logit
    as in the likelihood the model was trained with. ``"mc"`` draws
    :data:`MC_SCORING_SAMPLES` per pair from a generator seeded 0, so a score is repeatable."""
    if shift is not None:
        mean_diff = mean_diff - shift.to(mean_diff)
    g = None
    if link_approx is LinkApprox.MC:
        g = torch.Generator(device=mean_diff.device).manual_seed(0)
    p = preference_probability(
        mean_diff, var_diff, link_approx, n_samples=MC_SCORING_SAMPLES, generator=g
    )
    return float(bradley_terry_nll(p, y.to(p.device))) * len(y)


def pair_nll_sum(
    predictive: Predictive,
    loader: Iterable[Any],
    read_pairs: Callable[[Any], Any],
    link_approx: LinkApprox,
) -> tuple[float, int]:
    """Summed NLL and count of the labels of a loader of pairs ``(x (B, 2, *item), y (B,))``;
    ``read_pairs`` checks a batch's ``x`` and puts it on the posterior's device."""
    total, count = 0.0, 0
    predictive.laplace.model.eval()
    for batch in loader:
        x, y = split_batch(batch)
        with torch.inference_mode(False):
            mean_diff, var_diff = predictive.difference_moments(read_pairs(x))
        total += scored_nll_sum(mean_diff, var_diff, y, margin_shift(x, y), link_approx)
        count += len(y)
    return total, count


def gridsearch(
    predictive: Predictive,
    val_loader: Iterable[Any],
    *,
    read_pairs: Callable[[Any], Any],
    processes: Processes,
    link_approx: LinkApprox,
    progress_bar: bool = False,
    log_prior_prec_min: float = -4,
    log_prior_prec_max: float = 4,
    grid_size: int = 100,
    log_prior_prec_base: float = 10.0,
    prior_structure: str = "scalar",
) -> float:
    """Set the scalar prior precision of ``predictive.laplace`` that minimizes the validation
    NLL of pair probabilities over a log grid (summed across ``processes``).

    Returns:
        The prior precision chosen.
    """
    la = predictive.laplace
    la.model.eval()
    batches = []
    for batch in val_loader:
        x, y = split_batch(batch)
        with torch.inference_mode(False):
            j0, j1 = predictive.jacobians(read_pairs(x), pairs=True)
        if not isinstance(j0, LayerIO):  # outside the fast path: score each grid point afresh
            break
        batches.append(((j0, j1), y, margin_shift(x, y)))
    cached = batches if predictive.structure.recorder.supported else None
    if not batches and cached is not None:
        raise ValueError("`val_loader` yielded no pairs; pass a non-empty validation loader.")

    def score() -> float:
        if cached is None:
            total, count = pair_nll_sum(predictive, val_loader, read_pairs, link_approx)
            return processes.sum_number(total) / processes.sum_number(count)
        total, count = 0.0, 0
        for (r0, r1), y, shift in cached:
            mean_diff, var_diff = predictive.difference_moments_from(r0, r1)
            total += scored_nll_sum(mean_diff, var_diff, y, shift, link_approx)
            count += len(y)
        return processes.sum_number(total) / processes.sum_number(count)

    grid = torch.logspace(
        log_prior_prec_min, log_prior_prec_max, grid_size, base=log_prior_prec_base
    )
    best, best_nll = float(grid[0]), math.inf
    for prior in progress(grid.tolist(), progress_bar, "[Grid search]"):
        la.prior_precision = prior
        nll = score()
        if nll < best_nll:
            best, best_nll = prior, nll
    la.prior_precision = best
    return best
