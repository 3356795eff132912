"""A LoRA posterior on one decoder layer of an LLM's real width: saved size, memory and time.

Run from the repository root (needs transformers and peft; random weights, nothing
downloaded)::

    python benchmarks/bench_lora_scale.py [--shape llama3-8b] [--ranks 128] [--threads 2]

Saves ``docs/data/lora_scale.json`` and writes ``docs/results/lora_scale.md`` from it
(``benchmarks/report.py``). The model is ``LlamaForSequenceClassification`` with one decoder
layer of the chosen shape (Llama-3-8B: hidden 4096, intermediate 14336, 32 heads, 8 KV
heads; a 256-token vocabulary), random weights, float32 on the CPU, base frozen, peft LoRA
r = 16 on q, k, v, o, gate, up and down (``init_lora_weights=False``: both adapter matrices
random, as after training) plus the score head, wrapped in ``PairwiseRewardModel``. Pairs:
16 pairs of 32 random tokens, in batches of 8.

Each ``kron_rank`` runs in a fresh process, which measures in turn: a LoRA training step
(forward and backward of the summed Bradley-Terry loss over the 16 pairs, after a warm-up
one), the posterior fit ``fit_reward_posterior(model, loader, subset_of_weights="all",
hessian_structure="kron", backend_kwargs={"kron_rank": r})`` with the prior fixed
(``prior_precision=1.0``, the curvature alone) and with the default prior (marglik on the
exact evidence), each followed by another training step (a fit's ratio is to the mean of the
steps just before and after it: the load of a shared machine drifts), the growth of the
process's peak resident memory during each fit, and the saved posterior's files. The
full-factor baseline (``kron_rank=None``) is the one of issue 18, not rerun here: it needs
most of a 24 GiB machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import report
from _common import OUT_HELP, RESULTS, environment, page_name, reset_peak, save, status_kib

SHAPES = {  # hidden, intermediate, heads, kv heads
    "llama3-8b": (4096, 14336, 32, 8),
    "qwen2.5-7b": (3584, 18944, 28, 4),
    "qwen2.5-0.5b": (896, 4864, 14, 2),
    "small": (512, 1792, 8, 2),
}
N_PAIRS, LENGTH, BATCH, LORA_R, VOCAB = 16, 32, 8, 16, 256
#: issue 18: the same layer with full Kronecker factors (kron_rank=None), measured once
BASELINE = {"saved_mb": 6005.0, "growth_gb": 18.7, "fit_s": 752.0, "ratio": 120.0}


def build(shape: str, layers: int = 1) -> tuple[Any, list[tuple[dict[str, Any], Any]]]:
    """The LoRA pair model (``layers`` decoder layers) and the 16 pairs (a list of batches)."""
    import torch
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    import bt_laplace as btl

    hidden, inter, heads, kv = SHAPES[shape]
    config = tf.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=LENGTH,
        num_labels=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    net = tf.LlamaForSequenceClassification(config).eval()
    lora = LoraConfig(
        task_type="SEQ_CLS",
        r=LORA_R,
        lora_alpha=2 * LORA_R,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        init_lora_weights=False,
    )
    model = btl.PairwiseRewardModel(get_peft_model(net, lora)).eval()
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(N_PAIRS // BATCH):
        ids = torch.randint(1, VOCAB, (BATCH, 2, LENGTH), generator=g)
        x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        batches.append((x, torch.randint(0, 2, (BATCH,), generator=g)))
    return model, batches


def train_step(model: Any, batches: list[Any]) -> float:
    """Seconds of one forward and backward pass of the summed Bradley-Terry loss."""
    import torch

    t = time.perf_counter()
    for x, y in batches:
        loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
        loss.backward()
    seconds = time.perf_counter() - t
    model.zero_grad(set_to_none=True)
    return seconds


def child(shape: str, rank: int | None, threads: int, full_width: int | None) -> dict[str, Any]:
    import torch

    import bt_laplace as btl

    torch.set_num_threads(threads)
    model, batches = build(shape)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    train_step(model, batches)  # warm-up
    steps = [train_step(model, batches)]
    out: dict[str, Any] = {"trainable": trainable, "model_mb": model_mb}
    backend_kwargs: dict[str, Any] = {"kron_rank": rank}
    if full_width is not None:
        backend_kwargs["kron_full_width"] = full_width
    for label, prior in (("default", "auto"), ("fixed", 1.0)):
        rss0 = reset_peak()
        t = time.perf_counter()
        post = btl.fit_reward_posterior(
            model,
            batches,
            subset_of_weights="all",
            hessian_structure="kron",
            prior_precision=prior,
            backend_kwargs=backend_kwargs,
        )
        out[f"fit_{label}_s"] = time.perf_counter() - t
        out[f"growth_{label}_mb"] = (status_kib("VmHWM") - rss0) / 1024
        out[f"load_{label}"] = os.getloadavg()[0]
        steps.append(train_step(model, batches))
        # against the steps just before and just after (the machine's load drifts)
        out[f"ratio_{label}"] = out[f"fit_{label}_s"] / ((steps[-2] + steps[-1]) / 2)
    out["steps_s"] = steps
    out["step_s"] = min(steps)
    with tempfile.TemporaryDirectory() as tmp:
        folder = post.save(Path(tmp) / "post")
        out["files"] = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    t = time.perf_counter()
    items = {k: v[:, 0] for k, v in batches[0][0].items()}
    variance = post(items).variance
    out["query_s"] = time.perf_counter() - t
    out["query_items"] = int(variance.numel())
    out["variance_median"] = float(variance.median())
    out["laplace_class"] = type(post.laplace.H).__name__
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    parser.add_argument("--ranks", default="128", help="comma-separated kron_rank values")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--full-width", type=int, default=None, help="kron_full_width (default: the library's)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "lora_scale.md"), help=OUT_HELP)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.child is not None:
        rank = None if args.child == "none" else int(args.child)
        print(json.dumps(child(args.shape, rank, args.threads, args.full_width)), flush=True)
        return
    env = environment(args.threads)
    rows: dict[str, Any] = {}
    for r in args.ranks.split(","):
        cmd = [sys.executable, __file__, "--shape", args.shape, "--threads", str(args.threads)]
        if args.full_width is not None:
            cmd += ["--full-width", str(args.full_width)]
        done = subprocess.run([*cmd, "--child", r], capture_output=True, text=True, check=True)
        rows[r] = json.loads(done.stdout.strip().splitlines()[-1])
        print(r, rows[r], flush=True)
    setup = {
        "shape": args.shape,
        "dims": SHAPES[args.shape],
        "pairs": N_PAIRS,
        "length": LENGTH,
        "batch": BATCH,
        "lora_r": LORA_R,
        "baseline": BASELINE,
        "full_width": args.full_width,
    }
    name = page_name(args.out)
    save(name, "lora_scale", {"environment": env, "setup": setup, "rows": rows})
    report.write(name)


if __name__ == "__main__":
    main()
