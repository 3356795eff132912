"""Pair metrics against hand computations, and the plots."""

from __future__ import annotations

import builtins

import pytest
import torch

import bt_laplace as btl
from bt_laplace.metrics import ood_auroc, reliability_bins


def test_pair_metrics_by_hand():
    prob = torch.tensor([0.9, 0.3, 0.6, 0.2], dtype=torch.float64)
    label = torch.tensor([1, 0, 0, 1])
    m = btl.pair_metrics(prob, label, n_bins=5)
    assert m.accuracy == pytest.approx(0.5)
    nll = -(torch.log(torch.tensor([0.9, 0.7, 0.4, 0.2], dtype=torch.float64))).mean()
    assert m.nll == pytest.approx(float(nll))
    assert m.brier == pytest.approx((0.01 + 0.09 + 0.36 + 0.64) / 4)
    # confidences 0.9, 0.7, 0.6, 0.8 in bins of width 0.1 on [0.5, 1]: one pair per bin;
    # correct, correct, wrong, wrong
    assert m.ece == pytest.approx((0.1 + 0.3 + 0.6 + 0.8) / 4)


def test_reliability_bins_counts_and_empty_bins_are_nan():
    conf, acc, count = reliability_bins(
        torch.tensor([0.55, 0.45, 0.95]), torch.tensor([1, 1, 1]), n_bins=5
    )
    assert count.tolist() == [2, 0, 0, 0, 1]
    assert acc[0] == pytest.approx(0.5) and torch.isnan(acc[1])
    assert conf[4] == pytest.approx(0.95)


@pytest.mark.parametrize(
    "prob,label,match",
    [
        (torch.tensor([0.5, 1.5]), torch.tensor([0, 1]), r"\[0, 1\]"),
        (torch.tensor([0.5, 0.5]), torch.tensor([0, 2]), "0 or 1"),
        (torch.tensor([0.5]), torch.tensor([0, 1]), r"same shape.*\(1,\) and \(2,\)"),
        (torch.tensor([]), torch.tensor([]), "non-empty"),
    ],
    ids=["prob-out-of-range", "label-2", "shape-mismatch", "empty"],
)
def test_bad_inputs(prob, label, match):
    with pytest.raises(ValueError, match=match):
        btl.pair_metrics(prob, label)


def test_plots_draw_and_name_the_extra_when_matplotlib_is_missing(monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from bt_laplace.plot import plot_reliability, plot_reward_band

    g = torch.Generator().manual_seed(0)
    prob = torch.rand(300, generator=g)
    label = torch.bernoulli(prob, generator=g).long()
    ax = plot_reliability({"a": prob, "b": prob.sqrt()}, label)
    assert len(ax.get_lines()) == 3  # diagonal + two curves
    t = torch.linspace(-1, 1, 11)
    ax = plot_reward_band(t, t, t.square(), train_t=torch.tensor([0.0]))
    assert ax.get_ylabel() == "reward"

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"pip install 'bt-laplace\[plot\]'"):
        plot_reward_band(t, t, t)


def brute_force_auroc(std_in: torch.Tensor, std_out: torch.Tensor) -> float:
    """Every (out, in) pair counted: 1 if the OOD std is larger, 1/2 if equal."""
    wins = 0.0
    for s_out in std_out.tolist():
        for s_in in std_in.tolist():
            wins += 1.0 if s_out > s_in else 0.5 if s_out == s_in else 0.0
    return wins / (len(std_in) * len(std_out))


@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "rounded-with-ties"])
def test_ood_auroc_equals_pairwise_count(ties):
    g = torch.Generator().manual_seed(3)
    std_in = torch.rand(57, generator=g, dtype=torch.float64)
    std_out = torch.rand(41, generator=g, dtype=torch.float64) + 0.3
    if ties:  # a coarse grid: many equal values within and across the two sets
        std_in, std_out = (std_in * 5).round() / 5, (std_out * 5).round() / 5
    assert ood_auroc(std_in, std_out) == pytest.approx(
        brute_force_auroc(std_in, std_out), abs=1e-15
    )


def test_ood_auroc_extremes():
    low, high = torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.4, 0.5])
    assert ood_auroc(low, high) == 1.0
    assert ood_auroc(high, low) == 0.0
    assert ood_auroc(low, low) == 0.5  # all ties


@pytest.mark.parametrize(
    "std_in,std_out,error,match",
    [
        ([0.1, 0.2], torch.tensor([0.3]), TypeError, "`std_in` must be a torch.Tensor, got list"),
        (torch.tensor([0.1]), torch.zeros(2, 2), ValueError, r"`std_out`.*1-D.*\(2, 2\)"),
        (torch.tensor([]), torch.tensor([0.3]), ValueError, r"`std_in` must be a non-empty"),
        (torch.tensor([0.1, float("nan")]), torch.tensor([0.3]), ValueError, "finite"),
    ],
    ids=["list", "2-d", "empty", "nan"],
)
def test_ood_auroc_bad_inputs(std_in, std_out, error, match):
    with pytest.raises(error, match=match):
        ood_auroc(std_in, std_out)
