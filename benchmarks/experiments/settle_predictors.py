"""Can the exact evidence tell in advance that the attempt at the top of the spectrum will not
settle? Two predictors against the outcome (issue 21, cost).

Run from the repository root (needs the ``bench`` extra; about 3 minutes, one thread)::

    PYTHONPATH=src python benchmarks/experiments/settle_predictors.py [--tasks a,b] [--pairs 4000]

For each task of ``benchmarks/realtasks.py`` (seed 0): the MAP model on ``--pairs`` training
pairs, its all-weights kron posterior, and the exact GGN's eigenvalues ``e`` with the exact
evidence's prior ``delta``; prints how many exceed ``SETTLE_TOL * delta`` and whether the attempt
at the top ``START_RANK`` settles (``bt_laplace.prior.spectrum``), beside (1) a probe of the top
64 eigenvalues by the same randomized method, its prior from them and the trace, and the 256th
eigenvalue extrapolated geometrically from the 32nd and 64th, with the probe's time; (2) the
fitted kron curvature's eigenvalues (``curvature_eigenvalues``) counted the same way at their
own exact-evidence prior.
"""
# ruff: noqa: E402

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from bench_heldout import map_fits
from realdata import setup_run
from realtasks import TASKS

import bt_laplace as btl
import bt_laplace.prior.evidence as evidence
from bt_laplace.prior.marglik import curvature_eigenvalues
from bt_laplace.prior.spectrum import (
    SETTLE_TOL,
    START_RANK,
    Spectrum,
    _top_eigenpairs,
    settled_spectrum,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--pairs", type=int, default=4000)
    args = ap.parse_args()
    setup_run()
    torch.set_num_threads(1)
    seen = {}

    def keep(mat, prior_of, **kw):  # the tempered kernel the evidence decomposes
        seen["mat"], seen["prior_of"] = mat, prior_of
        return settled_spectrum(mat, prior_of, **kw)

    evidence.settled_spectrum = keep
    sizes = (args.pairs, 10, 10, 10)
    for name, _, _, loader, model in map_fits(args.tasks.split(","), 1, sizes, n_score=10):
        la = btl.fit_reward_posterior(model, loader, prior_precision=1.0).laplace
        theta_sq = float((la.mean - la.prior_mean).double().square().sum())
        evidence.exact_ggn_eigenvalues(la, loader, theta_sq=theta_sq)
        mat, prior_of = seen["mat"], seen["prior_of"]
        n = mat.shape[0]
        exact = torch.linalg.eigvalsh(mat).clamp_min(0.0)
        delta = prior_of(exact)
        settles = len(settled_spectrum(mat, prior_of).values) < n
        t0 = time.perf_counter()
        top, _ = _top_eigenpairs(mat, 64)
        probe = Spectrum(top, None, float(mat.diagonal().sum()) - float(top.sum()), n)
        probe_prior = prior_of(probe.eigenvalues())
        k32, k64 = float(top[-32]), float(top[0])
        guess = k64 * (k64 / k32) ** ((START_RANK - 64) / 32)
        t_probe = time.perf_counter() - t0
        kron = torch.cat([c.flatten().double() for c in curvature_eigenvalues(la)])
        kron_prior = evidence.exact_evidence_prior_precision(kron, theta_sq)
        print(
            f"{name:17s} size {n}: exact count {int((exact > SETTLE_TOL * delta).sum())}, "
            f"settles {settles} | probe: 256th / prior {guess / probe_prior:.2g} "
            f"(predicts settle {guess <= SETTLE_TOL * probe_prior}, {t_probe:.2f} s) | "
            f"kron count {int((kron > SETTLE_TOL * kron_prior).sum())}",
            flush=True,
        )


if __name__ == "__main__":
    main()
