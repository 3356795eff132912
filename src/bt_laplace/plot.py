"""Plots people would rather look at than read: reliability diagrams and uncertainty bands.

Needs matplotlib: ``pip install "bt-laplace[plot]"``.

Shape legend: ``B`` pairs, ``T`` points along a path through input space.
"""

from __future__ import annotations

from typing import Any

import torch

from bt_laplace.metrics import expected_calibration_error, reliability_bins

__all__ = ["plot_reliability", "plot_reward_band"]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - exercised by monkeypatching in the tests
        raise ImportError(
            "bt_laplace.plot needs matplotlib; install the extra: pip install 'bt-laplace[plot]'"
        ) from err
    return plt


def plot_reliability(
    probs: dict[str, torch.Tensor],
    label: torch.Tensor,
    *,
    n_bins: int = 15,
    min_count: int = 10,
    ax: Any = None,
) -> Any:
    """Reliability diagram of one or more sets of preference probabilities on the same pairs.

    Args:
        probs: Name -> ``P(item 1 preferred)`` ``(B,)`` (e.g. ``{"MAP": ..., "Laplace": ...}``).
        label: Index of the preferred item ``(B,)``.
        n_bins: Confidence bins on ``[0.5, 1]``.
        min_count: Bins with fewer pairs are not drawn.
        ax: Matplotlib axes to draw on (a new figure if None).

    Returns:
        The axes.

    Example:
        >>> import matplotlib; matplotlib.use("Agg")
        >>> ax = plot_reliability({"model": torch.tensor([0.9, 0.2, 0.7])}, torch.tensor([1, 0, 1]),
        ...                       min_count=1)
        >>> ax.get_xlabel()
        'confidence max(p, 1 - p)'
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0.5, 1], [0.5, 1], ":", color="gray", label="perfect calibration")
    for name, prob in probs.items():
        conf, acc, count = reliability_bins(prob, label, n_bins=n_bins)
        keep = count >= min_count
        ece = expected_calibration_error(prob, label, n_bins=n_bins)
        ax.plot(conf[keep], acc[keep], "o-", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence max(p, 1 - p)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    return ax


def plot_reward_band(
    t: torch.Tensor,
    mean: torch.Tensor,
    variance: torch.Tensor,
    *,
    k: float = 2.0,
    train_t: torch.Tensor | None = None,
    ax: Any = None,
) -> Any:
    """Reward mean with a ``mean +- k std`` band along a path ``t`` ``(T,)``.

    Args:
        t: Positions along the path ``(T,)``.
        mean: Reward means ``(T,)``, e.g. from ``post(x)``.
        variance: Reward variances ``(T,)``.
        k: Width of the band in standard deviations.
        train_t: Positions of training items on the path, drawn as ticks.
        ax: Matplotlib axes to draw on (a new figure if None).

    Returns:
        The axes.

    Example:
        >>> import matplotlib; matplotlib.use("Agg")
        >>> t = torch.linspace(-1, 1, 5)
        >>> plot_reward_band(t, t, t.abs()).get_ylabel()
        'reward'
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    t, mean, std = (v.detach().cpu() for v in (t, mean, variance.clamp_min(0).sqrt()))
    ax.plot(t, mean, color="C0", label="reward mean")
    ax.fill_between(
        t, mean - k * std, mean + k * std, color="C0", alpha=0.25, label=f"mean +- {k:g} std"
    )
    if train_t is not None:
        ax.plot(
            train_t.cpu(),
            torch.full_like(train_t.cpu(), float((mean - k * std).min())),
            "k|",
            ms=12,
            label="training items",
        )
    ax.set_ylabel("reward")
    ax.legend(loc="upper left", fontsize=8)
    return ax
