"""Set the prior precision of a fitted posterior: one entry point for the fit and for
:meth:`~bt_laplace.RewardPosterior.optimize_prior_precision`.

Shape legend: ``B`` pairs, ``2`` the two items of a pair, ``*item`` one item.

It takes plain objects: the laplace-torch posterior, its :class:`~bt_laplace.predictive.
Predictive`, a :class:`~bt_laplace.prior.PriorSetting`, and what it cannot make itself, handed
in by the caller: the loaders, a reader that checks validation inputs, and for the held-out
calibration a function that fits the same structure on other pairs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

from bt_laplace._distributed import Processes
from bt_laplace._loader import CheckedPairLoader
from bt_laplace.choices import Evidence, PriorMethod
from bt_laplace.curvature import is_pair_backend
from bt_laplace.predictive import Predictive
from bt_laplace.prior.calibration import Refit, held_out_prior_ratio
from bt_laplace.prior.evidence import (
    distinct_input_count,
    exact_evidence_prior_precision,
    exact_ggn_matrix,
    fitted_ggn_eigenvalues,
)
from bt_laplace.prior.gridsearch import gridsearch
from bt_laplace.prior.marglik import optimize_marglik
from bt_laplace.prior.settings import PriorSetting
from bt_laplace.structures import subset_of_weights

__all__ = ["reset_prior_precision", "set_prior_precision"]


def set_prior_precision(
    predictive: Predictive,
    setting: PriorSetting,
    *,
    train_loader: Iterable[Any] | None = None,
    val_loader: Iterable[Any] | None = None,
    read_pairs: Callable[[Any], Any] | None = None,
    processes: Processes | None = None,
    progress_bar: bool = False,
    refit: Refit | None = None,
) -> float | None:
    """Set ``predictive.laplace.prior_precision`` as ``setting`` says.

    Args:
        predictive: The predictive of the fitted laplace-torch posterior.
        setting: How: a fixed number, the marginal likelihood (the structure's own evidence
            or the exact Bradley-Terry one), or a grid search on validation pairs.
        train_loader: The pairs the posterior was fitted on, every one once (checked), for
            the exact evidence and the held-out calibration.
        val_loader: Validation pairs ``(x (B, 2, *item), y (B,))`` for the grid search (checked
            here, batch by batch).
        read_pairs: Checks a validation batch's ``x`` and puts it on the posterior's device.
        processes: The process group the pairs are split over (sums across ranks).
        progress_bar: Show tqdm bars.
        refit: Fits the same structure on a loader of pairs; with it (and
            ``setting.calibrate``), the exact evidence's prior of an all-weights ``kron`` or
            ``diag`` posterior is calibrated on held-out items.

    Returns:
        The held-out calibration factor applied to the exact evidence's prior, or None.
    """
    la = predictive.laplace
    processes = processes or Processes(enabled=False)
    if setting.method is PriorMethod.FIXED:
        assert setting.value is not None
        la.prior_precision = setting.value
        return None
    if setting.method is PriorMethod.GRIDSEARCH:
        if val_loader is None or read_pairs is None:
            raise ValueError("the grid search needs `val_loader`, validation pairs; pass one.")
        gridsearch(
            predictive,
            CheckedPairLoader(val_loader, "val_loader"),  # checked batch by batch
            read_pairs=read_pairs,
            processes=processes,
            link_approx=setting.link_approx,
            progress_bar=progress_bar,
            **setting.settings,
        )
        return None
    evidence, n_items = _evidence(la, setting, train_loader, processes)
    if evidence is Evidence.EXACT:
        return _exact_evidence(la, setting, train_loader, processes, progress_bar, refit, n_items)
    with warnings.catch_warnings():
        # laplace-torch warns about its own link_approx default, which marglik never uses
        warnings.filterwarnings("ignore", message="By default `link_approx` is `probit`")
        optimize_marglik(la, progress_bar=progress_bar, **setting.settings)
    return None


def reset_prior_precision(
    predictive: Predictive,
    setting: PriorSetting,
    *,
    train_loader: Iterable[Any] | None,
    val_loader: Iterable[Any] | None,
    read_pairs: Callable[[Any], Any],
    processes: Processes,
    progress_bar: bool = False,
) -> None:
    """:func:`set_prior_precision` on a posterior fitted earlier (or loaded): checks that
    ``setting`` suits its subset and structure and the loaders batch by batch
    (:meth:`~bt_laplace.RewardPosterior.optimize_prior_precision`)."""
    la = predictive.laplace
    setting.check_structure(subset_of_weights(la), predictive.structure.name)
    train = None
    if train_loader is not None:
        margin = is_pair_backend(la._backend_cls)
        train = CheckedPairLoader(train_loader, "train_loader", la.dict_key_y, margin=margin)
    set_prior_precision(
        predictive,
        setting,
        train_loader=train,
        val_loader=val_loader,
        read_pairs=read_pairs,
        processes=processes,
        progress_bar=progress_bar,
    )


def _evidence(
    la: Any, setting: PriorSetting, train_loader: Iterable[Any] | None, processes: Processes
) -> tuple[Evidence, int | None]:
    """The evidence ``setting`` resolves to; where ``"auto"`` finds the exact one too costly
    by the number of pairs, the distinct items of the training pairs are counted (a scan of
    the inputs, over every process) and may make it affordable. Returns the count too (None
    when not counted, or not countable), so that the exact evidence need not scan again."""
    pair_backend = is_pair_backend(la._backend_cls)
    evidence = setting.resolve_evidence(la, pair_backend)
    if evidence is Evidence.EXACT or setting.evidence is not Evidence.AUTO:
        return evidence, None
    if not pair_backend or train_loader is None:
        return evidence, None
    n_items = distinct_input_count(train_loader, la, processes)
    return setting.resolve_evidence(la, pair_backend, n_items=n_items), n_items


def _exact_evidence(
    la: Any,
    setting: PriorSetting,
    train_loader: Iterable[Any] | None,
    processes: Processes,
    progress_bar: bool,
    refit: Refit | None,
    n_items: int | None,
) -> float | None:
    """The prior maximizing the exact evidence, calibrated on held-out items if asked
    (``n_items``: the pairs' distinct items, if counted already)."""
    theta_sq = float((la.mean - la.prior_mean).detach().double().square().sum())
    eigenvalues = fitted_ggn_eigenvalues(la)  # no pass when the fit already is exact
    calibrate = setting.calibrate and refit is not None and train_loader is not None
    ggn = None
    if eigenvalues is None:
        if train_loader is None:
            raise ValueError(
                "the exact evidence needs the training pairs; pass `train_loader`, the pairs "
                "the posterior was fitted on, or use the structure's own evidence."
            )
        ggn = exact_ggn_matrix(
            la,
            train_loader,
            progress_bar=progress_bar,
            processes=processes,
            n_items=n_items,
            restrictable=calibrate,
        )
        if ggn.form is None or not calibrate:  # nothing to share: decompose it, free it
            eigenvalues, ggn = ggn.eigenvalues(theta_sq), None
    ratio = settles = None
    if calibrate:  # before the kernel it shares is decomposed: its spectrum tells whether
        assert refit is not None and train_loader is not None  # the top of that one settles
        form = None if ggn is None else ggn.form
        ratio, settles = held_out_prior_ratio(la, refit, train_loader, processes, theta_sq, form)
    if ggn is not None:  # the top of the spectrum, as far as the prior needs it
        eigenvalues = ggn.eigenvalues(theta_sq, settle=settles is not False)
    assert eigenvalues is not None
    la.prior_precision = exact_evidence_prior_precision(eigenvalues, theta_sq)
    if ratio is not None:
        la.prior_precision = float(la.prior_precision) * ratio
    return ratio
