"""Quality of preference probabilities on labelled pairs.

Shape legend: ``B`` pairs.

All metrics take ``prob`` ``(B,)``, the predicted probability that item 1 of each pair is
preferred, and ``label`` ``(B,)``, the index (0 or 1) of the preferred item.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from bt_laplace._checks import check_positive_int, check_tensor
from bt_laplace.bradley_terry import bradley_terry_nll

__all__ = ["PairMetrics", "pair_metrics", "expected_calibration_error", "reliability_bins"]


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
