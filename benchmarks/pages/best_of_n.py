"""docs/results/best_of_n.md and best_of_n.png from docs/data/best_of_n.json
(bench_best_of_n.py)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from _common import environment_lines, md_table

ORACLE, MAP = "oracle (true reward)", "MAP"
# drawn in the figure: (left panel: posterior penalties, right panel: ensemble baselines)
PLOT = (
    (
        "bt all/kron, mean - 2 std, absolute",
        "bt all/kron, kl, beta = 1 (mean - 0.5 var), absolute",
        "bt all/kron, kl, beta = 0.5 (mean - 1 var), relative (group)",
        "bt all/kron, kl, beta = 0.1 (mean - 5 var), absolute",
        "bt last_layer/kron, mean - 2 std, absolute",
        "bt last_layer/kron, kl, beta = 0.1 (mean - 5 var), absolute",
    ),
    (
        "ensemble mean",
        "ensemble worst case (WCO, min)",
        "ensemble UWO, mean - 0.5 var",
        "ensemble UWO, mean - 5 var",
        "ensemble, mean - 2 std",
    ),
)
# drawn thin and grey in the ensemble panel, for comparison
COMPARE = "bt all/kron, kl, beta = 1 (mean - 0.5 var), absolute"


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (nan with one seed)."""
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return m, se


def cell(m: float, se: float) -> str:
    return f"{m:+.2f}" if se != se else f"{m:+.2f} ± {se:.2f}"


def render(data: dict[str, Any], page: Path) -> str:
    runs, args, ns, meta = data["runs"], data["args"], data["ns"], data["methods"]
    names = list(meta)
    per_seed = {
        name: [[r["picked"][name][i] for r in runs] for i in range(len(ns))] for name in names
    }
    stats = {name: [mean_se(v) for v in per_seed[name]] for name in names}

    def rows(table: str) -> list[list[str]]:
        chosen = [n for n in names if meta[n]["table"] in ("reference", table)]
        return [[n, *(cell(*s) for s in stats[n])] for n in chosen]

    header = ["method", *(f"n = {n:,}" for n in ns)]
    cost_rows = [
        [c, f"{statistics.fmean(r['costs'][c] for r in runs):.2f}"] for c in runs[0]["costs"]
    ]
    png = page.with_suffix(".png")
    plot(ns, stats, png)
    members = data["members"]
    return "\n".join(
        [
            "# Best-of-n against a known true reward: over-optimization",
            "",
            *environment_lines(data["environment"]),
            f"- Total run time: {data['elapsed']:.0f} s",
            "",
            "True (gold) reward `r*(x) = a . x - 0.15 ||x||^2` (`||a|| = 1.5`, "
            f"`x` in R^{data['d']}); reward model 8-64-64-1 {args['act']} MLP, MAP by AdamW "
            f"({args['epochs']} epochs) on {args['pairs']} Bradley-Terry pairs of `x ~ N(0, I)`; "
            f"candidates `x ~ N(0, {args['spread']:g}^2 I)`, {args['prompts']} prompts x "
            f"{args['seeds']} seeds, the first n of each prompt's {max(ns):,} candidates for "
            "each n. The proxy's largest rewards sit where it extrapolates, so its argmax over "
            "more candidates drifts to items the true reward punishes. Each cell: the true reward "
            "of the candidate the method picks, averaged over prompts, then mean ± standard "
            "error over seeds (higher is better; n = 1 is the same pick for every method).",
            "",
            "## What it shows",
            "",
            summary(ns, per_seed, stats, meta, runs),
            "",
            "## Posterior penalties",
            "",
            "`bt_laplace.best_of_n(posterior, candidates, groups=prompt_ids, reference=..., "
            "penalty=...)`, one call for all prompts at each n. Posteriors: "
            "`fit_reward_posterior` defaults but the subset (kron, marglik prior). Penalties "
            "(`bt_laplace.rlhf.penalize`) of the Gaussian `r ~ N(mean, var)`: `mean - k std`, "
            "`mean - k var`, the lower 5% quantile (`mean - 1.64 std`), `kl` "
            "(`-beta log E[exp(-r / beta)] = mean - var / (2 beta)`, the pessimistic effective "
            "reward of KL-regularized RLHF with coefficient beta) and its optimistic twin "
            "`kl_optimistic` (`mean + var / (2 beta)`). Absolute: `reference=None`; relative "
            "(group): moments of `r(x) - mean r(candidates of the same prompt)`. The grid is "
            "small and fixed (k in {1, 2}, beta in {1, 0.5, 0.1}, that is variance prices "
            "0.5, 1 and 5, the same as the ensembles' UWO lambdas); no value was tuned on "
            "held-out data, so the best row of each table is partly selected on these seeds.",
            "",
            md_table(header, rows("posterior")),
            "",
            "## Ensemble baselines (Coste et al., 2023)",
            "",
            f"{members} reward models trained on the same pairs from different seeds "
            "(initialization and batch order; the MAP model is member 0), as in Coste et al., "
            "'Reward Model Ensembles Help Mitigate Overoptimization' (ICLR 2024): the mean; "
            "worst-case optimization (WCO), the minimum over members; uncertainty-weighted "
            "optimization (UWO), `mean - lambda var` with the members' variance "
            "`(1/M) sum_i (r_i - mean)^2`, on the grid lambda in {0.1, 0.5, 1, 5, 20} (20 goes "
            "past the posterior grid, in the ensembles' favour); and `mean - k std` (the sample "
            "std over members).",
            "",
            md_table(header, rows("ensemble")),
            "",
            "Fit cost per seed (seconds, MAP training included; mean over seeds):",
            "",
            md_table(["method", "s"], cost_rows),
            "",
            select_line(runs, max(ns), args["prompts"]),
            "",
            f"![best-of-n curves]({png.name})",
            "",
        ]
    )


def paired(per_seed: dict[str, list[list[float]]], a: str, b: str, i: int) -> str:
    """``a - b`` at the ``i``-th n, mean ± standard error of the per-seed differences."""
    return cell(*mean_se([x - y for x, y in zip(per_seed[a][i], per_seed[b][i], strict=True)]))


def summary(
    ns: list[int],
    per_seed: dict[str, list[list[float]]],
    stats: dict[str, list[tuple[float, float]]],
    meta: dict[str, dict[str, Any]],
    runs: list[dict[str, Any]],
) -> str:
    last, n_max = len(ns) - 1, f"{ns[-1]:,}"

    def at(name: str, i: int = last) -> str:
        return cell(*stats[name][i])

    def best(table: str) -> str:
        return max((n for n in meta if meta[n]["table"] == table), key=lambda n: stats[n][last][0])

    post, ens = best("posterior"), best("ensemble")
    peak = max(range(len(ns)), key=lambda i: stats[MAP][i][0])
    group_pairs = [
        (n, a)
        for n in meta
        for a in meta
        if meta[n].get("reference") == "group"
        and meta[a].get("reference", "x") is None
        and {k: v for k, v in meta[n].items() if k != "reference"}
        == {k: v for k, v in meta[a].items() if k != "reference"}
    ]
    optimistic = [n for n in meta if meta[n].get("penalty") == "kl_optimistic"]
    cost = {c: statistics.fmean(r["costs"][c] for r in runs) for c in runs[0]["costs"]}
    ens_cost = next(c for c in cost if c.startswith("ensemble"))
    lines = [
        f"- Over-optimization: the MAP pick's true reward peaks at n = {ns[peak]:,} "
        f"({at(MAP, peak)}) and falls to {at(MAP)} at n = {n_max}, while the oracle's rises "
        f"to {at(ORACLE)}.",
        f"- At n = {n_max} the best posterior penalty is `{post}`: {at(post)}, "
        f"{paired(per_seed, post, MAP, last)} above MAP and {paired(per_seed, post, ens, last)} "
        f"above the best ensemble baseline, `{ens}` ({at(ens)}; {paired(per_seed, ens, MAP, last)} "
        f"above MAP). Differences are paired by seed (same data and candidates).",
    ]
    if group_pairs:
        diffs = ", ".join(
            f"`{a.split(', ', 1)[1].rsplit(', ', 1)[0]}` {paired(per_seed, g, a, last)}"
            for g, a in group_pairs
        )
        lines.append(
            f"- Relative (group) minus absolute at n = {n_max}: {diffs}. The toy reward model has "
            "no prompt input, so there is no per-prompt offset for the group reference to drop."
        )
    ranges = []
    for subset in dict.fromkeys(m["subset"] for m in meta.values() if "subset" in m):
        rows = [
            n
            for n in meta
            if meta[n].get("subset") == subset and meta[n]["penalty"] != "kl_optimistic"
        ]
        ranked = sorted(rows, key=lambda n: stats[n][last][0])
        lo, hi = ranked[0], ranked[-1]
        ranges.append(
            f"`bt {subset}/kron` from {at(lo)} (`{lo.split(', ', 1)[1]}`) to {at(hi)} "
            f"(`{hi.split(', ', 1)[1]}`)"
        )
    lines.append(
        f"- Pessimistic penalties at n = {n_max}, worst to best row: " + "; ".join(ranges) + ". "
        "The price of uncertainty that works differs between the two posteriors."
    )
    for o in optimistic:
        lines.append(
            f"- The optimistic twin `{o}` seeks the uncertain items: {at(o)} at n = {n_max}, "
            f"{paired(per_seed, o, MAP, last)} against MAP."
        )
    lines.append(
        f"- Cost per seed: MAP training {cost['MAP']:.2f} s; the all-weights posterior adds "
        f"{cost['bt all/kron'] - cost['MAP']:.2f} s, the {ens_cost} "
        f"{cost[ens_cost] - cost['MAP']:.2f} s ({cost[ens_cost] / cost['MAP']:.1f}x MAP)."
    )
    return "\n".join(lines)


def select_line(runs: list[dict[str, Any]], n_max: int, prompts: int) -> str:
    times = {c: statistics.fmean(r["select_s"][c] for r in runs) for c in runs[0]["select_s"]}
    parts = [
        f"{t:.2f} s for `{c}`"
        for c, t in times.items()
        if c.startswith("bt all/kron, mean - 2 std") or c.startswith("bt last_layer/kron, mean")
    ]
    return (
        f"One `best_of_n` call for all {prompts} prompts x {n_max:,} candidates: "
        + ", ".join(parts)
        + " (mean over seeds; the relative variant takes one `relative_reward` pass per prompt)."
    )


def plot(ns: list[int], stats: dict[str, list[tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    titles = ("bt_laplace posterior penalties", "ensembles of 5 (Coste et al., 2023)")
    for ax, chosen, title in zip(axes, PLOT, titles, strict=True):
        extra = (COMPARE,) if ax is axes[1] else ()
        for name in (ORACLE, MAP, *chosen, *extra):
            if name not in stats:
                continue
            m = [s[0] for s in stats[name]]
            se = [0.0 if s[1] != s[1] else s[1] for s in stats[name]]
            style = "--" if name == ORACLE else (":" if name == MAP else "-")
            color = "black" if name in (ORACLE, MAP) else ("0.6" if name in extra else None)
            (line,) = ax.plot(ns, m, style, marker="o", ms=3, label=name, color=color)
            lo = [a - b for a, b in zip(m, se, strict=True)]
            hi = [a + b for a, b in zip(m, se, strict=True)]
            ax.fill_between(ns, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [f"{n:,}" for n in ns])
        ax.set_xlabel("n candidates per prompt")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right")
    axes[0].set_ylabel("true reward of the pick (mean ± s.e. over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
