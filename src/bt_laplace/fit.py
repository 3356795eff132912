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

import functools
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from bt_laplace._distributed import Processes
from bt_laplace._loader import CheckedPairLoader
from bt_laplace._sharding import check_shardable, check_sharded_batch_counts
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.options import FitOptions
from bt_laplace.persistence import keep_fingerprint
from bt_laplace.posterior import RewardPosterior
from bt_laplace.prior import set_prior_precision
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
    link_approx: str = "quadrature",
    progress_bar: bool = False,
    batch_size: int = 4096,
    distributed: bool = True,
    center_rewards_coefficient: float | None = None,
    **laplace_kwargs: Any,
) -> RewardPosterior:
    """Fit a Laplace posterior to a trained Bradley-Terry reward model.

    Args:
        model: The trained :class:`~bt_laplace.PairwiseRewardModel` (MAP estimate).
        train_loader: Pairs ``(x (B, 2, *item), y (B,))``, as from
            :func:`~bt_laplace.preference_dataloader`; ``len(train_loader.dataset)`` must be
            the number of pairs.
        subset_of_weights: ``"auto"`` (default): ``"all"`` when every trainable parameter
            is in an ``nn.Linear`` or ``Conv1D`` (GPT-2) on the fast path (a reward MLP, a
            head on a frozen encoder, a peft LoRA model's adapters and score head) and the
            posterior's state over them fits 4 GiB
            (:data:`~bt_laplace.options.AUTO_STATE_LIMIT`; ``kron``: factors up to 2048 wide
            kept whole, wider ones as 128 eigenpairs, docs/results/lora_scale.md), else
            ``"last_layer"`` (a fully fine-tuned transformer); or either explicitly. On real
            preference data the all-weights posterior improves NLL and calibration over MAP
            where a last layer barely moves the MAP model (docs/results/real_data.md).
        hessian_structure: ``"kron"`` (default), ``"diag"`` or ``"full"``.
        prior_precision: ``"auto"`` (default): ``"gridsearch"`` when ``val_loader`` is
            given, else ``"marglik"``, with the exact evidence's prior of an all-weights
            ``kron`` or ``diag`` posterior lowered where held-out items show the structure
            too confident about new items (no labels used; the factor, at most 1, is
            ``post.prior_calibration``; docs/results/prior_sweep.md: on Warriner ratings ECE
            .066 -> .029; never raised: docs/results/heldout.md); ``"marglik"``,
            ``"gridsearch"`` (needs ``val_loader``), or a positive number. Every way, and
            what each costs: :mod:`bt_laplace.prior`.
        evidence: Which Laplace evidence ``"marglik"`` maximizes: ``"auto"`` (default;
            ``"exact"`` up to about 5 s of work, else ``"posterior"``), ``"posterior"`` (the
            fitted structure's own, laplace-torch's; too high a prior with ``kron``,
            docs/results/prior.md) or ``"exact"`` (the exact Bradley-Terry GGN's, whatever
            ``hessian_structure``; one more pass where the fit is not already exact). See
            :class:`~bt_laplace.choices.Evidence`.
        val_loader: Validation pairs for ``"gridsearch"``.
        link_approx: Pair probability used to score the grid search.
        progress_bar: Show tqdm progress bars over the fit and the prior optimization.
        batch_size: Items per forward pass at prediction time.
        distributed: Under an initialized ``torch.distributed`` process group (torchrun,
            ``accelerate launch``, DDP) each rank passes its own shard of the pairs and every
            rank ends with the posterior of all of them (sums across ranks; ``False``: each
            rank fits its own data). A model sharded with FSDP2 (``fully_shard``) is fitted
            as it is; its forwards run on all ranks at once, so each rank must pass as many
            batches (docs/guides/distributed.md).
        center_rewards_coefficient: TRL's ``trainer.args.center_rewards_coefficient``, if
            the model was trained with it: the curvature, loss and exact evidence then hold
            its term ``c (r(x_0) + r(x_1))^2`` a pair (:mod:`bt_laplace.curvature`).
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
        center_rewards_coefficient=center_rewards_coefficient,
    )
    if isinstance(model, nn.Module):
        check_shardable(model)
        check_sharded_batch_counts(model, train_loader=train_loader, val_loader=val_loader)
    options = options.check_model(model, train_loader)
    return _fitted(model, train_loader, val_loader, options, distributed, batch_size, progress_bar)


def _fitted(
    model: PairwiseRewardModel,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    options: FitOptions,
    distributed: bool,
    batch_size: int,
    progress_bar: bool,
) -> RewardPosterior:
    """The fit's steps after the options are checked: fit the curvature on checked batches
    (summed across processes), build the posterior, set its prior."""
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
    # None unless the held-out calibration scaled the exact evidence's prior
    posterior.prior_calibration = set_prior_precision(
        posterior.predictive,
        options.prior,
        train_loader=loader,
        val_loader=val_loader,
        read_pairs=posterior.reader.pairs,
        processes=processes,
        progress_bar=progress_bar,
        refit=functools.partial(_refit, model, options),
    )
    keep_fingerprint(posterior.laplace)  # sharded: taken on every rank, so one rank can save
    return posterior


def _refit(model: PairwiseRewardModel, options: FitOptions, pairs: DataLoader) -> Any:
    """The same structure fitted on other pairs, in one process (the held-out calibration)."""
    la = options.build_laplace(model)
    checked = CheckedPairLoader(pairs, "train_loader", options.dict_key_y)
    _fit(la, checked, options, Processes(enabled=False), progress_bar=False)
    return la


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
        la.reduce_across_processes = processes.sum
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
