"""Half-precision reward models: fits and queries in bf16 against float32, and the memory of a
last-layer fit against the model's size (issue 17).

Run from the repository root (needs transformers and peft; offline, random weights)::

    python benchmarks/bench_half_precision.py                  # CPU: a small Llama, ~2 min
    python benchmarks/bench_half_precision.py --device cuda    # GPU: Qwen2.5-0.5B's shape, bf16
    python benchmarks/bench_half_precision.py --memory-only    # one line, for tests/test_inplace.py

Saves ``docs/data/half_precision[_gpu].json`` and writes ``docs/results/half_precision[_gpu].md``
(``benchmarks/report.py``). The model is a ``LlamaForSequenceClassification`` with one output,
built from a config with random weights (``--preset``: ``small`` for CPU, ``qwen0.5b`` is
Qwen2.5-0.5B's widths and depth), once in float32 and once cast to ``--dtype`` (bf16 by
default): the same weights in both rows. Pairs are random token ids, ``--pairs`` pairs of
``--tokens`` tokens, in batches of ``--batch`` pairs. For each dtype:

- the forward pass over the pairs (no autograd): the reference of every ratio;
- last-layer posteriors (the score head; ``kron``, ``diag``, ``full``; default prior): the fit;
- an all-weights ``kron`` posterior over peft LoRA adapters (``r=8`` on ``q_proj``, ``v_proj``;
  peft keeps them in float32 on a bf16 model) and the head: the fit;
- ``post(items)`` over the ``2 * pairs`` items against the forward pass over them;
- memory: on CPU the peak resident memory of the last-layer ``kron`` fit (``VmHWM``, reset at
  its start) above the resident memory at its start; on CUDA ``torch.cuda.max_memory_allocated``
  during the fit above the allocation at its start.

``--memory-only`` fits a last-layer ``kron`` posterior of a 234 MB bf16 Llama (hidden 1024) and
prints ``memory: model_mb=... growth_mb=...`` (nothing saved).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import report
import torch
from _common import OUT_HELP, RESULTS, environment, page_name, reset_peak, save, status_kib
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bt_laplace import PairwiseRewardModel, fit_reward_posterior

warnings.filterwarnings("ignore")

PRESETS: dict[str, dict[str, int]] = {
    "small": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096},
    "qwen0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                 "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936},
}  # fmt: skip
LAST_LAYER = ("kron", "diag", "full")


class Peak:
    """Peak memory above the start, MiB: CUDA allocations, or the resident set on CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.mib = 0.0

    def __enter__(self) -> Peak:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = reset_peak() * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            self.mib = (status_kib("VmHWM") * 1024 - self.start) / 2**20


def timed(fn: Callable[[], Any], device: str, repeats: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeats`` runs of ``fn`` (CUDA synchronized), and its last result."""
    times, out = [], None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times), out


class TokenPairs(Dataset):
    """Random token-id pairs as token dicts with labels (what a text dataloader yields)."""

    def __init__(self, n: int, tokens: int, vocab: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, vocab, (n, 2, tokens), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i]}


def on(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def llama(preset: str, dtype: torch.dtype, device: str, lora: bool) -> PairwiseRewardModel:
    import transformers as tf

    config = tf.LlamaConfig(**PRESETS[preset], num_labels=1, pad_token_id=0,
                            max_position_embeddings=4096)  # fmt: skip
    torch.manual_seed(0)
    net: nn.Module = tf.LlamaForSequenceClassification(config).to(dtype)
    if lora:
        import peft

        lcfg = peft.LoraConfig(task_type="SEQ_CLS", r=8, target_modules=["q_proj", "v_proj"])
        net = peft.get_peft_model(net, lcfg)
    return PairwiseRewardModel(net.to(device)).eval()


def forward_pass(model: PairwiseRewardModel, loader: DataLoader, device: str) -> None:
    with torch.no_grad():
        for batch in loader:
            model(on(batch, device))


def items_of(data: TokenPairs, device: str) -> dict[str, torch.Tensor]:
    ids = data.ids.flatten(0, 1).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def run_dtype(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, Any]:
    device = args.device
    data = TokenPairs(args.pairs, args.tokens, PRESETS[args.preset]["vocab_size"])
    loader = DataLoader(data, batch_size=args.batch)
    items = items_of(data, device)
    row: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch.")}
    model = llama(args.preset, dtype, device, lora=False)
    row["model_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    row["forward_s"], _ = timed(lambda: forward_pass(model, loader, device), device, args.repeats)

    def query_forward() -> None:
        with torch.no_grad():
            for start in range(0, items["input_ids"].shape[0], args.batch * 2):
                model({k: v[start : start + args.batch * 2] for k, v in items.items()})

    row["query_forward_s"], _ = timed(query_forward, device, args.repeats)
    for structure in LAST_LAYER:

        def fit(structure: str = structure) -> Any:
            return fit_reward_posterior(
                model, loader, subset_of_weights="last_layer", hessian_structure=structure
            )

        with Peak(device) as peak:
            row[f"ll_{structure}_fit_s"], post = timed(fit, device)
        row[f"ll_{structure}_fit_mib"] = peak.mib
        post.batch_size = args.batch * 2
        row[f"ll_{structure}_query_s"], _ = timed(lambda p=post: p(items), device, args.repeats)
    lora = llama(args.preset, dtype, device, lora=True)
    row["lora_params"] = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    row["lora_forward_s"], _ = timed(lambda: forward_pass(lora, loader, device), device)

    def fit_lora() -> Any:
        return fit_reward_posterior(lora, loader, subset_of_weights="all", hessian_structure="kron")

    with Peak(device) as peak:
        row["lora_kron_fit_s"], post = timed(fit_lora, device)
    row["lora_kron_fit_mib"] = peak.mib
    post.batch_size = args.batch * 2
    row["lora_kron_query_s"], _ = timed(lambda: post(items), device, args.repeats)
    print(row, flush=True)
    return row


def memory_only() -> None:
    """A last-layer fit of a 234 MB bf16 Llama (hidden 1024, 6 layers): the process's growth
    (no copy of the network; the posterior of its 1,025-parameter head and one batch)."""
    import transformers as tf

    config = tf.LlamaConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=6,
                            num_attention_heads=8, num_key_value_heads=8, vocab_size=16384,
                            num_labels=1, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    net = tf.LlamaForSequenceClassification(config).to(torch.bfloat16)
    model = PairwiseRewardModel(net).eval()
    loader = DataLoader(TokenPairs(16, 32, config.vocab_size), batch_size=8)
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    # the model in use, as after training: the first backward pass in a process allocates
    # the autograd engine's and the kernels' buffers once (about 90 MB here), which a fit
    # would otherwise be charged with. A step of the head alone does that (a bf16 backward
    # through the whole network takes minutes on a CPU without bf16 kernels)
    batch = next(iter(loader))
    head = net.score.weight
    frozen = [p for p in model.parameters() if p is not head and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    model({k: v for k, v in batch.items() if k != "labels"}).sum().backward()
    for p in frozen:
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    with Peak("cpu") as fwd:
        forward_pass(model, loader, "cpu")
    with Peak("cpu") as peak:
        post = fit_reward_posterior(model, loader, subset_of_weights="last_layer")
    assert post.laplace.model.model is model
    print(
        f"memory: model_mb={model_mb:.1f} growth_mb={peak.mib:.1f} forward_mb={fwd.mib:.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None)
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--out", default=None, help=OUT_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_only:
        memory_only()
        return
    gpu = args.device.startswith("cuda")
    args.preset = args.preset or ("qwen0.5b" if gpu else "small")
    args.pairs = args.pairs or (256 if gpu else 64)
    args.tokens = args.tokens or (256 if gpu else 64)
    out = args.out or str(RESULTS / ("half_precision_gpu.md" if gpu else "half_precision.md"))
    env = environment(args.threads, args.device)
    t0 = time.perf_counter()
    rows = [run_dtype(args, torch.float32), run_dtype(args, getattr(torch, args.dtype))]
    setup = {k: getattr(args, k) for k in ("preset", "pairs", "tokens", "batch", "repeats")}
    setup["config"] = PRESETS[args.preset]
    results = {
        "environment": env,
        "setup": setup,
        "rows": rows,
        "elapsed": time.perf_counter() - t0,
        "median_load": statistics.median(env["loadavg_start"]),
    }
    save(page_name(out), "half_precision", results)
    report.write(page_name(out))


if __name__ == "__main__":
    main()
