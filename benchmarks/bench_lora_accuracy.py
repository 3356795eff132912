"""LoRA posterior variances against the exact Laplace posterior over the same adapters.

Run from the repository root (needs transformers and peft; random weights)::

    python benchmarks/bench_lora_accuracy.py [--seeds 0,1,2] [--pairs 256]

Saves ``docs/data/lora_accuracy.json`` and writes ``docs/results/lora_accuracy.md`` from it
(``benchmarks/report.py``). Per seed: a one-layer ``LlamaForSequenceClassification`` (hidden
128, intermediate 256, 4 heads, 4 KV heads, 64-token vocabulary; random weights, float64),
peft LoRA r = 4 on q, k, v, o, gate, up and down (both adapter matrices random) plus the score
head, and random pairs of 16 tokens labelled by the model's own Bradley-Terry probabilities.
The reference is the exact Laplace posterior over all adapter parameters at prior precision 1:
``Sigma = (H + I)^-1`` with ``H`` the exact Bradley-Terry GGN from ``torch.func.jacrev``
Jacobians (by Woodbury through the pairs' kernel). Each bt_laplace posterior over the same
parameters (prior precision 1) gives the reward variance of 64 held-out items; the table
reports Spearman's rank correlation with the exact variances and the median of
``|log(v / v_exact)|``. ``kron`` with the defaults keeps these factors whole (all are at most
2048 wide: today's kron); the low-rank rows force every factor wider than 16 to rank ``k``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import report
import torch
from _common import OUT_HELP, RESULTS, environment, page_name, save

import bt_laplace as btl

LENGTH, VOCAB, QUERIES = 16, 64, 64
CONFIGS: dict[str, dict[str, Any]] = {
    "kron (default: whole factors)": {"hessian_structure": "kron"},
    "kron, low rank k = 32": {
        "hessian_structure": "kron",
        "backend_kwargs": {"kron_rank": 32, "kron_full_width": 16},
    },
    "kron, low rank k = 8": {
        "hessian_structure": "kron",
        "backend_kwargs": {"kron_rank": 8, "kron_full_width": 16},
    },
    "diag": {"hessian_structure": "diag"},
}


def build(seed: int) -> Any:
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    config = tf.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=LENGTH,
        num_labels=1,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    net = tf.LlamaForSequenceClassification(config).double().eval()
    lora = LoraConfig(
        task_type="SEQ_CLS",
        r=4,
        lora_alpha=8,
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
    return btl.PairwiseRewardModel(get_peft_model(net, lora)).eval()


def tokens(n: int, g: torch.Generator, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (n, *shape), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def jacobians(
    model: Any, items: dict[str, torch.Tensor], chunk: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards ``(N,)`` and their Jacobians ``(N, P)`` over the trainable parameters, a few
    items at a time."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    rewards, jacs = [], []
    for start in range(0, items["input_ids"].shape[0], chunk):
        part = {k: v[start : start + chunk] for k, v in items.items()}

        def reward(ps: dict[str, torch.Tensor], part: Any = part) -> torch.Tensor:
            return torch.func.functional_call(model, ps, (part,)).reshape(-1)

        jac = torch.func.jacrev(reward)(params)
        n = part["input_ids"].shape[0]
        rewards.append(reward(params).detach())
        jacs.append(torch.cat([jac[k].reshape(n, -1) for k in names], 1))
    return torch.cat(rewards), torch.cat(jacs)


def exact_variances(
    model: Any, x: dict[str, torch.Tensor], queries: dict[str, torch.Tensor], prior: float
) -> torch.Tensor:
    """``j (H + delta I)^-1 j^T`` with ``H = D^T W D`` from the pairs' Jacobian differences."""
    b = x["input_ids"].shape[0]
    flat = {k: v.reshape(2 * b, -1) for k, v in x.items()}
    r, jac = jacobians(model, flat)
    r, jac = r.reshape(b, 2), jac.reshape(b, 2, -1)
    d = jac[:, 1] - jac[:, 0]
    p = torch.sigmoid(r[:, 1] - r[:, 0])
    w = p * (1 - p)
    _, jq = jacobians(model, queries)
    # (H + delta I)^-1 = (I - D^T (delta W^-1 + D D^T)^-1 D) / delta
    kernel = d @ d.T + prior * torch.diag(1 / w)
    cross = jq @ d.T
    return ((jq * jq).sum(1) - (cross * torch.linalg.solve(kernel, cross.T).T).sum(1)) / prior


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = (t.argsort().argsort().double() for t in (a, b))
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def run_seed(seed: int, n_pairs: int) -> dict[str, Any]:
    model = build(seed)
    g = torch.Generator().manual_seed(100 + seed)
    x = tokens(n_pairs, g, (2, LENGTH))
    with torch.no_grad():
        f = model(x)
    y = torch.bernoulli(torch.sigmoid(f[:, 1] - f[:, 0]), generator=g).long()
    loader = [
        ({k: v[i : i + 16] for k, v in x.items()}, y[i : i + 16]) for i in range(0, n_pairs, 16)
    ]
    queries = tokens(QUERIES, g, (LENGTH,))
    t = time.perf_counter()
    exact = exact_variances(model, x, queries, 1.0)
    out: dict[str, Any] = {"exact_s": time.perf_counter() - t, "rows": {}}
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out["n_params"] = n_params
    for name, kwargs in CONFIGS.items():
        t = time.perf_counter()
        post = btl.fit_reward_posterior(
            model, loader, subset_of_weights="all", prior_precision=1.0, **kwargs
        )
        fit_s = time.perf_counter() - t
        v = post(queries).variance.double()
        ratio = (v / exact).log().abs()
        out["rows"][name] = {
            "spearman": spearman(v, exact),
            "median_abs_log_ratio": float(ratio.median()),
            "fit_s": fit_s,
            "h_type": type(post.laplace.H).__name__,
        }
        print(seed, name, out["rows"][name], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "lora_accuracy.md"), help=OUT_HELP)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    seeds = {int(s): run_seed(int(s), args.pairs) for s in args.seeds.split(",")}
    setup = {"pairs": args.pairs, "length": LENGTH, "queries": QUERIES, "prior": 1.0}
    name = page_name(args.out)
    save(name, "lora_accuracy", {"environment": env, "setup": setup, "seeds": seeds})
    report.write(name)


if __name__ == "__main__":
    main()
