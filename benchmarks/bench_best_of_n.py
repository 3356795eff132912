"""Best-of-n against a known true reward: MAP vs penalized rewards vs a deep ensemble.

Run from the repository root::

    python benchmarks/bench_best_of_n.py [--pairs 2000] [--prompts 300] [--seeds 3]

Writes ``docs/best_of_n.md`` and ``docs/best_of_n.png``. A Goodhart setting: the true reward
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
import os
import sys
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    bradley_terry_epoch,
    command_line,
    environment_lines,
    md_table,
)

import bt_laplace as btl  # noqa: E402

warnings.filterwarnings("ignore")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
) -> btl.PairwiseRewardModel:
    torch.manual_seed(seed)
    a = ACTIVATIONS[act]
    net = nn.Sequential(nn.Linear(D, 64), a(), nn.Linear(64, 64), a(), nn.Linear(64, 1))
    model = btl.PairwiseRewardModel(net)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    for _ in range(epochs):
        bradley_terry_epoch(model, loader, opt)
    return model.eval()


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
        posts[subset] = btl.fit_reward_posterior(
            model, loader, subset_of_weights=subset, hessian_structure="kron"
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
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "best_of_n.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    runs = [
        run_seed(s, args.pairs, args.prompts, args.epochs, args.spread, args.act)
        for s in range(args.seeds)
    ]
    names = list(runs[0][0])
    mean_curve = {
        n: [sum(r[0][n][i] for r in runs) / len(runs) for i in range(len(NS))] for n in names
    }
    rows = [[n, *(f"{v:+.3f}" for v in mean_curve[n])] for n in names]
    cost_rows = [[c, f"{sum(r[1][c] for r in runs) / len(runs):.2f}"] for c in runs[0][1]]
    png = os.path.splitext(args.out)[0] + ".png"
    plot(mean_curve, png)
    text = "\n".join(
        [
            "# Best-of-n against a known true reward",
            "",
            *environment_lines(command_line(), torch.get_num_threads()),
            f"- Total run time: {time.perf_counter() - t_start:.0f} s",
            "",
            f"True reward `r*(x) = a . x - 0.15 ||x||^2` (`||a|| = 1.5`, `x` in R^{D}); reward "
            f"model 8-64-64-1 {args.act} MLP, MAP by AdamW ({args.epochs} epochs) on "
            f"{args.pairs} Bradley-Terry pairs of `x ~ N(0, I)`; candidates "
            f"`x ~ N(0, {args.spread:g}^2 I)`, "
            f"{args.prompts} prompts x {args.seeds} seeds. Posteriors: `fit_reward_posterior` "
            "defaults but the subset (kron, marglik prior). Each cell: the true reward of the "
            "candidate the method picks, averaged over prompts and seeds (higher is better).",
            "",
            md_table(["method", *(f"n = {n}" for n in NS)], rows),
            "",
            "Fit cost per seed (seconds, MAP training included):",
            "",
            md_table(["method", "s"], cost_rows),
            "",
            f"![best-of-n curves]({os.path.basename(png)})",
            "",
        ]
    )
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


def plot(curves: dict[str, list[float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, vals in curves.items():
        style = "--" if "oracle" in name else ("-" if name.startswith("bt") else ":")
        ax.plot(NS, vals, style, marker="o", ms=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n candidates")
    ax.set_ylabel("true reward of the pick")
    ax.set_title("Best-of-n: picking by MAP vs penalized rewards")
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
