"""Penalized rewards, intervals and best-of-n against float64 references and joint Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import D_IN, random_items

import bt_laplace as btl
from bt_laplace.rlhf import (
    RewardPenalty,
    best_of_n,
    penalize,
    penalized_reward,
    reward_interval,
)

S_MC = 100_000  # joint Monte Carlo draws (tolerances are derived from it)


@pytest.fixture
def posterior(full_posterior):
    return full_posterior


items = random_items


# ---------------------------------------------------------------------------- penalties


@pytest.mark.parametrize("reference", [None, "group"], ids=["absolute", "relative"])
@pytest.mark.parametrize("penalty", ["kl", "kl_optimistic"])
def test_effective_reward_equals_joint_monte_carlo(posterior, penalty, reference):
    """-beta log E[exp(-r / beta)] (and its optimistic twin) over joint draws of the rewards."""
    x = items(6, seed=11)
    draws = posterior.sample(x, S_MC, generator=torch.Generator().manual_seed(12))
    if reference == "group":
        draws = draws - draws.mean(1, keepdim=True)
    std = draws.std(0)
    beta = float(std.max())  # s / beta <= 1: the estimator's variance stays moderate
    sign = -1.0 if penalty == "kl" else 1.0
    mc = sign * beta * (torch.logsumexp(sign * draws / beta, 0) - math.log(S_MC))
    got = penalized_reward(posterior, x, penalty=penalty, beta=beta, reference=reference)
    # delta method: sd of beta log(mean exp(.)) is beta sqrt((exp(s^2 / beta^2) - 1) / S)
    tol = 5 * beta * torch.sqrt(torch.expm1(std.square() / beta**2) / S_MC)
    assert bool(((got - mc).abs() < tol).all()), (got, mc, tol)
    # and the closed form: the Gaussian's cumulant generating function at -1/beta (+1/beta)
    mean, var = posterior(x) if reference is None else posterior.relative_reward(x)
    torch.testing.assert_close(got, mean + sign * var / (2 * beta), rtol=1e-12, atol=1e-12)


EVERY_PENALTY = [
    ("std", {"k": 2.0}),
    ("variance", {"k": -0.5}),
    ("quantile", {}),
    ("quantile", {"level": 0.2}),
    ("kl", {"beta": 0.2}),
    ("kl_optimistic", {"beta": 0.3}),
]
EVERY_PENALTY_IDS = ["std", "variance", "quantile-default", "quantile-0.2", "kl", "kl_optimistic"]


@pytest.mark.parametrize("reference", [None, "group"], ids=["absolute", "relative"])
@pytest.mark.parametrize("penalty,options", EVERY_PENALTY, ids=EVERY_PENALTY_IDS)
def test_penalized_reward_method_and_function_agree_in_float64(
    posterior, penalty, options, reference
):
    """One penalty: the method, the function, a RewardPenalty and penalize on the moments."""
    x = items(9, seed=21)
    groups = [0, 0, 0, 1, 1, 1, 1, 2, 2] if reference == "group" else None
    where = {"reference": reference, "groups": groups}
    got = posterior.penalized_reward(x, penalty=penalty, **options, **where)
    assert got.dtype == torch.float64 and got.shape == (9,)
    function = penalized_reward(posterior, x, penalty=penalty, **options, **where)
    torch.testing.assert_close(function, got, rtol=0, atol=0)
    rule = RewardPenalty(penalty, **options)
    torch.testing.assert_close(posterior.penalized_reward(x, penalty=rule, **where), got)
    torch.testing.assert_close(penalized_reward(posterior, x, penalty=rule, **where), got)
    mean, var = posterior(x) if reference is None else posterior.relative_reward(x, groups=groups)
    want = penalize(mean, var, penalty=penalty, **options)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(rule.apply(mean, var), want, rtol=0, atol=0)
    if reference == "group":  # best-of-n scores with the same penalty
        pick = best_of_n(posterior, x, groups=groups, penalty=rule)
        torch.testing.assert_close(pick.scores, want, rtol=1e-12, atol=1e-12)


def test_penalized_reward_method_refuses_what_the_function_refuses(posterior):
    x = items(3, seed=22)
    for call in (posterior.penalized_reward, lambda x, **kw: penalized_reward(posterior, x, **kw)):
        with pytest.raises(ValueError, match=r"penalty='kl' needs `beta`"):
            call(x, penalty="kl")
        with pytest.raises(ValueError, match=r"`k` is used by penalty 'std' or 'variance'"):
            call(x, k=2.0, penalty="quantile")
        with pytest.raises(ValueError, match=r"`groups` needs reference='group'"):
            call(x, groups=[0, 0, 1])


@pytest.mark.parametrize("level", [0.5, 0.9, 0.99], ids=["50%", "90%", "99%"])
def test_interval_quantiles_and_coverage(posterior, level):
    x = items(5, seed=13)
    mean, lower, upper = reward_interval(posterior, x, level=level)
    want_mean, var = posterior(x)
    normal = torch.distributions.Normal(want_mean, var.sqrt())
    tail = torch.tensor((1 - level) / 2, dtype=torch.float64)
    torch.testing.assert_close(mean, want_mean, rtol=0, atol=0)
    torch.testing.assert_close(lower, normal.icdf(tail), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(upper, normal.icdf(1 - tail), rtol=1e-12, atol=1e-12)
    if level != 0.9:
        return  # one Monte Carlo check of the coverage is enough
    draws = posterior.sample(x, S_MC, generator=torch.Generator().manual_seed(14))
    coverage = ((draws >= lower) & (draws <= upper)).double().mean(0)
    sd = math.sqrt(level * (1 - level) / S_MC)
    assert bool(((coverage - level).abs() < 5 * sd).all()), coverage


def test_interval_relative_uses_relative_moments(posterior):
    x, ref = items(5, seed=15), items(3, seed=16)
    mean, lower, upper = reward_interval(posterior, x, level=0.8, reference=ref)
    want_mean, var = posterior.relative_reward(x, ref)
    torch.testing.assert_close(mean, want_mean, rtol=0, atol=0)
    torch.testing.assert_close((upper - lower) / 2, 1.2815515655446004 * var.sqrt())


# ---------------------------------------------------------------------------- best-of-n
@pytest.mark.parametrize(
    "penalty,options",
    [
        ("std", {"k": 2.0}),
        ("variance", {"k": 0.5}),
        ("quantile", {"level": 0.1}),
        ("kl", {"beta": 0.2}),
    ],
    ids=["std", "variance", "quantile", "kl"],
)
@pytest.mark.parametrize("reference", ["group", None], ids=["relative", "absolute"])
def test_best_of_n_per_group_equals_one_call_per_group(posterior, penalty, options, reference):
    x = items(23, seed=17)
    g = torch.Generator().manual_seed(18)
    groups = torch.randint(0, 4, (23,), generator=g) * 10 + 3  # ids 3, 13, 23, 33, shuffled
    pick = best_of_n(posterior, x, groups=groups, penalty=penalty, reference=reference, **options)
    assert pick.groups == list(dict.fromkeys(groups.tolist()))
    for gi, key in enumerate(pick.groups):
        members = (groups == key).nonzero().flatten()
        alone = best_of_n(posterior, x[members], penalty=penalty, reference=reference, **options)
        assert int(members[alone.indices[0]]) == int(pick.indices[gi])
        torch.testing.assert_close(pick.scores[members], alone.scores, rtol=1e-12, atol=1e-12)
        # and what a user would write by hand with the posterior's own queries
        mean, var = (
            posterior(x[members]) if reference is None else posterior.relative_reward(x[members])
        )
        want = penalize(mean, var, penalty=penalty, **options)
        torch.testing.assert_close(pick.scores[members], want.double(), rtol=1e-12, atol=1e-12)
        assert int(pick.indices[gi]) == int(members[want.argmax()])


def test_best_of_n_std_matches_penalized_reward_method_and_list_groups(posterior):
    x = items(12, seed=19)
    prompts = ["why?"] * 5 + ["how?"] * 7
    pick = best_of_n(posterior, x, k=2.0, groups=prompts)
    assert pick.groups == ["why?", "how?"]
    first = posterior.penalized_reward(x[:5], 2.0, reference="group").argmax()
    second = posterior.penalized_reward(x[5:], 2.0, reference="group").argmax() + 5
    assert pick.indices.tolist() == [int(first), int(second)]
    # one prompt: groups=None
    torch.testing.assert_close(
        best_of_n(posterior, x[:5], k=2.0).scores,
        posterior.penalized_reward(x[:5], 2.0, reference="group").double(),
    )


def test_best_of_n_ties_go_to_the_first_candidate(posterior):
    x = items(3, seed=20)
    pick = best_of_n(posterior, torch.cat([x, x]), groups=[0, 0, 0, 0, 0, 0], reference=None)
    assert int(pick.indices[0]) < 3


# ---------------------------------------------------------------------------- errors


def test_interval_bad_level(posterior):
    with pytest.raises(ValueError, match=r"`level` must be a probability in \(0, 1\), got 0.0"):
        reward_interval(posterior, items(2, 0), level=0.0)


@pytest.mark.parametrize(
    "groups,error,match",
    [
        ([0, 1], ValueError, r"one id per item \(4\), got 2"),
        (torch.zeros(4), ValueError, r"integer ids of shape \(B,\), got dtype torch.float32"),
        ("abcd", TypeError, r"LongTensor \(B,\) or a list.*got str"),
    ],
    ids=["length", "float-ids", "string"],
)
def test_best_of_n_bad_groups(posterior, groups, error, match):
    with pytest.raises(error, match=match):
        best_of_n(posterior, items(4, 1), groups=groups)


def test_best_of_n_empty_candidates(posterior):
    with pytest.raises(ValueError, match=r"`candidates` must hold at least one item.*\(0, 5\)"):
        best_of_n(posterior, torch.zeros(0, D_IN, dtype=torch.float64))


def test_every_name_of_rlhf_stays_importable_from_rlhf():
    """Penalties moved to bt_laplace.penalties and pair selection to bt_laplace.labeling;
    bt_laplace.rlhf re-exports them (and the top level keeps rank_pairs_for_labeling)."""
    from bt_laplace import labeling, penalties, rlhf

    for name in labeling.__all__:
        assert getattr(rlhf, name) is getattr(labeling, name)
    for name in ("PENALTIES", "DEFAULT_QUANTILE_LEVEL", "RewardPenalty", "penalize"):
        assert getattr(rlhf, name) is getattr(penalties, name)
    assert btl.rank_pairs_for_labeling is labeling.rank_pairs_for_labeling
    assert set(rlhf.__all__) >= {"penalize", "PENALTIES", "PAIR_METHODS", "PreferenceUncertainty"}
