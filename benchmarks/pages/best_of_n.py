"""docs/best_of_n.md and best_of_n.png from docs/data/best_of_n.json (bench_best_of_n.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import environment_lines, md_table


def render(data: dict[str, Any], page: Path) -> str:
    runs = [(r["picked"], r["costs"]) for r in data["runs"]]
    args, ns = data["args"], data["ns"]
    names = list(runs[0][0])
    mean_curve = {
        n: [sum(r[0][n][i] for r in runs) / len(runs) for i in range(len(ns))] for n in names
    }
    rows = [[n, *(f"{v:+.3f}" for v in mean_curve[n])] for n in names]
    cost_rows = [[c, f"{sum(r[1][c] for r in runs) / len(runs):.2f}"] for c in runs[0][1]]
    png = page.with_suffix(".png")
    plot(ns, mean_curve, png)
    return "\n".join(
        [
            "# Best-of-n against a known true reward",
            "",
            *environment_lines(data["environment"]),
            f"- Total run time: {data['elapsed']:.0f} s",
            "",
            "True reward `r*(x) = a . x - 0.15 ||x||^2` (`||a|| = 1.5`, "
            f"`x` in R^{data['d']}); reward model 8-64-64-1 {args['act']} MLP, MAP by AdamW "
            f"({args['epochs']} epochs) on {args['pairs']} Bradley-Terry pairs of `x ~ N(0, I)`; "
            f"candidates `x ~ N(0, {args['spread']:g}^2 I)`, {args['prompts']} prompts x "
            f"{args['seeds']} seeds. Posteriors: `fit_reward_posterior` defaults but the subset "
            "(kron, marglik prior). Each cell: the true reward of the "
            "candidate the method picks, averaged over prompts and seeds (higher is better).",
            "",
            md_table(["method", *(f"n = {n}" for n in ns)], rows),
            "",
            "Fit cost per seed (seconds, MAP training included):",
            "",
            md_table(["method", "s"], cost_rows),
            "",
            f"![best-of-n curves]({png.name})",
            "",
        ]
    )


def plot(ns: list[int], curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, vals in curves.items():
        style = "--" if "oracle" in name else ("-" if name.startswith("bt") else ":")
        ax.plot(ns, vals, style, marker="o", ms=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n candidates")
    ax.set_ylabel("true reward of the pick")
    ax.set_title("Best-of-n: picking by MAP vs penalized rewards")
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
