"""Penalties (bt_laplace.penalties): the formulas in float64, the RewardPenalty value, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bt_laplace.choices import Penalty
from bt_laplace.penalties import RewardPenalty, penalize


def test_penalize_formulas_in_float64():
    mean = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    var = torch.tensor([0.0, 0.5, 4.0], dtype=torch.float64)
    std = var.sqrt()
    torch.testing.assert_close(penalize(mean, var, k=1.5), mean - 1.5 * std, rtol=0, atol=0)
    got = penalize(mean, var, penalty="variance", k=-2.0)
    torch.testing.assert_close(got, mean + 2.0 * var, rtol=0, atol=0)
    torch.testing.assert_close(penalize(mean, var, penalty="kl", beta=0.25), mean - 2.0 * var)
    got = penalize(mean, var, penalty="kl_optimistic", beta=0.25)
    torch.testing.assert_close(got, mean + 2.0 * var)


@pytest.mark.parametrize("level", [0.01, 0.05, 0.3], ids=["1%", "5%", "30%"])
def test_quantile_penalty_equals_normal_icdf(level):
    mean = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    var = torch.tensor([1e-6, 0.5, 4.0], dtype=torch.float64)
    want = torch.distributions.Normal(mean, var.sqrt()).icdf(
        torch.tensor(level, dtype=torch.float64)
    )
    got = penalize(mean, var, penalty="quantile", level=level)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if level == 0.05:  # the default level
        torch.testing.assert_close(penalize(mean, var, penalty="quantile"), want)


#: every bad penalty setting, with the message that names it (penalize and RewardPenalty alike)
BAD_OPTIONS = {
    "unknown": ({"penalty": "mad"}, r"`penalty` must be one of .*'kl'.*got 'mad'"),
    "kl-no-beta": ({"penalty": "kl"}, r"penalty='kl' needs `beta`.*pass it"),
    "beta-negative": ({"penalty": "kl", "beta": -1.0}, r"`beta` must be positive.*got -1.0"),
    "level-1.5": ({"penalty": "quantile", "level": 1.5}, r"`level`.*\(0, 1\), got 1.5"),
    "level-unused": ({"level": 0.1}, r"`level` is used by penalty 'quantile', not by .*'std'"),
    "beta-unused": ({"beta": 0.1}, r"`beta` is used by penalty 'kl' or 'kl_optimistic'"),
    "k-unused": ({"penalty": "kl", "beta": 0.1, "k": 2.0}, r"`k` is used by penalty 'std'"),
    "k-nan": ({"k": float("nan")}, r"`k` must be a finite number, got nan"),
}


@pytest.mark.parametrize("kwargs,match", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_penalize_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        penalize(torch.zeros(2), torch.ones(2), **kwargs)


def test_penalize_bad_tensors():
    with pytest.raises(ValueError, match=r"same shape.*\(2,\) and \(3,\)"):
        penalize(torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match=r"`variance` must be non-negative.*-1"):
        penalize(torch.zeros(2), -torch.ones(2))
    with pytest.raises(TypeError, match=r"`mean` must be a torch.Tensor, got list"):
        penalize([0.0], torch.ones(1))


# ---------------------------------------------------------------------------- the value
def test_reward_penalty_is_frozen_and_holds_plain_checked_values():
    rule = RewardPenalty(Penalty.KL, beta=1)
    assert rule == RewardPenalty("kl", beta=1.0)
    assert type(rule.penalty) is str and type(rule.beta) is float
    assert repr(rule) == "RewardPenalty(penalty='kl', k=1.0, beta=1.0, level=None)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.beta = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("kwargs,match", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_reward_penalty_is_checked_when_made(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RewardPenalty(**kwargs)


def test_a_reward_penalty_passed_to_penalize_takes_no_other_settings():
    mean = torch.tensor([0.3, -1.0], dtype=torch.float64)
    var = torch.tensor([0.5, 4.0], dtype=torch.float64)
    rule = RewardPenalty("kl", beta=0.25)
    torch.testing.assert_close(penalize(mean, var, penalty=rule), mean - 2.0 * var)
    with pytest.raises(ValueError, match=r"`k`, `beta` and `level` must be left out.*beta=0.5"):
        penalize(mean, var, penalty=rule, beta=0.5)
    assert RewardPenalty.from_arguments(rule) is rule
    assert RewardPenalty.from_arguments("quantile", level=0.1) == RewardPenalty(
        "quantile", level=0.1
    )
