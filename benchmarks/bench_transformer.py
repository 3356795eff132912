"""Speed on a real transformer reward model: MiniLM with a linear head, last-layer posterior.

Run from the repository root (needs the ``transformers`` extra; offline)::

    python benchmarks/bench_transformer.py [--threads 1] [--pairs 256] [--length 64]

Saves ``docs/data/benchmarks_transformer.json`` and writes
``docs/results/benchmarks_transformer.md`` from it (``benchmarks/report.py``). The model is
``examples/transformer_reward.py``'s:
MiniLM (all-MiniLM-L6-v2, 22.7M parameters, frozen) mean-pooled into ``Linear(384, 1)``.
Every bt_laplace query runs the whole transformer once (the head's activations and output
gradients come from the same pass), so the ratios to the MAP forward pass are what a user of a
real reward model pays. Timings are the median of repeated calls after a warm-up.
laplace-torch 0.3's own last-layer path is run on the same model and data for comparison.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Any

import report
import torch
from _common import OUT_HELP, RESULTS, ROOT, environment, median_time, page_name, save

from bt_laplace import preference_dataloader
from bt_laplace.fit import fit_reward_posterior
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.testing import bradley_terry_epoch

sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
STRUCTURES = ("kron", "diag", "full")
BATCHES = (1, 64, 256)


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
    parser.add_argument("--out", default=str(RESULTS / "benchmarks_transformer.md"), help=OUT_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformer_reward as tr

    env = environment(torch.get_num_threads())
    t_start = time.perf_counter()
    torch.manual_seed(0)
    encoder, tokenizer = tr.load_minilm()
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    net = tr.MiniLMReward(encoder, tokenizer.pad_token_id)
    model = PairwiseRewardModel(net).eval()

    def tokenize(texts: list[str]) -> torch.Tensor:
        return tokenizer(
            texts, padding="max_length", truncation=True, max_length=args.length,
            return_tensors="pt",
        )["input_ids"]  # fmt: skip

    rows = tr.make_pairs(args.pairs, seed=0)
    x_pairs = torch.stack([tokenize([r["a"], r["b"]]) for r in rows])  # (N, 2, L)
    y = torch.tensor([r["label"] for r in rows])
    loader = preference_dataloader(
        [{"x0": x[0], "x1": x[1], "label": int(t)} for x, t in zip(x_pairs, y, strict=True)],
        batch_size=32,
        dtype=torch.long,
    )
    items = x_pairs.flatten(0, 1)  # (2N, L)

    # MAP: one epoch of head training through the frozen encoder (what fine-tuning the head
    # on these pairs costs per epoch), then a few more so the head is trained
    opt = torch.optim.AdamW(net.head.parameters(), lr=1e-2)

    t0 = time.perf_counter()
    bradley_terry_epoch(model, loader, opt)
    t_epoch = time.perf_counter() - t0
    for _ in range(2):
        bradley_terry_epoch(model, loader, opt)

    rows: list[dict[str, Any]] = []
    forward = {}
    with torch.no_grad():
        for b in BATCHES:
            forward[b] = median_time(lambda b=b: model(items[:b]), args.repeats)
    for structure in STRUCTURES:
        t0 = time.perf_counter()
        post = fit_reward_posterior(
            model,
            loader,
            subset_of_weights="last_layer",
            hessian_structure=structure,
            evidence="posterior",
        )
        row: dict[str, Any] = {
            "method": f"bt_laplace last_layer/{structure}",
            "fit_s": time.perf_counter() - t0,
        }
        row["post_s"] = {
            b: median_time(lambda b=b, post=post: post(items[:b]), args.repeats) for b in BATCHES
        }
        b = BATCHES[-1]
        row["relative_reward_s"] = median_time(
            lambda b=b, post=post: post.relative_reward(items[:b]), args.repeats
        )
        row["preference_probability_s"] = median_time(
            lambda b=b, post=post: post.preference_probability(x_pairs[: b // 2]), args.repeats
        )
        rows.append(row)
        print(row, flush=True)

    # laplace-torch 0.3 on the same model: its last-layer reward-modeling path
    from laplace import Laplace

    for structure in STRUCTURES:
        row = {"method": f"laplace-torch last_layer/{structure}"}
        try:
            t0 = time.perf_counter()
            la = Laplace(
                model, "reward_modeling", subset_of_weights="last_layer",
                hessian_structure=structure,
            )  # fmt: skip
            la.fit(loader)
            la.optimize_prior_precision(method="marglik")
            row["fit_s"] = time.perf_counter() - t0
            row["post_s"] = {
                b: median_time(lambda b=b, la=la: la(items[:b], pred_type="glm"), args.repeats)
                for b in BATCHES
            }
        except Exception as err:  # noqa: BLE001 -- the failure is the measurement
            row["error"] = f"fails: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
        rows.append(row)
        print(row, flush=True)

    # a posterior over every linear layer of the encoder (embeddings, LayerNorm and the unused
    # pooler stay frozen): diag, on the sequence taps; its reference cost is a fine-tuning epoch
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
        post = fit_reward_posterior(
            model, loader, subset_of_weights="all", hessian_structure="diag", evidence="posterior"
        )
        row = {
            "method": "all linear/diag",
            "parameters": n_post,
            "fit_s": time.perf_counter() - t0,
            "finetune_epoch_s": t_finetune,
        }
        reps = max(1, args.repeats // 2)
        with torch.no_grad():
            row["forward_s"] = {b: median_time(lambda b=b: model(items[:b]), reps) for b in BATCHES}
        row["post_s"] = {
            b: median_time(lambda b=b, post=post: post(items[:b]), reps) for b in BATCHES
        }
        b = BATCHES[-1]
        row["relative_reward_s"] = median_time(
            lambda b=b, post=post: post.relative_reward(items[:b]), reps
        )
        row["preference_probability_s"] = median_time(
            lambda b=b, post=post: post.preference_probability(x_pairs[: b // 2]), reps
        )
        rows.append(row)
        print(row, flush=True)

    results = {
        "environment": env,
        "elapsed": time.perf_counter() - t_start,
        "args": {k: getattr(args, k) for k in ("pairs", "length", "repeats", "all_linear")},
        "batches": list(BATCHES),
        "map_epoch_s": t_epoch,
        "forward_s": forward,
        "rows": rows,
    }
    save(page_name(args.out), "transformer", results)
    report.write(page_name(args.out))


if __name__ == "__main__":
    main()
