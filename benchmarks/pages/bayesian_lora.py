"""docs/results/bayesian_lora.md from docs/data/bayesian_lora.json (bench_bayesian_lora)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import environment_lines, fmt_b, fmt_s, md_table


def render(data: dict[str, Any], page: Path) -> str:
    seeds = data["seeds"]
    names = list(next(iter(seeds.values()))["rows"])
    rows = []
    for name in names:
        per = [s["rows"][name] for s in seeds.values()]
        cells = [name, fmt_b(per[0]["bytes"])]
        cells.append(fmt_s(sum(r["fit_s"] for r in per) / len(per)))
        cells += [
            f"{r['spearman']:.3f} / {r['median_abs_log_ratio']:.3f} / {r['median_ratio']:.3g}"
            for r in per
        ]
        rows.append(cells)
    header = [
        "posterior",
        "factor memory",
        "mean fit",
        *[f"seed {k}: Spearman / median abs log ratio / median ratio" for k in seeds],
    ]
    setup = data["setup"]
    parts = [
        "# Side by side with bayesian-lora 0.0.6",
        "",
        *environment_lines(data["environment"]),
        "- Also needs: `pip install --no-deps --target /tmp/blora bayesian-lora==0.0.6 "
        "jaxtyping wadler_lindig` and `PYTHONPATH=/tmp/blora` (not a bt_laplace dependency)",
        "",
        "`bayesian-lora` (Laplace-LoRA's library, Yang et al. 2024) on the model of "
        "[lora_accuracy.md](lora_accuracy.md) (one-layer Llama, hidden 128, LoRA r = 4 on all "
        "seven projections, float64) with the score head frozen, since it covers modules named "
        "`lora` only. Every posterior is over the adapters alone, at prior precision 1 "
        "(`bayesian-lora`'s prior variance `s2 = 1`), and is scored against the exact Laplace "
        f"posterior over them: the reward variances of {setup['queries']} held-out items, "
        "Spearman's rank correlation, the median of `|log(v / v_exact)|` and the median ratio "
        "`v / v_exact`. Factor memory: what the fitted factors (and, for bt_laplace, their "
        "eigendecompositions) hold.",
        "",
        md_table(header, rows),
        "",
        "How the likelihoods differ. bt_laplace uses the Bradley-Terry GGN of the pairs, "
        "`sum_pairs p (1 - p) (J_1 - J_0)^T (J_1 - J_0)`, summed over the pairs, with every "
        "position's contribution to the reward. `bayesian-lora` builds KFAC factors of a "
        "categorical likelihood over the logits its forward call returns (here the pair's two "
        "rewards, so the categorical is the Bradley-Terry probability) with labels sampled from "
        "the model (a one-sample Monte Carlo Fisher), the loss averaged over each batch, the "
        "activations and output gradients of the last position only, and the two items of a "
        "pair treated as independent samples. Its low-rank factors keep the top "
        f"`n_kfac = {setup['n_kfac']}` directions by incremental SVD and nothing of the rest; "
        "its whole factors are averaged over the batches while its low-rank ones are summed. "
        "The median ratio shows how far its curvature's scale is from the pairs' GGN.",
        "",
        "Reading: the three rank the items alike; they differ in scale. bt_laplace's kron "
        "gives too little variance (its Kronecker products spread the pairs' curvature over "
        "directions the pairs do not constrain), less so with low-rank factors; "
        "`bayesian-lora` gives too much (its curvature is averaged over each batch and read "
        "at the last position only, so it sees less of the pairs than they carry). bt_laplace's "
        "default prior is scaled until the posterior gives held-out pairs the exact "
        "posterior's variance ([prior_sweep.md](prior_sweep.md)); this page fixes the prior "
        "at 1 for all three to compare the curvatures themselves.",
        "",
    ]
    return "\n".join(parts)
