"""Peak memory of fits and queries against the number of pairs and items (issue 9).

Each point runs in a fresh subprocess: a 64-256-256-1 MLP reward model, pairs streamed from a
seeded ``IterableDataset`` (so the data itself takes no memory), ``fit_reward_posterior`` over
10,000 / 100,000 / 1,000,000 pairs; then ``post(x)`` over 200,000 items. Reported: the peak
resident memory (``ru_maxrss``) minus that after building the model and the first batch. Writes
``docs/memory.md``.

    python benchmarks/bench_memory.py                 # about 10 min on 2 cores
    python benchmarks/bench_memory.py --pairs 10000   # one size
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

FITS = [("all", "kron"), ("all", "diag"), ("last_layer", "kron")]


def _child(n_pairs: int, subset: str, structure: str) -> dict:
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    import bt_laplace as btl
    from bt_laplace.testing import mlp

    torch.set_num_threads(1)

    class Pairs(IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for start in range(0, n_pairs, 4096):
                k = min(4096, n_pairs - start)
                x = torch.randn(k, 2, 64, generator=g)
                y = torch.randint(0, 2, (k,), generator=g)
                yield from zip(x, y, strict=True)

    torch.manual_seed(0)
    model = btl.PairwiseRewardModel(mlp(64, 256)).eval()
    loader = DataLoader(Pairs(), batch_size=1024)
    next(iter(loader))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights=subset, hessian_structure=structure, evidence="posterior"
    )
    fit_s = time.perf_counter() - t
    fit_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    out = {"fit_s": fit_s, "fit_mib": fit_peak / 1024, "n_data": post.laplace.n_data}
    if n_pairs == 10_000:  # queries: 200,000 items in batches of post.batch_size
        items = torch.randn(200_000, 64, generator=torch.Generator().manual_seed(1))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        post(items)
        out["query_s"] = time.perf_counter() - t
        out["query_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--child", nargs=3)
    parser.add_argument("--out", default="docs/memory.md")
    args = parser.parse_args()
    if args.child:
        n, subset, structure = args.child
        print(json.dumps(_child(int(n), subset, structure)))
        return
    results = {}
    for subset, structure in FITS:
        for n in args.pairs:
            cmd = [sys.executable, __file__, "--child", str(n), subset, structure]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[(subset, structure, n)] = json.loads(done.stdout.strip().splitlines()[-1])
            print(subset, structure, n, results[(subset, structure, n)], flush=True)
    header = " | ".join(f"{n:,} pairs" for n in args.pairs)
    lines = [
        "# Peak memory against the number of pairs",
        "",
        f"- Command: `python {' '.join(sys.argv)}`",
        f"- {os.cpu_count()} cores, one torch thread; MLP 64-256-256-1 (82,689 parameters), "
        "float32; pairs streamed from a seeded IterableDataset (no len, the data itself holds "
        "no memory), batches of 1,024; `evidence='posterior'`.",
        "- Peak resident memory (ru_maxrss) above that after building the model and the first "
        "batch, in MiB; fit time in brackets. Kron keeps per-pair factors up to 1 GiB "
        "(`kron_store_limit`), then recomputes them with one pass per half-step.",
        "",
        f"| fit | {header} |",
        "| --- | " + " | ".join("---" for _ in args.pairs) + " |",
    ]
    for subset, structure in FITS:
        cells = [
            f"{results[(subset, structure, n)]['fit_mib']:.0f} MiB "
            f"({results[(subset, structure, n)]['fit_s']:.1f} s)"
            for n in args.pairs
        ]
        lines.append(f"| {subset}/{structure} | " + " | ".join(cells) + " |")
    if 10_000 in args.pairs:
        lines += [
            "",
            "Queries: `post(x)` over 200,000 items (batch_size 4,096), after the 10,000-pair fit:",
            "",
            "| posterior | peak MiB above the items | time |",
            "| --- | --- | --- |",
        ]
        for subset, structure in FITS:
            r = results[(subset, structure, 10_000)]
            lines.append(f"| {subset}/{structure} | {r['query_mib']:.0f} | {r['query_s']:.1f} s |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
