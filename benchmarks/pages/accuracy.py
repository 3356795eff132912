"""docs/results/accuracy.md from docs/data/accuracy.json (benchmarks/bench_accuracy.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from _common import environment_lines, fmt, md_table

KRON_GOAL = 1.25  # bt_laplace kron error / nearest-Kronecker floor, per weight block
PRIOR_GOAL = 0.1  # bt kron marglik prior within 10% of the exact GGN's
PROBIT_GOAL = (0.01, 0.03)  # mean / max error of the pair probability against Monte Carlo


def _config(r: dict[str, Any]) -> list[str]:
    return [r["model"], str(r["pairs"]), str(r["epochs"]), fmt(r["accuracy"]), fmt(r["nll"])]


def _kron_block(r: dict[str, Any]) -> list[str]:
    e_bt, e_lt, floor = r["bt_err"], r["lt_err"], r["floor"]
    head = [r["model"], r["block"], str(tuple(r["shape"])), fmt(e_bt)]
    if floor is None:  # a bias: kept dense
        return head + ["exact (dense)", "- (goal 0 err)", fmt(e_lt), "-"]
    if floor > 1e-12:
        ratio_bt, ratio_lt = e_bt / floor, e_lt / floor
        goal = f"{ratio_bt:.4f} (goal <= {KRON_GOAL}{' ok' if ratio_bt <= KRON_GOAL else ' MISS'})"
        return head + [fmt(floor), goal, fmt(e_lt), f"{ratio_lt:.2f}"]
    return head + [fmt(floor), f"floor 0, err {fmt(e_bt)} (goal 0)", fmt(e_lt), "-"]


def _kron_whole(r: dict[str, Any]) -> list[str]:
    return [r["model"], fmt(r["bt_err"]), fmt(r["lt_err"]) if r["lt_err"] is not None else "n/a"]


def _bias(r: dict[str, Any]) -> list[str]:
    cells = [r[f"{lib} {s}"] for lib in ("bt", "lt") for s in ("diag", "kron", "full")]
    return [r["model"], fmt(r["exact"])] + [fmt(c) if c is not None else "n/a" for c in cells]


def _structure(r: dict[str, Any]) -> list[str]:
    subset, structure = r["subset"], r["structure"]
    goal = {
        "diag": "< 1e-6",
        "full": "< 1e-6",
        "kron": "-" if subset == "all" else "< 1e-6 (exact: rank-1 G)",
    }[structure]
    head = [r["model"], r["library"], f"{subset}/{structure}"]
    if "error" in r:
        return head + [r["error"], "", goal, ""]
    note = ""
    if structure == "kron" and subset == "all":
        note = "block-diagonal; see per-block table"
    if subset == "last_layer":
        note = f"head-bias curvature {fmt(r['head_bias'])} (exact 0)"
    return head + [fmt(r["err"]), f"{r['seconds']:.2f}", goal, note]


def _prior(r: dict[str, Any]) -> list[str]:
    priors, best = r["optimizer"], r["evidence_optimum"]
    ex = priors.get("bt full", best["exact"])
    ex_src = (
        "bt full, laplace-torch optimizer (H = exact to 1e-15)"
        if "bt full" in priors
        else "exact evidence optimum; laplace-torch's optimizer too slow at this size"
    )

    def pct(v: float) -> str:
        return f"{100 * abs(v / ex - 1):.1f}%"

    ok = abs(priors["bt kron"] / ex - 1) <= PRIOR_GOAL
    return [
        r["model"],
        f"{fmt(ex)} [{ex_src}]",
        f"{fmt(priors['bt kron'])} ({pct(priors['bt kron'])} off; goal <= "
        f"{100 * PRIOR_GOAL:.0f}%{' ok' if ok else ' MISS'})",
        f"{fmt(priors['lt kron'])} ({pct(priors['lt kron'])} off)",
        fmt(priors.get("bt diag", float("nan"))),
    ]


def _prior_opt(r: dict[str, Any]) -> list[str]:
    keys = ("exact", "exact layer-diag", "exact block-diag", "bt kron", "lt kron", "exact diagonal")
    return [r["model"]] + [fmt(r["evidence_optimum"].get(k, float("nan"))) for k in keys]


def _check(r: dict[str, Any]) -> list[str]:
    return [r["model"], r["posterior"], fmt(r["moments_err"]), fmt(r["probit_diff"])]


def _probs(r: dict[str, Any]) -> list[str]:
    def err(key: str) -> str:
        mean, worst = r["err"][key]
        return f"{fmt(mean)} / {fmt(worst)}"

    mean, worst = r["err"]["bt probit"]
    ok = mean <= PROBIT_GOAL[0] and worst <= PROBIT_GOAL[1]
    return [
        r["model"],
        r["posterior"],
        f"{r['prior_name']} ({fmt(r['prior'])})",
        r["pairs"],
        f"{fmt(r['var_mean'])} / {fmt(r['var_diff_mean'])}",
        err("bt probit") + (" ok" if ok else " MISS"),
        err("bt mc"),
        err("lt probit"),
        err("MAP"),
        *(f"{100 * r['flips'][k]:.2f}%" for k in ("bt probit", "lt probit", "MC truth")),
    ]


def render(data: dict[str, Any], page: Path) -> str:
    args = data["args"]
    probs_header = [
        "model",
        "posterior",
        "prior precision",
        "pairs",
        "mean var(r) / mean var(r1-r0)",
        "bt probit err mean / max (goal <= 0.01 / <= 0.03)",
        "bt mc err mean / max",
        "laplace-torch probit err mean / max",
        "MAP err mean / max",
        "bt probit flips",
        "laplace-torch flips",
        "MC truth flips",
    ]
    parts = [
        "# Accuracy: bt_laplace vs brute force vs raw laplace-torch",
        "",
        *environment_lines(data["environment"]),
        f"- Total run time: {data['elapsed']:.0f} s" + (" (quick mode)" if args["quick"] else ""),
        "",
        "Models: MLPs `D -> H -> H -> 1` with tanh, float64, MAP-trained with AdamW (lr 3e-3, "
        f"weight decay 1e-2, batch 64, {args['epochs']} epochs) on {args['n_pairs']} pairs of "
        "standard-normal items labelled `y ~ Bernoulli(sigmoid(r(x1) - r(x0)))` by a random "
        "teacher MLP (`D -> 32 -> 1`, reward std 2). laplace-torch runs with its default "
        "backend (CurvlinopsGGN); bt_laplace with its default `BradleyTerryGGN`.",
        "",
        md_table(
            ["model", "train pairs", "epochs", "MAP train accuracy", "MAP train NLL"],
            [_config(r) for r in data["configs"]],
        ),
        "",
        "## (a) Curvature against the exact Bradley-Terry GGN",
        "",
        "Exact GGN by brute force: per-item Jacobians `J` from `torch.func.jacrev`, "
        "`dJ = J(x1) - J(x0)`, `H = sum_pairs p(1-p) dJ^T dJ`. Errors are relative Frobenius "
        "norms `||H_est - H||_F / ||H||_F` on each parameter block (diagonal blocks of the "
        "block-diagonal Kronecker approximation). *Floor*: relative error of the best "
        "Kronecker product `G x A` for that weight block (Van Loan-Pitsianis rearrangement "
        "`R = blk.reshape(o,i,o,i).permute(0,2,1,3).reshape(o*o, i*i)`, "
        "floor `= sqrt(sum_{k>=2} s_k^2) / ||s||`).",
        "",
        "### kron, per parameter block",
        "",
        md_table(
            [
                "model",
                "block",
                "shape",
                "bt_laplace kron err",
                "NKP floor",
                "bt err / floor",
                "laplace-torch kron err",
                "laplace-torch err / floor",
            ],
            [_kron_block(r) for r in data["kron_blocks"]],
        ),
        "",
        "Whole-matrix relative error of the block-diagonal kron approximation (includes the "
        "dropped cross-layer blocks, which no Kronecker-factored posterior represents):",
        "",
        md_table(
            ["model", "bt_laplace kron", "laplace-torch kron"],
            [_kron_whole(r) for r in data["kron_whole"]],
        ),
        "",
        "### Curvature on the output bias (all weights; goal: exactly 0)",
        "",
        "The head bias cancels in `r(x1) - r(x0)`, so the exact GGN entry is 0.",
        "",
        md_table(
            ["model", "exact", "bt diag", "bt kron", "bt full", "lt diag", "lt kron", "lt full"],
            [_bias(r) for r in data["bias"]],
        ),
        "",
        "### Relative error per structure (diag: of the diagonal; full/kron: of the matrix)",
        "",
        "Last layer: against `sum p(1-p) dphi dphi^T` (`dphi = phi(x1) - phi(x0)`, features "
        "`phi` entering the head; head-bias row/column 0).",
        "",
        md_table(
            ["model", "library", "posterior", "relative error", "curvature fit s", "goal", "note"],
            [_structure(r) for r in data["structure_err"]],
        ),
        "",
        "## (b) marglik prior precision (scalar)",
        "",
        "laplace-torch's marglik procedure (Adam on the log prior, 100 steps): its own "
        "`optimize_prior_precision(method='marglik')` for laplace-torch, the same procedure on "
        "the curvature eigenvalues (`bt_laplace.prior.optimize_marglik`, what "
        "`fit_reward_posterior` runs) for bt_laplace. The exact-GGN reference is bt_laplace "
        "all/full, whose `H` equals the brute-force GGN to round-off (table above).",
        "",
        md_table(
            [
                "model",
                "exact full GGN",
                "bt kron (goal within 10% of exact)",
                "laplace-torch kron",
                "bt diag (exact diagonal)",
            ],
            [_prior(r) for r in data["prior"]],
        ),
        "",
        "Diagnosis: the exact optimum of the same Laplace evidence "
        "`-nll - 0.5 (sum log(eig(H) + d) - P log d + d ||theta||^2)` over a fine log grid of "
        "`d`, for the eigenvalues of: the exact GGN; the exact GGN restricted to its "
        "per-layer diagonal blocks, and to its per-parameter-tensor diagonal blocks (what any "
        "block-diagonal posterior such as KFAC keeps, "
        "with each block exact); the bt_laplace and laplace-torch Kronecker matrices; the "
        "exact diagonal.",
        "",
        md_table(
            [
                "model",
                "exact",
                "exact block-diagonal per layer (W and b together)",
                "exact block-diagonal per parameter tensor (kron's blocks)",
                "bt kron",
                "laplace-torch kron",
                "exact diagonal",
            ],
            [_prior_opt(r) for r in data["prior"]],
        ),
        "",
        "Predictive checks against brute force on 200 random pairs: `pair_moments` vs "
        "`J Sigma J^T` from jacrev Jacobians (max relative error of var0, var1, cov), and "
        "laplace-torch's own `la(x, fitting=True, link_approx='probit')[:, 1]` vs the "
        "per-item-probit formula `softmax(kappa * mu)[:, 1]`, `kappa = 1/sqrt(1 + pi/8 var)`, "
        "applied to bt_laplace's moments (max abs difference) - i.e. the laplace-torch column "
        "in (c) is exactly what laplace-torch computes for the same posterior.",
        "",
        md_table(
            ["model", "posterior", "pair_moments vs J Sigma J^T", "lt probit vs formula"],
            [_check(r) for r in data["checks"]],
        ),
        "",
        "## (c) Pair probabilities against Monte Carlo on the joint 2x2 Gaussian",
        "",
        f"Reference: {args['n_mc']:,} joint samples per pair of `N([m0, m1], [[v0, c], [c, v1]])` "
        "(moments from `post.pair_moments`, Cholesky), averaging `sigmoid(r1 - r0)` (MC "
        f"standard error <= {0.5 / math.sqrt(args['n_mc']):.4f}). {args['n_test']} pairs per set: "
        "*random* (both items standard normal, as in training) and *near-duplicate* "
        "(`x1 = x0 + 1e-2 * noise`). Each posterior uses its own marglik prior precision, and "
        "then a small prior 0.1 to stress the variance. Columns: bt_laplace probit "
        "(`post.preference_probability`), bt_laplace mc (20,000 samples of the difference), "
        "laplace-torch's reward-modeling probit (per-item scaling then softmax, ignores the "
        "covariance) applied to the same posterior moments, and the MAP probability "
        "`sigmoid(m1 - m0)`. *Flips*: fraction of pairs whose preferred item differs from "
        "the MAP's.",
        "",
        md_table(probs_header, [_probs(r) for r in data["probs"]]),
        "",
    ]
    return "\n".join(parts)
