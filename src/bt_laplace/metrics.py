"""Quality of preference probabilities on labelled pairs.

Shape legend: ``B`` pairs.

The pair metrics take ``prob`` ``(B,)``, the predicted probability that item 1 of each pair is
preferred, and ``label`` ``(B,)``, the index (0 or 1) of the preferred item. :func:`ood_auroc`
takes the reward standard deviations of in-distribution and out-of-distribution items.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from bt_laplace._checks import check_positive_int, check_tensor
from bt_laplace.bradley_terry import bradley_terry_nll

__all__ = [
    "PairMetrics",
    "pair_metrics",
    "expected_calibration_error",
    "reliability_bins",
    "ood_auroc",
]


class PairMetrics(NamedTuple):
    """Accuracy, mean NLL, Brier score and expected calibration error of pair probabilities."""

    accuracy: float
    nll: float
    brier: float
    ece: float


def _check(prob: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    prob, label = check_tensor("prob", prob), check_tensor("label", label)
    if prob.ndim != 1 or label.shape != prob.shape or prob.numel() == 0:
        raise ValueError(
            f"`prob` and `label` must be non-empty and of the same shape (B,), got "
            f"{tuple(prob.shape)} and {tuple(label.shape)}."
        )
    if bool(((prob < 0) | (prob > 1) | prob.isnan()).any()):
        raise ValueError("`prob` must hold probabilities in [0, 1]; got values outside.")
    if not bool(((label == 0) | (label == 1)).all()):
        raise ValueError("`label` must hold 0 or 1 (the index of the preferred item).")
    return prob, label.to(prob.dtype)


def reliability_bins(
    prob: torch.Tensor, label: torch.Tensor, *, n_bins: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Confidence, accuracy and count per confidence bin.

    The confidence of a pair is ``max(p, 1 - p)`` and it is correct when the more probable item
    is the preferred one; bins split ``[0.5, 1]`` into ``n_bins`` equal widths.

    Returns:
        ``(confidence (n_bins,), accuracy (n_bins,), count (n_bins,))``; empty bins hold nan.

    Example:
        >>> conf, acc, n = reliability_bins(torch.tensor([0.9, 0.2, 0.6]), torch.tensor([1, 0, 0]),
        ...                                 n_bins=2)
        >>> n.tolist()
        [1, 2]
    """
    prob, label = _check(prob, label)
    n_bins = check_positive_int("n_bins", n_bins)
    conf = torch.maximum(prob, 1 - prob)
    correct = ((prob >= 0.5) == (label == 1)).to(prob.dtype)
    index = ((conf - 0.5) * 2 * n_bins).long().clamp(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins)
    sums = torch.zeros(n_bins, dtype=prob.dtype).index_add_(0, index, conf)
    hits = torch.zeros(n_bins, dtype=prob.dtype).index_add_(0, index, correct)
    denom = count.to(prob.dtype)
    return sums / denom, hits / denom, count


def expected_calibration_error(
    prob: torch.Tensor, label: torch.Tensor, *, n_bins: int = 15
) -> float:
    """Count-weighted mean of ``|accuracy - confidence|`` over :func:`reliability_bins`.

    Example:
        >>> expected_calibration_error(torch.tensor([0.8, 0.8]), torch.tensor([1, 0]))
        0.30000001192092896
    """
    conf, acc, count = reliability_bins(prob, label, n_bins=n_bins)
    used = count > 0
    weight = count[used].to(conf.dtype) / count.sum()
    return float((weight * (acc[used] - conf[used]).abs()).sum())


def pair_metrics(prob: torch.Tensor, label: torch.Tensor, *, n_bins: int = 15) -> PairMetrics:
    """Accuracy, NLL, Brier score and ECE of preference probabilities.

    Example:
        >>> m = pair_metrics(torch.tensor([0.9, 0.3]), torch.tensor([1, 0]))
        >>> m.accuracy, round(m.brier, 3)
        (1.0, 0.05)
    """
    prob, target = _check(prob, label)
    return PairMetrics(
        accuracy=float(((prob >= 0.5) == (target == 1)).to(prob.dtype).mean()),
        nll=float(bradley_terry_nll(prob, target.long())),
        brier=float((prob - target).square().mean()),
        ece=expected_calibration_error(prob, target.long(), n_bins=n_bins),
    )


def _check_scores(name: str, value: torch.Tensor) -> torch.Tensor:
    value = check_tensor(name, value)
    if value.ndim != 1 or value.numel() == 0:
        raise ValueError(
            f"`{name}` must be a non-empty 1-D tensor (one std per item), got shape "
            f"{tuple(value.shape)}; pass post(x).variance.sqrt() of the items."
        )
    if value.is_complex() or not bool(torch.isfinite(value.double()).all()):
        raise ValueError(f"`{name}` must hold finite real numbers; drop NaN or inf entries.")
    return value.detach().double().cpu()


def ood_auroc(std_in: torch.Tensor, std_out: torch.Tensor) -> float:
    """Area under the ROC curve of the reward std separating out-of-distribution items.

    OOD items are the positives, scored by their std (larger means more likely OOD):
    ``AUROC = P(s_out > s_in) + P(s_out = s_in) / 2`` over all pairs of an OOD and an
    in-distribution item (ties count half), the Mann-Whitney statistic divided by
    ``N_in N_out``. 1 separates perfectly, 0.5 is chance. Computed by binary search in
    ``O((N_in + N_out) log N_in)``.

    Args:
        std_in: Stds of in-distribution items ``(N_in,)``.
        std_out: Stds of out-of-distribution items ``(N_out,)``.

    Returns:
        The AUROC in ``[0, 1]``.

    Example:
        >>> ood_auroc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.25, 0.5]))
        0.8333333333333334
    """
    std_in, std_out = _check_scores("std_in", std_in), _check_scores("std_out", std_out)
    ranked = torch.sort(std_in).values
    below = torch.searchsorted(ranked, std_out, right=False).double()
    at_most = torch.searchsorted(ranked, std_out, right=True).double()
    wins = below.sum() + 0.5 * (at_most - below).sum()
    return float(wins / (std_in.numel() * std_out.numel()))
