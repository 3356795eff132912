"""Pair metrics against hand computations, and the plots."""

from __future__ import annotations

import builtins

import pytest
import torch

import bt_laplace as btl
from bt_laplace.metrics import reliability_bins


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
