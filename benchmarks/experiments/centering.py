"""The default posterior with TRL's centering term in its curvature
(``center_rewards_coefficient``), against the default without it and laplace-torch's
all-weights kron (issue 21, items 1-2).

Run from the repository root (needs the ``bench`` extra; about 1 minute a task and seed at
one thread)::

    PYTHONPATH=src python benchmarks/experiments/centering.py [--tasks a,b] [--seeds 2]
        [--coefficients 0,0.01,0.05] [--full] [--dense] [--w-weighted 0.1,0.5,1]

Bradley-Terry pairs see only reward differences, so the exact curvature
``sum w (J_1 - J_0)^T (J_1 - J_0)`` leaves every direction that moves a pair's two rewards
together to the prior, and a training item keeps the prior's variance along them. laplace-torch's
kron treats the ``2N`` items as independent samples, which puts curvature on
``J_0^T J_0 + J_1^T J_1`` (the difference and the sum of a pair's Jacobians): wrong for the
likelihood, but it ranks OOD items better on car and mathach (docs/results/heldout.md). TRL's
``center_rewards_coefficient`` ``c`` adds ``2 c (J_0 + J_1)^T (J_0 + J_1)``, the sum directions,
as a term of the objective. The splits, MAP models and scored items are
``bench_heldout.py``'s (2,000 training pairs; 1,000 in- and 1,000 out-of-distribution items);
the MAP models are trained without the term. ``--full`` adds the exact ``full`` posterior
(exact evidence, no calibration) at each coefficient; ``--dense`` the OOD AUROC of dense
posteriors at the exact evidence's prior with the pair GGN and with laplace-torch's item
GGN ``sum w (J_0^T J_0 + J_1^T J_1)`` (what its kron approximates); ``--w-weighted``
the default's kron with sum rows of weight ``c w`` (each pair's Bradley-Terry weight, as in
laplace-torch's items) instead of TRL's ``2 c``, at the default's prior (an experiment: the
backend's ``objective_pairs`` is replaced here, nowhere else).
"""
# ruff: noqa: E402

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from bench_heldout import lt_scores, map_fits, score
from laplace import Laplace
from realdata import ood_auroc, setup_run

import bt_laplace as btl
from bt_laplace.curvature import BradleyTerryGGN, with_sum_pairs
from bt_laplace.testing import item_jacobians


def row(label: str, m: dict, extra: str = "") -> None:
    print(
        f"  {label:34s} NLL {m['nll']:.4f}  ECE {m['ece']:.4f}  AUROC {m['auroc']:.4f}  {extra}",
        flush=True,
    )


def dense_aurocs(model, split, prior: float) -> tuple[float, float]:
    """OOD AUROC of the dense posterior ``(H + prior I)^-1`` with the exact pair GGN and with
    the item GGN (laplace-torch's kron before its Kronecker approximation)."""
    xtr = split["train"][0]
    jac = item_jacobians(model, xtr.reshape(-1, xtr.shape[-1])).reshape(len(xtr), 2, -1)
    with torch.no_grad():
        logits = model(xtr)
    p = torch.sigmoid(logits[:, 1] - logits[:, 0])
    w = (p * (1 - p))[:, None]
    diff = jac[:, 1] - jac[:, 0]
    pair = (diff * w).T @ diff
    item = (jac[:, 0] * w).T @ jac[:, 0] + (jac[:, 1] * w).T @ jac[:, 1]
    xin, xout = split["score_in"], split["score_out"]
    js = item_jacobians(model, torch.cat([xin, xout]))
    out = []
    for ggn in (pair, item):
        cov = torch.linalg.inv(ggn + prior * torch.eye(len(ggn), dtype=ggn.dtype))
        std = ((js @ cov) * js).sum(1).clamp_min(0).sqrt()
        out.append(ood_auroc(std[: len(xin)], std[len(xin) :]))
    return out[0], out[1]


def w_weighted(c: float):
    """``BradleyTerryGGN.objective_pairs`` with sum rows of weight ``c w``."""
    return lambda self, result, weight: with_sum_pairs(result, weight, c * weight)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="car,mathach,imdb,warriner_arousal,movielens,exam")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--coefficients", default="0,0.01,0.05")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--dense", action="store_true")
    ap.add_argument("--w-weighted", default="")
    args = ap.parse_args()
    setup_run()
    torch.set_num_threads(1)
    for name, seed, split, loader, model in map_fits(args.tasks.split(","), args.seeds):
        print(f"{name} seed {seed}", flush=True)
        la = Laplace(model, "reward_modeling", subset_of_weights="all", hessian_structure="kron")
        la.fit(loader)
        la.optimize_prior_precision(method="marglik")
        row("laplace-torch all/kron marglik", lt_scores(la, split))
        for c in (float(v) for v in args.coefficients.split(",")):
            post = btl.fit_reward_posterior(model, loader, center_rewards_coefficient=c)
            factor = post.prior_calibration or 1.0
            extra = f"prior {float(post.prior_precision):.3g} (calibration x{factor:.3g})"
            row(f"default, c = {c:g}", score(post, split), extra)
            if args.full:
                full = btl.fit_reward_posterior(
                    model, loader, hessian_structure="full", evidence="exact",
                    center_rewards_coefficient=c,
                )  # fmt: skip
                extra = f"prior {float(full.prior_precision):.3g}"
                row(f"all/full exact evidence, c = {c:g}", score(full, split), extra)
        if args.dense:
            full = btl.fit_reward_posterior(
                model, loader, hessian_structure="full", evidence="exact"
            )
            pair, item = dense_aurocs(model, split, float(full.prior_precision))
            print(f"  dense at the exact evidence's prior: AUROC pair GGN {pair:.4f}, "
                  f"item GGN {item:.4f}", flush=True)  # fmt: skip
        if args.w_weighted:
            prior = float(btl.fit_reward_posterior(model, loader).prior_precision)
            plain = BradleyTerryGGN.objective_pairs
            for c in (float(v) for v in args.w_weighted.split(",")):
                BradleyTerryGGN.objective_pairs = w_weighted(c)  # type: ignore[method-assign]
                try:
                    post = btl.fit_reward_posterior(model, loader, prior_precision=prior)
                finally:
                    BradleyTerryGGN.objective_pairs = plain  # type: ignore[method-assign]
                row(
                    f"default kron, sum rows c w, c = {c:g}",
                    score(post, split),
                    f"prior {prior:.3g}",
                )


if __name__ == "__main__":
    main()
