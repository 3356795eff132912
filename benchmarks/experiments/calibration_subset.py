"""Would a calibration on a subset of the pairs keep the default's answer? (issue 21, cost)

Run from the repository root (needs the ``bench`` extra; about 8 minutes, one thread)::

    PYTHONPATH=src python benchmarks/experiments/calibration_subset.py [--tasks a,b] [--seeds 2]

The held-out calibration of the default prior (``bt_laplace.prior.calibration``) draws on all
the training pairs; at 4,000 pairs it is about a third of the default fit where the pairs
compare about as many items as there are pairs. For each task of ``benchmarks/realtasks.py``
(4,000 training pairs, 2,000 test pairs, 1,000 in- and 1,000 out-of-distribution items scored)
this fits the default posterior of the same MAP model twice: calibrated on all pairs, and on a
fixed random subset of 2,000 of them (the size the accuracy benchmark validated, by replacing
the pairs the calibration reads), and prints the calibration factor, NLL, ECE, OOD AUROC and
fit time of each. Nothing in the library changes.
"""
# ruff: noqa: E402

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from bench_heldout import map_fits, score
from realdata import setup_run
from realtasks import TASKS

import bt_laplace as btl
import bt_laplace.prior.calibration as calibration

SUBSET = 2000


def subset_of(read):
    """``calibration._tensor_pairs`` reading a fixed random subset of ``SUBSET`` pairs."""

    def read_subset(*args):
        pairs = read(*args)
        if pairs is None or len(pairs[0]) <= SUBSET:
            return pairs
        gen = torch.Generator().manual_seed(0)
        pick = torch.randperm(len(pairs[0]), generator=gen)[:SUBSET].sort().values
        return pairs[0][pick], pairs[1][pick]

    return read_subset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    setup_run()
    torch.set_num_threads(1)
    every = calibration._tensor_pairs
    fits = map_fits(args.tasks.split(","), args.seeds, sizes=(4000, 10, 2000, 1000))
    for name, seed, split, loader, model in fits:
        rows = []
        for read in (every, subset_of(every)):
            calibration._tensor_pairs = read
            t0 = time.perf_counter()
            post = btl.fit_reward_posterior(model, loader)
            rows.append((post.prior_calibration, time.perf_counter() - t0, score(post, split)))
        calibration._tensor_pairs = every
        (fa, ta, a), (fc, tc, c) = rows
        print(
            f"{name:17s} seed {seed}: factor {fa:.3g} -> {fc:.3g} | NLL {a['nll']:.4f} -> "
            f"{c['nll']:.4f} | ECE {a['ece']:.4f} -> {c['ece']:.4f} | AUROC {a['auroc']:.4f}"
            f" -> {c['auroc']:.4f} | fit {ta:.1f} -> {tc:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
