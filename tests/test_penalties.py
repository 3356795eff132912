"""The penalty value: one RewardPenalty, checked once when made, applied by penalize."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bt_laplace.choices import Penalty
from bt_laplace.penalties import RewardPenalty, penalize


def test_reward_penalty_is_frozen_and_holds_plain_checked_values():
    rule = RewardPenalty(Penalty.KL, beta=1)
    assert rule == RewardPenalty("kl", beta=1.0)
    assert type(rule.penalty) is str and type(rule.beta) is float
    assert repr(rule) == "RewardPenalty(penalty='kl', k=1.0, beta=1.0, level=None)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.beta = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"penalty": "mad"}, r"`penalty` must be one of .*'kl'.*got 'mad'"),
        ({"penalty": "kl"}, r"penalty='kl' needs `beta`.*pass it"),
        ({"penalty": "kl", "beta": -1.0}, r"`beta` must be positive.*got -1.0"),
        ({"penalty": "quantile", "level": 1.5}, r"`level`.*\(0, 1\), got 1.5"),
        ({"level": 0.1}, r"`level` is used by penalty 'quantile', not by .*'std'"),
        ({"beta": 0.1}, r"`beta` is used by penalty 'kl' or 'kl_optimistic'"),
        ({"penalty": "kl", "beta": 0.1, "k": 2.0}, r"`k` is used by penalty 'std'"),
        ({"k": float("nan")}, r"`k` must be a finite number, got nan"),
    ],
    ids=[
        "unknown",
        "kl-no-beta",
        "beta-negative",
        "level-1.5",
        "level-unused",
        "beta-unused",
        "k-unused",
        "k-nan",
    ],
)
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
