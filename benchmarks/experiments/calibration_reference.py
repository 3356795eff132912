"""Would the held-out calibration give the same prior with the full exact evidence's prior as
its reference? (issue 21, cost: it would save the calibration's own eigendecomposition.)

Run from the repository root (needs the ``bench`` extra; about 2 minutes at 2 threads)::

    PYTHONPATH=src python benchmarks/experiments/calibration_reference.py [--tasks a,b] [--seeds 1]

The calibration (``bt_laplace.prior.calibration``) compares, on pairs of held-out items, the
fitted structure's variance with the exact posterior's of the pairs among the kept items at
*that posterior's own* exact-evidence prior ``delta_kept``, which needs the kept pairs' kernel
spectrum (about 0.7 s of a 5 s default fit at 4,000 pairs and 2 threads). With the prior of
the exact evidence on all the pairs ``delta_all`` as the reference instead, only a Cholesky
factor would be needed. For each task (4,000 training pairs, ``bench_heldout.py --cost``'s MAP
model) this prints ``delta_all``, ``delta_kept``, the default's prior and factor, and the prior
the other reference would give (``delta_all`` times its factor): the change the variant would
make to the default's answer.
"""
# ruff: noqa: E402

import argparse
import os
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from realdata import make_split, setup_run, train_map
from realtasks import TASKS

import bt_laplace as btl
import bt_laplace.prior.calibration as calibration


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    setup_run()
    torch.set_num_threads(args.threads)
    real = calibration.exact_evidence_prior_precision
    for name in args.tasks.split(","):
        for seed in range(args.seeds):
            split = make_split(name, seed, datasets=TASKS, sizes=(4000, 10, 10, 10), n_score=10)
            xtr, ytr, _ = split["train"]
            model = train_map(xtr, ytr, seed)
            loader = DataLoader(TensorDataset(xtr, ytr), batch_size=512)
            kept: list[float] = []
            calibration.exact_evidence_prior_precision = lambda e, t, kept=kept: (
                kept.append(real(e, t)) or kept[-1]
            )
            default = btl.fit_reward_posterior(model, loader)
            exact = btl.fit_reward_posterior(model, loader, evidence="exact")
            delta_all = float(exact.prior_precision)
            calibration.exact_evidence_prior_precision = lambda e, t, d=delta_all: d
            other = btl.fit_reward_posterior(model, loader)
            calibration.exact_evidence_prior_precision = real
            factor, alt = default.prior_calibration, other.prior_calibration
            prior, alt_prior = float(default.prior_precision), float(other.prior_precision)
            print(
                f"{name} seed {seed}: delta_all {delta_all:.4g}, delta_kept "
                f"{kept[0] if kept else float('nan'):.4g}; default prior {prior:.4g} (factor "
                f"{factor}); with delta_all as the reference {alt_prior:.4g} (factor {alt}), "
                f"{alt_prior / prior - 1:+.1%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
