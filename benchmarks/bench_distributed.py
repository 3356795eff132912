"""Fit time of a data-parallel posterior on torch.distributed (gloo, CPU): 1, 2 and 4 processes.

Each rank fits its shard of the pairs (``pairs[rank::world]``) with ``fit_reward_posterior``;
the curvature, loss, pair count and prior are summed across ranks, so every rank ends with the
posterior of all pairs (tests/test_distributed.py checks that). The time is the slowest rank's
fit, measured after a barrier. Writes ``docs/results/distributed.md``.

    python benchmarks/bench_distributed.py            # 20,000 pairs, 64-256-256-1 MLP
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.testing import mlp

CONFIGS = [
    ("all", "kron", "posterior"),
    ("all", "diag", "posterior"),
    ("last_layer", "kron", "posterior"),
    ("last_layer", "full", "exact"),
]


def _data(n: int):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, 64, generator=g), torch.randint(0, 2, (n,), generator=g)


def _rank(rank: int, world: int, port: int, n: int, out: dict) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)  # fmt: skip
    x, y = _data(n)
    torch.manual_seed(0)
    model = btl.PairwiseRewardModel(mlp(64, 256)).eval()
    loader = DataLoader(TensorDataset(x[rank::world], y[rank::world]), batch_size=256)
    times = {}
    for subset, structure, evidence in CONFIGS:
        if world > 1:
            dist.barrier()
        t = time.perf_counter()
        post = btl.fit_reward_posterior(
            model, loader, subset_of_weights=subset, hessian_structure=structure,
            evidence=evidence,
        )  # fmt: skip
        elapsed = torch.tensor([time.perf_counter() - t], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        times[f"{subset}/{structure}, evidence={evidence}"] = (
            float(elapsed),
            float(post.prior_precision.reshape(-1)[0]),
        )
    if rank == 0:
        out[world] = times
    if world > 1:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--out", default="docs/results/distributed.md")
    args = parser.parse_args()
    manager = mp.Manager()
    out = manager.dict()
    for world in (1, 2, 4):
        mp.spawn(_rank, args=(world, _port(), args.pairs, out), nprocs=world, join=True)
    rows = []
    for key in out[1]:
        t1, p1 = out[1][key]
        cells = []
        for world in (1, 2, 4):
            t, p = out[world][key]
            cells.append(f"{t:.2f} s ({t1 / t:.2f}x)")
            assert abs(p - p1) <= 1e-4 * p1, (key, world, p, p1)
        rows.append(f"| {key} | " + " | ".join(cells) + f" | {p1:.4g} |")
    cores = os.cpu_count()
    lines = [
        "# Data-parallel fits on torch.distributed",
        "",
        f"- Command: `python {' '.join(sys.argv)}`",
        f"- {args.pairs:,} pairs, MLP 64-256-256-1 (82,689 parameters), batches of 256, one torch "
        f"thread per process, gloo on CPU, {cores} cores (4 processes oversubscribe them).",
        "- Time: the slowest rank's `fit_reward_posterior` (curvature, sums across ranks, prior), "
        "after a barrier; speed-up against one process in brackets. Every rank ends with the "
        "posterior of all pairs: the prior precisions agree across 1, 2 and 4 processes to 1e-4 "
        "here and to rounding in tests/test_distributed.py.",
        "",
        "| fit | 1 process | 2 processes | 4 processes | prior precision |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        "How to launch a data-parallel fit (torchrun, accelerate): "
        "[guides/distributed.md](../guides/distributed.md).",
        "",
    ]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
