"""Fit a Laplace posterior to a trained Bradley-Terry reward model.

Shape legend: ``B`` pairs, ``2`` the two items of a pair (index 0 first, index 1 second),
``*item`` one item.

:func:`fit_reward_posterior` reads as its four steps: check the options and the model
(:class:`~bt_laplace.options.FitOptions`), build laplace-torch's Laplace class with the
pair-correct :class:`~bt_laplace.curvature.BradleyTerryGGN` backend, fit it on checked batches
(summed across processes when a ``torch.distributed`` group is initialized), and set the prior
precision (marglik with the structure's own or the exact evidence, grid search, or fixed).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from bt_laplace._checks import (
    check_choice,
    progress,
)
from bt_laplace._distributed import Processes
from bt_laplace._layer_io import LayerIO
from bt_laplace._loader import CheckedPairLoader, split_batch
from bt_laplace.bradley_terry import (
    bradley_terry_nll,
    margin_shift,
    mc_preference_probability,
    probit_preference_probability,
)
from bt_laplace.evidence import (
    exact_evidence_prior_precision,
    exact_ggn_eigenvalues,
    exact_pair_variances,
    fitted_ggn_eigenvalues,
)
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.options import LINK_APPROXIMATIONS, FitOptions
from bt_laplace.posterior import RewardPosterior
from bt_laplace.prior import optimize_marglik
from bt_laplace.text import TextPairCollator

__all__ = ["fit_reward_posterior"]


def fit_reward_posterior(
    model: PairwiseRewardModel,
    train_loader: DataLoader,
    *,
    subset_of_weights: str = "auto",
    hessian_structure: str = "kron",
    prior_precision: str | float = "auto",
    evidence: str = "auto",
    val_loader: DataLoader | None = None,
    link_approx: str = "probit",
    progress_bar: bool = False,
    batch_size: int = 4096,
    distributed: bool = True,
    **laplace_kwargs: Any,
) -> RewardPosterior:
    """Fit a Laplace posterior to a trained Bradley-Terry reward model.

    Args:
        model: The trained :class:`~bt_laplace.PairwiseRewardModel` (MAP estimate).
        train_loader: Pairs ``(x (B, 2, *item), y (B,))``, as from
            :func:`~bt_laplace.preference_dataloader`; ``len(train_loader.dataset)`` must be
            the number of pairs.
        subset_of_weights: ``"auto"`` (default): ``"all"`` when every trainable parameter
            is in an ``nn.Linear`` or ``Conv1D`` (GPT-2) on the fast path and there are at
            most 5,000,000 of them (a reward MLP, or a head on a frozen encoder;
            docs/results/auto_subset.md), else ``"last_layer"`` (a fine-tuned transformer); or
            either explicitly. On real preference data the
            all-weights posterior improves NLL and calibration over MAP and tells unfamiliar
            items apart, where a last layer on learned features barely moves the MAP model
            (docs/results/real_data.md).
        hessian_structure: ``"kron"`` (default), ``"diag"`` or ``"full"``.
        prior_precision: ``"auto"`` (default): ``"gridsearch"`` when ``val_loader`` is
            given, else ``"marglik"``, and where that used the exact evidence (``evidence``
            left at ``"auto"``) for an all-weights ``kron`` or ``diag`` posterior, its prior
            scaled so that, fitted without a fifth of the training items, the structure gives
            pairs of those items the exact Laplace posterior's mean log variance (no labels
            used; the factor is ``post.prior_calibration``; docs/results/prior_sweep.md: on Warriner
            ratings ECE .066 -> .029); ``"marglik"`` (maximize the Laplace marginal
            likelihood), ``"gridsearch"`` (minimize validation NLL of the pair
            probabilities, needs ``val_loader``), or a positive number.
        evidence: Which Laplace evidence ``"marglik"`` maximizes. ``"auto"`` (default):
            ``"exact"`` when its estimated cost is at most 1e11 floating-point operations
            (about 5 s on 2 cores: up to about 4,600 pairs for an all-weights MLP, 600,000
            for a 385-parameter last layer) and no optimizer settings or vector prior are
            passed, else ``"posterior"``. ``"posterior"`` (laplace-torch's): the fitted
            structure's own, from the eigenvalues of its curvature, a few milliseconds; it
            puts the prior too high with ``kron`` (24-40% above the exact optimum,
            docs/results/prior.md), so the posterior is too narrow. ``"exact"``: the exact
            Bradley-Terry GGN's over all posterior parameters, whatever
            ``hessian_structure``; scalar prior only, solved to 1e-12. Costs one more pass
            over ``train_loader`` and a dense ``min(N, P)``-square eigendecomposition (``N``
            pairs, ``P`` parameters; 2 s at 3,000 pairs, 51 s at 10,000 on 2 cores), refused
            above 4 GiB; no pass where the fitted curvature already is the exact GGN (the
            last-layer ``kron`` of a one-output head, ``full`` with ``P <= N``: through a
            transformer that halves the fit). See :mod:`bt_laplace.evidence`.
        val_loader: Validation pairs for ``"gridsearch"``.
        link_approx: Pair probability used to score the grid search.
        progress_bar: Show tqdm progress bars over the fit and the prior optimization.
        batch_size: Items per forward pass at prediction time.
        distributed: When a ``torch.distributed`` default process group is initialized
            (torchrun, ``accelerate launch``, DDP), each rank passes its own shard of the
            pairs and the curvature, loss, pair count, exact evidence and grid-search NLL are
            summed across ranks, so every rank ends with the posterior of all the pairs
            (the Kronecker factors sum inside each alternating step). ``False``: each rank
            fits its own data.
        **laplace_kwargs: Passed to laplace-torch under its own names, to the Laplace class
            (``backend``, ``temperature``, ``prior_mean``, ...) or to the prior method
            (``n_steps``, ``prior_structure``, ``grid_size``, ...). Which combinations are
            allowed and where each keyword goes: :mod:`bt_laplace.options`. ``backend``
            defaults to the exact :class:`~bt_laplace.curvature.BradleyTerryGGN`.

    Returns:
        The fitted :class:`RewardPosterior`; ``.laplace`` is the laplace-torch object.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import bt_laplace as btl
        >>> _ = torch.manual_seed(0)
        >>> model = btl.PairwiseRewardModel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(),
        ...                                               nn.Linear(8, 1)))
        >>> rows = [{"chosen": torch.randn(4), "rejected": torch.randn(4)} for _ in range(12)]
        >>> loader = btl.preference_dataloader(rows, batch_size=4, chosen="chosen",
        ...                                    rejected="rejected")
        >>> post = btl.fit_reward_posterior(model, loader)  # all weights, kron, marglik
        >>> type(post.laplace).__name__
        'PairKronLaplace'
        >>> bool(post.prior_precision > 0)
        True
    """
    options = FitOptions.from_arguments(
        subset_of_weights=subset_of_weights,
        hessian_structure=hessian_structure,
        prior_precision=prior_precision,
        evidence=evidence,
        val_loader=val_loader,
        link_approx=link_approx,
        laplace_kwargs=laplace_kwargs,
    )
    options = options.check_model(model, train_loader)
    processes = Processes(distributed)
    if processes.active and not options.pair_backend:
        raise NotImplementedError(
            "fitting across processes sums bt_laplace's pair curvature; with another "
            "`backend` each rank would fit its own shard. Use the default backend, or pass "
            "distributed=False to fit each rank on its own data."
        )
    loader = CheckedPairLoader(
        train_loader, "train_loader", options.dict_key_y, margin=options.pair_backend
    )
    la = options.build_laplace(model)
    _fit(la, loader, options, processes, progress_bar=progress_bar)
    posterior = RewardPosterior(la, model, batch_size=batch_size)
    posterior.item_shape = loader.item_shape
    if isinstance(getattr(train_loader, "collate_fn", None), TextPairCollator):
        posterior.text_collator = train_loader.collate_fn  # queries take texts as trained
    val = None if val_loader is None else CheckedPairLoader(val_loader, "val_loader")
    _set_prior(posterior, options, loader, val, processes=processes, progress_bar=progress_bar)
    return posterior


def _fit(
    la: Any,
    loader: CheckedPairLoader,
    options: FitOptions,
    processes: Processes,
    *,
    progress_bar: bool,
) -> None:
    """laplace-torch's ``fit`` on checked batches; the pair count is what passed (on every
    rank, summed), and a failure that laplace-torch turns into ``exit()`` becomes an error."""
    if processes.active:  # kron sums inside its alternating steps
        la._sum_across_processes = processes.sum
    try:
        la.fit(loader, progress_bar=progress_bar)
    except SystemExit:
        raise RuntimeError(
            "laplace-torch's eigendecomposition of the curvature failed (it would have ended "
            "the process with exit()): the curvature is not finite or too ill-conditioned. "
            "Check the model's weights and the inputs for NaN, infinite or huge values, and fit "
            "in float32 or float64."
        ) from None
    la.n_data = int(processes.sum_number(loader.n_pairs))
    if processes.active:
        options.structure.sum_across_processes(la, processes.sum)
        la.loss = processes.sum(torch.as_tensor(la.loss, dtype=torch.float64)).to(la._dtype)


def _set_prior(
    posterior: RewardPosterior,
    options: FitOptions,
    train_loader: CheckedPairLoader,
    val_loader: CheckedPairLoader | None,
    *,
    processes: Processes,
    progress_bar: bool,
) -> None:
    """Set the prior precision of a fitted posterior as ``options`` say."""
    la = posterior.laplace
    if options.prior_method == "fixed":
        assert options.prior_value is not None
        la.prior_precision = options.prior_value
    elif options.prior_method == "marglik" and options.resolve_evidence(la) == "exact":
        eigenvalues = fitted_ggn_eigenvalues(la)  # no pass when the fit already is exact
        if eigenvalues is None:
            eigenvalues = exact_ggn_eigenvalues(
                la, train_loader, progress_bar=progress_bar, processes=processes
            )
        theta_sq = float((la.mean - la.prior_mean).detach().double().square().sum())
        la.prior_precision = exact_evidence_prior_precision(eigenvalues, theta_sq)
        if options.calibrate:
            ratio = _held_out_prior_ratio(posterior, options, train_loader, processes, theta_sq)
            posterior.prior_calibration = ratio
            if ratio is not None:
                la.prior_precision = float(la.prior_precision) * ratio
    elif options.prior_method == "marglik":
        with warnings.catch_warnings():
            # laplace-torch warns about its own link_approx default, which marglik never uses
            warnings.filterwarnings("ignore", message="By default `link_approx` is `probit`")
            optimize_marglik(la, progress_bar=progress_bar, **options.prior_kwargs)
    else:
        assert val_loader is not None
        _gridsearch(
            posterior,
            val_loader,
            processes=processes,
            link_approx=options.link_approx,
            progress_bar=progress_bar,
            **options.prior_kwargs,
        )


#: share of the training items that :func:`_held_out_prior_ratio` holds out
CALIBRATION_HELD_OUT = 0.2
#: pairs of held-out items on which it compares the two posteriors
CALIBRATION_QUERIES = 1024


def held_out_items(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Hold out :data:`CALIBRATION_HELD_OUT` of the distinct items of pairs ``x`` ``(N, 2,
    *item)`` (fixed seed): the mask ``(N,)`` of the pairs with no held-out item, and
    :data:`CALIBRATION_QUERIES` random pairs of two different held-out items ``(Q, 2,
    *item)``; None when fewer than two items or pairs remain on either side."""
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
    return keep, items[picks].reshape(len(picks), 2, *x.shape[2:])


def _held_out_prior_ratio(
    posterior: RewardPosterior,
    options: FitOptions,
    train_loader: Iterable[Any],
    processes: Processes,
    theta_sq: float,
) -> float | None:
    """How much to scale the exact evidence's prior so that a block-diagonal all-weights
    posterior gives new items the variance the exact Laplace posterior gives them.

    The exact evidence's prior suits the exact posterior (the full GGN); a ``kron`` or ``diag``
    posterior drops the covariance between layers and at the same prior can give pairs of
    unseen items far too little variance (docs/results/prior_sweep.md: about 100 times too strong a
    prior on Warriner valence ratings). Training pairs cannot show it, their items are seen,
    so this holds out :data:`CALIBRATION_HELD_OUT` of the training *items* (fixed seed), fits
    the same structure and the exact posterior (through its pair kernel,
    :func:`~bt_laplace.evidence.exact_pair_variances`) on the pairs among the others, sets
    the exact one's prior by its exact evidence, and finds by bisection the prior at which the
    structure's mean log variance over :data:`CALIBRATION_QUERIES` random pairs of held-out
    items equals the exact one's. No labels are used: only variances are compared, never
    the MAP model's predictions.

    Returns:
        The matched prior over the held-out fit's exact-evidence prior; None (the exact
        evidence's prior stays) for a last-layer or ``full`` posterior (exact already),
        inputs that are not tensors, TRL margins, a model off the fast path, or too few items
        to hold out. Across processes every rank gathers the pairs and computes the same
        ratio.
    """
    if (
        options.subset_of_weights != "all"
        or options.hessian_structure == "full"
        or not options.pair_backend
    ):
        return None
    xs, ys, usable = [], [], True
    for batch in train_loader:
        x, y = split_batch(batch)
        if not isinstance(x, torch.Tensor) or margin_shift(x, y) is not None:
            usable = False
            break
        xs.append(x)
        ys.append(y)
    if processes.sum_number(0 if usable and xs else 1) > 0:  # every rank decides alike
        return None
    # across processes every rank gathers all pairs and computes the same ratio
    device = posterior.laplace._device
    x = processes.gather_rows(torch.cat(xs).to(device))
    y = processes.gather_rows(torch.cat(ys).to(device))
    split = held_out_items(x)
    if split is None:
        return None
    keep, query_x = split  # on the posterior's device, as x
    rest = DataLoader(TensorDataset(x[keep], y[keep]), batch_size=512)
    part_la = options.build_laplace(posterior.model)
    _fit(part_la, CheckedPairLoader(rest, "train_loader", options.dict_key_y), options,
         Processes(enabled=False), progress_bar=False)  # fmt: skip
    part = RewardPosterior(part_la, posterior.model, batch_size=posterior.batch_size)
    query = part.predictive.jacobians(query_x, pairs=True)
    exact = exact_pair_variances(part_la, rest, (query[0], query[1]))
    if exact is None:
        return None
    eigenvalues, exact_variances = exact
    if not float(eigenvalues.sum()) > 0:  # no curvature among the remaining pairs
        return None
    part_prior = exact_evidence_prior_precision(eigenvalues, theta_sq)
    tiny = torch.finfo(torch.float64).tiny
    target = float(exact_variances(part_prior).clamp_min(tiny).log().mean())

    def excess(log_prior: float) -> float:  # decreasing in the prior
        part_la.prior_precision = math.exp(log_prior)
        _, var = part.predictive.difference_moments_from(query[0], query[1])
        return float(var.double().clamp_min(tiny).log().mean()) - target

    lo, hi = math.log(part_prior) - 30.0, math.log(part_prior) + 30.0
    if excess(lo) < 0 or excess(hi) > 0:
        return None  # the structure's variance never meets the exact one: leave the prior
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2) / part_prior


def _gridsearch(
    posterior: RewardPosterior,
    val_loader: Iterable[Any],
    *,
    processes: Processes,
    link_approx: str,
    progress_bar: bool,
    log_prior_prec_min: float = -4,
    log_prior_prec_max: float = 4,
    grid_size: int = 100,
    log_prior_prec_base: float = 10.0,
    prior_structure: str = "scalar",
) -> None:
    """Set the scalar prior precision that minimizes validation NLL of pair probabilities.

    The activations and output gradients of the validation pairs do not depend on the prior, so
    they are computed once; each grid point then costs only the quadratic forms.
    """
    la = posterior.laplace
    predictive = posterior.predictive
    link = check_choice("link_approx", link_approx, LINK_APPROXIMATIONS)
    la.model.eval()
    batches = []
    for batch in val_loader:
        x, y = split_batch(batch)
        j0, j1 = predictive.jacobians(posterior._pairs(x), pairs=True)
        if not isinstance(j0, LayerIO):  # outside the fast path: score each grid point afresh
            break
        batches.append(((j0, j1), y, margin_shift(x, y)))
    supported = predictive.structure.recorder.supported
    cached = batches if supported else None
    if not batches and supported:
        raise ValueError("`val_loader` yielded no pairs; pass a non-empty validation loader.")

    def score() -> float:
        if cached is None:
            total, count = posterior._nll_sum(val_loader, link)
            return processes.sum_number(total) / processes.sum_number(count)
        total, count = 0.0, 0
        for (r0, r1), y, shift in cached:
            mean_diff, var_diff = predictive.difference_moments_from(r0, r1)
            if shift is not None:  # TRL's margin, as in the training likelihood
                mean_diff = mean_diff - shift.to(mean_diff)
            if link == "probit":
                p = probit_preference_probability(mean_diff, var_diff)
            else:
                g = torch.Generator(device=mean_diff.device).manual_seed(0)
                p = mc_preference_probability(mean_diff, var_diff, generator=g)
            total += float(bradley_terry_nll(p, y.to(p.device))) * len(y)
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
