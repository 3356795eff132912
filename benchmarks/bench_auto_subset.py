"""Where the all-weights default stops: fit and query cost of all/kron and last_layer/kron by size.

Run from the repository root::

    python benchmarks/bench_auto_subset.py [--widths 128,256,512,1024,2048,4096] [--pairs 4000]

Saves ``docs/data/auto_subset.json`` and writes ``docs/results/auto_subset.md`` from it
(``benchmarks/report.py``). ``subset_of_weights="auto"`` (the default) took all weights up to
5,000,000 trainable parameters in linear layers and the last layer beyond (or when any
trainable parameter is outside a linear layer: a transformer); since issue 18 it weighs the
posterior's state against ``AUTO_STATE_LIMIT`` instead. This measures what that line traded:
for MLPs ``384 -> w -> w -> 1`` (tanh, float32, the width of a MiniLM sentence embedding)
fitted on random pairs from a teacher, the time of one epoch of training (AdamW, batch 64:
what the user already paid, per epoch), of ``fit_reward_posterior`` with each
subset (kron, its default prior, ``evidence`` as ``"auto"`` chooses), of ``post(x)`` on 4,096
items against the forward pass, and the bytes of the fitted curvature.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import report
import torch
from _common import OUT_HELP, environment, page_name, save
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.io import posterior_record
from bt_laplace.options import FitOptions

warnings.filterwarnings("ignore")
D_IN = 384
#: the default options, to read which evidence ``evidence="auto"`` chose for a fit
EVIDENCE = FitOptions.from_arguments(
    subset_of_weights="auto", hessian_structure="kron", prior_precision="auto",
    evidence="auto", val_loader=None, link_approx="probit", laplace_kwargs={},
)  # fmt: skip
N_ITEMS = 4096


def make_mlp(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(D_IN, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
    )


def curvature_bytes(post: btl.RewardPosterior) -> int:
    """Bytes of the tensors a saved posterior holds (safetensors), without the MAP weights."""
    _, tensors = posterior_record(post)
    skip = ("mean", "prior_mean")
    return sum(t.numel() * t.element_size() for k, t in tensors.items() if k not in skip)


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def measure(width: int, n_pairs: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_pairs, 2, D_IN, generator=gen)
    teacher = make_mlp(32, 1)
    with torch.no_grad():
        r = teacher(x).squeeze(-1) * 3
    y = torch.bernoulli(torch.sigmoid(r[:, 1] - r[:, 0]), generator=gen).long()
    model = btl.PairwiseRewardModel(make_mlp(width, 0))
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
    train = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=gen)

    def epoch() -> None:
        model.train()
        for xb, yb in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()

    t_epoch = median_time(epoch, 3)
    model.eval()
    loader = DataLoader(TensorDataset(x, y), batch_size=256)
    items = torch.randn(N_ITEMS, D_IN, generator=gen)
    with torch.no_grad():
        t_fwd = median_time(lambda: model(items), 5)
    out: dict[str, Any] = {
        "width": width,
        "n_params": n_params,
        "t_epoch": t_epoch,
        "t_forward": t_fwd,
    }
    for subset in ("all", "last_layer"):
        t = time.perf_counter()
        post = btl.fit_reward_posterior(model, loader, subset_of_weights=subset)
        t_fit = time.perf_counter() - t
        with torch.no_grad():
            t_post = median_time(lambda post=post: post(items), 3)
        out[subset] = {
            "t_fit": t_fit,
            "t_post": t_post,
            "bytes": curvature_bytes(post),
            "evidence": EVIDENCE.resolve_evidence(post.laplace),
            "prior": float(post.prior_precision.mean()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="128,256,512,1024,2048,4096")
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="docs/results/auto_subset.md", help=OUT_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = environment(threads=args.threads)
    t0 = time.perf_counter()
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        rows.append(measure(width, args.pairs))
        r = rows[-1]
        print(
            f"width {width}: {r['n_params']:,} params, epoch {r['t_epoch']:.2f} s, "
            f"all fit {r['all']['t_fit']:.2f} s, last fit {r['last_layer']['t_fit']:.2f} s",
            flush=True,
        )
    results = {
        "environment": env,
        "elapsed": time.perf_counter() - t0,
        "pairs": args.pairs,
        "items": N_ITEMS,
        "d_in": D_IN,
        "limit": 5_000_000,  # the parameter count "auto" drew its line at before issue 18
        "rows": rows,
    }
    save(page_name(args.out), "auto_subset", results)
    report.write(page_name(args.out))


if __name__ == "__main__":
    main()
