"""Best-of-n against a known true reward: MAP vs penalized rewards vs a deep ensemble.

Run from the repository root::

    python benchmarks/bench_best_of_n.py [--pairs 2000] [--prompts 300] [--seeds 3]

Saves ``docs/data/best_of_n.json`` and writes ``docs/best_of_n.md`` and ``docs/best_of_n.png``
from it (``benchmarks/report.py``). A Goodhart setting: the true reward
``r*(x) = a . x - 0.15 ||x||^2`` rewards a direction up to a point; the reward model (an
8-64-64-1 ReLU MLP, ``--act tanh`` for tanh) learns it from Bradley-Terry pairs of items
``x ~ N(0, I)``, where the quadratic term is mild. At selection time each prompt's ``n``
candidates come from the wider ``N(0, 3^2 I)`` (``--spread``): the proxy's largest rewards sit
where it extrapolates, and picking its argmax over more candidates ends up on items the true
reward punishes (reward hacking). Methods pick the argmax of: the MAP reward; bt_laplace's
``mean - k std`` (absolute, and relative to the group of candidates, ``reference="group"``)
for posteriors over all weights (kron) and the last layer (kron); a 5-member deep ensemble's
``mean - k std``; and the true reward (oracle). Reported: the true reward of the pick, averaged
over prompts and seeds, for each ``n``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import report
import torch
from _common import DOCS, OUT_HELP, environment, page_name, save
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bt_laplace.fit import fit_reward_posterior
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.testing import mlp, train_map

warnings.filterwarnings("ignore")
D = 8
NS = (1, 4, 16, 64, 256)
K = (1.0, 2.0)
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


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
) -> tuple[dict, dict]:
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
    ensemble = [model] + [train(x, y, seed + 1000 * i, epochs, act) for i in range(1, 5)]
    costs["ensemble of 5"] = costs["MAP"] + time.perf_counter() - t0

    n_max = max(NS)
    cands = spread * torch.randn(n_prompts, n_max, D, generator=g)
    flat = cands.reshape(-1, D)
    true = true_reward(cands, a)
    scores: dict[str, torch.Tensor] = {"oracle (true reward)": true}
    with torch.no_grad():
        scores["MAP"] = model(flat).reshape(n_prompts, n_max)
        ens = torch.stack([m(flat).reshape(n_prompts, n_max) for m in ensemble])
    for subset, post in posts.items():
        mean, var = post(flat)
        mean, std = mean.reshape(n_prompts, n_max), var.sqrt().reshape(n_prompts, n_max)
        for k in K:
            scores[f"bt {subset}/kron, mean - {k:g} std"] = mean - k * std
    # relative to each prompt's group of candidates: one call per prompt and candidate count
    for k in K:
        scores[f"bt all/kron, mean - {k:g} std, relative (group)"] = torch.full_like(true, 0.0)
    for k_ in K:
        scores[f"ensemble, mean - {k_:g} std"] = ens.mean(0) - k_ * ens.std(0)

    picked: dict[str, list[float]] = {name: [] for name in scores}
    for n in NS:
        sub = slice(0, n)
        for name, s in scores.items():
            if "relative" in name:
                continue
            idx = s[:, sub].argmax(1)
            picked[name].append(float(true[:, sub].gather(1, idx[:, None]).mean()))
        for k in K:  # relative to the n candidates actually offered
            name = f"bt all/kron, mean - {k:g} std, relative (group)"
            vals = []
            for p in range(n_prompts):
                s = posts["all"].penalized_reward(cands[p, sub], k=k, reference="group")
                vals.append(float(true[p, sub][int(s.argmax())]))
            picked[name].append(sum(vals) / len(vals))
    return picked, costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--spread", type=float, default=3.0, help="std of the candidates")
    parser.add_argument("--act", choices=sorted(ACTIVATIONS), default="relu")
    parser.add_argument("--out", default=str(DOCS / "best_of_n.md"), help=OUT_HELP)
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
        "runs": [{"picked": picked, "costs": costs} for picked, costs in runs],
    }
    save(page_name(args.out), "best_of_n", results)
    report.write(page_name(args.out))


if __name__ == "__main__":
    main()
