"""Penalties, best-of-n and pair selection against float64 references and joint Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import D_IN

import bt_laplace as btl
from bt_laplace.rlhf import (
    RewardPenalty,
    best_of_n,
    penalize,
    penalized_reward,
    preference_uncertainty,
    preference_uncertainty_from_moments,
    rank_pairs_for_labeling,
    reward_interval,
)

S_MC = 100_000  # joint Monte Carlo draws (tolerances are derived from it)


@pytest.fixture
def posterior(reward_model, pair_loader):
    return btl.fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights="all",
        hessian_structure="full",
        prior_precision=0.5,
    )


def items(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g, dtype=torch.float64)


def entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-300, 1 - 1e-16)
    return -(p * p.log() + (1 - p) * (1 - p).log())


# ---------------------------------------------------------------------------- penalties
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


# ---------------------------------------------------------------------------- pair selection
@pytest.mark.parametrize("std", [0.1, 1.0, 3.0, 5.0], ids=["std0.1", "std1", "std3", "std5"])
def test_bald_and_variance_equal_monte_carlo_over_the_difference(std):
    mean_diff = torch.tensor([-2.0, 0.0, 0.7, 4.0], dtype=torch.float64)
    var_diff = torch.full_like(mean_diff, std**2)
    got = preference_uncertainty_from_moments(mean_diff, var_diff)
    g = torch.Generator().manual_seed(21)
    f = mean_diff + std * torch.randn(1_000_000, 4, generator=g, dtype=torch.float64)
    p = torch.sigmoid(f)
    prob, second = p.mean(0), p.square().mean(0)
    bald = entropy(prob) - entropy(p).mean(0)
    # Monte Carlo standard errors are below 5e-4 for all three at a million draws
    torch.testing.assert_close(got.probability, prob, rtol=0, atol=2e-3)
    torch.testing.assert_close(got.bald, bald, rtol=0, atol=2e-3)
    torch.testing.assert_close(got.variance, second - prob.square(), rtol=0, atol=2e-3)


@pytest.mark.parametrize("std", [0.3, 1.0, 3.0], ids=["std0.3", "std1", "std3"])
def test_bald_equals_adaptive_quadrature(std):
    integrate = pytest.importorskip("scipy.integrate")

    def expect(fn, m):
        def density(f):
            return fn(f) * math.exp(-((f - m) ** 2) / (2 * std**2)) / (std * math.sqrt(2 * math.pi))

        return integrate.quad(density, m - 40 * std, m + 40 * std, limit=400, points=[0.0])[0]

    def sig(f):
        return 1 / (1 + math.exp(-f))

    def h(f):
        return float(entropy(torch.tensor(sig(f), dtype=torch.float64)))

    for m in (-1.5, 0.0, 2.5):
        got = preference_uncertainty_from_moments(
            torch.tensor([m], dtype=torch.float64), torch.tensor([std**2], dtype=torch.float64)
        )
        prob = expect(sig, m)
        want = float(entropy(torch.tensor(prob, dtype=torch.float64))) - expect(h, m)
        assert float(got.bald[0]) == pytest.approx(want, rel=1e-7, abs=1e-12)
        assert float(got.probability[0]) == pytest.approx(prob, rel=1e-8)


def test_pair_uncertainty_equals_joint_monte_carlo(posterior):
    """From each pair's joint 2x2 Gaussian: MC over joint draws of both items' rewards."""
    x = items(12, seed=22).reshape(6, 2, D_IN)
    x[3, 1] = x[3, 0] + 1e-3  # near-duplicate: large but correlated variances
    got = preference_uncertainty(posterior, x)
    g = torch.Generator().manual_seed(23)
    draws = posterior.sample(x.reshape(12, D_IN), 4 * S_MC, generator=g)
    f = draws[:, 1::2] - draws[:, 0::2]
    p = torch.sigmoid(f)
    prob = p.mean(0)
    torch.testing.assert_close(got.probability, prob, rtol=0, atol=2e-3)
    torch.testing.assert_close(got.bald, entropy(prob) - entropy(p).mean(0), rtol=0, atol=2e-3)
    torch.testing.assert_close(got.variance, p.var(0), rtol=0, atol=2e-3)
    # the probability agrees with the posterior's own Monte Carlo link
    want = posterior.preference_probability(
        x, link_approx="mc", n_samples=4 * S_MC, generator=torch.Generator().manual_seed(24)
    )
    torch.testing.assert_close(got.probability, want, rtol=0, atol=2e-3)


@pytest.mark.parametrize("method", ["bald", "variance"])
def test_ranking_is_by_score_most_informative_first(posterior, method):
    x = items(40, seed=25).reshape(20, 2, D_IN)
    order = rank_pairs_for_labeling(posterior, x, method=method)
    u = preference_uncertainty(posterior, x)
    score = u.bald if method == "bald" else u.variance
    assert sorted(order.tolist()) == list(range(20))
    assert bool((score[order][:-1] >= score[order][1:]).all())
    top = rank_pairs_for_labeling(posterior, x, method=method, n=5, diverse=False)
    assert top.tolist() == order[:5].tolist()


def pool_with_duplicates(posterior):
    """20 pairs; the most informative pair by BALD is repeated as itself and swapped."""
    x = items(40, seed=26).reshape(20, 2, D_IN)
    best = int(preference_uncertainty(posterior, x).bald.argmax())
    pool = torch.cat([x, x[best : best + 1], x[best : best + 1].flip(1)])
    return pool, {best, 20, 21}


@pytest.mark.parametrize("method", ["bald", "variance"])
def test_diverse_batch_avoids_a_duplicated_pair(posterior, method):
    pool, copies = pool_with_duplicates(posterior)
    plain = rank_pairs_for_labeling(posterior, pool, method=method, n=4, diverse=False)
    g = torch.Generator().manual_seed(27)
    diverse = rank_pairs_for_labeling(posterior, pool, method=method, n=4, generator=g)
    if method == "bald":
        assert len(copies & set(plain.tolist())) == 3  # top-n takes all three copies
    assert len(copies & set(diverse.tolist())) == 1
    assert int(diverse[0]) == int(plain[0])  # the first pick is the best score
    assert len(set(diverse.tolist())) == 4


@pytest.mark.parametrize("method", ["thompson", "double_thompson"])
def test_thompson_batches_avoid_repeats_and_return_distinct_pairs(posterior, method):
    pool, copies = pool_with_duplicates(posterior)
    same = items(1, seed=28).expand(2, D_IN).unsqueeze(0)  # one item against itself
    pool = torch.cat([pool, same])
    g = torch.Generator().manual_seed(29)
    order = rank_pairs_for_labeling(posterior, pool, method=method, generator=g)
    assert sorted(order.tolist()) == list(range(23))
    # 20 distinct pairs first, then the item against itself, then the repeats of a taken pair
    assert len(copies & set(order[:20].tolist())) == 1
    assert int(order[20]) == 22
    assert set(order[21:].tolist()) < copies


def candidates_and_all_pairs(n_items: int, seed: int):
    c = items(n_items, seed)
    i, j = torch.triu_indices(n_items, n_items, offset=1)
    return c, torch.stack([c[i], c[j]], dim=1), i, j


@pytest.mark.parametrize("method", ["thompson", "double_thompson"])
def test_thompson_on_all_pairs_picks_the_sampled_argmaxes(posterior, method):
    """On a pool of all pairs of n candidates: Thompson picks the top two items of one draw,
    double Thompson (Dwaracherla et al. 2024) argmax of draw 1 against argmax of draw 2."""
    c, pool, i, j = candidates_and_all_pairs(8, seed=30)
    for seed in range(5):
        got = rank_pairs_for_labeling(
            posterior, pool, method=method, n=1, generator=torch.Generator().manual_seed(seed)
        )
        # the same draws: the distinct items in torch.unique's (sorted) order
        unique, inverse = torch.unique(c, dim=0, return_inverse=True)
        n_draws = 1 if method == "thompson" else 2
        g = torch.Generator().manual_seed(seed)
        d = posterior.sample(unique, n_draws, generator=g)[:, inverse]
        if method == "thompson":
            want = set(d[0].topk(2).indices.tolist())
        else:
            a, b = int(d[0].argmax()), int(d[1].argmax())
            if a == b:  # the best pair with a second item: the runner-up of the sum
                continue
            want = {a, b}
        assert {int(i[got[0]]), int(j[got[0]])} == want


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"penalty": "mad"}, ValueError, r"`penalty` must be one of .*'kl'.*got 'mad'"),
        ({"penalty": "kl"}, ValueError, r"penalty='kl' needs `beta`.*pass it"),
        ({"penalty": "kl", "beta": -1.0}, ValueError, r"`beta` must be positive.*got -1.0"),
        ({"penalty": "quantile", "level": 1.5}, ValueError, r"`level`.*\(0, 1\), got 1.5"),
        ({"level": 0.1}, ValueError, r"`level` is used by penalty 'quantile', not by .*'std'"),
        ({"beta": 0.1}, ValueError, r"`beta` is used by penalty 'kl' or 'kl_optimistic'"),
        ({"penalty": "kl", "beta": 0.1, "k": 2.0}, ValueError, r"`k` is used by penalty 'std'"),
        ({"k": float("nan")}, ValueError, r"`k` must be a finite number, got nan"),
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
def test_penalize_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        penalize(torch.zeros(2), torch.ones(2), **kwargs)


def test_penalize_bad_tensors():
    with pytest.raises(ValueError, match=r"same shape.*\(2,\) and \(3,\)"):
        penalize(torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match=r"`variance` must be non-negative.*-1"):
        penalize(torch.zeros(2), -torch.ones(2))
    with pytest.raises(TypeError, match=r"`mean` must be a torch.Tensor, got list"):
        penalize([0.0], torch.ones(1))


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


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"method": "entropy"}, ValueError, r"`method` must be one of .*'bald'.*got 'entropy'"),
        ({"n": 7}, ValueError, r"`n` must be at most the number of candidate pairs \(6\), got 7"),
        ({"n": 2.0}, TypeError, r"`n` must be an int, got float"),
        ({"method": "thompson", "n_samples": 10}, ValueError, r"Drop `n_samples`"),
    ],
    ids=["method", "n-too-large", "n-float", "n_samples-thompson"],
)
def test_rank_pairs_bad_options(posterior, kwargs, error, match):
    with pytest.raises(error, match=match):
        rank_pairs_for_labeling(posterior, items(12, 2).reshape(6, 2, D_IN), **kwargs)


def test_rank_pairs_bad_shape(posterior):
    with pytest.raises(ValueError, match=r"\(B, 2, \*item\).*got \(6, 5\); stack the two items"):
        rank_pairs_for_labeling(posterior, items(6, 3))
