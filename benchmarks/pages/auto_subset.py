"""docs/results/auto_subset.md from docs/data/auto_subset.json (bench_auto_subset)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import environment_lines, fmt_b, fmt_s, fmt_x, md_table


def render(data: dict[str, Any], page: Path) -> str:
    rows = []
    for r in data["rows"]:
        a, last = r["all"], r["last_layer"]
        auto = "all" if r["n_params"] <= data["limit"] else "last_layer"
        rows.append(
            [
                f"{r['width']:,}",
                f"{r['n_params']:,}",
                auto,
                fmt_s(r["t_epoch"]),
                fmt_s(a["t_fit"]),
                fmt_x(a["t_fit"] / r["t_epoch"]),
                a["evidence"],
                fmt_x(a["t_post"] / r["t_forward"]),
                fmt_b(a["bytes"]),
                fmt_s(last["t_fit"]),
                fmt_x(last["t_fit"] / r["t_epoch"]),
                fmt_x(last["t_post"] / r["t_forward"]),
                fmt_b(last["bytes"]),
            ]
        )
    header = [
        "width w",
        "parameters",
        "auto picks",
        "training epoch",
        "all/kron fit",
        "fit / epoch",
        "evidence",
        "post(x) / forward",
        "curvature",
        "last_layer/kron fit",
        "fit / epoch",
        "post(x) / forward",
        "curvature",
    ]
    parts = [
        "# Where the all-weights default stops: cost by model size",
        "",
        *environment_lines(data["environment"]),
        f"- Total run time: {data['elapsed']:.0f} s",
        "",
        f"MLP `{data['d_in']} -> w -> w -> 1` (tanh, float32), {data['pairs']:,} random pairs "
        "labelled by a teacher MLP. *Training epoch*: one pass of AdamW (batch 64) over the "
        "pairs, what a user pays per epoch of MAP training. *Fit*: `fit_reward_posterior(model, "
        "loader, subset_of_weights=...)` with everything else default (kron; the prior that "
        "maximizes the evidence, exact where `evidence='auto'` takes it). *post(x) / forward*: "
        f"the reward mean and variance of {data['items']:,} items over the model's forward "
        "pass on them. *Curvature*: the bytes a saved posterior holds besides the weights "
        "(Kronecker factors and their eigendecompositions). When this ran, "
        f"`subset_of_weights='auto'` (the default) took all weights up to {data['limit']:,} "
        "trainable parameters in linear layers, and the last layer beyond that or when any "
        "trainable parameter sits outside a linear layer (a transformer: embeddings, layer "
        "norms); since issue 18 it takes all weights when the posterior's state fits 4 GiB "
        "(`bt_laplace.options.AUTO_STATE_LIMIT`), with Kronecker factors wider than 2048 kept "
        "low rank ([lora_scale.md](lora_scale.md)).",
        "",
        md_table(header, rows),
        "",
        *reading(data),
    ]
    return "\n".join(parts)


def reading(data: dict[str, Any]) -> list[str]:
    rows = data["rows"]
    inside = [r for r in rows if r["n_params"] <= data["limit"]]
    if not inside:
        return []
    big = max(inside, key=lambda r: r["n_params"])
    exact = [r for r in rows if r["all"]["evidence"] == "exact"]
    post_x = [r["all"]["t_post"] / r["t_forward"] for r in rows]
    out = [
        "## Where the line is, and why",
        "",
        f"- Up to the line the all-weights posterior stays cheap next to the training it "
        f"follows: at {big['n_params']:,} parameters the kron fit and its prior take "
        f"{big['all']['t_fit'] / big['t_epoch']:.1f}x one epoch, `post(x)` "
        f"{big['all']['t_post'] / big['t_forward']:.1f}x the forward pass (all sizes: "
        f"{min(post_x):.1f}-{max(post_x):.1f}x), and the curvature "
        f"{fmt_b(big['all']['bytes'])}. On real ratings it is what improves calibration and "
        "ranks unfamiliar items (docs/results/real_data.md), so the line sits at the largest model "
        "measured rather than where the cost would bite.",
    ]
    above = [r for r in rows if r["n_params"] > data["limit"]]
    if above:
        r = min(above, key=lambda r: r["n_params"])
        out.append(
            f"- Past the line the curvature grows with the square of the width: at "
            f"{r['n_params']:,} parameters {fmt_b(r['all']['bytes'])} and a fit of "
            f"{r['all']['t_fit'] / r['t_epoch']:.1f}x an epoch ({fmt_s(r['all']['t_fit'])}); "
            "`auto` takes the last layer there, and `subset_of_weights='all'` stays available."
        )
    if exact:
        worst = max(exact, key=lambda r: r["all"]["t_fit"] / r["t_epoch"])
        out.append(
            f"- The exact evidence, not the size, makes the small models' fits the slow ones "
            f"({worst['all']['t_fit']:.1f} s at {worst['n_params']:,} parameters, "
            f"{worst['all']['t_fit'] / worst['t_epoch']:.0f}x an epoch: the eigendecomposition "
            f"of the {data['pairs']:,} x {data['pairs']:,} pair kernel on one thread, a fixed "
            "cost); `evidence='auto'` takes it up to 1e11 estimated operations and the "
            "structure's own evidence beyond."
        )
    out += [
        "- Transformers fall to the last layer before any size limit: their embeddings and "
        "layer norms are not linear layers on the fast path. A fine-tuned transformer's "
        "all-weights posterior would need per-pair Jacobians of every block; the last layer "
        "(or LoRA adapters, docs/results/text_speed.md) is the feasible choice there.",
        "",
    ]
    return out
