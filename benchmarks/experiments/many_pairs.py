"""Many pairs of few items: the exact evidence through the items' kernel (docs/guides/gotchas.md).

Run from the repository root (``PYTHONPATH`` at another checkout's ``src`` for its figures)::

    python benchmarks/experiments/many_pairs.py

Prints, one thread: (1) 30,000 synthetic pairs of 1,000 items on a 16-32-32-1 tanh MLP
(1,633 parameters, more pairs than parameters), ``evidence="exact"``: fit time and prior;
(2) the default fit on 10,000 MovieLens training pairs (benchmarks/realtasks.py, needs the
``bench`` extra) against its MAP training: which evidence the default took, its prior and
calibration factor.
"""
# ruff: noqa: E402

import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import bt_laplace as btl
from bt_laplace.testing import train_map


def synthetic() -> None:
    torch.manual_seed(0)
    items = torch.randn(1000, 16, dtype=torch.float64)
    index = torch.randint(0, 1000, (30000, 2))
    score = items @ torch.randn(16, dtype=torch.float64)
    noise = torch.randn(30000, dtype=torch.float64)
    y = (score[index[:, 1]] - score[index[:, 0]] + noise > 0).long()
    net = nn.Sequential(
        nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    ).double()
    model = btl.PairwiseRewardModel(net)
    x = items[index]
    train_map(model, x, y, epochs=2)
    loader = DataLoader(TensorDataset(x, y), batch_size=1024)
    t0 = time.perf_counter()
    post = btl.fit_reward_posterior(model, loader, evidence="exact", prior_precision="marglik")
    print(
        f"30,000 pairs of 1,000 items, P = {post.laplace.n_params}: exact evidence fit "
        f"{time.perf_counter() - t0:.1f} s, prior {float(post.prior_precision):.4g}"
    )


def movielens() -> None:
    import bench_heldout as bh

    split = bh.make_split("movielens", 0, datasets=bh.TASKS, sizes=(10000, 10, 10, 10), n_score=10)
    x, y, _ = split["train"]
    loader = DataLoader(TensorDataset(x, y), batch_size=512)
    t0 = time.perf_counter()
    model = bh.train_map(x, y, 0)
    t_map = time.perf_counter() - t0
    t0 = time.perf_counter()
    post = btl.fit_reward_posterior(model, loader)
    t_fit = time.perf_counter() - t0
    print(
        f"MovieLens, 10,000 pairs: MAP training {t_map:.1f} s, default fit {t_fit:.1f} s, "
        f"prior {float(post.prior_precision):.4g}, calibration factor {post.prior_calibration}"
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"bt_laplace from {os.path.dirname(btl.__file__)}")
    synthetic()
    movielens()
