"""OOD AUROC of the default posterior scored by the item's reward variance, and by the variance
of its reward relative to the mean reward of the training items (issue 21, items 1-2).

Run from the repository root (needs the ``bench`` extra; about 4 minutes, one thread)::

    PYTHONPATH=src python benchmarks/experiments/relative_ood.py [--tasks a,b] [--seeds 2]

Bradley-Terry pairs identify rewards only up to a constant, so ``post(x)``'s variance carries
the prior's uncertainty along directions that move every training item alike;
``post.relative_reward(x, reference=training items)`` leaves those out. The splits, MAP models
and scored items are ``bench_heldout.py``'s (2,000 training pairs, 1,000 in- and 1,000
out-of-distribution items).
"""
# ruff: noqa: E402

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from bench_heldout import map_fits
from realdata import ood_auroc, setup_run

import bt_laplace as btl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="car,mathach,exam,movielens")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    setup_run()
    torch.set_num_threads(1)
    for name, seed, split, loader, model in map_fits(args.tasks.split(","), args.seeds):
        xtr = split["train"][0]
        post = btl.fit_reward_posterior(model, loader)
        xin, xout = split["score_in"], split["score_out"]
        x, n_in = torch.cat([xin, xout]), len(xin)
        _, var = post(x)
        items = torch.unique(xtr.reshape(2 * len(xtr), -1), dim=0)
        rel = post.relative_reward(x, reference=items).variance
        print(
            f"{name:17s} seed {seed}: OOD AUROC by the item variance "
            f"{ood_auroc(var[:n_in].sqrt(), var[n_in:].sqrt()):.4f}, relative to the "
            f"training items {ood_auroc(rel[:n_in].sqrt(), rel[n_in:].sqrt()):.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
