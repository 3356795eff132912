"""Where the default fit's time goes on one real preference task (issue 21, cost).

Run from the repository root (needs the ``bench`` extra)::

    PYTHONPATH=src python benchmarks/experiments/profile_default_fit.py warriner_arousal

Trains the MAP model on 4,000 pairs of the task (``benchmarks/realtasks.py``), as
``bench_heldout.py --cost`` does, then profiles ``fit_reward_posterior(model, loader)`` with
cProfile and prints the MAP and fit times and the functions by cumulative time. With
``--fits K`` it first times ``K`` unprofiled fits and prints their seconds and the checkout it
imported: the first fit of a process also pays the linear algebra library's first large call
(about 0.5 s here), so for a before/after comparison run two checkouts alternately, fresh
processes each, and compare the later fits::

    for src in ../before/src src; do
        PYTHONPATH=$src python benchmarks/experiments/profile_default_fit.py car --threads 2 \
            --fits 3 --rows 0
    done
"""
# ruff: noqa: E402

import argparse
import cProfile
import os
import pstats
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from realdata import make_split, setup_run, train_map
from realtasks import TASKS

import bt_laplace as btl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=sorted(TASKS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=4000)
    ap.add_argument("--rows", type=int, default=40, help="functions to print")
    ap.add_argument("--fits", type=int, default=0, help="unprofiled fits timed first")
    args = ap.parse_args()
    setup_run()
    torch.set_num_threads(args.threads)
    split = make_split(args.task, 0, datasets=TASKS, sizes=(args.pairs, 10, 10, 10), n_score=10)
    xtr, ytr, _ = split["train"]
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=512)
    t0 = time.perf_counter()
    model = train_map(xtr, ytr, 0)
    t_map = time.perf_counter() - t0
    if args.fits:
        seconds = []
        for _ in range(args.fits):
            t0 = time.perf_counter()
            btl.fit_reward_posterior(model, loader)
            seconds.append(time.perf_counter() - t0)
        where = os.path.dirname(os.path.dirname(btl.__file__))
        print(f"{args.task} ({where}): fits {', '.join(f'{s:.2f}' for s in seconds)} s")
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    post = btl.fit_reward_posterior(model, loader)
    profile.disable()
    t_fit = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.task}: {n_params} parameters, MAP {t_map:.2f} s, fit {t_fit:.2f} s "
        f"({t_fit / t_map:.2f}x), prior {float(post.prior_precision):.4g}, "
        f"calibration {post.prior_calibration}"
    )
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.rows)


if __name__ == "__main__":
    main()
