"""Best-of-n against a known true reward: MAP vs penalized posterior rewards vs ensembles.

Run from the repository root::

    python benchmarks/bench_best_of_n.py [--pairs 2000] [--prompts 300] [--seeds 5]

Saves ``docs/data/best_of_n.json`` and writes ``docs/results/best_of_n.md`` and
``docs/results/best_of_n.png`` from it (``benchmarks/report.py``). A Goodhart setting: the true
(gold) reward
``r*(x) = a . x - 0.15 ||x||^2`` rewards a direction up to a point; the reward model (an
8-64-64-1 ReLU MLP, ``--act tanh`` for tanh) learns it from Bradley-Terry pairs of items
``x ~ N(0, I)``, where the quadratic term is mild. At selection time each prompt's ``n``
candidates (n = 1 ... 1,024) come from the wider ``N(0, 3^2 I)`` (``--spread``): the proxy's
largest rewards sit where it extrapolates, and picking its argmax over more candidates ends up
on items the true reward punishes (over-optimization, reward hacking).

Methods pick the argmax of:

- the MAP reward, and the true reward (oracle);
- ``bt_laplace.best_of_n`` with every prompt's candidates in one call (``groups``: one id per
  prompt), for each penalty of :func:`bt_laplace.rlhf.penalize` (``std``, ``variance``,
  ``quantile``, ``kl``, ``kl_optimistic``), on posteriors over all weights and over the last
  layer (kron), with absolute rewards (``reference=None``) and rewards relative to the prompt's
  candidates (``reference="group"``);
- the ensemble baselines of Coste et al. (2023), "Reward Model Ensembles Help Mitigate
  Overoptimization", on 5 members trained from different seeds (the MAP model is member 0):
  the mean, the worst case (WCO, the minimum over members) and uncertainty-weighted
  optimization (UWO, ``mean - lambda var`` with the members' variance), and ``mean - k std``.

Reported: the true reward of the pick, averaged over prompts, then mean and standard error over
seeds, for each ``n``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import report
import torch
from _common import OUT_HELP, RESULTS, environment, page_name, save
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bt_laplace import best_of_n
from bt_laplace.fit import fit_reward_posterior
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.testing import mlp, train_map

warnings.filterwarnings("ignore")
D = 8
NS = (1, 4, 16, 64, 256, 1024)
MEMBERS = 5
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
ORACLE, MAP = "oracle (true reward)", "MAP"

# (subset of weights, reference, penalize options). The variance prices are matched between the
# posterior and the ensemble: kl beta = 1, 0.5, 0.1 is mean - 0.5, 1, 5 var, as UWO lambda is.
POSTERIOR = (
    ("all", None, {"penalty": "std", "k": 1.0}),
    ("all", None, {"penalty": "std", "k": 2.0}),
    ("all", None, {"penalty": "quantile", "level": 0.05}),
    ("all", None, {"penalty": "variance", "k": 0.1}),
    ("all", None, {"penalty": "kl", "beta": 1.0}),
    ("all", None, {"penalty": "kl", "beta": 0.5}),
    ("all", None, {"penalty": "kl", "beta": 0.1}),
    ("all", None, {"penalty": "kl_optimistic", "beta": 0.5}),
    ("all", "group", {"penalty": "std", "k": 2.0}),
    ("all", "group", {"penalty": "kl", "beta": 0.5}),
    ("last_layer", None, {"penalty": "std", "k": 2.0}),
    ("last_layer", None, {"penalty": "kl", "beta": 0.1}),
)
UWO_LAMBDAS = (0.1, 0.5, 1.0, 5.0, 20.0)
ENSEMBLE_K = (1.0, 2.0)


def penalty_label(options: dict[str, Any]) -> str:
    penalty = options["penalty"]
    if penalty == "std":
        return f"mean - {options['k']:g} std"
    if penalty == "variance":
        return f"mean - {options['k']:g} var"
    if penalty == "quantile":
        return f"{options['level']:.0%} quantile"
    sign = "-" if penalty == "kl" else "+"
    return f"{penalty}, beta = {options['beta']:g} (mean {sign} {1 / (2 * options['beta']):g} var)"


def posterior_label(subset: str, reference: str | None, options: dict[str, Any]) -> str:
    where = "absolute" if reference is None else f"relative ({reference})"
    return f"bt {subset}/kron, {penalty_label(options)}, {where}"


def ensemble_scores(ens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Coste et al.'s aggregations of member rewards ``(M, G, n)`` -> scores ``(G, n)``."""
    mean, var = ens.mean(0), ens.var(0, unbiased=False)  # the members' (population) variance
    scores = {"ensemble mean": mean, "ensemble worst case (WCO, min)": ens.min(0).values}
    for lam in UWO_LAMBDAS:
        scores[f"ensemble UWO, mean - {lam:g} var"] = mean - lam * var
    for k in ENSEMBLE_K:
        scores[f"ensemble, mean - {k:g} std"] = mean - k * ens.std(0)
    return scores


def methods() -> dict[str, dict[str, Any]]:
    """Every method's row, its table and what it computes (saved with the results)."""
    out: dict[str, dict[str, Any]] = {
        ORACLE: {"table": "reference"},
        MAP: {"table": "reference"},
    }
    for subset, reference, options in POSTERIOR:
        out[posterior_label(subset, reference, options)] = {
            "table": "posterior",
            "subset": subset,
            "reference": reference,
            **options,
        }
    for name in ensemble_scores(torch.zeros(MEMBERS, 1, 1)):
        out[name] = {"table": "ensemble"}
    return out


def true_reward(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return x @ a - 0.15 * x.square().sum(-1)


def make_pairs(n: int, a: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 2, D, generator=g)
    r = true_reward(x, a)
    y = torch.bernoulli(torch.sigmoid(r[:, 1] - r[:, 0]), generator=g).long()
    return x, y


def train(
    x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int, act: str
) -> PairwiseRewardModel:
    torch.manual_seed(seed)
    model = PairwiseRewardModel(mlp(D, 64, ACTIVATIONS[act]))
    return train_map(model, x, y, epochs=epochs, weight_decay=1e-3)


def run_seed(
    seed: int, n_pairs: int, n_prompts: int, epochs: int, spread: float, act: str
) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, generator=g)
    a = 1.5 * a / a.norm()
    x, y = make_pairs(n_pairs, a, g)
    loader = DataLoader(TensorDataset(x, y), batch_size=256)
    costs: dict[str, float] = {}
    t0 = time.perf_counter()
    model = train(x, y, seed, epochs, act)
    costs["MAP"] = time.perf_counter() - t0
    posts = {}
    for subset in ("all", "last_layer"):
        t0 = time.perf_counter()
        posts[subset] = fit_reward_posterior(
            model, loader, subset_of_weights=subset, hessian_structure="kron", evidence="posterior"
        )
        costs[f"bt {subset}/kron"] = costs["MAP"] + time.perf_counter() - t0
    t0 = time.perf_counter()
    ensemble = [model] + [train(x, y, seed + 1000 * i, epochs, act) for i in range(1, MEMBERS)]
    costs[f"ensemble of {MEMBERS}"] = costs["MAP"] + time.perf_counter() - t0

    cands = spread * torch.randn(n_prompts, max(NS), D, generator=g)
    true = true_reward(cands, a)
    picked: dict[str, list[float]] = {name: [] for name in methods()}
    select_s: dict[str, float] = {}  # one best_of_n call at the largest n
    for n in NS:
        flat = cands[:, :n].reshape(-1, D)  # prompt-major: prompt p holds rows p*n ... p*n+n-1
        true_n = true[:, :n]
        groups = torch.arange(n_prompts).repeat_interleave(n)

        def gold(idx: torch.Tensor, true_n: torch.Tensor = true_n) -> float:
            return float(true_n.gather(1, idx[:, None]).mean())

        picked[ORACLE].append(gold(true_n.argmax(1)))
        with torch.no_grad():
            ens = torch.stack([m(flat).reshape(n_prompts, n) for m in ensemble])
        picked[MAP].append(gold(ens[0].argmax(1)))
        for name, score in ensemble_scores(ens).items():
            picked[name].append(gold(score.argmax(1)))
        for subset, reference, options in POSTERIOR:
            t0 = time.perf_counter()
            pick = best_of_n(posts[subset], flat, groups=groups, reference=reference, **options)
            name = posterior_label(subset, reference, options)
            select_s[name] = time.perf_counter() - t0
            picked[name].append(gold(pick.indices - torch.arange(n_prompts) * n))
    return {"picked": picked, "costs": costs, "select_s": select_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--spread", type=float, default=3.0, help="std of the candidates")
    parser.add_argument("--act", choices=sorted(ACTIVATIONS), default="relu")
    parser.add_argument("--out", default=str(RESULTS / "best_of_n.md"), help=OUT_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = environment(torch.get_num_threads())
    t_start = time.perf_counter()
    runs = [
        run_seed(s, args.pairs, args.prompts, args.epochs, args.spread, args.act)
        for s in range(args.seeds)
    ]
    results = {
        "environment": env,
        "elapsed": time.perf_counter() - t_start,
        "args": {
            k: getattr(args, k) for k in ("pairs", "prompts", "seeds", "epochs", "spread", "act")
        },
        "d": D,
        "ns": list(NS),
        "members": MEMBERS,
        "methods": methods(),
        "runs": runs,
    }
    save(page_name(args.out), "best_of_n", results)
    report.write(page_name(args.out))


if __name__ == "__main__":
    main()
